// One proxied connection: choose a backend, connect (with retries on the next
// backend), then relay both directions until both have ended.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/intrusive/list.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "apilb/core/balancer.hpp"
#include "apilb/logging/logging.hpp"
#include "apilb/dataplane/relay.hpp"
#include "apilb/dataplane/snapshot.hpp"

namespace apilb {

/// Why apilb itself ended a session, rather than one of its peers. Every
/// reason ends the session the same way (session_entry::abort); they differ
/// only in what is counted and logged.
enum class close_reason : std::uint8_t {
    none,       ///< apilb has not closed it (yet)
    idle,       ///< timeouts.idle without a byte either way
    health,     ///< its backend became unhealthy (health.close_sessions_after)
    reload,     ///< a reload removed its backend and timeouts.reload_drain ran out
    rebalance,  ///< moved to spread its pool
    drain,      ///< shutdown: timeouts.drain ran out, or a second signal
    stalled,    ///< a write made no progress for timeouts.write_stall (a peer that does not read)
};

/// A session as its worker sees it: enough to close it from outside (drain).
/// Lives in the session; unlinks itself when destroyed.
struct session_entry
    : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
    poll_socket* client = nullptr;
    poll_socket* upstream = nullptr;
    /// The backend relayed to, once connected: the health checker closes the
    /// sessions of a backend that became unhealthy by this identity.
    const backend_health* backend = nullptr;
    /// Stamped by the relay whenever bytes move; read by the worker's idle sweep.
    std::chrono::steady_clock::time_point last_activity = std::chrono::steady_clock::now();
    /// The session's relay: the worker's sweep asks it how long a write has waited.
    const relay* pump = nullptr;
    bool relaying = false;     ///< connected: only now can the session be idle
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
    /// While waiting for its turn (storm control): abort() cancels the wait.
    boost::asio::steady_timer* pacing_timer = nullptr;

    /// Closed by apilb: do not retry, do not log as a failure.
    bool aborted() const noexcept { return closed_by != close_reason::none; }
    /// The one way apilb ends a session itself: records `why` (unless a
    /// reason is set already) and closes both sockets with RST, never FIN,
    /// so that neither peer can take a stream cut short for a complete one.
    /// The session's pending operations complete with operation_aborted and
    /// it ends. Worker thread only.
    void abort(close_reason why);
};

using session_list =
    boost::intrusive::list<session_entry, boost::intrusive::constant_time_size<false>>;

/// A backend connect in progress and when it times out. The worker times
/// out all of its pending connects from one timer: an Asio timer per
/// connect (armed, then cancelled, its handler run anyway) cost about 2 µs of
/// a new connection's ~75. Lives in the connecting session; unlinks itself
/// when destroyed.
struct pending_connect
    : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
    std::chrono::steady_clock::time_point deadline;
    /// Called by the worker, unlinked, once the deadline has passed.
    void (*expire)(pending_connect&) = nullptr;
};

using pending_connect_list =
    boost::intrusive::list<pending_connect, boost::intrusive::constant_time_size<false>>;

/// Pending connects with one timeout, in the order they started, which is
/// deadline order.
struct connect_queue {
    std::chrono::milliseconds timeout;
    pending_connect_list entries;
};

/// Tells the health checker that a client's connect to `backend` failed
/// (refused, timed out, or reset before any byte came back). The backend is
/// named by its health block, which a reload keeps for a kept backend, not
/// by its position in a list a reload may renumber. Called on a worker
/// thread; must not block.
using passive_reporter = std::function<void(std::shared_ptr<const backend_health> backend, std::string what)>;

/// One config as a worker serves it: the snapshot and this worker's
/// balancing state for each of its pools. A session holds the generation it
/// started in for its whole life, so positions it takes from the snapshot
/// always index the same balancer state: a reload makes a new generation
/// and never changes an old one. Worker thread only.
struct generation {
    explicit generation(std::shared_ptr<const snapshot> s);
    const std::shared_ptr<const snapshot> snap;
    std::vector<balancer_state> balancers;  ///< one per pool of `snap`
};

/// What sessions of one worker share. Owned by the worker; worker thread only,
/// except `stats`, which is process-wide (atomics).
struct worker_context {
    worker_context(std::shared_ptr<const snapshot> snap, process_stats& stats, poller& p);

    /// The generation new sessions start in; replaced by a reload.
    std::shared_ptr<generation> current;
    /// The snapshot of `current`.
    const snapshot& snap() const noexcept { return *current->snap; }
    process_stats& stats;
    /// The worker's epoll set: every session socket is registered there.
    poller& sockets;
    relay_resources relay;
    /// Scratch for choosing a backend: filled and read with no suspension between.
    std::vector<backend_load> loads;
    session_list sessions;
    /// Sessions the whole process may hold (0 = no limit): limits.max_connections,
    /// capped by what the file-descriptor limit can hold. Set before start.
    std::uint32_t max_connections = 0;
    log_limiter connect_warnings{std::chrono::seconds(1)};
    log_limiter resource_warnings{std::chrono::seconds(1)};
    /// Passive health detection; empty = nobody listens (tests of a bare worker).
    passive_reporter report_passive;

    /// Sessions of this worker waiting for a connect slot of some backend
    /// (storm_control.max_connecting), each on its own timer: a slot freed
    /// here wakes the first (cancels its timer); slots freed on other
    /// workers are noticed by a tick every 10 ms while anyone waits.
    std::list<boost::asio::steady_timer*> slot_waiters;
    std::unique_ptr<boost::asio::steady_timer> slot_tick;
    bool slot_tick_armed = false;
    /// Wakes the first waiter; with `all`, every one (the tick).
    void wake_slot_waiters(bool all);
    /// Starts the 10 ms tick if someone waits and it is not running.
    void arm_slot_tick(const boost::asio::any_io_executor& ex);

    /// Backend connects in progress, one queue per timeouts.connect in use
    /// (two for a while after a reload changed it), and the one timer that
    /// expires them, armed for the earliest deadline while any is pending.
    std::list<connect_queue> connect_queues;
    std::unique_ptr<boost::asio::steady_timer> connect_timer;
    std::chrono::steady_clock::time_point connect_timer_at = std::chrono::steady_clock::time_point::max();
    bool connects_stopped = false;
    /// Starts timing `c` out at c.deadline, `timeout` after its start.
    void watch_connect(pending_connect& c, std::chrono::milliseconds timeout, const boost::asio::any_io_executor& ex);
    void arm_connect_timer(std::chrono::steady_clock::time_point at, const boost::asio::any_io_executor& ex);
    /// The timer fired: expires what is due, re-arms for the rest.
    void expire_connects(const boost::asio::any_io_executor& ex);
    /// The worker is stopping: the timer is cancelled and never armed again,
    /// so it cannot hold the loop open (sessions are aborted instead).
    void stop_connect_timer();

    /// Accepting waits until then: set when the process is out of file
    /// descriptors, so clients wait in the listen backlog for a short dip
    /// instead of being accepted only to be closed.
    std::chrono::steady_clock::time_point accept_paused_until{};
    std::chrono::milliseconds accept_backoff{10};
    /// When the current shortage of descriptors or memory began (epoch: none).
    std::chrono::steady_clock::time_point exhausted_since{};
    /// A descriptor held in reserve (/dev/null): closed to accept a client
    /// the process has no descriptor for, so that it can be reset instead of
    /// left in the backlog. -1 while in use or if it could not be reopened.
    int spare_fd = -1;

    /// Out of descriptors or memory at `where`: say so, rate-limited, and
    /// pause accepting for the current backoff (10 ms doubling to 1 s) --
    /// unless the shortage has lasted max_backlog_wait already: clients are
    /// then reset at once instead (resetting_clients()).
    void pause_accepting(const boost::system::error_code& ec, const char* where);
    /// The shortage has lasted longer than a client should wait in the backlog.
    bool resetting_clients() const;
    /// A session got both its sockets: the pressure is over.
    void resources_recovered() {
        accept_backoff = std::chrono::milliseconds(10);
        exhausted_since = {};
    }
    /// Reopens the spare descriptor if it is in use; false if it cannot be.
    bool reserve_spare();
};

/// True for errors that mean this process is out of descriptors or memory.
bool is_resource_exhaustion(const boost::system::error_code& ec);

/// The longest a client waits in a listen backlog while the process is out
/// of descriptors; then it is reset (and so are those that come after it
/// while the shortage lasts), so that it retries, elsewhere if it can.
constexpr std::chrono::milliseconds max_backlog_wait{2000};

/// Serves one accepted client (`fd`, non-blocking, owned from here on) on
/// the calling worker: choose a backend, connect (with retries on the next
/// backend), relay both directions until both have ended. The caller has
/// already counted it in stats.active_sessions; the session un-counts it
/// when it ends.
void start_session(worker_context& ctx, int fd, std::size_t listener_index);

}  // namespace apilb
