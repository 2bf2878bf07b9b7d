// A data-plane thread: one io_context, its own SO_REUSEPORT acceptor per
// listener, and every session it accepted. Sessions never leave their worker,
// so nothing on the byte path takes a lock.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apilb/dataplane/poll_timer.hpp"
#include "apilb/dataplane/poller.hpp"
#include "apilb/dataplane/rebalance_order.hpp"
#include "apilb/dataplane/snapshot.hpp"
#include "apilb/dataplane/worker_context.hpp"

namespace apilb {

/// Picks the sessions to close, on the worker thread: `current` is the
/// config in force (a session may hold an older one).
using session_rule = std::function<bool(const session_entry& s, const snapshot& current)>;

/// Every session (shutdown drain).
session_rule every_session();
/// The sessions relaying to `backend` (it became unhealthy); the pointer
/// keeps the identity alive until the rule is gone.
session_rule sessions_on(std::shared_ptr<const backend_health> backend);
/// The sessions relaying to any of `backends` (removed by a reload, whose
/// drain time is over); `keep` holds the snapshot they belong to alive.
session_rule sessions_on_any(std::shared_ptr<const snapshot> keep, std::vector<const backend_health*> backends);
/// Rebalancing: relaying sessions as `orders` ask (on a backend, or Maglev
/// sessions off the backend their key prefers in `current`), each taking
/// one from its order's shared quota.
session_rule sessions_to_rebalance(std::vector<rebalance_order> orders);

/// How often a worker sweeps its sessions with `cfg`: a tenth of the
/// shortest of timeouts.idle, timeouts.write_stall, tcp.keepalive_idle (with
/// keepalive on) and tcp.user_timeout, those not 0, within [100ms, 30s]; 0
/// (no sweep) if every one is off.
std::chrono::milliseconds sweep_period(const config& cfg);

class worker {
public:
    /// `io_uring`: the worker's loop waits in an io_uring (relay.io, as
    /// chosen at start by choose_relay_io); throws std::system_error if the
    /// ring cannot be made.
    worker(std::size_t index, std::shared_ptr<const snapshot> snap, process_stats& stats, bool io_uring = false);
    ~worker();
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    /// Opens, binds and listens on `listener_index`'s address with SO_REUSEPORT.
    /// Control thread, before start(). Throws std::system_error with the reason.
    void bind(std::size_t listener_index);

    /// Adopts `fd`, a listening socket of `listener_index`'s address that the
    /// process before this one handed over (an upgrade), setting this
    /// config's TCP options and backlog on it. Control thread, before
    /// start(). Throws std::system_error naming the listener.
    void adopt(std::size_t listener_index, int fd);

    /// One listening socket lent to an upgrade: a duplicate the receiver closes.
    struct shared_listener {
        std::string address;  ///< listener_config::address, as text
        int fd;
    };
    /// On the worker thread, duplicates (close-on-exec) every listening
    /// socket it accepts on and calls `done` there with them. Any thread.
    void share_listeners(std::function<void(std::vector<shared_listener>)> done);

    /// An upgrade's session phase `phase` (an id, one per phase): on the
    /// worker thread, takes up to `max` quiet sessions out
    /// (hand_over_session) and calls `done` there with them, how many
    /// relaying sessions are still quiescing (busy), how many the phase
    /// keeps here, and how many are still connecting (storm control's gate,
    /// a connect, a retry: taken by a later pass once established). A
    /// session with bytes in flight is quiesced (it stops reading, what it
    /// read goes out) and taken by a later pass once quiet; one that cannot
    /// write it out within timeouts.upgrade_quiesce reads again and is
    /// kept. One short pass through the session list: the worker's loop
    /// runs between passes, and a poll_timer, not the passes, ends a
    /// quiesce. Any thread.
    void hand_over_sessions(
        std::size_t max, std::uint64_t phase,
        std::function<void(std::vector<handed_session>, std::size_t busy, std::size_t kept, std::size_t connecting)>
            done);
    /// The session phase is over (its sessions sent, or it failed): every
    /// session still quiesced reads again at once. Any thread.
    void end_session_phase();
    /// An upgrade's new process serves on the same listening sockets: this
    /// worker stops taking clients from them (they wait in the kernel's
    /// queue, which the new process serves) but keeps them open, so that
    /// resume_accepting() goes on at once. Any thread.
    void hold_accepting();
    /// Accepts again after hold_accepting() (the upgrade was rolled back).
    /// Any thread.
    void resume_accepting();
    /// Relays a session handed over by another process on the worker thread
    /// (adopt_session); a record this config cannot place resets both sockets
    /// and counts in sessions_refused_total. Takes both descriptors. Any thread.
    void adopt_session(session_record r, int client_fd, int backend_fd);

    /// A listening socket (SO_REUSEPORT) for `l`, as a plain descriptor that
    /// the caller owns: a reload binds every new listener's sockets on the
    /// control thread before it commits, so a bind failure fails the reload
    /// as a whole. Sets the TCP options `tcp` on it, which the sockets it
    /// accepts inherit. Throws std::system_error naming the listener.
    static int open_listener(const listener_runtime& l, const tcp_config& tcp);

    /// A listener a reload adds: its index in the new snapshot and this
    /// worker's listening descriptor for it (which the worker then owns).
    struct new_listener {
        std::size_t listener_index;
        int fd;
    };

    /// Switches to `next` (a reload): new sessions use it, open sessions keep
    /// the snapshot they started with. Acceptors of listeners `next` still
    /// has (same address) keep their sockets and accept on without a gap;
    /// those it lacks are closed; `added` are adopted. Posts to the worker
    /// thread and returns at once; `done` then runs on the worker thread.
    /// Any thread.
    void apply(std::shared_ptr<const snapshot> next, std::vector<new_listener> added, std::function<void()> done);

    /// Caps the process-wide session count this worker admits (0 = none).
    /// Control thread, before start().
    void set_max_connections(std::uint32_t n) { ctx_.max_connections = n; }

    /// Starts the thread and the accept loops.
    void start();
    /// Runs `answer` on the worker thread, behind whatever it has queued: a
    /// liveness check (the caller posts back to its own thread). Any thread.
    void ping(std::function<void()> answer);
    /// Closes the acceptors; sessions go on. Any thread.
    void stop_accepting();
    /// The one way to close sessions from outside: on the worker thread,
    /// every session `rule` picks (oldest first; those closed already are
    /// skipped) is aborted with `why` (session_entry::abort: a reset to both
    /// peers, counted and logged by `why`). Any thread.
    void close_sessions(session_rule rule, close_reason why);
    /// Where sessions report failed connects for passive health detection.
    /// Control thread, before start().
    void set_passive_reporter(passive_reporter r) { ctx_.report_passive = std::move(r); }
    /// Ends everything the worker runs (acceptors, sessions, timers), lets
    /// every session finish, and joins the thread; forces the io_context to
    /// stop only if that takes more than a few seconds. Control thread.
    void stop();

private:
    struct acceptor_slot {
        acceptor_slot(worker& w, std::size_t index)
            : owner(w), listener(w.sockets_), listener_index(index), pause_timer(w.sockets_) {}
        worker& owner;
        poll_socket listener;        ///< the listening socket, non-blocking
        std::size_t listener_index;  ///< in ctx_.snap(); updated by apply()
        poll_timer pause_timer;      ///< waits out an accept pause, or a yield after a burst
        bool loop_done = false;      ///< its accept loop has ended: the slot may go
        bool held = false;           ///< its loop stopped for hold_accepting(): no wait pending
    };
    /// A slot for the listening descriptor `fd` (which it then owns).
    std::unique_ptr<acceptor_slot> adopt_listener(int fd, std::size_t listener_index, boost::system::error_code& ec);
    /// bind() and adopt(): adds a slot for `fd` (which it then owns). Throws
    /// std::system_error naming the listener and `which` socket it was.
    void add_acceptor(int fd, std::size_t listener_index, const char* which);

    /// What an accept turn waits for before the next turn.
    enum class accept_next { listener, pause, done, held };
    /// One turn of the slot's accept loop: accept_some, then the wait for
    /// the next turn, a wait that allocates nothing (see worker.cpp). The
    /// first call starts the loop. Worker thread; never throws.
    void accept_turn(acceptor_slot& slot) noexcept;
    /// poll_socket/poll_timer callback of that wait; `slot` is the acceptor_slot.
    static void on_accept_wait(void* slot, const boost::system::error_code& ec);
    /// Accepts until the listener is empty, paused or a burst is over;
    /// sets `until` for accept_next::pause.
    accept_next accept_some(acceptor_slot& slot, std::chrono::steady_clock::time_point& until);
    /// Out of descriptors for longer than max_backlog_wait: accepts the
    /// oldest waiting client into the spare descriptor and resets it.
    /// False if none was waiting or there was no spare.
    bool reset_one(acceptor_slot& slot);
    /// Worker thread: aborts with `why` every session `rule` picks.
    void close_matching(const session_rule& rule, close_reason why);
    /// Every second: relaying sessions add the bytes they moved to their
    /// backends' counters, so that rates show while sessions are open.
    void publish_tick() noexcept;
    static void on_publish_timer(void* self, const boost::system::error_code& ec);
    /// Every sweep_period_: closes sessions with no traffic for
    /// timeouts.idle and sessions whose writes made no progress for
    /// timeouts.write_stall, and gives sessions older than one period their
    /// backend leg's keepalive options (set_backend_keepalive).
    void sweep_tick() noexcept;
    static void on_sweep_timer(void* self, const boost::system::error_code& ec);
    /// Quiesced sessions read again: all, or those whose upgrade_quiesce has
    /// passed (kept for quiesce_phase_); then waits for the next one due.
    void end_quiesces(bool all) noexcept;
    static void on_quiesce_timer(void* self, const boost::system::error_code& ec);
    /// A turn of accept, sweep or publish failed with `e` (out of memory):
    /// counted in resource_errors_total, logged at critical (rate-limited)
    /// saying it is tried again `again`; never throws.
    void tick_failed(const char* what, const std::exception& e, const char* again = "at the next tick") noexcept;

    std::size_t index_;
    // Before io_: session sockets, destroyed with the handlers io_ still
    // holds at its destruction, leave the poller's table on the way.
    poller sockets_;
    boost::asio::io_context io_{1};
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
    worker_context ctx_;
    std::vector<std::unique_ptr<acceptor_slot>> acceptors_;
    bool started_ = false;  ///< start() ran: new acceptors get their loop at once
    poll_timer sweep_timer_{sockets_};
    std::chrono::milliseconds sweep_period_{0};  ///< sweep_period(), by start() and apply(); 0: no sweep
    poll_timer publish_timer_{sockets_};
    poll_timer quiesce_timer_{sockets_};  ///< the earliest quiesce_until of this worker's sessions
    std::uint64_t quiesce_phase_ = 0;     ///< the session phase of the last pass
    bool stopping_ = false;               ///< worker thread only
    bool accepting_held_ = false;         ///< hold_accepting(); worker thread only
    std::thread thread_;
    std::promise<void> exited_;
};

}  // namespace apilb
