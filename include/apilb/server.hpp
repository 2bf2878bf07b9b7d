// The process: workers, listeners, signals and the drain on SIGTERM.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <memory>
#include <vector>

#include "apilb/runtime.hpp"

namespace apilb {

class worker;
class health_checker;
class vrrp_agent;

class server {
public:
    /// Builds the snapshot, the health checker (its probe TLS contexts) and
    /// binds every listener on every worker. Throws std::system_error (naming
    /// the listener and address) if a bind fails, std::runtime_error if a
    /// probe certificate or key cannot be loaded.
    explicit server(std::shared_ptr<const config> cfg);
    ~server();

    /// Serves until SIGTERM/SIGINT, then drains: stops accepting at once,
    /// lets sessions finish for up to timeouts.drain, closes what is left.
    /// A second signal during the drain closes everything at once. Returns
    /// the process exit code.
    int run();

    const process_stats& stats() const noexcept { return stats_; }

private:
    std::shared_ptr<const snapshot> snap_;
    process_stats stats_;  // before workers_: sessions un-count themselves as workers go away
    /// Probes, signals, the drain: everything that is not the data path.
    boost::asio::io_context control_{1};
    std::unique_ptr<health_checker> health_;  // after control_: its timers live on it
    std::unique_ptr<vrrp_agent> vrrp_;        ///< set when the config has a vrrp section
    std::vector<std::unique_ptr<worker>> workers_;
    std::uint32_t max_connections_ = 0;  ///< configured limit, capped by the fd limit
};

}  // namespace apilb
