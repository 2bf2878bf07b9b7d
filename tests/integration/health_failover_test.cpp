// End to end: three stand-in apiservers behind apilb, many long-lived watches
// through it. One backend is killed (SIGKILL), later another is frozen
// (SIGSTOP: it keeps accepting TCP but answers nothing). Every client on the
// lost backend must be back on a healthy one within fall x interval +
// timeout + grace (plus a margin), new clients must be served meanwhile, and
// each backend must get traffic again once it recovers.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>

#include "standin.hpp"

namespace apilb::test {
namespace {

using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds interval{300};
constexpr milliseconds probe_timeout{200};
constexpr int fall = 2;
constexpr milliseconds grace{1000};
/// Scheduling slack on a shared, possibly sanitizer-slowed machine.
constexpr milliseconds margin{2000};
constexpr milliseconds bound = fall * interval + probe_timeout + grace + margin;

milliseconds elapsed_between(steady::time_point t0, steady::time_point t) {
    return std::chrono::duration_cast<milliseconds>(t - t0);
}

/// A client that keeps one watch open through apilb and reconnects whenever
/// it ends, recording every session and every failed attempt.
class watcher {
public:
    struct session {
        std::string backend;
        steady::time_point opened;
        steady::time_point closed{};  ///< epoch while open
    };

    watcher(const tls_client_context& tls, std::uint16_t port) : tls_(tls), port_(port) {
        thread_ = std::thread([this] { run(); });
    }
    ~watcher() {
        stop_ = true;
        thread_.join();
    }

    /// The backend of the session open now, or "".
    std::string current() const {
        std::lock_guard lock(mu_);
        return !sessions_.empty() && sessions_.back().closed == steady::time_point{} ? sessions_.back().backend : "";
    }
    std::vector<session> sessions() const {
        std::lock_guard lock(mu_);
        return sessions_;
    }
    std::vector<std::string> failures() const {
        std::lock_guard lock(mu_);
        return failures_;
    }

private:
    void run() {
        while (!stop_) {
            tls_session s(tls_);
            std::string error;
            // Long enough that a connect which lands on a frozen backend is
            // ended by apilb (grace), not by this client giving up.
            if (!s.open("127.0.0.1", port_, "/watch?interval_ms=200", 8s, error) || s.status() != 200) {
                std::lock_guard lock(mu_);
                failures_.push_back(error.empty() ? "status " + std::to_string(s.status()) : error);
                std::this_thread::sleep_for(50ms);
                continue;
            }
            {
                std::lock_guard lock(mu_);
                sessions_.push_back({s.backend(), steady::now(), {}});
            }
            while (!stop_ && !s.ended_within(25ms)) {}
            std::lock_guard lock(mu_);
            sessions_.back().closed = steady::now();
        }
    }

    const tls_client_context& tls_;
    std::uint16_t port_;
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    std::vector<session> sessions_;
    std::vector<std::string> failures_;
    std::thread thread_;
};

/// New short requests at a steady rate, counting what fails.
class steady_clients {
public:
    steady_clients(const tls_client_context& tls, std::uint16_t port) : tls_(tls), port_(port) {
        thread_ = std::thread([this] {
            while (!stop_) {
                tls_session s(tls_);
                std::string error;
                const auto started = steady::now();
                const bool ok = s.open("127.0.0.1", port_, "/version", 5s, error) && s.status() == 200;
                {
                    std::lock_guard lock(mu_);
                    ++attempts_;
                    if (!ok)
                        failures_.push_back({started, error});
                    else
                        ++by_backend_[s.backend()];
                }
                std::this_thread::sleep_for(20ms);
            }
        });
    }
    ~steady_clients() { stop(); }
    void stop() {
        if (!stop_.exchange(true)) thread_.join();
    }
    int attempts() const {
        std::lock_guard lock(mu_);
        return attempts_;
    }
    /// The errors of the requests that failed and had started at `t` or later.
    std::vector<std::string> failures(steady::time_point t = {}) const {
        std::lock_guard lock(mu_);
        std::vector<std::string> v;
        for (const auto& [started, error] : failures_) {
            if (started >= t) v.push_back(error);
        }
        return v;
    }

private:
    const tls_client_context& tls_;
    std::uint16_t port_;
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    int attempts_ = 0;
    std::vector<std::pair<steady::time_point, std::string>> failures_;  ///< when each started, and why
    std::map<std::string, int> by_backend_;
    std::thread thread_;
};

/// How long the clients on `victim` at `t0` took to be closed, and to have a
/// new session on another backend. Waits (bounded) until all have moved.
struct move_times {
    std::size_t clients = 0;
    std::size_t moved = 0;
    milliseconds last_closed{0};
    milliseconds last_moved{0};
};

move_times wait_until_moved(const std::vector<std::unique_ptr<watcher>>& watchers,
                            const std::vector<std::size_t>& affected, const std::string& victim, steady::time_point t0,
                            milliseconds limit) {
    move_times r;
    r.clients = affected.size();
    while (steady::now() - t0 < limit) {
        r = move_times{.clients = affected.size()};
        for (std::size_t i : affected) {
            const auto sessions = watchers[i]->sessions();
            steady::time_point closed{};
            for (const auto& s : sessions) {
                if (s.backend == victim && s.opened < t0 && s.closed != steady::time_point{}) closed = s.closed;
            }
            for (const auto& s : sessions) {
                if (s.opened > t0 && s.backend != victim && closed != steady::time_point{}) {
                    ++r.moved;
                    r.last_closed = std::max(r.last_closed, elapsed_between(t0, closed));
                    r.last_moved = std::max(r.last_moved, elapsed_between(t0, s.opened));
                    break;
                }
            }
        }
        if (r.moved == r.clients) break;
        std::this_thread::sleep_for(20ms);
    }
    return r;
}

std::vector<std::size_t> clients_on(const std::vector<std::unique_ptr<watcher>>& watchers, const std::string& b) {
    std::vector<std::size_t> on;
    for (std::size_t i = 0; i < watchers.size(); ++i) {
        if (watchers[i]->current() == b) on.push_back(i);
    }
    return on;
}

/// True once a new request through apilb is answered by `backend`.
bool gets_traffic_again(const tls_client_context& tls, std::uint16_t port, const std::string& backend) {
    const auto deadline = steady::now() + 5s;
    while (steady::now() < deadline) {
        tls_session s(tls);
        std::string error;
        if (s.open("127.0.0.1", port, "/version", 3s, error) && s.backend() == backend) return true;
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

TEST(HealthFailover, ClientsLeaveADeadOrFrozenApiserverInSecondsAndComeBackAfterItRecovers) {
    temp_dir dir;
    const std::string certs = make_certs(dir);
    tls_client_context tls(certs + "/ca.crt");
    std::vector<std::unique_ptr<standin_process>> backends;
    std::string backend_yaml;
    for (int i = 0; i < 3; ++i) {
        const std::string name = fmt::format("cp-{}", i + 1);
        backends.push_back(std::make_unique<standin_process>(dir, certs, fmt::format("127.0.0.{}", i + 2), name));
        backend_yaml += fmt::format("      - {{name: {}, address: \"{}\"}}\n", name, backends.back()->address());
    }
    const auto port = free_port();
    apilb_process apilb(
        dir,
        fmt::format(R"(workers: 2
listeners:
  - {{name: api, address: "127.0.0.1:{}", pool: cp}}
pools:
  - name: cp
    balance: least-connections
    backends:
{}    health:
      interval: {}ms
      timeout: {}ms
      rise: 2
      fall: {}
      close_sessions_after: {}ms
      slow_start: 1s
      tls: {{ca_file: {}/ca.crt}}
log: {{level: debug}}
)",
                    port, backend_yaml, interval.count(), probe_timeout.count(), fall, grace.count(), certs),
        "127.0.0.1", port);
    // Every backend healthy: at its first check, or (when a loaded machine,
    // or TSan, made the first TLS handshake miss its 200 ms) after rise more.
    for (const auto& b : backends) {
        const std::string who = "backend " + b->name() + " (" + b->address() + ")";
        const auto healthy_deadline = steady::now() + 10s;
        auto healthy = [&] {
            const std::string log = apilb.log();
            return log.find(who + ": first check passed") != std::string::npos ||
                   log.find(who + " is healthy again") != std::string::npos;
        };
        while (!healthy() && steady::now() < healthy_deadline) std::this_thread::sleep_for(20ms);
        ASSERT_TRUE(healthy()) << apilb.log();
    }

    constexpr int clients = 24;
    std::vector<std::unique_ptr<watcher>> watchers;
    for (int i = 0; i < clients; ++i) watchers.push_back(std::make_unique<watcher>(tls, port));
    const auto ready_deadline = steady::now() + 15s;
    auto all_open = [&] {
        return std::all_of(watchers.begin(), watchers.end(), [](const auto& w) { return !w->current().empty(); });
    };
    while (!all_open() && steady::now() < ready_deadline) std::this_thread::sleep_for(20ms);
    ASSERT_TRUE(all_open()) << apilb.log();
    for (const auto& b : backends) EXPECT_GE(clients_on(watchers, b->name()).size(), 4u) << b->name();

    // ---- SIGKILL: the kernel resets its connections and refuses new ones.
    standin_process& dead = *backends[1];
    auto steady_load = std::make_unique<steady_clients>(tls, port);
    std::this_thread::sleep_for(300ms);
    const auto on_dead = clients_on(watchers, dead.name());
    const auto t_kill = steady::now();
    dead.kill();
    // kill() returns once the process is gone, its sockets closed: a request
    // under way on it at that moment is lost (no proxy can replay a TCP
    // stream), and on a loaded machine one often is; a request started from
    // here on must find a live backend.
    const auto t_dead = steady::now();
    const move_times killed = wait_until_moved(watchers, on_dead, dead.name(), t_kill, 10s);
    std::this_thread::sleep_for(1s);  // new clients keep coming while it is detected
    steady_load->stop();
    std::size_t watcher_failures = 0;
    std::string watcher_errors;
    for (const auto& w : watchers) {
        for (const auto& f : w->failures()) {
            ++watcher_failures;
            watcher_errors += f + "; ";
        }
    }
    const auto kill_failures = steady_load->failures(t_dead);
    const auto in_flight = steady_load->failures().size() - kill_failures.size();
    EXPECT_EQ(killed.moved, killed.clients) << apilb.log();
    EXPECT_LE(killed.last_closed, bound);
    EXPECT_LE(killed.last_moved, bound);
    EXPECT_EQ(kill_failures.size(), 0u) << (kill_failures.empty() ? "" : kill_failures.front());
    EXPECT_EQ(watcher_failures, 0u) << "reconnecting watches must not fail either: " << watcher_errors << "\n"
                                    << apilb.log();
    std::cout << fmt::format(
        "[ MEASURE ] SIGKILL of {}: {} watch(es) on it; last closed after {}ms, last back on a healthy backend "
        "after {}ms (bound {}ms); failed client connects: {} of {} new clients + {} reconnecting watches "
        "(and {} request(s) cut by the kill itself)\n",
        dead.name(), killed.clients, killed.last_closed.count(), killed.last_moved.count(), bound.count(),
        kill_failures.size() + watcher_failures, steady_load->attempts(), killed.clients, in_flight);
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("backend {} ({}) is unhealthy", dead.name(), dead.address())))
        << apilb.log();

    // It comes back on the same address: probes find it, and it gets new clients again.
    dead.restart();
    ASSERT_TRUE(apilb.wait_for_log(fmt::format("backend {} ({}) is healthy again", dead.name(), dead.address()), 5s))
        << apilb.log();
    EXPECT_TRUE(gets_traffic_again(tls, port, dead.name())) << apilb.log();

    // ---- SIGSTOP: a blackhole. TCP still connects; nothing answers.
    standin_process& frozen = *backends[2];
    steady_load = std::make_unique<steady_clients>(tls, port);
    std::this_thread::sleep_for(300ms);
    const auto on_frozen = clients_on(watchers, frozen.name());
    ASSERT_FALSE(on_frozen.empty());
    const auto t_stop = steady::now();
    frozen.freeze();
    const move_times stopped = wait_until_moved(watchers, on_frozen, frozen.name(), t_stop, 10s);
    std::this_thread::sleep_for(500ms);
    steady_load->stop();
    EXPECT_EQ(stopped.moved, stopped.clients) << apilb.log();
    EXPECT_LE(stopped.last_closed, bound);
    EXPECT_LE(stopped.last_moved, bound);
    std::cout << fmt::format(
        "[ MEASURE ] SIGSTOP of {}: {} watch(es) on it; last closed after {}ms, last back on a healthy backend "
        "after {}ms (bound {}ms); new clients that landed on it before it was found unhealthy and were closed: "
        "{} of {}\n",
        frozen.name(), stopped.clients, stopped.last_closed.count(), stopped.last_moved.count(), bound.count(),
        steady_load->failures().size(), steady_load->attempts());
    EXPECT_TRUE(
        apilb.wait_for_log(fmt::format("backend {} ({}) is unhealthy after 2 consecutive failure(s): "
                                       "tls_timeout",
                                       frozen.name(), frozen.address())))
        << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("backend {} ({}): closing its", frozen.name(), frozen.address())))
        << apilb.log();

    frozen.thaw();
    ASSERT_TRUE(
        apilb.wait_for_log(fmt::format("backend {} ({}) is healthy again", frozen.name(), frozen.address()), 5s))
        << apilb.log();
    EXPECT_TRUE(gets_traffic_again(tls, port, frozen.name())) << apilb.log();

    watchers.clear();
    steady_load.reset();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

}  // namespace
}  // namespace apilb::test
