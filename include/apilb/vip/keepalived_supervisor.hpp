// vrrp.manage: true. keepalived under a keeper of apilb's (child_lifeline.hpp,
// the same keeper and lifeline as FRR's daemons):
// started with the config rendered from apilb's own, restarted with backoff
// when it dies (after removing the VIPs it may have left behind), sent
// SIGHUP when a reload changes the rendered file, stopped on shutdown, and
// stopped by its keeper when the last apilb holding its lifeline dies. An
// upgrade hands it to the new process (hand_over, adopt, release).
// Control thread only (start, reload, stop, adopt and release check it).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>

#include "apilb/dataplane/snapshot.hpp"
#include "apilb/vip/child_lifeline.hpp"

namespace apilb {

class keepalived_supervisor {
public:
    /// `snap` must have a vrrp section with manage: true.
    keepalived_supervisor(boost::asio::io_context& control, std::shared_ptr<const snapshot> snap);
    ~keepalived_supervisor();
    keepalived_supervisor(const keepalived_supervisor&) = delete;
    keepalived_supervisor& operator=(const keepalived_supervisor&) = delete;

    /// Writes <state_dir>/keepalived.conf and starts keepalived. Throws
    /// std::system_error if the file cannot be written or the fork fails.
    void start();

    /// A reload built `snap`: renders again and, if the file changed, writes
    /// it and sends keepalived SIGHUP.
    void reload(std::shared_ptr<const snapshot> snap);

    /// SIGTERM (keepalived then sends priority 0 and removes the VIPs), waits
    /// up to 3 s, then SIGKILL and removes the VIPs itself. Blocks. After
    /// release(), nothing.
    void stop();

    /// The keeper's pid, or -1 while none runs.
    pid_t keeper() const noexcept { return keeper_; }

    /// An upgrade: duplicates of the lifeline and of the keeper's pidfd for
    /// the new process (group "keepalived", child "keepalived"); no children
    /// while none runs. Throws std::system_error.
    handed_children hand_over() const;

    /// An upgrade handed over: stops watching and restarting, closes this
    /// process's lifeline (from now the new process's life holds keepalived)
    /// and leaves keepalived running, also at stop().
    void release();

    /// The new process of an upgrade: supervises the keeper it was handed
    /// (none in `handed`: it starts its own), writes the rendered config if
    /// it changed and then sends keepalived SIGHUP.
    void adopt(handed_children handed);

private:
    std::string render() const;
    /// Closes the keeper's pidfd and forgets it (it runs on or has ended).
    void forget() noexcept;
    void write_config(const std::string& text);
    void spawn();
    boost::asio::awaitable<void> watch_loop();
    void remove_vips();

    boost::asio::io_context& control_;
    std::shared_ptr<const snapshot> snap_;
    boost::asio::steady_timer timer_;
    std::string rendered_;
    /// Its write end held by every apilb of this node, its read end by the keeper.
    lifeline lifeline_;
    pid_t keeper_ = -1;     ///< the leader of a process group with keepalived
    int pidfd_ = -1;        ///< the keeper's
    bool adopted_ = false;  ///< handed over by an upgrade: not this process's child
    bool stopping_ = false;
    bool released_ = false;
    std::chrono::milliseconds backoff_{100};
    std::chrono::steady_clock::time_point started_at_{};
    int restarts_ = 0;
};

}  // namespace apilb
