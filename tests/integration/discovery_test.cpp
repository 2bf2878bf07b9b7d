// Discovery with the real binary against the stand-in apiserver's
// EndpointSlice API: it lists and watches through the seed, follows a
// change, relists after compaction, resumes a broken watch without a list,
// keeps its set on a bogus empty list, survives rejected credentials, and
// keeps the last-known-good set in its state file for a start without the API.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>
#include <string>

#include "harness.hpp"
#include "standin.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;

/// A metric's value in a /metrics text ("" when absent).
std::string metric(const std::string& text, const std::string& name_and_labels) {
    const auto p = text.find("\n" + name_and_labels + " ");
    if (p == std::string::npos) return {};
    const auto start = p + name_and_labels.size() + 2;
    return text.substr(start, text.find('\n', start) - start);
}

class Discovery : public ::testing::Test {
protected:
    void SetUp() override {
        certs_ = make_certs(dir_);
        // kubeadm's shape: the CA inline would do as well; files beside it here.
        write_kubeconfig(dir_, certs_);
        port_ = free_port();
        admin_port_ = free_port();
    }

    /// apilb with one pool seeded with `seed` and discovery on; `more` adds
    /// lines to the discovery section.
    std::string config(const std::string& seed, const std::string& more = {}) const {
        return fmt::format(
            "workers: 1\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
            "pools:\n  - name: p\n    backends:\n      - {{name: seed, address: \"{}\"}}\n"
            "    discovery:\n      kubeconfig: {}\n      state_file: {}\n      idle_timeout: 5s\n{}"
            "admin: {{address: \"127.0.0.1:{}\"}}\nlog: {{level: debug}}\n",
            port_, seed, dir_.file("kubeconfig"), dir_.file("state.json"), more, admin_port_);
    }
    std::string metrics() const { return http_exchange(admin_port_, "GET", "/metrics").body; }
    /// Polls /metrics until `series` reads `value`.
    bool wait_metric(const std::string& series, const std::string& value, std::chrono::milliseconds t = 20s) const {
        return wait_until([&] { return metric(metrics(), series) == value; }, t);
    }

    temp_dir dir_;
    std::string certs_;
    std::uint16_t port_ = 0;
    std::uint16_t admin_port_ = 0;
};

TEST_F(Discovery, FollowsTheSlicesThroughTheSeedAndKeepsThemInTheStateFile) {
    standin_process api(dir_, certs_, "127.0.0.2", "api", {"--client-ca", certs_ + "/ca.crt"});
    apilb_process lb(dir_, config(api.address()), "127.0.0.1", port_);
    ASSERT_TRUE(wait_metric(R"(apilb_discovery_watch_state{pool="p",state="watching"})", "1")) << lb.log();
    EXPECT_EQ(metric(metrics(), R"(apilb_discovery_lists_total{pool="p"})"), "1");
    ASSERT_TRUE(lb.wait_for_log("the API lists 1 apiserver(s): " + api.address())) << lb.log();

    // A fourth apiserver appears: the watch brings it, the state file keeps it.
    auto r = api.request("PUT", "/control/slices/kubernetes",
                         R"({"endpoints":[{"addresses":["127.0.0.2"]},{"addresses":["127.0.0.4"]}]})");
    ASSERT_EQ(r.status, 200) << r.body;
    const std::string both = fmt::format("127.0.0.2:{0}, 127.0.0.4:{0}", api.port());
    ASSERT_TRUE(lb.wait_for_log("the API lists 2 apiserver(s): " + both, 20s)) << lb.log();
    EXPECT_TRUE(
        wait_until([&] { return read_file(dir_.file("state.json")).find("127.0.0.4") != std::string::npos; }, 5s))
        << read_file(dir_.file("state.json"));
    const auto status = http_exchange(admin_port_, "GET", "/api/v1/status").body;
    EXPECT_NE(status.find(R"("source":"api")"), std::string::npos) << status;
    EXPECT_NE(status.find(R"("ip":"127.0.0.4")"), std::string::npos) << status;
    // Only a list at the start: the change came by the watch.
    EXPECT_EQ(metric(metrics(), R"(apilb_discovery_lists_total{pool="p"})"), "1");
}

TEST_F(Discovery, ResumesABrokenWatchWithoutAListAndRelistsAfterCompaction) {
    standin_process api(dir_, certs_, "127.0.0.2", "api", {"--client-ca", certs_ + "/ca.crt"});
    apilb_process lb(dir_, config(api.address()), "127.0.0.1", port_);
    ASSERT_TRUE(wait_metric(R"(apilb_discovery_watch_state{pool="p",state="watching"})", "1")) << lb.log();

    ASSERT_EQ(api.request("POST", "/control/break-watches?how=close").status, 200);
    ASSERT_TRUE(lb.wait_for_log("the watch connection was cut", 20s)) << lb.log();
    ASSERT_EQ(api.request("PUT", "/control/slices/kubernetes",
                          R"({"endpoints":[{"addresses":["127.0.0.2"]},{"addresses":["127.0.0.5"]}]})")
                  .status,
              200);
    ASSERT_TRUE(lb.wait_for_log("127.0.0.5", 30s)) << lb.log();
    EXPECT_EQ(metric(metrics(), R"(apilb_discovery_relists_total{pool="p"})"), "0") << lb.log();

    // History compacted past the watch's resourceVersion: 410, then a list.
    ASSERT_EQ(api.request("POST", "/control/break-watches?how=close").status, 200);
    ASSERT_EQ(api.request("POST", "/control/bump?n=5").status, 200);
    ASSERT_EQ(api.request("POST", "/control/compact").status, 200);
    ASSERT_TRUE(wait_metric(R"(apilb_discovery_relists_total{pool="p"})", "1", 30s)) << lb.log();
    EXPECT_TRUE(lb.wait_for_log("(410 Gone); listing again")) << lb.log();
}

TEST_F(Discovery, ABogusEmptyListIsNotApplied) {
    standin_process api(dir_, certs_, "127.0.0.2", "api", {"--client-ca", certs_ + "/ca.crt"});
    apilb_process lb(dir_, config(api.address()), "127.0.0.1", port_);
    ASSERT_TRUE(wait_metric(R"(apilb_discovery_watch_state{pool="p",state="watching"})", "1")) << lb.log();
    ASSERT_EQ(api.request("POST", "/control/bogus-empty?on=true").status, 200);
    ASSERT_EQ(api.request("POST", "/control/break-watches?how=close").status, 200);
    ASSERT_EQ(api.request("POST", "/control/bump?n=5").status, 200);
    ASSERT_EQ(api.request("POST", "/control/compact").status, 200);
    ASSERT_TRUE(
        wait_until([&] { return metric(metrics(), R"(apilb_discovery_empty_lists_total{pool="p"})") >= "1"; }, 30s))
        << lb.log();
    EXPECT_EQ(metric(metrics(), R"(apilb_discovery_endpoints{pool="p"})"), "1");
    EXPECT_NE(read_file(dir_.file("state.json")).find("127.0.0.2"), std::string::npos);
}

TEST_F(Discovery, RejectedCredentialsAreNamedAndServingGoesOn) {
    standin_process api(dir_, certs_, "127.0.0.2", "api", {"--client-ca", certs_ + "/ca.crt"});
    ASSERT_EQ(api.request("POST", "/control/reject-credentials?on=true").status, 200);
    apilb_process lb(dir_, config(api.address()), "127.0.0.1", port_);
    ASSERT_TRUE(lb.wait_for_log("credentials rejected (HTTP 401)", 20s)) << lb.log();
    EXPECT_TRUE(wait_until([&] { return metric(metrics(), R"(apilb_discovery_errors_total{pool="p"})") >= "1"; }, 5s));
    client c;
    EXPECT_EQ(c.connect("127.0.0.1", port_), 0);  // the listener serves on
}

TEST_F(Discovery, StartsFromTheStateFileWhenTheApiCannotBeReached) {
    const auto now =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    dir_.write("state.json", fmt::format(R"({{"version":1,"pool":"p","written_at":{},"endpoints":[)"
                                         R"({{"ip":"127.0.0.6","port":6443,"terminating":false}}]}})",
                                         now - 60));
    // The seed refuses: nothing listens on a port we hold.
    const std::uint16_t dead = free_port("127.0.0.2");
    apilb_process lb(dir_, config(fmt::format("127.0.0.2:{}", dead)), "127.0.0.1", port_);
    ASSERT_TRUE(lb.wait_for_log("last-known-good from " + dir_.file("state.json") + ": 127.0.0.6:6443")) << lb.log();
    const auto status = http_exchange(admin_port_, "GET", "/api/v1/status").body;
    EXPECT_NE(status.find(R"("source":"state_file")"), std::string::npos) << status;
    EXPECT_TRUE(wait_until([&] { return metric(metrics(), R"(apilb_discovery_errors_total{pool="p"})") >= "1"; }, 10s));
}

TEST_F(Discovery, ACorruptStateFileIsReportedAndTheSeedUsed) {
    dir_.write("state.json", "{\"version\":1,\"pool\":");
    const std::uint16_t dead = free_port("127.0.0.2");
    apilb_process lb(dir_, config(fmt::format("127.0.0.2:{}", dead)), "127.0.0.1", port_);
    ASSERT_TRUE(lb.wait_for_log("not using the state file: " + dir_.file("state.json") + " is not a valid state file"))
        << lb.log();
    const auto status = http_exchange(admin_port_, "GET", "/api/v1/status").body;
    EXPECT_NE(status.find(R"("source":"seed")"), std::string::npos) << status;
}

}  // namespace
}  // namespace apilb::test
