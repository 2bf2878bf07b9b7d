// The counters the workers update and the admin endpoint reports: per
// backend, per listener and for the process. Relaxed atomics, held by
// shared_ptr (backend, listener) so that a reload carries them over.
#pragma once

#include <atomic>
#include <cstdint>

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
    std::atomic<std::int64_t> storm_tat_ns{0};
    /// The same for the moments paced connects really start (see
    /// session::pass_gate): late wake-ups go out at the rate too.
    std::atomic<std::int64_t> storm_start_tat_ns{0};
    /// The same for the connects that really went (a late start turn takes
    /// none here and waits again): what the backend sees keeps the rate.
    std::atomic<std::int64_t> storm_departure_tat_ns{0};
    std::atomic<std::uint32_t> storm_waiting{0};  ///< clients waiting for their turn now
    /// Connections being established now (storm_control.max_connecting).
    std::atomic<std::uint32_t> connecting{0};
    std::atomic<std::uint64_t> storm_delayed_total{0};        ///< clients that waited for a turn
    std::atomic<std::uint64_t> storm_refused_total{0};        ///< clients turned away: queue full or wait too long
    std::atomic<std::uint64_t> closed_by_rebalance_total{0};  ///< sessions moved off it by rebalancing
    // Admin/metrics: client connects that failed, by reason (connect_failures_total is their sum).
    std::atomic<std::uint64_t> connect_refused_total{0};
    std::atomic<std::uint64_t> connect_timeout_total{0};
    std::atomic<std::uint64_t> connect_error_total{0};
};

/// Per listener counters, shared by all workers; carried over a reload for a
/// listener of the same name.
struct listener_stats {
    std::atomic<std::uint64_t> accepted_total{0};
    std::atomic<std::uint64_t> refused_total{0};  ///< accepted then closed at limits.max_connections
};

/// Process-wide counters.
struct process_stats {
    std::atomic<std::uint32_t> active_sessions{0};
    std::atomic<std::uint64_t> accepted_total{0};
    std::atomic<std::uint64_t> refused_limit_total{0};  ///< over limits.max_connections
    std::atomic<std::uint64_t> no_backend_total{0};     ///< every connect attempt failed
    std::atomic<std::uint64_t> accept_errors_total{0};
    std::atomic<std::uint64_t> resource_errors_total{0};  ///< out of fds/memory (accept, socket, pipe)
    std::atomic<std::uint64_t> relay_buffers_empty_total{
        0};                                               ///< relay.io: io_uring: recvs that found no provided buffer
    std::atomic<std::uint64_t> reset_no_fds_total{0};     ///< clients reset: out of descriptors past the wait
    std::atomic<std::uint64_t> reset_no_memory_total{0};  ///< clients reset: an allocation for their session failed
    std::atomic<std::uint64_t> closed_by_idle_total{0};
    std::atomic<std::uint64_t> closed_by_drain_total{0};
    std::atomic<std::uint64_t> closed_by_health_total{0};     ///< their backend became unhealthy
    std::atomic<std::uint64_t> closed_by_rebalance_total{0};  ///< moved to spread a pool's sessions
    std::atomic<std::uint64_t> closed_by_stall_total{0};      ///< a write made no progress for timeouts.write_stall
    /// Sessions that ended because one leg failed, by leg: the kernel gave
    /// up on its peer (timeout: tcp.user_timeout or keepalive) or the peer
    /// reset it (reset); the other leg was then reset by apilb.
    std::atomic<std::uint64_t> client_timeout_total{0};
    std::atomic<std::uint64_t> client_reset_total{0};
    std::atomic<std::uint64_t> backend_timeout_total{0};
    std::atomic<std::uint64_t> backend_reset_total{0};
    std::atomic<std::uint64_t> reloads_total{0};           ///< reloads applied
    std::atomic<std::uint64_t> reload_failures_total{0};   ///< reloads rejected (old config kept)
    std::atomic<std::uint64_t> upgrades_total{0};          ///< listeners handed to a new binary (SIGUSR2)
    std::atomic<std::uint64_t> upgrade_failures_total{0};  ///< upgrades rolled back: this process serves on
    /// Their backend was removed by a reload and timeouts.reload_drain ran
    /// out (close_reason::reload; not also counted as a drain).
    std::atomic<std::uint64_t> closed_by_reload_total{0};
    /// An upgrade's session handover (docs/upgrade.md): sessions this process
    /// handed to its successor; kept (bytes still in flight when the session
    /// phase ended: drained here as before); adopted (from its predecessor,
    /// or taken back after a failed handover); refused (a record it could not
    /// read or place: both sockets reset).
    std::atomic<std::uint64_t> sessions_handed_over_total{0};
    std::atomic<std::uint64_t> sessions_kept_total{0};
    std::atomic<std::uint64_t> sessions_adopted_total{0};
    std::atomic<std::uint64_t> sessions_refused_total{0};
};

}  // namespace apilb
