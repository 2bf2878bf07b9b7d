// What the sessions of one worker share: the config generation new sessions
// start in, the epoll set, relay buffers, the session list, storm control's
// gate waits, the connect deadlines and the pause on running out of
// descriptors. Owned by the worker; worker thread only, except `stats`.
#pragma once

#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "apilb/core/balancer.hpp"
#include "apilb/dataplane/connect_queue.hpp"
#include "apilb/dataplane/gate_waits.hpp"
#include "apilb/dataplane/poll_timer.hpp"
#include "apilb/dataplane/relay.hpp"
#include "apilb/dataplane/session.hpp"
#include "apilb/dataplane/snapshot.hpp"
#include "apilb/logging/logging.hpp"

namespace apilb {

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
    /// The backend connects of its sessions in progress (timeouts.connect).
    connect_queue connects;
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

    /// Sessions of this worker waiting at storm control's gate (a turn or
    /// a connect slot): a slot freed here wakes the first slot waiter, slots
    /// freed on other workers are noticed by a tick every 10 ms while anyone
    /// waits. Waiting allocates nothing.
    gate_waits gate;

    /// Backend connects in progress and when each times out.
    connect_deadlines connects;

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

}  // namespace apilb
