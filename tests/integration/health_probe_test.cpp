// Active and passive health checks against real stand-in apiservers with real
// TLS: what makes a backend unhealthy, how fast, what is logged, and what
// apilb then does with new clients and open sessions.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstdio>
#include <set>

#include "standin.hpp"

namespace apilb::test {
namespace {

using steady = std::chrono::steady_clock;

std::size_t count_of(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
    return n;
}

std::chrono::milliseconds since(steady::time_point t0) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
}

/// A pool of `backends` with a health section (indented lines, may be empty).
std::string pool_yaml(const std::string& name, const std::vector<const standin_process*>& backends,
                      const std::string& health, const std::string& balance = "round-robin") {
    std::string s = fmt::format("  - name: {}\n    balance: {}\n    backends:\n", name, balance);
    for (const auto* b : backends) s += fmt::format("      - {{name: {}, address: \"{}\"}}\n", b->name(), b->address());
    return s + health;
}

/// A whole config: one listener per pool, in order, on `ports`.
std::string config_yaml(const std::vector<std::uint16_t>& ports, const std::vector<std::string>& pools) {
    std::string s = "workers: 2\nlisteners:\n";
    for (std::size_t i = 0; i < ports.size(); ++i) {
        const std::string pool = pools[i].substr(10, pools[i].find('\n') - 10);  // after "  - name: "
        s += fmt::format("  - {{name: l{}, address: \"127.0.0.1:{}\", pool: {}}}\n", i, ports[i], pool);
    }
    s += "pools:\n";
    for (const auto& p : pools) s += p;
    return s + "log: {level: debug}\n";
}

class Health : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new temp_dir;
        certs_ = make_certs(*dir_);
        tls_ = new tls_client_context(certs_ + "/ca.crt");
    }
    static void TearDownTestSuite() {
        delete tls_;
        delete dir_;
    }

    /// Health section with short times; `more` adds or overrides lines.
    static std::string health(const std::string& more = {}, const std::string& interval = "200ms") {
        return "    health:\n"
               "      path: /readyz?verbose\n"
               "      interval: " +
               interval +
               "\n"
               "      timeout: 300ms\n"
               "      slow_start: 0\n"
               "      tls: {ca_file: " +
               certs_ + "/ca.crt}\n" + more;
    }

    /// GET `target` through apilb on `port`; the answering stand-in's name, or "" on failure.
    static std::string via(std::uint16_t port, const std::string& target = "/version") {
        tls_session s(*tls_);
        std::string error;
        if (!s.open("127.0.0.1", port, target, 5s, error)) return "";
        return s.backend();
    }

    static inline temp_dir* dir_ = nullptr;
    static inline std::string certs_;
    static inline tls_client_context* tls_ = nullptr;
};

TEST_F(Health, ReadyApiserverIsHealthyFromTheFirstRoundAtStart) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a");
    const auto port = free_port();
    // An interval of an hour: only the first round, which runs at once, can
    // pass in time. The bound is a minute, not seconds: it only has to tell
    // "the first round" from "an hour later", and a sanitizer build on a busy
    // machine has taken just over 3 s to get there.
    const auto t0 = steady::now();
    apilb_process apilb(dir, config_yaml({port}, {pool_yaml("p", {&a}, health("", "1h"))}), "127.0.0.1", port);
    EXPECT_TRUE(apilb.wait_for_log("health: pool p backend a (" + a.address() + "): first check passed", 60s))
        << apilb.log();
    EXPECT_LT(since(t0), 60s);
    EXPECT_TRUE(apilb.wait_for_log("health: pool p: https GET /readyz?verbose every 3600000ms")) << apilb.log();
    EXPECT_EQ(via(port), "a");
    EXPECT_EQ(apilb.log().find(" is unhealthy"), std::string::npos) << apilb.log();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST_F(Health, FailingReadyzIsUnhealthyAfterFallChecksAndHealthyAgainAfterRise) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    const auto port = free_port();
    apilb_process apilb(dir, config_yaml({port}, {pool_yaml("p", {&a, &b}, health("      rise: 2\n      fall: 3\n"))}),
                        "127.0.0.1", port);
    ASSERT_TRUE(apilb.wait_for_log("backend b (" + b.address() + "): first check passed", 3s)) << apilb.log();
    ASSERT_TRUE(apilb.wait_for_log("backend a (" + a.address() + "): first check passed", 3s)) << apilb.log();

    // From before the switch: set_readyz returns once curl has the
    // stand-in's answer, which a loaded machine (or TSan) can delay past the
    // first failing probe.
    const auto t0 = steady::now();
    ASSERT_TRUE(a.set_readyz("fail"));
    const std::string down = fmt::format(
        "health: pool p backend a ({}) is unhealthy after 3 consecutive failure(s): http_status: GET "
        "/readyz?verbose: HTTP 500 Internal Server Error (expected 200); failing checks: etcd",
        a.address());
    ASSERT_TRUE(apilb.wait_for_log(down, 5s)) << apilb.log();
    const auto took = since(t0);
    // Three probes 180-200ms apart: the first may come at once, the third
    // ~360ms later.
    EXPECT_GE(took, 250ms);
    EXPECT_LE(took, 3 * 200ms + 300ms + 1500ms);
    const std::string log = apilb.log();
    EXPECT_EQ(count_of(log, down), 1u) << "a state change is logged once";
    EXPECT_NE(log.find("check failed (1 of 3 before unhealthy): http_status"), std::string::npos) << log;
    EXPECT_NE(log.find("check failed (2 of 3 before unhealthy): http_status"), std::string::npos) << log;
    std::cout << "[ MEASURE ] readyz 500 -> unhealthy (fall 3, interval 200ms): " << took.count() << "ms\n";

    // New clients only go to the healthy backend.
    for (int i = 0; i < 6; ++i) EXPECT_EQ(via(port), "b") << "client " << i;

    ASSERT_TRUE(a.set_readyz("ok"));
    const auto t1 = steady::now();
    ASSERT_TRUE(apilb.wait_for_log(
        fmt::format("health: pool p backend a ({}) is healthy again after 2 passed check(s)", a.address()), 5s))
        << apilb.log();
    EXPECT_GE(since(t1), 100ms) << "two passes, one interval apart";
    std::set<std::string> seen;
    for (int i = 0; i < 6; ++i) seen.insert(via(port));
    EXPECT_EQ(seen, (std::set<std::string>{"a", "b"}));
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST_F(Health, HangingReadyzIsUnhealthyAtTheTimeout) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a");
    const auto port = free_port();
    apilb_process apilb(dir, config_yaml({port}, {pool_yaml("p", {&a}, health("      fall: 2\n"))}), "127.0.0.1", port);
    ASSERT_TRUE(apilb.wait_for_log("first check passed", 3s)) << apilb.log();
    ASSERT_TRUE(a.set_readyz("hang"));
    const auto t0 = steady::now();
    ASSERT_TRUE(
        apilb.wait_for_log("is unhealthy after 2 consecutive failure(s): http_timeout: no complete response "
                           "to GET /readyz?verbose within 300ms",
                           5s))
        << apilb.log();
    const auto took = since(t0);
    EXPECT_GE(took, 500ms) << "two probes that each waited out the 300ms timeout";
    EXPECT_LE(took, 2 * 300ms + 200ms + 1500ms);
    std::cout << "[ MEASURE ] readyz hang -> unhealthy (fall 2, timeout 300ms): " << took.count() << "ms\n";
    EXPECT_TRUE(apilb.wait_for_log("pool p: no backend is healthy; new clients try every backend")) << apilb.log();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST_F(Health, WrongCaOrServerNameIsUnhealthyWithTheVerificationError) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a");
    const auto p1 = free_port();
    const auto p2 = free_port();
    apilb_process apilb(
        dir,
        config_yaml({p1, p2},
                    {pool_yaml("other-ca", {&a}, "    health: {tls: {ca_file: " + certs_ + "/other-ca.crt}}\n"),
                     pool_yaml("wrong-name", {&a},
                               "    health: {tls: {ca_file: " + certs_ + "/ca.crt, server_name: wrong.example}}\n")}),
        "127.0.0.1", p1);
    EXPECT_TRUE(apilb.wait_for_log(
        fmt::format("health: pool other-ca backend a ({}) is unhealthy after its first check failed: tls_failed: TLS "
                    "handshake failed: certificate verify failed",
                    a.address()),
        3s))
        << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log("certificate verification failed: unable to get local issuer certificate"))
        << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(fmt::format(
        "health: pool wrong-name backend a ({}) is unhealthy after its first check failed: tls_failed", a.address())))
        << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log("certificate verification failed: hostname mismatch")) << apilb.log();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST_F(Health, ClientCertificateIsPresentedOnlyWhenConfigured) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a", {"--client-ca", certs_ + "/ca.crt", "--require-client-cert"});
    const auto p1 = free_port();
    const auto p2 = free_port();
    const std::string with_cert = "    health:\n      tls: {ca_file: " + certs_ + "/ca.crt, cert_file: " + certs_ +
                                  "/client.crt, key_file: " + certs_ + "/client.key}\n";
    apilb_process apilb(
        dir,
        config_yaml({p1, p2}, {pool_yaml("anonymous", {&a}, "    health: {tls: {ca_file: " + certs_ + "/ca.crt}}\n"),
                               pool_yaml("with-cert", {&a}, with_cert)}),
        "127.0.0.1", p1);
    EXPECT_TRUE(apilb.wait_for_log("pool with-cert backend a (" + a.address() + "): first check passed", 3s))
        << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(
        "pool anonymous backend a (" + a.address() + ") is unhealthy after its first check failed: tls_failed: TLS",
        3s))
        << apilb.log();
    // The alert alone ("bad certificate", "certificate required") does not
    // say what to do; the detail does.
    EXPECT_TRUE(
        apilb.wait_for_log("the server wants a client certificate: set health.tls.cert_file and "
                           "health.tls.key_file",
                           3s))
        << apilb.log();
    EXPECT_EQ(apilb.log().find("pool with-cert backend a (" + a.address() + ") is unhealthy"), std::string::npos)
        << apilb.log();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

/// Replaces a file by rename, as kubelet does with a projected token.
void replace_file(const temp_dir& dir, const std::string& name, const std::string& content) {
    dir.write(name + ".new", content);
    ASSERT_EQ(std::rename(dir.file(name + ".new").c_str(), dir.file(name).c_str()), 0);
}

TEST_F(Health, BearerTokenIsSentAndReReadWhenTheFileChanges) {
    temp_dir dir;
    const std::string t1 = "t1-5e6f0a9c1d2b4e8f9a7c3b1d";
    const std::string t2 = "t2-0b1c2d3e4f5a6b7c8d9e0f1a";
    dir.write("server-token", t1 + "\n");
    dir.write("probe-token", t1 + "\n");
    standin_process a(dir, certs_, "127.0.0.2", "a", {"--require-bearer-token", dir.file("server-token")});
    const auto p1 = free_port();
    const auto p2 = free_port();
    apilb_process apilb(dir,
                        config_yaml({p1, p2}, {pool_yaml("token", {&a},
                                                         health("      fall: 1\n      rise: 1\n"
                                                                "      bearer_token_file: " +
                                                                dir.file("probe-token") + "\n")),
                                               pool_yaml("no-token", {&a}, health())}),
                        "127.0.0.1", p1);
    ASSERT_TRUE(apilb.wait_for_log("pool token backend a (" + a.address() + "): first check passed", 3s))
        << apilb.log();
    // Without credentials the apiserver answers 401: reported as an authentication problem.
    ASSERT_TRUE(apilb.wait_for_log("pool no-token backend a (" + a.address() +
                                       ") is unhealthy after its first check failed: auth_failed: GET /readyz?verbose: "
                                       "HTTP 401 Unauthorized: the apiserver rejects the probe's credentials (an "
                                       "authentication problem, not the apiserver being down)",
                                   3s))
        << apilb.log();

    // The apiserver's accepted token changes: the old one no longer works.
    replace_file(dir, "server-token", t2 + "\n");
    ASSERT_TRUE(apilb.wait_for_log(
        "pool token backend a (" + a.address() + ") is unhealthy after 1 consecutive failure(s): auth_failed", 3s))
        << apilb.log();
    // The probe's token file is rotated too: re-read at the next probe.
    replace_file(dir, "probe-token", t2 + "\n");
    ASSERT_TRUE(apilb.wait_for_log("bearer_token_file " + dir.file("probe-token") + " changed", 3s)) << apilb.log();
    ASSERT_TRUE(
        apilb.wait_for_log("pool token backend a (" + a.address() + ") is healthy again after 1 passed check(s)", 3s))
        << apilb.log();
    const std::string log = apilb.log();
    EXPECT_EQ(log.find(t1), std::string::npos) << "the token must never be logged";
    EXPECT_EQ(log.find(t2), std::string::npos) << "the token must never be logged";
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST_F(Health, RefusedConnectMarksTheBackendSuspectAndProbesItAtOnce) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    const auto port = free_port();
    // Probes every 30s: only passive detection can notice the death in time.
    apilb_process apilb(dir, config_yaml({port}, {pool_yaml("p", {&a, &b}, health("", "30s"))}), "127.0.0.1", port);
    ASSERT_TRUE(apilb.wait_for_log("backend a (" + a.address() + "): first check passed", 3s)) << apilb.log();
    ASSERT_TRUE(apilb.wait_for_log("backend b (" + b.address() + "): first check passed", 3s)) << apilb.log();
    a.kill();
    const auto t0 = steady::now();
    // Every client is served: the refused connect is retried on b at once.
    for (int i = 0; i < 4; ++i) EXPECT_EQ(via(port), "b") << "client " << i;
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("health: pool p backend a ({}) is suspect: connect refused (a client's "
                                               "connect); new clients avoid it until a check passes; probing now",
                                               a.address()),
                                   2s))
        << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("health: pool p backend a ({}) is unhealthy after 2 consecutive "
                                               "failure(s): tcp_refused",
                                               a.address()),
                                   2s))
        << apilb.log();
    EXPECT_LT(since(t0), 5s) << "long before the 30s interval";
    EXPECT_EQ(count_of(apilb.log(), "is suspect: connect refused"), 1u) << "a suspect backend is not reported again";
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST_F(Health, WhenNoBackendIsHealthyTryAllServesAndRejectRefuses) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a", {"--readyz", "fail"});
    const auto p1 = free_port();
    const auto p2 = free_port();
    apilb_process apilb(dir,
                        config_yaml({p1, p2}, {pool_yaml("try", {&a}, health()),
                                               pool_yaml("reject", {&a}, health("      all_unhealthy: reject\n"))}),
                        "127.0.0.1", p1);
    ASSERT_TRUE(apilb.wait_for_log("pool try: no backend is healthy; new clients try every backend", 3s))
        << apilb.log();
    ASSERT_TRUE(apilb.wait_for_log("pool reject: no backend is healthy; new clients are refused", 3s)) << apilb.log();
    EXPECT_EQ(via(p1), "a") << "trying is better than refusing everything";
    EXPECT_EQ(via(p2), "") << "reject closes the client";
    EXPECT_TRUE(apilb.wait_for_log("no backend of pool reject accepted client")) << apilb.log();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST_F(Health, SessionsAreClosedAfterTheGraceOrKeptWithNever) {
    temp_dir dir;
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    const auto p1 = free_port();
    const auto p2 = free_port();
    apilb_process apilb(
        dir,
        config_yaml({p1, p2},
                    {pool_yaml("grace", {&a, &b}, health("      fall: 1\n      close_sessions_after: 500ms\n")),
                     pool_yaml("never", {&a, &b}, health("      fall: 1\n      close_sessions_after: never\n"))}),
        "127.0.0.1", p1);
    ASSERT_TRUE(apilb.wait_for_log("pool never backend b (" + b.address() + "): first check passed", 3s))
        << apilb.log();
    ASSERT_TRUE(apilb.wait_for_log("pool grace backend b (" + b.address() + "): first check passed", 3s))
        << apilb.log();
    // A watch on backend a through each pool (round-robin alternates, so within a few tries).
    auto watch_on_a = [&](std::uint16_t port) {
        for (int i = 0; i < 6; ++i) {
            auto s = std::make_unique<tls_session>(*tls_);
            std::string error;
            if (s->open("127.0.0.1", port, "/watch?interval_ms=100", 5s, error) && s->backend() == "a") return s;
        }
        return std::unique_ptr<tls_session>();
    };
    auto graced = watch_on_a(p1);
    auto kept = watch_on_a(p2);
    ASSERT_TRUE(graced && kept);
    ASSERT_TRUE(a.set_readyz("fail"));
    const auto t0 = steady::now();
    ASSERT_TRUE(apilb.wait_for_log("pool grace backend a (" + a.address() + ") is unhealthy", 3s)) << apilb.log();
    const auto detected = since(t0);
    bool closed = false;
    while (!closed && since(t0) < 5s) closed = graced->ended_within(50ms);
    const auto took = since(t0);
    EXPECT_TRUE(closed) << apilb.log();
    EXPECT_GE(took - detected, 400ms) << "not before the grace";
    EXPECT_LE(took, 200ms + 300ms + 500ms + 1500ms) << "interval + timeout + grace + margin";
    EXPECT_FALSE(kept->ended_within(1500ms)) << "close_sessions_after: never keeps the session";
    EXPECT_TRUE(apilb.wait_for_log("health: pool grace backend a (" + a.address() + "): closing its 1 session(s)"))
        << apilb.log();
    kept.reset();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
    EXPECT_TRUE(apilb.wait_for_log("1 closed because their backend became unhealthy")) << apilb.log();
}

}  // namespace
}  // namespace apilb::test
