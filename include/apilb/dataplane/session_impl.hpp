// The session class, private to the dataplane's session sources: session.cpp
// (its life, from accept to the one exit) and session_handover.cpp (an
// upgrade's hand-over and adoption). Nothing else includes this header but
// tests that check the session's size (session_size_unit_test) and its
// connect_state (worker_test); the rest of the worker sees a session only
// through session.hpp.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "apilb/dataplane/backend_choice.hpp"
#include "apilb/dataplane/relay.hpp"
#include "apilb/dataplane/session.hpp"
#include "apilb/dataplane/worker_context.hpp"

namespace apilb::session_impl {

using boost::system::error_code;
using tcp = boost::asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

/// "address:port", with IPv6 addresses in brackets: how logs and session
/// records name an endpoint.
std::string endpoint_text(const tcp::endpoint& ep);

/// Where a connect attempt is: picking a backend, in storm control's gate
/// (session::pass_gate()), or through it.
enum class gate_step : std::uint8_t {
    pick,          ///< no backend chosen for this attempt yet
    turn,          ///< storm_control.new_per_second: take a turn
    turn_waited,   ///< woke from waiting for the turn
    start,         ///< space the starts of a worker that woke late
    start_waited,  ///< woke from that wait
    slot,          ///< storm_control.max_connecting: take a connect slot
    slot_retry,    ///< waited for a slot (until slot_deadline); try again
    open,          ///< through: connect
};

/// What a session needs only until its backend's first byte: choosing and
/// connecting across the attempts, storm control's gate, and the client's
/// bytes kept for a replay. An idle watch answered long ago, so this lives
/// apart from the session (docs/internals.md, "A session's memory"): made
/// with an accepted session, freed when the backend's first byte comes (the
/// last moment a replay to another backend is possible); an adopted session
/// never has one. As a pending_connect it is in the worker's connect
/// deadlines while a connect is under way.
struct connect_state : pending_connect {
    connect_state(poll_socket& up, std::size_t backends) : upstream(&up), tried(backends, 0) {
        expire = &connect_state::on_deadline;
    }
    connect_state(const connect_state&) = delete;
    connect_state& operator=(const connect_state&) = delete;

    /// Adds "backend: what" to `failures`.
    void add_failure(std::string_view backend, std::string_view what) {
        if (!failures.empty()) failures += "; ";
        failures += backend;
        failures += ": ";
        failures += what;
    }
    /// The connect passed its deadline: closing the socket ends it, aborted.
    static void on_deadline(pending_connect& p) {
        auto& c = static_cast<connect_state&>(p);
        c.timed_out = true;
        c.upstream->close();
    }

    poll_socket* upstream;  ///< the session's, which the deadline closes
    tried_set tried;
    std::uint32_t attempts = 0;
    gate_step gate = gate_step::pick;
    bool slot_waited = false;                    ///< waited for a connect slot in this attempt
    bool timed_out = false;                      ///< the pending connect passed its deadline
    std::size_t chosen_index = 0;                ///< the backend of the attempt in progress
    std::atomic<std::uint32_t>* slot = nullptr;  ///< a backend's connecting count this session holds one of
    std::string failures;                        ///< "name: reason; ..." for the log when every attempt failed
    error_code local_failure;                    ///< this process is out of something: not a backend's fault
    std::string sent;                            ///< the client's bytes before the backend's first one, for a replay
    error_code last_error;                       ///< why the last backend failed before its first byte
    clock_type::time_point wake_at{};            ///< the gate's wait ends then at the latest
    clock_type::time_point slot_deadline{};      ///< no connect slot by then: refused
    gate_wait wait;                              ///< storm control's waits, in the worker's gate_waits
};

/// One proxied connection. It owns both sockets and the relay; whichever
/// callback is pending owns it (the connect, a storm-control timer, a
/// replay's wait, the relay's completion), and it ends when the last of them
/// lets it go. An idle watch costs the object (at most 1,040 bytes: see
/// session_size_unit_test), its two sockets and two pending waits.
class session {
public:
    /// `connecting`: an accepted client, which connects to a backend (its
    /// connect_state is made here: std::bad_alloc), not an adopted one.
    session(worker_context& ctx, std::size_t listener_index, bool connecting);
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    /// Takes the accepted client socket; false if it cannot be watched.
    bool adopt_client(int fd);
    /// Connects the adopted client to a backend and relays.
    static void start(std::unique_ptr<session> self) { connect_next(std::move(self)); }
    /// set_backend_keepalive(), for this session.
    void set_backend_keepalive(clock_type::duration min_age);
    /// hand_over_session(), for this session.
    bool hand_over(handed_session& out);
    /// adopt_session() once the listener is found: places the record's
    /// backend, takes both sockets and relays.
    static bool adopt(std::unique_ptr<session> self, const session_record& r, int client_fd, int backend_fd,
                      std::string& why);

private:
    /// What pick_backend() found.
    enum class step { ready, next, stop };
    /// What pass_gate() decided.
    enum class gate { open, wait, refused };

    /// The one connect/retry loop: picks a backend not tried yet, passes
    /// storm control's gate, connects; on a failure moves on to the next
    /// backend until connect_attempts are used, then gives up. Resumed by
    /// every wait it starts.
    static void connect_next(std::unique_ptr<session> self);
    /// Counts an attempt, picks a backend not tried yet and reserves a
    /// session on it: `ready` with `pick` set, `next` to try again, or `stop`.
    step pick_backend(std::size_t& pick);
    /// Storm control for `backend`, resumed at conn_->gate: a paced turn
    /// (new_per_second) and a connect slot (max_connecting). `wait` sets
    /// conn_->wake_at; `refused` if there is no turn or slot within queue_timeout,
    /// the queue is full, or the session was closed meanwhile.
    gate pass_gate(const backend_runtime& backend);
    /// Waits until conn_->wake_at (a slot freed on this worker, or closing the
    /// session, cuts it short), then resumes connect_next(). Allocates nothing.
    static void wait_at_gate(std::unique_ptr<session> self);
    static void on_gate_wait_over(void* self) { connect_next(std::unique_ptr<session>(static_cast<session*>(self))); }
    /// Gives the slot back (connect failed, the backend's first byte came,
    /// or the session ended) and wakes a waiter of this worker.
    void release_slot();
    /// The backend's first byte came: no replay, retry or gate from here on,
    /// so the connect_state goes (and with it the slot).
    static void on_backend_answered(void* self);
    /// Opens the socket to `backend` with the TCP options; false (the
    /// reservation given back) if this process is out of descriptors.
    bool open_upstream(const backend_runtime& backend);
    /// The connect about to start joins the worker's deadline queue; once it
    /// ends, connect_ended() takes it out and says timed_out if the deadline
    /// closed the socket.
    void watch_connect_deadline();
    error_code connect_ended(const error_code& ec);
    static void on_connected(void* self, const error_code& ec);
    /// The connect to backend `pick` failed with `cec`: counted, reported,
    /// the socket closed. False if the session must not try another backend.
    bool connect_failed(std::size_t pick, const error_code& cec);
    /// Writes what the client sent to a backend that failed before
    /// answering (conn_->sent) to the one just connected, then relays.
    static void replay(std::unique_ptr<session> self);
    static void on_replay_writable(void* self, const error_code& ec);
    void start_relay(std::unique_ptr<session> self);
    static void on_relay_done(void* self);
    void relay_ended(std::unique_ptr<session> self);
    /// The backend failed before its first byte with `why` (the relay's
    /// early end, or the replay to it failed): on to the next backend if the
    /// client may move on, else give up.
    static void failed_before_answering(std::unique_ptr<session> self, const error_code& why);
    /// Takes the failed backend back (conn_->last_error says how it failed); true
    /// if the session may try another one with what the client sent.
    bool may_move_on();
    /// No backend took the client: finalize with the reason why.
    void give_up();
    /// The one exit: records `why` (its counters, its log line), gives the
    /// backend's reservation back, and closes as the reason calls for
    /// (close_action). The sockets close with the session.
    void finalize(close_reason why);
    /// Adds the bytes moved since the last call to the backend's counters.
    void publish_bytes();
    static void on_publish(void* self) { static_cast<session*>(self)->publish_bytes(); }
    std::string client_text() const;

    worker_context& ctx_;
    // Held for the whole session: a reload must not pull the config, or the
    // balancer state its positions index, out from under it.
    const std::shared_ptr<generation> gen_;
    const snapshot* const snap_;
    const listener_runtime& listener_;
    const pool_runtime& pool_;
    std::size_t listener_index_;
    poll_socket client_;
    poll_socket upstream_;
    session_entry entry_;
    relay relay_;
    /// Until the backend's first byte (accepted sessions only); see connect_state.
    std::unique_ptr<connect_state> conn_;
    std::optional<tcp::endpoint> client_ep_;  ///< only for Maglev and debug logs
    clock_type::time_point started_ = clock_type::now();
    const backend_runtime* chosen_ = nullptr;  ///< once connected
    std::uint64_t published_to_ = 0;           ///< of the bytes to the current backend, those in its counters
    std::uint64_t published_from_ = 0;         ///< of the bytes from it, those in its counters
    std::uint32_t replayed_ = 0;  ///< bytes of conn_->sent written to the current backend (<= replay_limit)
    bool adopted_ = false;        ///< handed over by the process before: its backend answered there
};

}  // namespace apilb::session_impl
