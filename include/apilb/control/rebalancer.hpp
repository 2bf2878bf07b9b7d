// Moves long-lived sessions back onto backends that returned or were added:
// after a rolling apiserver restart, the last one back would otherwise get
// no connections for hours, since watches never end on their own.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "apilb/dataplane/rebalance_order.hpp"
#include "apilb/dataplane/snapshot.hpp"

namespace apilb {

/// Runs on the control thread (start, stop and each tick check it); ticks every 100 ms while some pool has
/// rebalancing enabled. Per pool, a token bucket caps closes at
/// rebalance.max_closes_per_second; each tick closes what
/// rebalance_plan() (or, for Maglev, the sessions' own preferences) asks.
class rebalancer {
public:
    using snapshot_fn = std::function<std::shared_ptr<const snapshot>()>;
    using close_fn = std::function<void(std::vector<rebalance_order>)>;

    rebalancer(boost::asio::io_context& control, snapshot_fn current, close_fn close);

    /// Starts ticking (if any pool has rebalancing enabled); call again after
    /// a reload.
    void start();
    void stop();

private:
    void tick();

    struct pool_state {
        double tokens = 0;
        std::vector<std::shared_ptr<std::atomic<std::int64_t>>> issued;  ///< last tick's quotas
    };

    boost::asio::steady_timer timer_;
    snapshot_fn current_;
    close_fn close_;
    std::map<std::string, pool_state> pools_;
    bool running_ = false;
};

}  // namespace apilb
