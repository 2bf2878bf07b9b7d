// Health of every backend, kept on the control io_context (never on a
// worker): a probe loop per backend, spread over the interval with jitter;
// passive reports from workers; the backend_health blocks workers read;
// closing the sessions of a backend that became unhealthy; one log line per
// change, with the reason.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "apilb/core/health.hpp"
#include "apilb/dataplane/snapshot.hpp"

namespace apilb {

class probe_setup;

/// One backend's health as an upgrade carries it from the old process to the
/// new one (docs/upgrade.md, "What carries over"), keyed by pool, backend
/// name and address; `probe_key` is probe_settings_key() of its pool.
struct carried_health {
    std::string pool;
    std::string backend;
    std::string address;
    std::string probe_key;
    bool settled = false;  ///< an active check had completed
    bool healthy = true;
    std::uint32_t streak = 0;  ///< results against the state (towards fall or rise)
    bool suspect = false;      ///< a client's connect failed; no probe passed since
    bool admin_drain = false;  ///< drained through the admin endpoint
    bool pending = false;      ///< discovered, not yet admitted
    /// ms since its slow-start ramp began (healthy again), -1 = full weight.
    std::int64_t ramp_ms = -1;
};

/// Control thread, except report_passive_failure(); adopt(), start() and
/// stop() check it (APILB_ASSERT_ROLE, apilb/thread_role.hpp).
class health_checker {
public:
    /// Asks every worker to close the sessions relaying to this backend.
    using close_sessions_fn = std::function<void(std::shared_ptr<const backend_health>)>;

    /// Builds the probe TLS contexts, once per pool. Throws
    /// std::runtime_error naming the pool and file when a CA, certificate or
    /// key cannot be loaded. `control` must outlive the checker.
    health_checker(boost::asio::io_context& control, std::shared_ptr<const snapshot> snap,
                   close_sessions_fn close_sessions);
    ~health_checker();
    health_checker(const health_checker&) = delete;
    health_checker& operator=(const health_checker&) = delete;

    /// For a reload, before start(): every backend that `previous` checked
    /// too (same_backend()) takes over its rise/fall state, last result and
    /// pending session close, so it does not go back to health.initial; its
    /// first probe here comes within one interval, not at once. `previous`
    /// must be stopped afterwards.
    void adopt(const health_checker& previous);

    /// Every backend's state, for an upgrade's new process. Control thread.
    std::vector<carried_health> carried() const;

    /// For the first start of an upgrade's new process, before start():
    /// every backend of `carried` that this config has too (same pool, name
    /// and address) and probes alike (same probe_settings_key) takes over
    /// that state, as adopt() does on a reload: no probe at once, so the
    /// first round does not wait for it. Others start as any start does.
    /// Returns how many were taken over.
    std::size_t seed(const std::vector<carried_health>& carried);

    /// Logs what is checked (unless `announce` is false: a reload logs its
    /// own summary) and starts the first round at once for every backend
    /// that was not adopted. `first_round_done` (optional) is called once,
    /// on the control thread, when every actively probed backend has had its
    /// first probe (at once if none is probed).
    void start(bool announce = true, std::function<void()> first_round_done = {});

    /// A worker saw a client's connect to `backend` fail and has marked it
    /// suspect. The backend is found by identity: a session that started
    /// under an earlier config reports the backend it tried, wherever this
    /// config lists it; one this config no longer has is left alone.
    /// Thread-safe: posts to the control context.
    void report_passive_failure(std::shared_ptr<const backend_health> backend, std::string what);

    /// Ends every probe loop and timer. The control context must then run
    /// until the loops have finished (they do so at once) before the checker
    /// is destroyed.
    void stop();

    /// Probe loops still running (0 after stop() once they have unwound).
    std::size_t running() const noexcept { return running_; }

private:
    struct target;

    boost::asio::awaitable<void> probe_loop(target& t);
    void on_passive_failure(target& t, const std::string& what);
    void apply(target& t, const check_result& result);
    void on_change(target& t, const health_change& change, const check_result& result);
    void schedule_close(target& t, std::chrono::steady_clock::time_point due);
    void close_sessions(target& t);
    std::size_t healthy_in_pool(std::size_t pool) const;
    double random_unit();

    boost::asio::io_context& control_;
    std::shared_ptr<const snapshot> snap_;
    close_sessions_fn close_sessions_;
    std::vector<std::unique_ptr<probe_setup>> setups_;  ///< one per pool
    std::vector<std::unique_ptr<target>> targets_;      ///< every backend of every pool
    std::vector<std::vector<target*>> by_pool_;
    std::minstd_rand rng_;
    bool stopping_ = false;
    std::size_t running_ = 0;
    std::size_t first_round_left_ = 0;  ///< first probes still to finish
    std::function<void()> first_round_done_;
};

}  // namespace apilb
