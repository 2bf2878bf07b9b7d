// A backend host that vanishes without a FIN or RST (power loss, a partition)
// must not leave its clients hanging: TCP keepalive and TCP_USER_TIMEOUT on
// apilb's backend leg find it, and apilb resets the client so it reconnects.
// Two network namespaces joined by a veth pair stand in for two hosts
// (198.18.0.0/30, never connected to the host's interfaces).
#include <gtest/gtest.h>

#include <unistd.h>

#include <fmt/format.h>

#include "harness.hpp"

namespace apilb::test {
namespace {

class two_hosts {
public:
    two_hosts() {
        const auto id = ::getpid() % 100000;
        a_ = fmt::format("apilbt-a{}", id);
        b_ = fmt::format("apilbt-b{}", id);
        veth_a_ = fmt::format("va{}", id);
        veth_b_ = fmt::format("vb{}", id);
        ok_ = ip({"netns", "add", a_}) && ip({"netns", "add", b_}) &&
              ip({"link", "add", veth_a_, "netns", a_, "type", "veth", "peer", "name", veth_b_, "netns", b_}) &&
              ip({"-n", a_, "addr", "add", "198.18.0.1/30", "dev", veth_a_}) &&
              ip({"-n", b_, "addr", "add", "198.18.0.2/30", "dev", veth_b_}) &&
              ip({"-n", a_, "link", "set", veth_a_, "up"}) && ip({"-n", b_, "link", "set", veth_b_, "up"}) &&
              ip({"-n", a_, "link", "set", "lo", "up"}) && ip({"-n", b_, "link", "set", "lo", "up"});
    }
    ~two_hosts() {
        ip({"netns", "del", a_});
        ip({"netns", "del", b_});
    }
    bool ok() const { return ok_; }
    const std::string& error() const { return error_; }
    /// argv run inside host A or B.
    std::vector<std::string> in_a(std::vector<std::string> argv) const { return in(a_, std::move(argv)); }
    std::vector<std::string> in_b(std::vector<std::string> argv) const { return in(b_, std::move(argv)); }
    /// Host B disappears: its address goes, so packets to it are dropped
    /// silently and it sends nothing more: no FIN, no RST.
    bool vanish_b() { return ip({"-n", b_, "addr", "flush", "dev", veth_b_}); }

private:
    static std::vector<std::string> in(const std::string& ns, std::vector<std::string> argv) {
        argv.insert(argv.begin(), {"/usr/sbin/ip", "netns", "exec", ns});
        return argv;
    }
    bool ip(std::vector<std::string> args) {
        args.insert(args.begin(), "/usr/sbin/ip");
        auto r = run_command(args, 10s);
        if (r.exit_code != 0 && error_.empty()) error_ = r.output;
        return r.exit_code == 0;
    }

    std::string a_, b_, veth_a_, veth_b_, error_;
    bool ok_ = false;
};

/// Runs a watch through apilb on host A to a stand-in on host B, makes B
/// vanish, and returns how long the client kept hanging (capped at `limit`).
std::chrono::milliseconds hang_after_backend_vanishes(const std::string& tcp_yaml, std::chrono::milliseconds limit,
                                                      std::string& apilb_log) {
    two_hosts hosts;
    if (!hosts.ok()) {
        ADD_FAILURE() << "could not make network namespaces: " << hosts.error();
        return {};
    }
    temp_dir dir;
    const std::string certs = dir.file("certs");
    auto mk = run_command({"/bin/bash", required_env("APILB_MKCERTS"), certs}, 60s);
    EXPECT_EQ(mk.exit_code, 0) << mk.output;
    process standin(hosts.in_b({required_env("APILB_STANDIN_BIN"), "--listen", "198.18.0.2:6443", "--cert",
                                certs + "/server.crt", "--key", certs + "/server.key", "--name", "b"}),
                    dir.file("standin.log"));
    dir.write("apilb.yaml", with_test_relay_io(fmt::format(R"(workers: 1
listeners: [{{name: f, address: "198.18.0.1:6443", pool: p}}]
pools: [{{name: p, backends: [{{name: b, address: "198.18.0.2:6443"}}]}}]
{}
log: {{level: debug}}
)",
                                                           tcp_yaml)));
    process apilb(hosts.in_a({required_env("APILB_BIN"), "run", "--config", dir.file("apilb.yaml")}),
                  dir.file("apilb.log"));
    for (int i = 0; i < 500 && apilb.log().find("apilb started") == std::string::npos; ++i) {
        std::this_thread::sleep_for(10ms);
    }
    for (int i = 0; i < 500 && standin.log().find("listening on") == std::string::npos; ++i) {
        std::this_thread::sleep_for(10ms);
    }
    // The test certificate names "kubernetes", not the namespace's address.
    process watch(hosts.in_a({"/usr/bin/curl", "-sS", "-N", "--cacert", certs + "/ca.crt", "--resolve",
                              "kubernetes:6443:198.18.0.1", "https://kubernetes:6443/watch?interval_ms=100"}),
                  dir.file("watch.log"));
    bool streaming = false;
    for (int i = 0; i < 500 && !streaming; ++i) {
        const std::string out = watch.log();
        std::size_t events = 0;
        for (auto p = out.find("ADDED"); p != std::string::npos; p = out.find("ADDED", p + 1)) ++events;
        streaming = events >= 3;
        if (!streaming) std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(streaming) << "watch: " << watch.log() << "\napilb: " << apilb.log();
    EXPECT_TRUE(hosts.vanish_b());
    const auto t0 = std::chrono::steady_clock::now();
    const auto code = watch.wait(limit);
    const auto hung = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    if (code) {
        EXPECT_NE(*code, 0) << "the watch must end with an error, not look complete";
    }
    watch.signal(SIGKILL);
    watch.wait(5s);
    apilb.signal(SIGINT);
    // A second signal, once the first is taken (signals sent together may
    // arrive as one): do not wait for the drain.
    for (int i = 0; i < 500 && apilb.log().find("stopped accepting") == std::string::npos; ++i) {
        std::this_thread::sleep_for(10ms);
    }
    apilb.signal(SIGINT);
    EXPECT_EQ(apilb.wait(10s), std::optional<int>(0));
    standin.signal(SIGKILL);
    standin.wait(5s);
    apilb_log = apilb.log();
    expect_no_sanitizer_report(apilb_log, "apilb");
    return hung;
}

bool can_make_namespaces() { return ::geteuid() == 0 && ::access("/usr/sbin/ip", X_OK) == 0; }

TEST(DeadPeer, VanishedApiserverIsDetectedAndTheClientResetWithinSeconds) {
    if (!can_make_namespaces()) GTEST_SKIP() << "needs root and iproute2 for network namespaces";
    std::string log;
    const auto hung = hang_after_backend_vanishes(
        "tcp: {keepalive_idle: 1s, keepalive_interval: 1s, keepalive_count: 2, user_timeout: 3s}", 20s, log);
    // keepalive: 1 s idle + 2 probes 1 s apart = about 3 s.
    EXPECT_LT(hung, 8s) << log;
    EXPECT_GT(hung, 1s) << log;
    EXPECT_NE(log.find("Connection timed out"), std::string::npos) << log;
}

TEST(DeadPeer, WithoutKeepaliveTheSameClientWouldHang) {
    // The control: the options above are what ends the hang.
    if (!can_make_namespaces()) GTEST_SKIP() << "needs root and iproute2 for network namespaces";
    std::string log;
    const auto hung = hang_after_backend_vanishes("tcp: {keepalive: false, user_timeout: 0}", 8s, log);
    EXPECT_GE(hung, 8s) << log;
}

}  // namespace
}  // namespace apilb::test
