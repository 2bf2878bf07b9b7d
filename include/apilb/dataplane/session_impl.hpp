// The session class, private to the dataplane's session sources: session.cpp
// (its life, from accept to the one exit) and session_handover.cpp (an
// upgrade's hand-over and adoption). Nothing else includes this header; the
// rest of the worker sees a session only through session.hpp.
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

/// Choosing and connecting across the attempts of one session.
struct connect_state {
    explicit connect_state(std::size_t backends) : tried(backends, 0) {}
    std::uint64_t key_hash = 0;  ///< maglev pools: the client's key
    tried_set tried;
    std::uint32_t attempts = 0;
    std::string failures;      ///< "name: reason; ..." for the log when every attempt failed
    error_code local_failure;  ///< this process is out of something: not a backend's fault

    /// Adds "backend: what" to `failures`.
    void add_failure(std::string_view backend, std::string_view what) {
        if (!failures.empty()) failures += "; ";
        failures += backend;
        failures += ": ";
        failures += what;
    }
};

/// One proxied connection. It owns both sockets and the relay; whichever
/// callback is pending owns it (the connect, a storm-control timer, a
/// replay's wait, the relay's completion), and it ends when the last of them
/// lets it go. An idle watch costs the object, its two sockets and two
/// pending waits.
class session : private pending_connect {
public:
    session(worker_context& ctx, std::size_t listener_index);
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    /// Takes the accepted client socket; false if it cannot be watched.
    bool adopt_client(int fd);
    /// Connects the adopted client to a backend and relays.
    static void start(std::unique_ptr<session> self) { connect_next(std::move(self)); }
    /// hand_over_session(), for this session.
    bool hand_over(handed_session& out);
    /// adopt_session() once the listener is found: places the record's
    /// backend, takes both sockets and relays.
    static bool adopt(std::unique_ptr<session> self, const session_record& r, int client_fd, int backend_fd,
                      std::string& why);

private:
    /// What pick_backend() found.
    enum class step { ready, next, stop };
    /// Where the attempt in progress is: picking a backend, in storm
    /// control's gate (pass_gate()), or through it.
    enum class gate_step : std::uint8_t {
        pick,          ///< no backend chosen for this attempt yet
        turn,          ///< storm_control.new_per_second: take a turn
        turn_waited,   ///< woke from waiting for the turn
        start,         ///< space the starts of a worker that woke late
        start_waited,  ///< woke from that wait
        slot,          ///< storm_control.max_connecting: take a connect slot
        slot_retry,    ///< waited for a slot (until slot_deadline_); try again
        open,          ///< through: connect
    };
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
    /// Storm control for `backend`, resumed at gate_: a paced turn
    /// (new_per_second) and a connect slot (max_connecting). `wait` sets
    /// wake_at_; `refused` if there is no turn or slot within queue_timeout,
    /// the queue is full, or the session was closed meanwhile.
    gate pass_gate(const backend_runtime& backend);
    /// Waits until wake_at_ (a slot freed on this worker, or closing the
    /// session, cuts it short), then resumes connect_next(). Allocates nothing.
    static void wait_at_gate(std::unique_ptr<session> self);
    static void on_gate_wait_over(void* self) { connect_next(std::unique_ptr<session>(static_cast<session*>(self))); }
    /// Gives the slot back (connect failed, the backend's first byte came,
    /// or the session ended) and wakes a waiter of this worker.
    void release_slot();
    static void on_backend_answered(void* self) { static_cast<session*>(self)->release_slot(); }
    /// Opens the socket to `backend` with the TCP options; false (the
    /// reservation given back) if this process is out of descriptors.
    bool open_upstream(const backend_runtime& backend);
    /// The connect about to start joins the worker's deadline queue; once it
    /// ends, connect_ended() takes it out and says timed_out if the deadline
    /// closed the socket.
    void watch_connect_deadline();
    error_code connect_ended(const error_code& ec);
    static void on_connect_deadline(pending_connect& p);
    static void on_connected(void* self, const error_code& ec);
    /// The connect to backend `pick` failed with `cec`: counted, reported,
    /// the socket closed. False if the session must not try another backend.
    bool connect_failed(std::size_t pick, const error_code& cec);
    /// Writes what the client sent to a backend that failed before
    /// answering (sent_) to the one just connected, then relays.
    static void replay(std::unique_ptr<session> self);
    static void on_replay_writable(void* self, const error_code& ec);
    void start_relay(std::unique_ptr<session> self);
    static void on_relay_done(void* self);
    void relay_ended(std::unique_ptr<session> self);
    /// The backend failed before its first byte with `why` (the relay's
    /// early end, or the replay to it failed): on to the next backend if the
    /// client may move on, else give up.
    static void failed_before_answering(std::unique_ptr<session> self, const error_code& why);
    /// Takes the failed backend back (last_error_ says how it failed); true
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
    connect_state st_;
    std::optional<tcp::endpoint> client_ep_;  ///< only for Maglev and debug logs
    clock_type::time_point started_ = clock_type::now();
    const backend_runtime* chosen_ = nullptr;     ///< once connected
    std::size_t chosen_index_ = 0;                ///< the backend of the attempt in progress
    std::string sent_;                            ///< the client's bytes before the backend's first one, for a replay
    std::uint64_t replayed_ = 0;                  ///< bytes of `sent_` written to the current backend
    error_code last_error_;                       ///< why the last backend failed before its first byte
    std::atomic<std::uint32_t>* slot_ = nullptr;  ///< a backend's connecting count this session holds one of
    bool connect_timed_out_ = false;              ///< the pending connect passed its deadline
    gate_step gate_ = gate_step::pick;
    bool slot_waited_ = false;                ///< waited for a connect slot in this attempt
    clock_type::time_point wake_at_{};        ///< the gate's wait ends then at the latest
    clock_type::time_point slot_deadline_{};  ///< no connect slot by then: refused
    /// Storm control's waits, in ctx_.gate.
    gate_wait gate_wait_;
    std::uint64_t published_to_ = 0;    ///< of the bytes to the current backend, those in its counters
    std::uint64_t published_from_ = 0;  ///< of the bytes from it, those in its counters
    bool adopted_ = false;              ///< handed over by the process before: its backend answered there
};

}  // namespace apilb::session_impl
