// The process: workers, listeners, signals and the drain on SIGTERM.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "apilb/control/discovered_backends.hpp"
#include "apilb/dataplane/snapshot.hpp"
#include "apilb/dataplane/uring.hpp"
#include "apilb/process/handover.hpp"
#include "apilb/process/handover_children.hpp"
#include "apilb/process/process_state.hpp"

namespace apilb {

class worker;
class health_checker;
class vrrp_agent;
class bgp_agent;
class rebalancer;
class admin_server;
class discovery_client;
struct bgp_receipt;
struct upgrade_outcome;
struct upgrade_start;

/// What the process before this one handed over in an upgrade
/// (docs/upgrade.md): listening sockets by address, and the channel on which
/// this one says `ready` once it serves.
struct inherited_sockets {
    /// Listener address (listener_config::address as text) -> its sockets.
    std::map<std::string, handover::owned_fds> data;
    std::string admin_address;  ///< the admin socket's address, if one came
    handover::owned_fds admin;
    int channel = -1;  ///< owned; -1 when not started by an upgrade
    /// The old process's health view and counters (`state` frames).
    std::vector<handover::state_line> state;
    std::size_t state_bad = 0;  ///< state frames or lines that could not be read (skipped)
    /// Children the new process takes over once the old one lets go
    /// (`child` frames before the listeners: keepalived's keeper).
    std::vector<handed_children> children;
};

/// The new process's half of an upgrade, before it builds its process:
/// checks the peer, sends hello (with `version`, this binary's), receives
/// the listening sockets, all within `deadline`. Takes `channel` (closes it
/// on error). Throws handover_error (process_upgrade.cpp).
inherited_sockets receive_inherited(int channel, const std::string& version,
                                    std::chrono::steady_clock::time_point deadline);

/// The running apilb: its worker threads, and on the control thread the
/// health checker, rebalancer, admin endpoint, VRRP agent, signals and reload.
/// main() makes one and runs it.
class process {
public:
    /// Builds the snapshot, the health checker (its probe TLS contexts) and
    /// binds every listener on every worker. Throws std::system_error (naming
    /// the listener and address) if a bind fails, std::runtime_error if a
    /// probe certificate or key cannot be loaded.
    /// With `inherited` (an upgrade), a listener whose address came with
    /// sockets listens on those instead of binding anew, and `ready` goes
    /// back on its channel when this process serves.
    explicit process(std::shared_ptr<const config> cfg, inherited_sockets inherited = {});
    ~process();

    /// Serves until SIGTERM/SIGINT, then drains: stops accepting at once,
    /// lets sessions finish for up to timeouts.drain, closes what is left.
    /// A second signal during the drain closes everything at once. Returns
    /// the process exit code.
    int run();

    const process_stats& stats() const noexcept { return stats_; }

    /// SIGHUP: re-reads the config file, builds and checks the new config
    /// here on the control thread and, only if all of it is good (the file,
    /// the probe TLS files, every new listener's bind), swaps it in: workers
    /// get it by message; kept listeners keep their sockets, kept backends
    /// their counters and health. On any error it logs every error, counts
    /// the failure and the running config stays. Returns every reason it
    /// was rejected (file:line:col: key: message), empty if it was applied.
    /// Control thread, checked (src/process/process_reload.cpp).
    std::vector<std::string> reload();

    /// Posts a ping to every worker; `done(answered, total)` runs on the
    /// control thread once all answered or after `deadline`. Control thread,
    /// checked (src/process/watchdog.cpp).
    void ping_workers(std::chrono::milliseconds deadline, std::function<void(std::size_t, std::size_t)> done);

private:
    /// Tells systemd (Type=notify) `state`: READY=1, RELOADING=1, STOPPING=1,
    /// WATCHDOG=1. Nothing when built without libsystemd or not run by it.
    static void notify_systemd(const std::string& state);
    /// Binds the admin endpoint if the config has one (constructor; throws
    /// like a listener bind), or takes `inherited` (an upgrade's socket,
    /// owned, passed only with an admin section; -1 for none).
    /// src/process/watchdog.cpp.
    void make_admin(int inherited);
    /// Feeds the systemd watchdog while every worker answers its pings.
    void start_watchdog();

    /// The commit half of a reload, shared by discovery: builds `cfg`'s
    /// snapshot, health checker and new listeners' sockets and, only if all
    /// of that succeeded, swaps them in, posts the snapshot to every worker
    /// and drains the backends that left (timeouts.reload_drain). `what`
    /// ("reload", "discovery: pool P") labels the log lines. Returns why it
    /// failed (nothing changed then), empty once committed. Control thread.
    /// `file_reload`: a reload of the file (SIGHUP, the admin API), whose end
    /// systemd hears (READY=1).
    std::vector<std::string> commit(std::shared_ptr<const config> cfg, const std::string& what, bool file_reload);
    /// What the health checker calls to close a backend's sessions on every worker.
    std::function<void(std::shared_ptr<const backend_health>)> close_sessions_fn();
    /// Closes, after timeouts.reload_drain, the sessions of the backends that
    /// `previous` had and the running snapshot has not.
    void drain_removed_backends(std::shared_ptr<const snapshot> previous, const std::string& what);
    /// One discovery client per pool with a discovery section, each starting
    /// from its state file when that is usable (process_discovery.cpp).
    /// Throws like a probe's TLS files when credentials cannot be loaded.
    void make_discovery();
    /// A new set from a pool's API: logged, kept in the state file and
    /// applied to the pool's backends (at most once per change_interval).
    void on_discovered(const pool_config& pool, const std::vector<discovered_endpoint>& set);
    /// Every worker's socket for listener `l`: handed-over ones of its
    /// address first (taken from `inherited`), fresh binds for the rest.
    void bind_listener(std::size_t l, inherited_sockets& inherited);
    /// SIGUSR2 and POST /api/v1/upgrade: starts the new binary and hands it
    /// the listening sockets and sessions on a helper thread; once it serves,
    /// upgrade_handed_over_ runs on the control thread, and nothing changes
    /// here if it fails (rollback). `done` (may be empty) gets the outcome on
    /// the control thread, unless it was refused: the return says why.
    /// Control thread, checked (process_upgrade.cpp).
    upgrade_start start_upgrade(std::function<void(const upgrade_outcome&)> done);
    /// Stops an upgrade in flight (kills the new binary) and joins its thread.
    void end_upgrade();
    /// An upgrade asked for while a reload's workers apply: waits for the
    /// apply to end (upgrade_reload_wait at most, then refused as a
    /// conflict through `done`); returns `started` with new_pid 0.
    /// Control thread (upgrade_wait.cpp).
    upgrade_start wait_for_reload(std::function<void(const upgrade_outcome&)> done);
    /// Every reload's apply has ended: starts the upgrade that waited for it.
    void on_reloads_applied();
    /// Drops a waiting upgrade (its `done` hears `why`): apilb stops.
    void cancel_waiting_upgrade(const std::string& why);
    /// An upgrade runs or waits: reloads are refused meanwhile.
    bool upgrading() const noexcept { return upgrade_ != nullptr || waiting_upgrade_ != nullptr; }
    /// The old process's health view and counters, from an upgrade's
    /// `state` frames: at start (`first`) the health view too, then the
    /// counters' final values. Control thread (process_state.cpp).
    void take_carried_state(const std::vector<handover::state_line>& lines, std::size_t bad, bool first);
    /// The old process: keepalived's keeper (vrrp.manage: true), sent as
    /// `child` frames before the listeners; nullopt when none runs. Control
    /// thread (upgrade_vip.cpp); throws std::system_error.
    std::optional<handed_children> vip_children();
    /// The old process's upgrade thread, once the new one took every
    /// session: the VIP agent lets go on the control thread (waited for,
    /// bounded); returns the state lines that tell the new one what it needs.
    std::vector<handover::state_line> release_vip();
    /// The new process, after the final state (or without it): takes over
    /// the VIP's side from what the old process released. Control thread.
    void take_over_vip(const std::vector<handover::state_line>& lines);
    /// The new process's adopt thread, after `sessions_taken`: receives the
    /// counters' final values (bounded) and posts them to the control thread.
    void receive_final_state(int channel);
    /// The new process's side: MAINPID= and READY=1 to systemd, `ready` to
    /// the old one, then receive_sessions().
    void report_ready_to_old();
    /// The new process's session phase, on adopt_thread_: each session frame
    /// goes to a worker (round robin) to adopt; a bad record resets its two
    /// sockets and is counted; `sessions_taken` answers `sessions_end`.
    void receive_sessions();
    /// Ends the session phase (wakes and joins adopt_thread_); before the workers stop.
    void end_session_receive();

    /// Upgrades with a bgp section (upgrade_bgp.cpp). The new process, in its
    /// constructor: sends `abort` and throws std::runtime_error unless its
    /// bgp section is the old one's (`old_state`, the first state frames).
    void check_upgrade_bgp(const std::vector<handover::state_line>& old_state);
    /// The old process's upgrade thread, right before sessions_end: has the
    /// control thread freeze the bgp agent (`frozen` set once it did) and
    /// sends what the new process takes over. Throws handover_error.
    void hand_over_bgp(int channel, std::chrono::steady_clock::time_point deadline, bool& frozen);
    /// The old process, control thread, after an upgrade that froze the
    /// agent: lets go of the VIPs and FRR (`succeeded`), or acts again.
    void end_bgp_handover(bool succeeded);
    /// The new process's adopt thread: posts the take-over of what `r` holds
    /// (nullptr: nothing came, act as on a fresh start) to the control thread.
    void take_over_bgp(std::shared_ptr<bgp_receipt> r);
    /// The new process's adopt thread, when the old process died before
    /// `sessions_taken` (docs/upgrade.md, "If the old process dies"): posts
    /// the take-over of the VIP's side, vrrp and bgp, as on a fresh start,
    /// with what the `child` frames brought (keepalived's keeper).
    void take_over_from_dead_old();

    /// One discovery pool's applied state (process_discovery.cpp). Control thread.
    struct discovery_pool {
        explicit discovery_pool(boost::asio::io_context& io) : timer(io) {}
        std::string pool;
        /// The latest set (API or state file), newer than `members` when `fresh`.
        std::vector<discovered_endpoint> listed;
        bool fresh = false;
        /// What the running snapshot's backends are; the seed until the first set.
        std::vector<discovered_member> members;
        bool applied = false;  ///< members came from a set: the pool's backends are discovery's
        std::chrono::steady_clock::time_point last_applied{};
        /// The next apply: a set that came within change_interval, or a
        /// leaving member to look at again.
        boost::asio::steady_timer timer;
        std::chrono::steady_clock::time_point armed = std::chrono::steady_clock::time_point::max();
        /// After a commit that failed: the wait before the next try (doubling); 0 after a success.
        std::chrono::milliseconds retry{0};
    };
    /// Applies `dp`'s latest set no earlier than change_interval after the last.
    void arm_discovery(discovery_pool& dp, std::chrono::steady_clock::time_point at);
    /// Merges the latest set into the members, lets go of leaving members
    /// that are past their grace or fail their probes, and commits the
    /// pool's new backends if they changed.
    void apply_discovery(discovery_pool& dp);
    /// `file` with the backends of every pool that has a discovery section
    /// and a set replaced by its members.
    std::shared_ptr<const config> with_discovered(const config& file) const;
    /// The client (credentials loaded, state file read) and the applied
    /// state, at the seed, of `pool`. Throws like discovery_client.
    std::pair<std::unique_ptr<discovery_client>, std::unique_ptr<discovery_pool>> make_discovery_for(
        const pool_config& pool);
    /// Applies the state file's set, if the client took one, once the control thread runs.
    void start_from_state(const discovery_client& client, discovery_pool& dp);
    /// After a reload from `before` to `after`: stops the clients of pools
    /// whose discovery section changed or went, and starts `clients` (made
    /// by make_discovery_for() before the commit) in their place, each from
    /// the members its pool had.
    void restart_discovery(const config& before, const config& after,
                           std::vector<std::unique_ptr<discovery_client>> clients,
                           std::vector<std::unique_ptr<discovery_pool>> pools);
    /// Destroys the health checkers of earlier configs whose probe loops are over.
    void drop_retired_checkers();

    std::shared_ptr<const snapshot> snap_;
    process_stats stats_;  // before workers_: sessions un-count themselves as workers go away
    /// Probes, signals, the drain: everything that is not the data path.
    boost::asio::io_context control_{1};
    std::unique_ptr<health_checker> health_;  // after control_: its timers live on it
    /// After control_: their coroutines live on it. One per discovery pool.
    std::vector<std::unique_ptr<discovery_client>> discovery_;
    /// After control_: their timers live on it. One per discovery pool.
    std::vector<std::unique_ptr<discovery_pool>> discovery_pools_;
    /// The running config as its file says it, before discovery's backends
    /// (snap_->cfg has them): what a reload compares with and builds on.
    std::shared_ptr<const config> file_cfg_;
    /// Checkers of earlier configs, stopped, until their probe loops unwind.
    std::vector<std::unique_ptr<health_checker>> retired_checkers_;
    /// Drains of backends removed by a reload (timeouts.reload_drain).
    std::list<boost::asio::steady_timer> reload_timers_;
    bool draining_ = false;  ///< SIGTERM seen: reloads are refused
    /// An upgrade in flight (process_upgrade.cpp); reloads are refused meanwhile.
    struct upgrade_run;
    std::shared_ptr<upgrade_run> upgrade_;
    /// An upgrade waiting for a reload's apply to end (wait_for_reload()).
    struct waiting_upgrade {
        explicit waiting_upgrade(boost::asio::io_context& io) : timer(io) {}
        boost::asio::steady_timer timer;  ///< upgrade_reload_wait
        std::function<void(const upgrade_outcome&)> done;
    };
    std::unique_ptr<waiting_upgrade> waiting_upgrade_;
    /// Counters carried from the old process: what each series had from it.
    carried_counters carried_;
    /// What run() does once an upgrade handed over: stop accepting and drain.
    std::function<void()> upgrade_handed_over_;
    /// Reloads whose snapshot the workers are still taking; an upgrade waits until none.
    std::size_t reloads_applying_ = 0;
    int handover_channel_ = -1;  ///< the new process's end, until it said ready
    /// An upgrade's new process: what the old one hands over with the VIP, until take_over_vip().
    std::vector<handed_children> vip_children_;
    bool vip_from_old_ = false;  ///< an upgrade's new process: the VIP's side is the old one's until taken over
    std::thread adopt_thread_;   ///< receive_sessions(); joined by end_session_receive()
    int adopt_channel_ = -1;     ///< the channel while adopt_thread_ runs
    std::unique_ptr<rebalancer> rebalancer_;  ///< after workers_: it posts to them
    std::unique_ptr<vrrp_agent> vrrp_;        ///< set when the config has a vrrp section
    std::unique_ptr<bgp_agent> bgp_;          ///< set when the config has a bgp section
    std::vector<std::unique_ptr<worker>> workers_;
    std::unique_ptr<admin_server> admin_;  ///< after workers_: destroyed first; on control_
    std::string config_hash_;              ///< of the running config file's bytes
    std::unique_ptr<boost::asio::steady_timer> watchdog_timer_;
    std::shared_ptr<std::function<void()>> watchdog_tick_;
    std::uint32_t max_connections_ = 0;  ///< configured limit, capped by the fd limit
    relay_io_choice relay_io_;           ///< relay.io as the start's probe resolved it
};

}  // namespace apilb
