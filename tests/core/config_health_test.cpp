// A pool's `health` section: defaults, every field, and what is rejected.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "config_test_util.hpp"

namespace apilb {
namespace {

using namespace std::chrono_literals;
using test::all_messages;
using test::errors_of;

/// Files a health section may name (CA, certificate, key, token), made for
/// the test and removed after it.
class HealthConfig : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("apilb-health-config-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
        for (const char* f : {"ca.crt", "client.crt", "client.key", "token"}) std::ofstream(dir_ / f) << "x\n";
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    std::string file(const char* name) const { return (dir_ / name).string(); }

    /// The minimal file with `health` (indented under the pool) added.
    static std::string with_health(const std::string& health) {
        return "listeners:\n"
               "  - {name: apiserver, address: \"0.0.0.0:6443\", pool: cp}\n"
               "pools:\n"
               "  - name: cp\n"
               "    backends:\n"
               "      - {name: cp-1, address: \"192.0.2.11:6443\"}\n" +
               health;  // starts at line 7
    }

    std::filesystem::path dir_;
};

TEST_F(HealthConfig, WithoutASectionThereAreNoProbesButPassiveDetection) {
    auto c = parse_config(with_health(""), "t");
    const auto& h = c->pools[0].health;
    EXPECT_EQ(h.type, health_check_type::none);
    EXPECT_TRUE(h.passive);
    EXPECT_TRUE(h.initial_healthy);
    EXPECT_EQ(h.all_unhealthy, all_unhealthy_policy::try_all);
    EXPECT_TRUE(c->warnings.empty());
}

TEST_F(HealthConfig, AWrittenSectionDefaultsToHttpsReadyz) {
    auto c = parse_config(with_health("    health:\n      tls: {ca_file: " + file("ca.crt") + "}\n"), "t");
    const auto& h = c->pools[0].health;
    EXPECT_EQ(h.type, health_check_type::https);
    EXPECT_EQ(h.path, "/readyz");
    EXPECT_EQ(h.interval, 2s);
    EXPECT_EQ(h.timeout, 1s);
    EXPECT_EQ(h.rise, 2u);
    EXPECT_EQ(h.fall, 2u);
    EXPECT_EQ(h.expect_status, 200u);
    EXPECT_FALSE(h.expect_body.has_value());
    EXPECT_EQ(h.tls.ca_file, file("ca.crt"));
    EXPECT_EQ(h.tls.server_name, "kubernetes");
    EXPECT_TRUE(h.tls.cert_file.empty());
    EXPECT_FALSE(h.tls.insecure_skip_verify);
    EXPECT_TRUE(h.bearer_token_file.empty());
    EXPECT_TRUE(h.passive);
    EXPECT_EQ(h.close_sessions_after, std::optional<duration>(0s));
    EXPECT_EQ(h.slow_start, 30s);
    EXPECT_EQ(h.all_unhealthy, all_unhealthy_policy::try_all);
    EXPECT_TRUE(h.initial_healthy);
    EXPECT_TRUE(c->warnings.empty()) << all_messages(c->warnings);
}

TEST_F(HealthConfig, ReadsEveryField) {
    auto c = parse_config(with_health(R"(    health:
      type: https
      path: /readyz?verbose&exclude=etcd
      interval: 200ms
      timeout: 300ms
      rise: 3
      fall: 4
      expect: {status: 204, body: "check passed"}
      tls:
        ca_file: )" + file("ca.crt") + R"(
        server_name: cp-1.example.com
        cert_file: )" + file("client.crt") +
                                      R"(
        key_file: )" + file("client.key") +
                                      R"(
        insecure_skip_verify: false
      bearer_token_file: )" + file("token") +
                                      R"(
      passive: {enabled: false}
      close_sessions_after: never
      slow_start: 0
      all_unhealthy: reject
      initial: unhealthy
)"),
                          "t");
    const auto& h = c->pools[0].health;
    EXPECT_EQ(h.path, "/readyz?verbose&exclude=etcd");
    EXPECT_EQ(h.interval, 200ms);
    EXPECT_EQ(h.timeout, 300ms) << "a timeout longer than the interval is allowed";
    EXPECT_EQ(h.rise, 3u);
    EXPECT_EQ(h.fall, 4u);
    EXPECT_EQ(h.expect_status, 204u);
    EXPECT_EQ(h.expect_body, std::optional<std::string>("check passed"));
    EXPECT_EQ(h.tls.server_name, "cp-1.example.com");
    EXPECT_EQ(h.tls.cert_file, file("client.crt"));
    EXPECT_EQ(h.tls.key_file, file("client.key"));
    EXPECT_EQ(h.bearer_token_file, file("token"));
    EXPECT_FALSE(h.passive);
    EXPECT_FALSE(h.close_sessions_after.has_value());
    EXPECT_EQ(h.slow_start, 0ms);
    EXPECT_EQ(h.all_unhealthy, all_unhealthy_policy::reject);
    EXPECT_FALSE(h.initial_healthy);
}

TEST_F(HealthConfig, CloseSessionsAfterZeroMeansAtOnce) {
    auto c = parse_config(with_health("    health: {type: tcp, close_sessions_after: 0}\n"), "t");
    EXPECT_EQ(c->pools[0].health.close_sessions_after, std::optional<duration>(0ms));
    EXPECT_EQ(c->pools[0].health.type, health_check_type::tcp);
}

TEST_F(HealthConfig, ServerNameMayBeAnIpAddress) {
    for (const char* name : {"192.0.2.11", "2001:db8::11", "kubernetes.default.svc"}) {
        auto c = parse_config(
            with_health("    health: {tls: {ca_file: " + file("ca.crt") + ", server_name: \"" + name + "\"}}\n"), "t");
        EXPECT_EQ(c->pools[0].health.tls.server_name, name);
    }
}

TEST_F(HealthConfig, HttpsWithoutACaIsAnErrorUnlessExplicitlyInsecure) {
    auto errors = errors_of(with_health("    health: {}\n"));
    ASSERT_EQ(errors.size(), 1u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "pools[0].health");
    EXPECT_EQ(errors[0].line, 7);
    EXPECT_CONTAINS(errors[0].message, "needs tls.ca_file");
    EXPECT_CONTAINS(errors[0].message, "insecure_skip_verify: true");

    auto c = parse_config(with_health("    health:\n      tls: {insecure_skip_verify: true}\n"), "t");
    EXPECT_TRUE(c->pools[0].health.tls.insecure_skip_verify);
    ASSERT_EQ(c->warnings.size(), 1u);
    EXPECT_EQ(c->warnings[0].key_path, "pools[0].health.tls.insecure_skip_verify");
    EXPECT_EQ(c->warnings[0].line, 8);
    EXPECT_CONTAINS(c->warnings[0].message, "do not verify the apiserver's certificate");
}

TEST_F(HealthConfig, NamedFilesMustBeReadableRegularFiles) {
    auto errors = errors_of(
        with_health("    health:\n      tls:\n        ca_file: /nonexistent/ca.crt\n"
                    "      bearer_token_file: " +
                    dir_.string() + "\n"));
    ASSERT_EQ(errors.size(), 2u) << all_messages(errors) << "an unreadable CA is not also reported as missing";
    EXPECT_EQ(errors[0].key_path, "pools[0].health.tls.ca_file");
    EXPECT_EQ(errors[0].line, 9);
    EXPECT_CONTAINS(errors[0].message, "\"/nonexistent/ca.crt\" cannot be read: No such file or directory");
    EXPECT_EQ(errors[1].key_path, "pools[0].health.bearer_token_file");
    EXPECT_CONTAINS(errors[1].message, "is a directory, expected a regular file");
}

TEST_F(HealthConfig, ClientCertificateNeedsItsKey) {
    auto errors = errors_of(with_health("    health:\n      tls: {ca_file: " + file("ca.crt") +
                                        ", cert_file: " + file("client.crt") + "}\n"));
    ASSERT_EQ(errors.size(), 1u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "pools[0].health.tls.cert_file");
    EXPECT_CONTAINS(errors[0].message, "key_file is missing");
}

TEST_F(HealthConfig, ValuesAreChecked) {
    auto errors = errors_of(with_health(R"(    health:
      type: htps
      path: readyz
      interval: 10ms
      timeout: 0
      rise: 0
      fall: 101
      expect: {status: 600, body: ""}
      tls: {insecure_skip_verify: true, server_name: "bad_name"}
      close_sessions_after: sometimes
      slow_start: 2h
      all_unhealthy: try_all
      initial: maybe
      passive: true
)"));
    const std::string text = all_messages(errors);
    EXPECT_EQ(errors.size(), 14u) << text;
    EXPECT_CONTAINS(text, "test.yaml:8:13: pools[0].health.type: unknown value \"htps\"; did you mean \"https\"?");
    EXPECT_CONTAINS(text, "pools[0].health.path: invalid path \"readyz\": expected a path starting with \"/\"");
    EXPECT_CONTAINS(text, "pools[0].health.interval: \"10ms\" is out of range; expected 100ms..1h");
    EXPECT_CONTAINS(text, "pools[0].health.timeout: \"0\" is out of range; expected 10ms..5m");
    EXPECT_CONTAINS(text, "pools[0].health.rise: 0 is out of range; expected 1..100");
    EXPECT_CONTAINS(text, "pools[0].health.fall: 101 is out of range");
    EXPECT_CONTAINS(text, "pools[0].health.expect.status: 600 is out of range; expected 100..599");
    EXPECT_CONTAINS(text, "pools[0].health.expect.body: expected 1 to 1024 characters");
    EXPECT_CONTAINS(text, "pools[0].health.tls.server_name: invalid server name");
    EXPECT_CONTAINS(text, "pools[0].health.close_sessions_after: invalid duration \"sometimes\"");
    EXPECT_CONTAINS(text, "pools[0].health.slow_start: \"2h\" is out of range; expected 0..1h");
    EXPECT_CONTAINS(text, "pools[0].health.all_unhealthy: unknown value \"try_all\"; did you mean \"try-all\"?");
    EXPECT_CONTAINS(text, "pools[0].health.initial: unknown value \"maybe\"");
    EXPECT_CONTAINS(text, "pools[0].health.passive: expected a mapping");
}

TEST_F(HealthConfig, PathCannotBreakTheRequestLine) {
    auto errors = errors_of(
        with_health("    health: {type: https, tls: {insecure_skip_verify: true}, "
                    "path: \"/readyz HTTP/1.0\"}\n"));
    ASSERT_EQ(errors.size(), 1u) << all_messages(errors);
    EXPECT_CONTAINS(errors[0].message, "percent-encode");
}

TEST_F(HealthConfig, UnknownKeysSuggestTheNearest) {
    auto errors = errors_of(with_health("    health: {type: tcp, intervall: 1s, tls: {ca_fil: x}}\n"));
    const std::string text = all_messages(errors);
    ASSERT_EQ(errors.size(), 2u) << text;
    EXPECT_CONTAINS(text, "pools[0].health.intervall: unknown key \"intervall\"; did you mean \"interval\"?");
    EXPECT_CONTAINS(text, "pools[0].health.tls.ca_fil: unknown key \"ca_fil\"; did you mean \"ca_file\"?");
}

TEST_F(HealthConfig, HttpsOnlyFieldsWithTcpAreIgnoredWithAWarning) {
    auto c = parse_config(
        with_health("    health: {type: tcp, path: /livez, tls: {ca_file: " + file("ca.crt") + "}}\n"), "t");
    ASSERT_EQ(c->warnings.size(), 2u) << all_messages(c->warnings);
    EXPECT_EQ(c->warnings[0].key_path, "pools[0].health.path");
    EXPECT_CONTAINS(c->warnings[0].message, "ignored: applies only to type https, and type is tcp");
    EXPECT_EQ(c->warnings[1].key_path, "pools[0].health.tls");
}

TEST_F(HealthConfig, TypeNoneCannotStartUnhealthy) {
    auto errors = errors_of(with_health("    health: {type: none, initial: unhealthy}\n"));
    ASSERT_EQ(errors.size(), 1u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "pools[0].health.initial");
    EXPECT_CONTAINS(errors[0].message, "type none");
}

TEST_F(HealthConfig, EachPoolHasItsOwn) {
    auto c = parse_config(with_health("    health: {type: tcp, interval: 5s}\n"
                                      "  - name: other\n"
                                      "    backends: [{name: x, address: \"192.0.2.20:6443\"}]\n"),
                          "t");
    EXPECT_EQ(c->pool("cp").health.type, health_check_type::tcp);
    EXPECT_EQ(c->pool("cp").health.interval, 5s);
    EXPECT_EQ(c->pool("other").health.type, health_check_type::none);
}

TEST_F(HealthConfig, TheExampleHealthSectionLoadsWhenUncommented) {
    const char* root = std::getenv("APILB_SOURCE_ROOT");
    if (root == nullptr || *root == '\0') GTEST_SKIP() << "APILB_SOURCE_ROOT is not set";
    std::ifstream in(std::string(root) + "/conf/apilb.yaml");
    ASSERT_TRUE(in) << "conf/apilb.yaml";
    // Uncomment as the example says: the first "#" of the block's lines goes.
    std::string text;
    std::string line;
    bool in_block = false;
    bool found = false;
    while (std::getline(in, line)) {
        if (line == "    #health:") in_block = found = true;
        if (in_block && !line.starts_with("    #")) in_block = false;
        if (in_block) line.erase(4, 1);
        text += line + "\n";
    }
    ASSERT_TRUE(found) << "the example has no commented health section";
    const std::string kubeadm_ca = "/etc/kubernetes/pki/ca.crt";
    // The health section's CA (the discovery example above it names the
    // same path in a comment).
    const auto at = text.find(kubeadm_ca, text.find("\n    health:"));
    ASSERT_NE(at, std::string::npos);
    text.replace(at, kubeadm_ca.size(), file("ca.crt"));
    try {
        auto c = parse_config(text, "apilb.yaml");
        const auto& h = c->pools[0].health;
        EXPECT_EQ(h.type, health_check_type::https);
        EXPECT_EQ(h.path, "/readyz");
        EXPECT_EQ(h.interval, 2s);
        EXPECT_EQ(h.close_sessions_after, std::optional<duration>(0s));
        EXPECT_TRUE(c->warnings.empty()) << all_messages(c->warnings);
    } catch (const config_load_error& e) {
        FAIL() << e.what() << "\n" << text;
    }
}

TEST(HealthEnums, ToStringMatchesTheFile) {
    EXPECT_STREQ(to_string(health_check_type::https), "https");
    EXPECT_STREQ(to_string(health_check_type::none), "none");
    EXPECT_STREQ(to_string(all_unhealthy_policy::try_all), "try-all");
    EXPECT_STREQ(to_string(all_unhealthy_policy::reject), "reject");
}

}  // namespace
}  // namespace apilb
