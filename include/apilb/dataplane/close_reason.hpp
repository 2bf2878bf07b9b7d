// Why a session ended, as one value set once (HAProxy's termination codes,
// Envoy's failure reasons), and what that reason decides: the counter it
// goes to, the name in its log line, and whether the close is a FIN or a
// reset. The session's finalize step is the one place that acts on it.
#pragma once

#include <atomic>
#include <cstdint>

namespace apilb {

struct process_stats;
struct backend_stats;

/// Why a session ended. Peers end it, or it never reaches a backend, or
/// apilb ends it (session_entry::abort takes only the last group).
enum class close_reason : std::uint8_t {
    none,  ///< still open
    // The peers ended it.
    completed,        ///< both directions ended with a FIN (a half-close passed on, then the other)
    client_reset,     ///< the client reset its leg, or a write to it failed
    client_timeout,   ///< the kernel gave up on the client (tcp.user_timeout or keepalive)
    backend_reset,    ///< the backend reset its leg, or a write to it failed
    backend_timeout,  ///< the kernel gave up on the backend
    // It never reached a backend.
    no_backend,    ///< no backend was available, or every connect attempt failed
    no_resources,  ///< this process was out of descriptors or memory for the backend socket
    no_memory,     ///< an allocation for the session failed while it ran
    // apilb ended it (session_entry::abort).
    idle,       ///< timeouts.idle without a byte either way
    health,     ///< its backend became unhealthy (health.close_sessions_after)
    reload,     ///< a reload removed its backend and timeouts.reload_drain ran out
    rebalance,  ///< moved to spread its pool
    drain,      ///< shutdown: timeouts.drain ran out, or a second signal
    stalled,    ///< a write made no progress for timeouts.write_stall (a peer that does not read)
    // Not an end at all: an upgrade took its sockets to the new process,
    // which relays on (hand_over_session; no close, neither FIN nor RST).
    handed_over,
};

/// True for the reasons apilb itself starts (session_entry::abort's).
constexpr bool closed_by_apilb(close_reason r) noexcept {
    return r >= close_reason::idle && r != close_reason::handed_over;
}

/// The reason's name in logs ("idle-timeout", "client-reset", ...).
const char* to_string(close_reason r) noexcept;

/// How the client's socket is closed.
enum class close_how : std::uint8_t {
    fin,    ///< close(): whatever is queued, then a FIN
    reset,  ///< SO_LINGER 0: a reset, never mistaken for a complete stream
};

/// The close a reason calls for. Every close apilb starts on a live session
/// is a reset: a FIN would tell a client that a response cut at 29.9 of 30 MB
/// was whole. That includes a session no backend took: its client has been
/// sent nothing, and a FIN would read as a server that answered with nothing
/// (an empty reply) where a reset says plainly that it was not served. A
/// close a peer started is passed on as the peer did it: both FINs as a FIN,
/// a failed leg as a reset.
close_how close_action(close_reason r) noexcept;

/// The process-wide counter a reason adds one to; nullptr for those counted
/// nowhere (completed) or elsewhere (no_resources: resource_errors_total, by
/// whoever ran out).
std::atomic<std::uint64_t>* process_counter(process_stats& stats, close_reason r) noexcept;

/// The per-backend counter a reason also adds one to (health, rebalance); nullptr if none.
std::atomic<std::uint64_t>* backend_counter(backend_stats& stats, close_reason r) noexcept;

}  // namespace apilb
