// vrrp.manage: true. keepalived as apilb's child: started with the config
// rendered from apilb's own, restarted with backoff when it dies (after
// removing the VIPs it may have left behind), sent SIGHUP when a reload
// changes the rendered file, stopped on shutdown. Control thread only
// (start, reload and stop check it).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>

#include "apilb/dataplane/snapshot.hpp"

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
    /// up to 3 s, then SIGKILL and removes the VIPs itself. Blocks.
    void stop();

    /// keepalived's pid, or -1 while it is not running.
    pid_t pid() const noexcept { return pid_; }

private:
    std::string render() const;
    void write_config(const std::string& text);
    void spawn();
    boost::asio::awaitable<void> watch_loop();
    void remove_vips();

    boost::asio::io_context& control_;
    std::shared_ptr<const snapshot> snap_;
    boost::asio::steady_timer timer_;
    std::string rendered_;
    pid_t pid_ = -1;
    bool stopping_ = false;
    std::chrono::milliseconds backoff_{100};
    std::chrono::steady_clock::time_point started_at_{};
    int restarts_ = 0;
};

}  // namespace apilb
