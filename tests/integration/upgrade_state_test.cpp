// What an upgrade carries besides sockets (docs/upgrade.md, "What carries
// over"): the old process's health view, so that the new one neither sends
// clients to a backend the old one had found down nor waits for a probe to
// serve one it had found up; its counters, so that no series goes back; and
// how an upgrade and a reload meet. The real binary, stand-in apiservers
// (HTTPS, switchable /readyz) on loopback.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

#include "harness.hpp"
#include "standin.hpp"
#include "upgrade_support.hpp"

namespace apilb::test {
namespace {

/// Every counter-like sample of a /metrics text ("name{labels}" -> value):
/// `_total`, and the histograms' `_bucket`, `_count`, `_sum`.
std::map<std::string, double> counters_of(const std::string& text) {
    std::map<std::string, double> out;
    std::istringstream in(text);
    std::string line;
    static const std::regex sample(R"(^(apilb_[a-z_]+(_total|_bucket|_count|_sum)(\{[^}]*\})?) (\S+)$)");
    while (std::getline(in, line)) {
        std::smatch m;
        if (std::regex_match(line, m, sample)) out[m[1]] = std::stod(m[4]);
    }
    return out;
}

class UpgradeState : public ::testing::Test {
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

    temp_dir dir;
    std::uint16_t port = free_port();
    std::uint16_t admin = free_port();

    UpgradeState() { dir.write("token", "s3cret-token\n"); }

    /// One pool "p" over `backends`, HTTPS probes every 300 ms with a 1.5 s
    /// timeout (a hanging /readyz takes that long to judge), rise 2, fall 1;
    /// `more` adds health lines; the admin endpoint with a token.
    std::string config(const std::vector<const standin_process*>& backends, const std::string& more = {}) const {
        std::string s = fmt::format(
            "workers: 2\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
            "pools:\n  - name: p\n    balance: round-robin\n    backends:\n",
            port);
        for (const auto* b : backends)
            s += fmt::format("      - {{name: {}, address: \"{}\"}}\n", b->name(), b->address());
        s += fmt::format(
            "    health:\n      path: /readyz\n      interval: 300ms\n      timeout: 1500ms\n      rise: 2\n"
            "      fall: 1\n      slow_start: 0\n      tls: {{ca_file: {}/ca.crt}}\n{}",
            certs_, more);
        return s + fmt::format(
                       "timeouts: {{drain: 3s}}\nadmin:\n  address: \"127.0.0.1:{}\"\n  token_file: \"{}\"\n"
                       "log: {{level: debug}}\n",
                       admin, dir.file("token"));
    }

    /// GET /version through apilb: the answering stand-in's name, "" on failure.
    std::string via() const {
        tls_session s(*tls_);
        std::string error;
        if (!s.open("127.0.0.1", port, "/version", 5s, error)) return "";
        return s.backend();
    }

    /// `curl -X POST` with the token to the admin endpoint's `path`: body, then the status on the last line.
    command_result post(const std::string& path) const {
        return run_command(
            {"/usr/bin/curl", "-sS", "--max-time", "40", "-X", "POST", "-H", "Authorization: Bearer s3cret-token", "-w",
             "\n%{http_code}", fmt::format("http://127.0.0.1:{}{}", admin, path)},
            50s);
    }

    static inline temp_dir* dir_ = nullptr;
    static inline std::string certs_;
    static inline tls_client_context* tls_ = nullptr;
};

/// The status post() printed last.
std::string status_of(const command_result& r) {
    const auto nl = r.output.rfind('\n');
    return nl == std::string::npos ? r.output : r.output.substr(nl + 1);
}

/// Requests through apilb on its own thread, one every `gap`, until
/// stopped (at most `limit`): which backend answered each, "" for a failure.
class request_loop {
public:
    request_loop(std::function<std::string()> one, int limit, std::chrono::milliseconds gap)
        : thread_([this, one = std::move(one), limit, gap] {
              for (int i = 0; i < limit && !stop_; ++i) {
                  const std::string who = one();
                  {
                      std::lock_guard lock(mu_);
                      answers_.push_back(who);
                  }
                  std::this_thread::sleep_for(gap);
              }
          }) {}
    ~request_loop() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    std::size_t count(const std::string& who) {
        std::lock_guard lock(mu_);
        return static_cast<std::size_t>(std::count(answers_.begin(), answers_.end(), who));
    }
    std::size_t size() {
        std::lock_guard lock(mu_);
        return answers_.size();
    }

    /// SIGUSR2 to `old` once 10 requests went, then the new process alone
    /// until `after` more requests went (the old one exited 0); stops. The
    /// new process's pid, 0 if there was none (the test failed then).
    pid_t across_upgrade(apilb_process& old, std::size_t after) {
        if (!wait_until([&] { return size() >= 10; }, 20s)) return 0;
        old.proc().signal(SIGUSR2);
        if (!wait_until([&] { return handed_to(old.log()) != 0; }, 60s)) return 0;
        EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
        const std::size_t at_exit = size();
        EXPECT_TRUE(wait_until([&] { return size() >= at_exit + after; }, 30s));
        stop();
        return handed_to(old.log());
    }

private:
    std::mutex mu_;
    std::vector<std::string> answers_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

TEST_F(UpgradeState, ABackendDownBeforeTheUpgradeGetsNoClientUntilItRecovers) {
    standin_process a(dir, certs_, "127.0.0.2", "a");
    // b answers TLS and /version, but its /readyz never answers: down by
    // its probes, yet a client sent to it would be served (and seen here).
    standin_process b(dir, certs_, "127.0.0.3", "b", {"--readyz", "hang"});
    apilb_process old(dir, config({&a, &b}), "127.0.0.1", port);
    ASSERT_TRUE(old.wait_for_log("backend b (" + b.address() + ") is unhealthy", 30s)) << old.log();
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    const double sessions_before = metric(admin, R"(apilb_backend_sessions_total{pool="p",backend="b"})");

    // Clients all through the upgrade. Without the old view, the new process
    // counts b as health.initial (healthy) until its own first probe of b
    // times out 1.5 s later, and sends every other client there.
    // 60 requests (about 2 s) of the new process alone: more than b's probe timeout.
    request_loop clients([this] { return via(); }, 400, 10ms);
    const pid_t new_pid = clients.across_upgrade(old, 60);
    end_at_exit guard{{new_pid}};
    ASSERT_NE(new_pid, 0) << old.log();
    EXPECT_EQ(clients.count(""), 0u) << "requests that failed through the upgrade\n" << old.log();
    EXPECT_EQ(clients.count("b"), 0u) << "clients sent to the backend the old process had found down\n" << old.log();
    EXPECT_GT(clients.count("a"), 60u);
    EXPECT_NE(
        old.log().find("health: pool p backend b (" + b.address() + ") is unhealthy as the old process judged it"),
        std::string::npos)
        << old.log();
    EXPECT_EQ(metric(admin, R"(apilb_backend_healthy{pool="p",backend="b"})"), 0);
    EXPECT_EQ(metric(admin, R"(apilb_backend_sessions_total{pool="p",backend="b"})"), sessions_before);

    // It comes back on the new process's own rise (2) passing probes.
    ASSERT_TRUE(b.set_readyz("ok"));
    EXPECT_TRUE(old.wait_for_log("backend b (" + b.address() + ") is healthy again after 2 passed check(s)", 30s))
        << old.log();
    EXPECT_TRUE(wait_until([&] { return via() == "b"; }, 20s, 50ms));
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

TEST_F(UpgradeState, ABackendUpBeforeTheUpgradeServesWithoutAGap) {
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    // Until its first probe a backend counts as unhealthy, and a pool with
    // none healthy refuses clients: a new process that started blank would
    // refuse every client until its first round.
    apilb_process old(dir, config({&a, &b}, "      initial: unhealthy\n      all_unhealthy: reject\n"), "127.0.0.1",
                      port);
    ASSERT_TRUE(old.wait_for_log("backend b (" + b.address() + ") is healthy (first check passed)", 30s)) << old.log();
    ASSERT_TRUE(old.wait_for_log("backend a (" + a.address() + ") is healthy (first check passed)", 30s)) << old.log();
    request_loop clients([this] { return via(); }, 400, 5ms);
    const pid_t new_pid = clients.across_upgrade(old, 40);
    end_at_exit guard{{new_pid}};
    ASSERT_NE(new_pid, 0) << old.log();
    EXPECT_EQ(clients.count(""), 0u) << "requests refused or failed through the upgrade\n" << old.log();
    EXPECT_GT(clients.count("a"), 0u);
    EXPECT_GT(clients.count("b"), 0u);
    for (const auto* s : {&a, &b}) {
        EXPECT_NE(
            old.log().find("backend " + s->name() + " (" + s->address() + ") is healthy as the old process judged it"),
            std::string::npos)
            << old.log();
    }
    // Nothing to wait for: the new process was ready without a probe round.
    EXPECT_NE(old.log().find("took over the old process's view of 2 of 2 backend(s)"), std::string::npos) << old.log();
    end_by_pid(new_pid);
}

TEST_F(UpgradeState, CountersNeverGoBackAcrossTheUpgrade) {
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    apilb_process old(dir, config({&a, &b}), "127.0.0.1", port);
    ASSERT_TRUE(old.wait_for_log("backend b (" + b.address() + "): first check passed", 30s)) << old.log();
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    for (int i = 0; i < 20; ++i) EXPECT_NE(via(), "");
    // A reload, so that a result-labelled process counter is not 0 either.
    EXPECT_EQ(status_of(post("/api/v1/reload")), "200");
    // Byte counters move once a second on the workers.
    ASSERT_TRUE(wait_until(
        [&] { return metric(admin, R"(apilb_backend_received_bytes_total{pool="p",backend="a"})") > 0; }, 10s));
    const auto before = counters_of(http_exchange(admin, "GET", "/metrics").body);
    ASSERT_GT(before.at(R"(apilb_backend_sessions_total{pool="p",backend="a"})"), 0);
    ASSERT_GT(before.at(R"(apilb_reloads_total{result="success"})"), 0);

    old.proc().signal(SIGUSR2);
    ASSERT_TRUE(wait_until([&] { return handed_to(old.log()) != 0; }, 60s)) << old.log();
    const pid_t new_pid = handed_to(old.log());
    end_at_exit guard{{new_pid}};
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    ASSERT_TRUE(old.wait_for_log("counters go on from the old process's final values", 10s)) << old.log();
    const auto after = counters_of(http_exchange(admin, "GET", "/metrics").body);
    std::size_t compared = 0;
    for (const auto& [series, value] : before) {
        // This process's own CPU time, like any process_* metric, starts
        // with the process (docs/upgrade.md says what is not carried).
        if (series.starts_with("apilb_process_cpu_seconds_total")) continue;
        const auto it = after.find(series);
        if (it == after.end()) continue;
        ++compared;
        EXPECT_GE(it->second, value) << series << " went back across the upgrade";
    }
    EXPECT_GT(compared, 40u);
    EXPECT_EQ(after.at(R"(apilb_upgrades_total{result="success"})"),
              before.at(R"(apilb_upgrades_total{result="success"})") + 1);
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

TEST_F(UpgradeState, AnUpgradeAskedForDuringAReloadWaitsForItsApply) {
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    standin_process c(dir, certs_, "127.0.0.4", "c");
    // For this apilb (and its successor) only: a reload's workers take the
    // new snapshot 3 s after its commit.
    scoped_env env("APILB_RELOAD_TEST_APPLY_DELAY_MS", "3000");
    apilb_process old(dir, config({&a, &b}), "127.0.0.1", port);
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    // The pool gains c; the reload answers once committed, the apply goes on.
    dir.write("apilb.yaml", config({&a, &b, &c}));
    const auto reload = post("/api/v1/reload");
    ASSERT_EQ(status_of(reload), "200") << reload.output;
    const auto up = post("/api/v1/upgrade?wait=1");
    EXPECT_EQ(status_of(up), "200") << up.output << "\n" << old.log();
    EXPECT_NE(old.log().find("upgrade: waits for the reload being applied to end"), std::string::npos) << old.log();
    const pid_t new_pid = handed_to(old.log());
    end_at_exit guard{{new_pid}};
    ASSERT_NE(new_pid, 0) << old.log();
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    // The new process serves the pool as reloaded.
    EXPECT_TRUE(wait_until([&] { return metric(admin, R"(apilb_backend_healthy{pool="p",backend="c"})") == 1; }, 20s))
        << old.log();
    end_by_pid(new_pid);
}

TEST_F(UpgradeState, AnUpgradeWaitsForAReloadsApplyTenSecondsAtMost) {
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    scoped_env env("APILB_RELOAD_TEST_APPLY_DELAY_MS", "12000");
    apilb_process old(dir, config({&a, &b}), "127.0.0.1", port);
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    ASSERT_EQ(status_of(post("/api/v1/reload")), "200");
    const auto t0 = std::chrono::steady_clock::now();
    const auto up = post("/api/v1/upgrade?wait=1");
    EXPECT_EQ(status_of(up), "409") << up.output;
    EXPECT_NE(up.output.find("a reload was still being applied after 10s"), std::string::npos) << up.output;
    EXPECT_GE(ms_since(t0), 9000) << "refused before its 10 s";
    EXPECT_EQ(handed_to(old.log()), 0) << old.log();
    // The apply ends; an upgrade asked for then goes ahead at once.
    ASSERT_TRUE(old.wait_for_log("every worker serves the new configuration", 20s)) << old.log();
    EXPECT_EQ(status_of(post("/api/v1/upgrade?wait=1")), "200") << old.log();
    end_at_exit guard{{handed_to(old.log())}};
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
}

TEST_F(UpgradeState, AReloadAskedForDuringAnUpgradeIsRefusedWithTheReason) {
    standin_process a(dir, certs_, "127.0.0.2", "a");
    standin_process b(dir, certs_, "127.0.0.3", "b");
    // The "new binary" never speaks: the upgrade runs until its deadline.
    scoped_env binary("APILB_UPGRADE_BINARY", hanging_binary(dir).c_str());
    scoped_env deadline("APILB_UPGRADE_DEADLINE_MS", "3000");
    apilb_process old(dir, config({&a, &b}), "127.0.0.1", port);
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    ASSERT_EQ(status_of(post("/api/v1/upgrade")), "202");
    const auto refused = post("/api/v1/reload");
    EXPECT_EQ(status_of(refused), "422") << refused.output;
    EXPECT_NE(refused.output.find("an upgrade is in progress: no reload (the new process reads the file as it starts"),
              std::string::npos)
        << refused.output;
    old.proc().signal(SIGHUP);
    EXPECT_TRUE(old.wait_for_log("SIGHUP during an upgrade: not reloading", 10s)) << old.log();
    // Once it is over (rolled back at the deadline), reloads work again.
    ASSERT_TRUE(old.wait_for_log("upgrade failed:", 30s)) << old.log();
    EXPECT_EQ(status_of(post("/api/v1/reload")), "200");
    EXPECT_TRUE(old.proc().running());
}

}  // namespace
}  // namespace apilb::test
