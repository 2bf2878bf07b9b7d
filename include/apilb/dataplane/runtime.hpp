// The running form of a config: resolved endpoints and the counters that
// workers update. Built once per config by the control thread and handed to
// workers as std::shared_ptr<const snapshot>; a session keeps the snapshot it
// started with.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "apilb/core/config.hpp"
#include "apilb/core/maglev.hpp"

namespace apilb {

/// Counters of one backend, shared by all workers (relaxed atomics: they are
/// read for balancing and reporting, never to order other memory). Held by
/// shared_ptr so that a later snapshot can carry them over.
struct backend_stats {
    std::atomic<std::uint32_t> active{0};
    std::atomic<std::uint64_t> sessions_total{0};
    std::atomic<std::uint64_t> connect_failures_total{0};
    std::atomic<std::uint64_t> bytes_to_backend{0};
    std::atomic<std::uint64_t> bytes_from_backend{0};
    std::atomic<std::uint64_t> closed_by_health_total{0};  ///< sessions closed because it became unhealthy
    std::atomic<std::uint64_t> passive_failures_total{0};  ///< client connects that counted against it
    std::atomic<std::uint64_t> checks_failed_total{0};     ///< active probes that failed
    /// Storm control (GCRA state): the theoretical arrival time of the next
    /// connection, ns on steady_clock; 0 = none yet.
    std::atomic<std::int64_t> pacing_tat_ns{0};
    /// The same for the moments paced connects really start (see
    /// session::wait_for_turn): late wake-ups go out at the rate too.
    std::atomic<std::int64_t> pacing_start_tat_ns{0};
    std::atomic<std::uint32_t> pacing_waiting{0};          ///< clients waiting for their turn now
    /// Connections being established now (storm_control.max_connecting).
    std::atomic<std::uint32_t> connecting{0};
    std::atomic<std::uint64_t> pacing_delayed_total{0};    ///< clients that waited for a turn
    std::atomic<std::uint64_t> pacing_refused_total{0};    ///< clients turned away: queue full or wait too long
    std::atomic<std::uint64_t> closed_by_rebalance_total{0};  ///< sessions moved off it by rebalancing
    // Admin/metrics: client connects that failed, by reason (connect_failures_total is their sum).
    std::atomic<std::uint64_t> connect_refused_total{0};
    std::atomic<std::uint64_t> connect_timeout_total{0};
    std::atomic<std::uint64_t> connect_error_total{0};
};

/// Upper bounds (seconds) of the probe duration histogram buckets; +Inf is implied.
inline constexpr std::array<double, 10> probe_duration_buckets{0.001, 0.0025, 0.005, 0.01, 0.025,
                                                               0.05,  0.1,    0.25,  0.5,  1.0};

/// What the admin endpoint shows about a backend's probes. Written and read on
/// the control thread only (health checker, admin server), so no atomics.
struct probe_record {
    bool probed = false;            ///< a check has completed
    bool passed = false;            ///< the last check's outcome
    std::string reason = "none";    ///< check_failure name of the last check ("none" = passed)
    std::string detail;             ///< the last check's describe()
    double duration_s = 0;          ///< how long the last check took
    std::int64_t last_probe_unix_ms = 0;
    std::uint64_t transitions_total = 0;  ///< healthy <-> unhealthy changes
    /// Recent changes, oldest first, at most 16: unix ms, became healthy, reason.
    struct change {
        std::int64_t unix_ms;
        bool healthy;
        std::string reason;
    };
    std::vector<change> recent_changes;
    std::array<std::uint64_t, probe_duration_buckets.size()> bucket_counts{};  ///< not cumulative
    std::uint64_t count = 0;
    double sum_s = 0;
};

/// Per listener counters, shared by all workers; carried over a reload for a
/// listener of the same name.
struct listener_stats {
    std::atomic<std::uint64_t> accepted_total{0};
    std::atomic<std::uint64_t> refused_total{0};  ///< accepted then closed at limits.max_connections
};

/// What the health checker (control thread) tells the workers about one
/// backend. Workers only read it, lock-free, when they choose a backend;
/// `suspect` is also set by a worker whose client's connect failed.
struct backend_health {
    std::atomic<bool> healthy{true};
    /// A client's connect just failed; skipped until a probe passes.
    std::atomic<bool> suspect{false};
    /// steady_clock time (ns since its epoch) it last became healthy after
    /// being unhealthy, for slow start; 0 = full weight.
    std::atomic<std::int64_t> ramp_start_ns{0};
    /// Drained at run time through the admin endpoint: no new sessions, like
    /// `drain: true` in the config. Lives as long as the backend does, so a
    /// reload keeps it.
    std::atomic<bool> admin_drain{false};
    /// A reload removed it: sessions of earlier configs that still list it
    /// choose it no more (a retry after a failed connect goes elsewhere).
    std::atomic<bool> removed{false};
    /// Control thread only.
    probe_record probes;
};

struct backend_runtime {
    const backend_config* cfg = nullptr;
    boost::asio::ip::tcp::endpoint endpoint;
    std::shared_ptr<backend_stats> stats;
    std::shared_ptr<backend_health> health;

    /// Drained, in the config or through the admin endpoint, or removed by
    /// a reload: no new sessions.
    bool drained() const noexcept {
        return cfg->drain || health->admin_drain.load(std::memory_order_relaxed) ||
               health->removed.load(std::memory_order_relaxed);
    }
    /// Healthy, not suspect and not drained: where sessions belong now
    /// (rebalancing, a Maglev key's preferred backend).
    bool takes_sessions() const noexcept {
        return health->healthy.load(std::memory_order_relaxed) &&
               !health->suspect.load(std::memory_order_relaxed) && !drained();
    }
};

struct pool_runtime {
    const pool_config* cfg = nullptr;
    /// balance: maglev only; built once per snapshot, read by every worker.
    std::shared_ptr<const maglev_table> maglev;
    std::vector<backend_runtime> backends;
};

struct listener_runtime {
    const listener_config* cfg = nullptr;
    boost::asio::ip::tcp::endpoint endpoint;
    std::size_t pool_index = 0;
    std::shared_ptr<listener_stats> stats;
};

/// Process-wide counters.
struct process_stats {
    std::atomic<std::uint32_t> active_sessions{0};
    std::atomic<std::uint64_t> accepted_total{0};
    std::atomic<std::uint64_t> refused_limit_total{0};       ///< over limits.max_connections
    std::atomic<std::uint64_t> no_backend_total{0};          ///< every connect attempt failed
    std::atomic<std::uint64_t> accept_errors_total{0};
    std::atomic<std::uint64_t> resource_errors_total{0};    ///< out of fds/memory (accept, socket, pipe)
    std::atomic<std::uint64_t> reset_no_fds_total{0};     ///< clients reset: out of descriptors past the wait
    std::atomic<std::uint64_t> reset_no_memory_total{0};  ///< clients reset: an allocation for their session failed
    std::atomic<std::uint64_t> closed_by_idle_total{0};
    std::atomic<std::uint64_t> closed_by_drain_total{0};
    std::atomic<std::uint64_t> closed_by_health_total{0};   ///< their backend became unhealthy
    std::atomic<std::uint64_t> closed_by_rebalance_total{0};  ///< moved to spread a pool's sessions
    std::atomic<std::uint64_t> closed_by_stall_total{0};  ///< a write made no progress for timeouts.write_stall
    /// Sessions that ended because one leg failed, by leg: the kernel gave
    /// up on its peer (timeout: tcp.user_timeout or keepalive) or the peer
    /// reset it (reset); the other leg was then reset by apilb.
    std::atomic<std::uint64_t> client_timeout_total{0};
    std::atomic<std::uint64_t> client_reset_total{0};
    std::atomic<std::uint64_t> backend_timeout_total{0};
    std::atomic<std::uint64_t> backend_reset_total{0};
    std::atomic<std::uint64_t> reloads_total{0};             ///< reloads applied
    std::atomic<std::uint64_t> reload_failures_total{0};     ///< reloads rejected (old config kept)
    /// Their backend was removed by a reload and timeouts.reload_drain ran
    /// out. (The session also counts itself in closed_by_drain_total.)
    std::atomic<std::uint64_t> closed_by_reload_total{0};
};

/// An immutable config with its runtime parts. Only the atomics in the stats
/// change after construction.
struct snapshot {
    std::shared_ptr<const config> cfg;
    std::vector<pool_runtime> pools;
    std::vector<listener_runtime> listeners;

    /// Resolves every address of `cfg` (numeric only, so this cannot block)
    /// and creates fresh counters, except for backends that `previous` has
    /// too (same_backend()): they share its counters and health, so a
    /// reload neither resets them nor makes them flap.
    static std::shared_ptr<const snapshot> build(std::shared_ptr<const config> cfg,
                                                 const snapshot* previous = nullptr);

    /// The backend of `previous` that is the same as backend `b` of pool `p`
    /// here, or nullptr.
    const backend_runtime* find_same(const pool_runtime& p, const backend_runtime& b) const;
};

/// "" when `snap` can serve (every pool has a healthy backend), else why
/// not. Shared by /readyz and the VRRP track file so that both agree.
std::string unready_reason(const snapshot& snap);

/// The process's open file descriptors: in constant time where the kernel
/// gives the size of /proc/self/fd (Linux 6.2+), else by listing it (about
/// 1 µs per descriptor: 17 ms of a /metrics scrape at 9 000 sessions).
std::uint64_t count_open_fds();

/// Grows the kernel's descriptor table of this process to hold descriptors
/// 0..`descriptors`-1 (rounded up by the kernel), so that accept() and
/// socket() never grow it while serving. In a process with more than one
/// thread each growth (the table doubles: 64, 128, ... 16384) waits for an
/// RCU grace period in the kernel (expand_fdtable -> synchronize_rcu), 10-90 ms
/// on a loaded machine, during which the worker that needed the descriptor
/// sleeps; a reconnect storm into a fresh process meets all of them. The table
/// never shrinks. Returns the error of the descriptor used to grow it, if any.
std::error_code reserve_fd_table(std::uint64_t descriptors);

/// The Asio endpoint for a validated address.
boost::asio::ip::tcp::endpoint to_endpoint(const socket_address& address);

}  // namespace apilb
