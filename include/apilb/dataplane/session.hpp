// One proxied connection: choose a backend, connect (with retries on the next
// backend), then relay both directions until both have ended. This header
// declares what the rest of the worker sees of a session; the session class
// itself is private to the dataplane (session_impl.hpp, session.cpp,
// session_handover.cpp).
#pragma once

#include <boost/intrusive/list.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "apilb/dataplane/close_reason.hpp"
#include "apilb/dataplane/session_record.hpp"

namespace apilb {

class gate_wait;
class poll_socket;
class relay;
struct backend_health;
struct pool_runtime;
struct worker_context;

/// A session as its worker sees it: enough to close it from outside (drain).
/// Lives in the session; unlinks itself when destroyed.
struct session_entry : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
    poll_socket* client = nullptr;
    poll_socket* upstream = nullptr;
    /// The backend relayed to, once connected: the health checker closes the
    /// sessions of a backend that became unhealthy by this identity.
    const backend_health* backend = nullptr;
    /// Stamped by the relay whenever bytes move; read by the worker's idle sweep.
    std::chrono::steady_clock::time_point last_activity = std::chrono::steady_clock::now();
    /// The session's relay: the worker's sweep asks it how long a write has
    /// waited, an upgrade quiesces it.
    relay* pump = nullptr;
    bool relaying = false;  ///< connected: only now can the session be idle
    /// The backend leg has its dead-peer detection (set_backend_keepalive);
    /// false again when the session moves to another backend's new socket.
    bool keepalive_set = false;
    /// Set once, by abort(): the first reason stays.
    close_reason closed_by = close_reason::none;
    /// The pool (of the session's own snapshot) it was chosen from, and for
    /// Maglev pools the client's key: rebalancing finds the pool by name in
    /// the config in force and the backend by `backend`, never by position.
    const pool_runtime* pool = nullptr;
    std::uint64_t key_hash = 0;
    /// Adds the bytes the session moved since the last call to its backend's
    /// counters; `owner` is the session. The worker calls it about once a
    /// second while the session relays, the session once more when it ends.
    void (*publish_bytes)(void* owner) = nullptr;
    void* owner = nullptr;
    /// An upgrade quiesced it (worker::hand_over_sessions): handed over
    /// once quiet, or reading again at this time at the latest; max() if not.
    std::chrono::steady_clock::time_point quiesce_until = std::chrono::steady_clock::time_point::max();
    /// The session phase (its id) that kept it: it could not flush in time,
    /// and is not quiesced again in that phase.
    std::uint64_t kept_in_phase = 0;
    /// The session's wait at storm control's gate: abort() ends it.
    gate_wait* storm_wait = nullptr;

    /// Closed by apilb: do not retry, do not log as a failure.
    bool aborted() const noexcept { return closed_by != close_reason::none; }
    /// The one way apilb ends a session itself: records `why` (one of the
    /// reasons closed_by_apilb() names; the first reason set stays) and
    /// closes both sockets with RST, never FIN, so that neither peer can
    /// take a stream cut short for a complete one. The session's pending
    /// operations complete with operation_aborted and it ends, counted and
    /// logged by that reason. Worker thread only.
    void abort(close_reason why);
};

using session_list = boost::intrusive::list<session_entry, boost::intrusive::constant_time_size<false>>;

/// Serves one accepted client (`fd`, non-blocking, owned from here on) on
/// the calling worker: choose a backend, connect (with retries on the next
/// backend), relay both directions until both have ended. The caller has
/// already counted it in stats.active_sessions; the session un-counts it
/// when it ends.
void start_session(worker_context& ctx, int fd, std::size_t listener_index);

/// An upgrade takes `s` if its relay is quiet (no byte inside apilb, so the
/// kernel's socket buffers hold everything; a quiesced relay too, once it
/// has written out what it read): fills `out` with its record and
/// both descriptors, out of the epoll set and the caller's to send and
/// close, and ends the session here without a FIN or RST
/// (close_reason::handed_over). False, and nothing changed, for a session
/// not relaying or with bytes in flight. Worker thread only.
bool hand_over_session(session_entry& s, handed_session& out);

/// The worker's sweep: gives the backend leg of `s`, a relaying session
/// that started `min_age` ago or earlier, its dead-peer detection
/// (apply_keepalive_tcp_options with the session's own config, which a
/// reload does not change), once; a younger one waits for a later sweep.
/// A short connection ends before any of it could act (keepalive_idle,
/// user_timeout), so it never pays the system calls. An adopted session
/// gets the options of this process's config, each one set (its socket
/// may hold the old process's). Worker thread only.
void set_backend_keepalive(session_entry& s, std::chrono::steady_clock::duration min_age);

/// Relays a session handed over by another process (an upgrade) on the
/// calling worker: no backend connect, the counts go on from the record.
/// Takes both descriptors. A record that names a listener, pool or backend
/// this config lacks is refused: both sockets reset, false returned and
/// `why` set. Counts the session in stats.active_sessions itself.
bool adopt_session(worker_context& ctx, const session_record& r, int client_fd, int backend_fd, std::string& why);

}  // namespace apilb
