// bgp.manage: true. zebra, bgpd and bfdd as apilb's children, in a
// directory of apilb's own (bgp.vty_socket_dir, so the host's FRR is never
// talked to), configured with the frr.conf apilb renders; all restarted with
// backoff when one ends; stopped bgpd first on apilb's exit. Each daemon runs
// under a small keeper process of apilb's that stays root and ends its daemon
// once the lifeline's read end hangs up: when the last apilb holding its
// write end dies however it dies (docs/bgp.md). An upgrade hands the keepers,
// their pidfds and the lifeline to the new process, which supervises them
// without being their parent (docs/upgrade.md). Control thread only.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apilb/core/config.hpp"
#include "apilb/vip/child_lifeline.hpp"

namespace apilb {

class frr_supervisor {
public:
    /// `cfg` must have a bgp section with manage: true (the loader resolved
    /// its vty_socket_dir). Nothing runs before start().
    frr_supervisor(boost::asio::io_context& control, std::shared_ptr<const config> cfg);
    /// Ends whatever still runs, as stop() does.
    ~frr_supervisor();
    frr_supervisor(const frr_supervisor&) = delete;
    frr_supervisor& operator=(const frr_supervisor&) = delete;

    /// Starts the daemons and applies frr.conf, on the control context
    /// (nothing here blocks); failures are logged and retried with backoff.
    void start();

    /// An upgrade: stops watching (no restart, no reaping) and returns
    /// duplicates of the lifeline and of each keeper's pidfd for the new
    /// process; throws std::runtime_error (nothing frozen) unless every
    /// daemon runs and its frr.conf is applied.
    handed_children freeze();
    /// The upgrade failed: watches again, as before freeze().
    void thaw();
    /// The upgrade succeeded: lets go of the daemons without ending them
    /// (the new process holds the lifeline and watches them) and closes this
    /// process's lifeline and pidfds.
    void release();
    /// The new process of an upgrade: supervises the daemons the old one
    /// handed over (not its children: watched through their pidfds) as if it
    /// had started them; a daemon missing from `children` makes it start
    /// them all again. `restarts` goes on from the old process's count.
    void adopt(handed_children children, std::uint64_t restarts);

    /// SIGTERM to bgpd (the routers get a Cease), then bfdd, then zebra, each
    /// SIGKILLed with its keeper past 3 s. Blocks, at most 3 s per daemon.
    void stop();

    /// Times the daemons were started again (apilb_bgp_frr_restarts_total).
    std::uint64_t restarts() const noexcept { return restarts_; }

private:
    /// One daemon: its keeper (apilb's child, the leader of their process
    /// group) and the daemon's own pid (from its pid file; -1 until read).
    struct daemon {
        std::string name;
        pid_t keeper = -1;
        pid_t pid = -1;
        int pidfd = -1;        ///< the keeper's; -1 when the kernel gave none
        bool adopted = false;  ///< handed over by an upgrade: not this process's child
        bool term_sent = false;
        std::chrono::steady_clock::time_point kill_at{};
    };

    /// `adopted`: the daemons were handed over and run; watch them first.
    boost::asio::awaitable<void> run_loop(bool adopted);
    /// Whether `d`'s keeper has ended (reaped if it was this process's
    /// child); `how` says how, when that is known.
    bool keeper_ended(daemon& d, std::string& how);
    /// Forgets `d`'s keeper, closing its pidfd.
    static void forget(daemon& d);
    /// Prepares the directory and starts every daemon, then applies frr.conf; false (logged) on any failure.
    boost::asio::awaitable<bool> start_all();
    /// Returns once a keeper has ended (or stop() was called).
    boost::asio::awaitable<void> watch();
    /// Keeps d's log and output file within a bound (1 MiB): the log rotated
    /// (one earlier generation), the output emptied. A few system calls.
    void bound_logs(const daemon& d) const;
    /// Ends the daemons in order, without blocking the control thread.
    boost::asio::awaitable<void> end_all();
    /// One step of ending the daemons bgpd first; true once every keeper is reaped.
    bool ending_step();
    /// A waiting pause of the coroutines (they end if stop() cancels it).
    boost::asio::awaitable<bool> pause(std::chrono::milliseconds d);
    bool prepare_dir();
    void end_leftover(const std::string& name);
    void spawn(daemon& d);
    std::string path(const std::string& file) const { return dir_ + "/" + file; }

    boost::asio::io_context& control_;
    std::shared_ptr<const config> cfg_;
    const std::string dir_;
    std::vector<daemon> daemons_;  ///< in start order: zebra, bgpd[, bfdd]
    boost::asio::steady_timer timer_;
    /// Its write end held by every apilb of this node, its read end by every keeper.
    lifeline lifeline_;
    bool stopping_ = false;
    bool watching_ = false;  ///< every daemon runs, frr.conf applied: an upgrade may take them
    bool frozen_ = false;    ///< an upgrade is handing them over: no reaping, no restart
    bool released_ = false;  ///< handed over: the new process owns them
    std::chrono::milliseconds backoff_{100};
    std::uint64_t restarts_ = 0;
};

}  // namespace apilb
