// A pool's `discovery` section: off by default, every key, and what is rejected.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "apilb/core/config_diff.hpp"
#include "config_test_util.hpp"

namespace apilb {
namespace {

using namespace std::chrono_literals;
using test::all_messages;
using test::errors_of;
using test::only_error;

/// A kubeconfig and a CA file made for the test, removed after it.
class DiscoveryConfig : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("apilb-discovery-config-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
        for (const char* f : {"kubeconfig", "ca.crt"}) std::ofstream(dir_ / f) << "x\n";
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    std::string file(const char* name) const { return (dir_ / name).string(); }

    /// The minimal file with `discovery` (its keys indented under it) added;
    /// the first key is on line 8.
    static std::string with_discovery(const std::string& keys) {
        return "listeners:\n"
               "  - {name: apiserver, address: \"127.0.0.1:7445\", pool: cp}\n"
               "pools:\n"
               "  - name: cp\n"
               "    backends:\n"
               "      - {name: cp-1, address: \"192.0.2.11:6443\"}\n"
               "    discovery:\n" +
               keys;
    }

    std::filesystem::path dir_;
};

TEST_F(DiscoveryConfig, IsOffWithoutASection) {
    auto c = parse_config(test::minimal, "t");
    EXPECT_FALSE(c->pools[0].discovery.has_value());
}

TEST_F(DiscoveryConfig, AKubeconfigAloneTakesTheDefaults) {
    auto c = parse_config(with_discovery("      kubeconfig: " + file("kubeconfig") + "\n"), "t");
    ASSERT_TRUE(c->pools[0].discovery.has_value());
    const discovery_config& d = *c->pools[0].discovery;
    EXPECT_EQ(d.namespace_name, "default");
    EXPECT_EQ(d.service, "kubernetes");
    EXPECT_EQ(d.kubeconfig, file("kubeconfig"));
    EXPECT_FALSE(d.in_cluster);
    EXPECT_EQ(d.server_name, "kubernetes");
    EXPECT_EQ(d.state_file, "");
    EXPECT_EQ(d.state_max_age, 24h);
    EXPECT_EQ(d.grace_period, 5min);
    EXPECT_EQ(d.change_interval, 5s);
    EXPECT_EQ(d.idle_timeout, 90s);
}

TEST_F(DiscoveryConfig, ReadsEveryKey) {
    auto c = parse_config(with_discovery("      kubeconfig: " + file("kubeconfig") +
                                         "\n"
                                         "      namespace: kube-system\n"
                                         "      service: apiserver\n"
                                         "      ca_file: " +
                                         file("ca.crt") +
                                         "\n"
                                         "      server_name: api.example.com\n"
                                         "      state_file: " +
                                         file("state.json") +
                                         "\n"
                                         "      state_max_age: 2h\n"
                                         "      grace_period: 30s\n"
                                         "      change_interval: 0\n"
                                         "      idle_timeout: 20s\n"),
                          "t");
    const discovery_config& d = *c->pools[0].discovery;
    EXPECT_EQ(d.namespace_name, "kube-system");
    EXPECT_EQ(d.service, "apiserver");
    EXPECT_EQ(d.ca_file, file("ca.crt"));
    EXPECT_EQ(d.server_name, "api.example.com");
    EXPECT_EQ(d.state_file, file("state.json"));
    EXPECT_EQ(d.state_max_age, 2h);
    EXPECT_EQ(d.grace_period, 30s);
    EXPECT_EQ(d.change_interval, 0ms);
    EXPECT_EQ(d.idle_timeout, 20s);
}

TEST_F(DiscoveryConfig, NeedsAWayToAuthenticate) {
    auto e = only_error(with_discovery("      namespace: default\n"));
    EXPECT_EQ(e.line, 8);
    EXPECT_EQ(e.key_path, "pools[0].discovery");
    EXPECT_CONTAINS(e.message, "no way to authenticate");
    EXPECT_CONTAINS(e.message, "in_cluster: true");
}

TEST_F(DiscoveryConfig, RefusesBothKubeconfigAndInCluster) {
    auto errors = errors_of(with_discovery("      kubeconfig: " + file("kubeconfig") + "\n      in_cluster: true\n"));
    EXPECT_CONTAINS(all_messages(errors), "kubeconfig and in_cluster: true are both set");
}

TEST_F(DiscoveryConfig, AMissingKubeconfigNamesTheFileAndLine) {
    auto e = only_error(with_discovery("      kubeconfig: " + file("nope") + "\n"));
    EXPECT_EQ(e.file, "test.yaml");
    EXPECT_EQ(e.line, 8);
    EXPECT_EQ(e.key_path, "pools[0].discovery.kubeconfig");
    EXPECT_CONTAINS(e.message, "apilb-discovery-config");
    EXPECT_CONTAINS(e.message, "cannot be read");
}

TEST_F(DiscoveryConfig, InClusterNeedsTheServiceAccountFiles) {
    if (std::filesystem::exists(in_cluster_token_file)) GTEST_SKIP() << "running in a pod";
    auto errors = errors_of(with_discovery("      in_cluster: true\n"));
    EXPECT_CONTAINS(all_messages(errors), in_cluster_token_file);
    EXPECT_EQ(errors.at(0).key_path, "pools[0].discovery.in_cluster");
}

TEST_F(DiscoveryConfig, RefusesANameKubernetesWouldRefuse) {
    auto e = only_error(with_discovery("      kubeconfig: " + file("kubeconfig") + "\n      namespace: Default\n"));
    EXPECT_EQ(e.line, 9);
    EXPECT_EQ(e.key_path, "pools[0].discovery.namespace");
    EXPECT_CONTAINS(e.message, "lower-case");
}

TEST_F(DiscoveryConfig, AStateFileInADirectoryThatDoesNotExistIsAnError) {
    auto e = only_error(with_discovery("      kubeconfig: " + file("kubeconfig") +
                                       "\n      state_file: " + file("missing") + "/state.json\n"));
    EXPECT_EQ(e.key_path, "pools[0].discovery.state_file");
    EXPECT_CONTAINS(e.message, "does not exist");
}

TEST_F(DiscoveryConfig, DurationsAreBounded) {
    auto e = only_error(with_discovery("      kubeconfig: " + file("kubeconfig") + "\n      idle_timeout: 1s\n"));
    EXPECT_EQ(e.key_path, "pools[0].discovery.idle_timeout");
    EXPECT_CONTAINS(e.message, "5s..1h");
}

TEST_F(DiscoveryConfig, AnUnknownKeySuggestsTheRightOne) {
    auto e = only_error(with_discovery("      kubeconfig: " + file("kubeconfig") + "\n      grace_perod: 1m\n"));
    EXPECT_CONTAINS(e.message, "did you mean \"grace_period\"");
}

TEST_F(DiscoveryConfig, AChangeIsAppliedByAReload) {
    // process::reload restarts the pool's discovery with the new section.
    auto running = parse_config(with_discovery("      kubeconfig: " + file("kubeconfig") + "\n"), "t");
    auto next = parse_config(with_discovery("      kubeconfig: " + file("kubeconfig") + "\n      grace_period: 1m\n"),
                             "t");
    const config_diff d = diff_configs(*running, *next);
    EXPECT_TRUE(d.restart_only.empty());
    ASSERT_EQ(d.pools_changed.size(), 1u);
    EXPECT_EQ(d.pools_changed[0], "cp (discovery)");
    const config kept = keep_restart_only(*running, *next);
    EXPECT_EQ(kept.pools[0].discovery->grace_period, 1min);
}

}  // namespace
}  // namespace apilb
