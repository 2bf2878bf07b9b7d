#include "apilb/process/process.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <functional>

#ifdef APILB_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "apilb/admin/admin_server.hpp"
#include "apilb/control/discovery_client.hpp"
#include "apilb/control/health_checker.hpp"
#include "apilb/control/listener_check.hpp"
#include "apilb/control/rebalancer.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/fd_table.hpp"
#include "apilb/dataplane/worker.hpp"
#include "apilb/vip/bgp_agent.hpp"
#include "apilb/vip/vrrp_agent.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

namespace {

std::string summary(const snapshot& snap, const std::vector<std::unique_ptr<worker>>& workers,
                    std::uint32_t max_connections, const relay_io_choice& io) {
    const config& cfg = *snap.cfg;
    std::string s = fmt::format(
        "apilb started: {} worker(s), relay {} through {}{}, max_connections {}, connect timeout {}ms", workers.size(),
        to_string(cfg.relay.mode), io.io_uring ? "io_uring" : "epoll",
        io.reason.empty() ? std::string() : " (io_uring unavailable: " + io.reason + ")", max_connections,
        cfg.timeouts.connect.count());
    for (std::size_t i = 0; i < snap.listeners.size(); ++i) {
        const auto& l = snap.listeners[i];
        s += fmt::format("; listener {} on {} -> pool {}", l.cfg->name, l.cfg->address.to_string(), l.cfg->pool);
    }
    for (const auto& p : snap.pools) {
        s += fmt::format("; pool {} ({}, {} attempt(s)):", p.cfg->name, to_string(p.cfg->balance),
                         p.cfg->connect_attempts);
        for (const auto& b : p.backends) {
            s += fmt::format(" {}={} w{}", b.cfg->name, b.cfg->address.to_string(), b.cfg->weight);
        }
    }
    return s;
}

/// Raises the soft file-descriptor limit to the hard one (systemd's
/// LimitNOFILE, ulimit -Hn) and returns the soft limit in force.
std::uint64_t raise_fd_limit() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlimit wanted{rl.rlim_max, rl.rlim_max};
        if (::setrlimit(RLIMIT_NOFILE, &wanted) == 0) rl = wanted;
    }
    return rl.rlim_cur == RLIM_INFINITY ? std::uint64_t{1} << 20 : rl.rlim_cur;
}

/// How many sessions the descriptor limit can hold: two sockets each, after
/// what is open now, some slack, and (splice) each worker's idle pipe pool
/// plus as many pipes again in flight. A direction that finds no descriptor
/// for a pipe falls back to copying, so pipes never cost a session.
std::uint64_t fd_reserve(std::uint64_t open_now, const config& cfg) {
    const bool splice = cfg.relay.mode == relay_mode::splice;
    return open_now + 64 + (splice ? 256 * std::uint64_t{cfg.workers} : 0);
}

std::uint32_t fd_session_budget(std::uint64_t fd_limit, std::uint64_t open_now, const config& cfg) {
    const std::uint64_t reserve = fd_reserve(open_now, cfg);
    if (fd_limit <= reserve) return 0;
    return static_cast<std::uint32_t>(std::min<std::uint64_t>((fd_limit - reserve) / 2, UINT32_MAX));
}

/// The descriptor table is sized up front for this many at most: 1 MiB of
/// kernel memory (8 bytes a slot), 65 000 sessions. Past it the kernel grows
/// the table as before, a grace period per doubling.
constexpr std::uint64_t fd_table_reserve_cap = std::uint64_t{1} << 17;

}  // namespace

void process::notify_systemd([[maybe_unused]] const std::string& state) {
#ifdef APILB_HAVE_SYSTEMD
    sd_notify(0, state.c_str());
#endif
}

process::process(std::shared_ptr<const config> cfg, inherited_sockets inherited)
    : snap_(snapshot::build(cfg)),
      file_cfg_(std::move(cfg)),
      handover_channel_(inherited.channel),
      vip_children_(std::move(inherited.children)),
      vip_from_old_(inherited.channel >= 0) {
    // The thread that builds the process runs its control context.
    set_thread_role(thread_role::control);
    const std::uint64_t fd_limit = raise_fd_limit();
    // First: relay.io: io_uring that this host refuses is a config error,
    // and the start ends here, before any probe, route or listener.
    relay_io_ = choose_relay_io(*snap_->cfg);
    // The checker closes an unhealthy backend's sessions through the workers,
    // each on its own thread.
    health_ = std::make_unique<health_checker>(control_, snap_, close_sessions_fn());
    if (snap_->cfg->vrrp) vrrp_ = std::make_unique<vrrp_agent>(control_, snap_);
    // An upgrade keeps the announcement only with the same bgp section.
    if (handover_channel_ >= 0) check_upgrade_bgp(inherited.state);
    if (snap_->cfg->bgp) {
        bgp_ = std::make_unique<bgp_agent>(control_, snap_);
        // Before the binds: the local route lets a listener on a VIP bind.
        bgp_->prepare(handover_channel_ >= 0);
    }
    rebalancer_ = std::make_unique<rebalancer>(
        control_, [this] { return snap_; },
        [this](std::vector<rebalance_order> orders) {
            for (auto& w : workers_) w->close_sessions(sessions_to_rebalance(orders), close_reason::rebalance);
        });
    // SO_REUSEPORT would let another process of ours bind beside a listener
    // that someone already serves and take part of its clients: refuse
    // before binding, so that no client of theirs reaches us.
    for (const auto& l : snap_->listeners) refuse_foreign_listener(l.cfg->name, l.endpoint);
    const std::size_t n = snap_->cfg->workers;
    workers_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        workers_.push_back(std::make_unique<worker>(i, snap_, stats_, relay_io_.io_uring));
        // Through the control thread: a reload replaces the checker.
        workers_.back()->set_passive_reporter([this](std::shared_ptr<const backend_health> backend, std::string what) {
            asio::post(control_, [this, backend = std::move(backend), what = std::move(what)]() mutable {
                health_->report_passive_failure(std::move(backend), std::move(what));
            });
        });
    }
    for (std::size_t l = 0; l < snap_->listeners.size(); ++l) bind_listener(l, inherited);
    for (const auto& [address, fds] : inherited.data) {
        if (!fds.empty()) {
            spdlog::info("upgrade: {} handed-over socket(s) for {}, which this config does not listen on: closed",
                         fds.size(), address);
        }
    }
    // Two processes that looked at the same moment both found the address
    // free and both bound it: each sees the other's sockets now, and both
    // refuse rather than each serve half.
    for (const auto& l : snap_->listeners) refuse_foreign_listener(l.cfg->name, l.endpoint);

    // Admit no more sessions than there are descriptors for: past that,
    // accept() and socket() fail and clients are dropped half-served.
    const std::uint32_t configured = snap_->cfg->limits.max_connections;
    const std::uint32_t budget = fd_session_budget(fd_limit, count_open_fds(), *snap_->cfg);
    max_connections_ = configured == 0 ? budget : std::min(configured, budget);
    if (budget == 0) {
        spdlog::error(
            "the file-descriptor limit ({}) is too low to hold any session; raise it "
            "(systemd LimitNOFILE=, ulimit -n)",
            fd_limit);
        max_connections_ = 1;
    } else if (configured == 0 || configured > budget) {
        spdlog::warn(
            "limits.max_connections {}: the file-descriptor limit ({}) holds about {} sessions; "
            "admitting at most {} (raise systemd LimitNOFILE= or ulimit -n for more)",
            configured == 0 ? std::string("unlimited") : std::to_string(configured), fd_limit, budget,
            max_connections_);
    }
    for (auto& w : workers_) w->set_max_connections(max_connections_);
    // Every descriptor the sessions may need, in the table now: growing it
    // later costs a worker an RCU grace period per doubling, in the middle of
    // the reconnect storm that needed the descriptors (see reserve_fd_table).
    const std::uint64_t table = std::min(
        {fd_limit, fd_table_reserve_cap,
         fd_reserve(count_open_fds(), *snap_->cfg) + 2 * std::uint64_t{max_connections_}});
    if (const std::error_code ec = reserve_fd_table(table)) {
        spdlog::warn(
            "could not size the descriptor table for {} descriptors: {}; accepting may pause "
            "while the kernel grows it",
            table, ec.message());
    }
    make_discovery();
    const bool admin_matches = snap_->cfg->admin && !inherited.admin.empty() &&
                               inherited.admin_address == snap_->cfg->admin->address.to_string();
    make_admin(admin_matches ? inherited.admin.release().front() : -1);
    // Before any worker serves or any probe runs: the old process's view.
    if (handover_channel_ >= 0) take_carried_state(inherited.state, inherited.state_bad, true);
}

void process::bind_listener(std::size_t l, inherited_sockets& inherited) {
    const std::string address = snap_->listeners[l].cfg->address.to_string();
    std::vector<int> fds;
    if (auto it = inherited.data.find(address); it != inherited.data.end()) fds = it->second.release();
    // Every handed-over socket is kept, spread over the workers: closing one
    // would reset the connects waiting in its accept queue. Workers left
    // without one bind a fresh socket beside them (SO_REUSEPORT).
    for (std::size_t k = 0; k < fds.size(); ++k) {
        try {
            workers_[k % workers_.size()]->adopt(l, fds[k]);
        } catch (...) {
            for (std::size_t rest = k + 1; rest < fds.size(); ++rest) ::close(fds[rest]);
            throw;
        }
    }
    for (std::size_t w = fds.size(); w < workers_.size(); ++w) workers_[w]->bind(l);
    if (!fds.empty()) {
        spdlog::info("upgrade: listener {} on {} took {} handed-over socket(s)", snap_->listeners[l].cfg->name, address,
                     fds.size());
    }
}

process::~process() {
    end_upgrade();
    end_session_receive();
    if (handover_channel_ >= 0) ::close(handover_channel_);
    for (auto& w : workers_) w->stop();
    workers_.clear();
    if (health_) health_->stop();
}

std::function<void(std::shared_ptr<const backend_health>)> process::close_sessions_fn() {
    // The checker closes an unhealthy backend's sessions through the workers,
    // each on its own thread.
    return [this](std::shared_ptr<const backend_health> backend) {
        for (auto& w : workers_) w->close_sessions(sessions_on(backend), close_reason::health);
    };
}

int process::run() {
    APILB_ASSERT_ROLE(control);
    asio::io_context& control = control_;
    asio::signal_set signals(control, SIGINT, SIGTERM, SIGHUP);
    signals.add(SIGUSR2);
    asio::steady_timer drain_timer(control);
    bool draining = false;
    bool aborted = false;
    clock_type::time_point deadline{};

    // The first probe round starts at once; until a backend's first check
    // completes it counts as health.initial says.
    // Ready (for systemd) once the listeners are bound and serving and every
    // probed backend has had its first probe, so that a unit ordered after
    // apilb finds it sending clients to apiservers it has checked.
    bool serving = false, first_round = false, ready_sent = false;
    auto ready = [&] {
        if (!serving || !first_round || ready_sent) return;
        ready_sent = true;
        spdlog::info("ready: listeners serving, first health round done");
        if (handover_channel_ >= 0) {
            report_ready_to_old();
        } else {
            notify_systemd("READY=1");
        }
    };
    health_->start(true, [&] {
        first_round = true;
        if (bgp_) bgp_->first_round_done();
        ready();
    });
    if (vrrp_) vrrp_->start(vip_from_old_);
    if (bgp_) bgp_->start();
    for (auto& w : workers_) w->start();
    rebalancer_->start();
    for (auto& d : discovery_) d->start();
    if (admin_) admin_->start();
    start_watchdog();
    const std::string& automatic = snap_->cfg->workers_auto;
    spdlog::info("workers: {} ({})", workers_.size(), automatic.empty() ? "set in the config" : "auto: " + automatic);
    spdlog::info("{}", summary(*snap_, workers_, max_connections_, relay_io_));
    serving = true;
    ready();

    auto abort_all = [&] {
        if (aborted) return;
        aborted = true;
        for (auto& w : workers_) w->close_sessions(every_session(), close_reason::drain);
    };

    // Polls the open-session count until it reaches zero or the deadline
    // passes; after the deadline, closes everything and gives the workers a
    // moment to unwind.
    std::function<void()> poll = [&] {
        const auto open = stats_.active_sessions.load(std::memory_order_relaxed);
        const auto now = clock_type::now();
        if (open == 0 || now >= deadline + std::chrono::seconds(5)) {
            if (open != 0) spdlog::error("drain: {} session(s) did not end; exiting anyway", open);
            control.stop();
            return;
        }
        if (now >= deadline && !aborted) {
            spdlog::warn("drain deadline reached: closing {} remaining session(s)", open);
            abort_all();
        }
        drain_timer.expires_after(std::chrono::milliseconds(20));
        drain_timer.async_wait([&](error_code ec) {
            if (!ec) poll();
        });
    };

    // Stops accepting and drains: after SIGTERM, or once an upgrade's new
    // process serves on the same listening sockets.
    auto begin_drain = [&](const char* why) {
        const auto drain = snap_->cfg->timeouts.drain;
        deadline = clock_type::now() + drain;
        spdlog::info("{}: stopped accepting; draining {} session(s) for up to {}ms", why,
                     stats_.active_sessions.load(std::memory_order_relaxed), drain.count());
        for (auto& w : workers_) w->stop_accepting();
        poll();
    };

    // SIGUSR2 and POST /api/v1/upgrade end here once the new process serves.
    upgrade_handed_over_ = [&] {
        if (draining) return;
        draining = true;
        draining_ = true;
        // No STOPPING=1: the unit goes on, served by the new process.
        begin_drain("upgrade");
    };

    std::function<void(error_code, int)> on_signal = [&](error_code ec, int signo) {
        if (ec) return;
        if (signo == SIGHUP) {
            if (draining) {
                spdlog::warn("SIGHUP during the drain: not reloading");
            } else if (upgrading()) {
                spdlog::warn(
                    "SIGHUP during an upgrade: not reloading (the new process reads the file as it starts; "
                    "reload once the upgrade has ended)");
            } else {
                reload();
            }
        } else if (signo == SIGUSR2) {
            start_upgrade({});
        } else if (!draining) {
            draining = true;
            draining_ = true;
            // An upgrade not yet ready is rolled back: its binary is killed.
            cancel_waiting_upgrade("apilb is stopping");
            end_upgrade();
            end_session_receive();
            notify_systemd("STOPPING=1");
            const char* why = signo == SIGTERM ? "SIGTERM" : "SIGINT";
            // A node holding the VIPs gives them to a peer before it drains;
            // one announcing them withdraws them and lets the routers converge.
            if (vrrp_) {
                vrrp_->hand_off([&begin_drain, why] { begin_drain(why); });
            } else if (bgp_) {
                bgp_->hand_off([&begin_drain, why] { begin_drain(why); });
            } else {
                begin_drain(why);
            }
        } else {
            spdlog::warn("second signal during drain: closing every session now");
            if (vrrp_) vrrp_->cut_short();
            if (bgp_) bgp_->cut_short();
            deadline = clock_type::now();
            abort_all();
        }
        signals.async_wait(on_signal);
    };
    signals.async_wait(on_signal);

    control.run();
    // From here apilb only winds down: a signal that arrives now (a second
    // SIGINT sent right after the first) must not kill it half-way with
    // 128+signal instead of 0. clear() hands the signals back to the default
    // action, so ignore them explicitly after it; cancel() ends the pending
    // wait, which clear() leaves in place.
    {
        error_code ignored;
        signals.cancel(ignored);
        signals.clear(ignored);
        std::signal(SIGINT, SIG_IGN);
        std::signal(SIGTERM, SIG_IGN);
        std::signal(SIGHUP, SIG_IGN);
        std::signal(SIGUSR2, SIG_IGN);
    }
    cancel_waiting_upgrade("apilb is stopping");
    end_upgrade();
    end_session_receive();
    // An answer in progress (POST /api/v1/upgrade?wait=1 after the handover,
    // a failed upgrade's outcome posted by end_upgrade) goes out first.
    if (admin_) {
        admin_->retire();
        const auto until = clock_type::now() + std::chrono::seconds(2);
        while (admin_->answering() && clock_type::now() < until) {
            control.restart();
            control.run_for(std::chrono::milliseconds(20));
        }
    }
    upgrade_handed_over_ = nullptr;  // it refers to this function's locals
    for (auto& w : workers_) w->stop();
    // Let the probe loops unwind (they end at once once stopped), so that no
    // coroutine outlives the checker it refers to.
    health_->stop();
    for (auto& t : reload_timers_) t.cancel();
    rebalancer_->stop();
    for (auto& d : discovery_) d->stop();
    for (auto& dp : discovery_pools_) dp->timer.cancel();
    if (vrrp_) vrrp_->stop();
    if (bgp_) bgp_->stop();
    if (admin_) admin_->stop();
    if (watchdog_timer_) watchdog_timer_->cancel();
    drain_timer.cancel();
    control.restart();
    control.run_for(std::chrono::seconds(3));
    if (health_->running() != 0) spdlog::warn("health: {} probe loop(s) did not end", health_->running());
    spdlog::info(
        "apilb stopped: {} session(s) served, {} refused at the limit, {} without a backend, "
        "{} closed because their backend became unhealthy, {} reload(s), {} failed reload(s), "
        "{} closed because a reload removed their backend, {} moved by rebalancing, "
        "{} reset because a peer stopped taking data",
        stats_.accepted_total.load() - stats_.refused_limit_total.load(), stats_.refused_limit_total.load(),
        stats_.no_backend_total.load(), stats_.closed_by_health_total.load(), stats_.reloads_total.load(),
        stats_.reload_failures_total.load(), stats_.closed_by_reload_total.load(),
        stats_.closed_by_rebalance_total.load(), stats_.closed_by_stall_total.load());
    return 0;
}

}  // namespace apilb
