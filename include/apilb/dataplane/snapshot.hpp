// The running form of a config: resolved endpoints, health and the counters
// that workers update. Built once per config by the control thread and handed
// to workers as std::shared_ptr<const snapshot>; a session keeps the snapshot
// it started with.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apilb/core/config.hpp"
#include "apilb/core/maglev.hpp"
#include "apilb/dataplane/stats.hpp"

namespace apilb {

struct probe_record;  // control/probe_record.hpp: the control thread's, not the data path's

/// What the health checker (control thread) tells the workers about one
/// backend. Workers only read it, lock-free, when they choose a backend;
/// `suspect` is also set by a worker whose client's connect failed.
struct backend_health {
    std::atomic<bool> healthy{true};
    /// A client's connect just failed; skipped until a probe passes.
    std::atomic<bool> suspect{false};
    /// steady_clock time (ns since its epoch) it last became healthy after
    /// being unhealthy, for slow start; 0 = full weight.
    std::atomic<std::int64_t> ramp_start_ns{0};
    /// Drained at run time through the admin endpoint: no new sessions, like
    /// `drain: true` in the config. Lives as long as the backend does, so a
    /// reload keeps it.
    std::atomic<bool> admin_drain{false};
    /// A reload removed it: sessions of earlier configs that still list it
    /// choose it no more (a retry after a failed connect goes elsewhere).
    std::atomic<bool> removed{false};
    /// Discovered and not yet admitted: probed, but no sessions until a
    /// probe passes (the health checker clears it).
    std::atomic<bool> pending{false};
    /// What the admin endpoint shows of its probes; made at the first
    /// probe (probe_record_of(), control/probe_record.hpp). Control thread
    /// only: the data path neither reads it nor knows its type.
    std::shared_ptr<probe_record> probes;
};

/// One backend of a snapshot: its config, address, counters and health.
struct backend_runtime {
    const backend_config* cfg = nullptr;
    boost::asio::ip::tcp::endpoint endpoint;
    std::shared_ptr<backend_stats> stats;
    std::shared_ptr<backend_health> health;

    /// Drained, in the config or through the admin endpoint, removed by a
    /// reload, terminating or not yet admitted by discovery: no new sessions.
    bool drained() const noexcept {
        return cfg->drain || cfg->terminating || health->admin_drain.load(std::memory_order_relaxed) ||
               health->removed.load(std::memory_order_relaxed) || health->pending.load(std::memory_order_relaxed);
    }
    /// Healthy, not suspect and not drained: where sessions belong now
    /// (rebalancing, a Maglev key's preferred backend).
    bool takes_sessions() const noexcept {
        return health->healthy.load(std::memory_order_relaxed) && !health->suspect.load(std::memory_order_relaxed) &&
               !drained();
    }
};

/// One pool of a snapshot, with its Maglev table if it balances by Maglev.
struct pool_runtime {
    const pool_config* cfg = nullptr;
    /// balance: maglev only; built once per snapshot, read by every worker.
    std::shared_ptr<const maglev_table> maglev;
    std::vector<backend_runtime> backends;
};

/// One listener of a snapshot: its address, pool and counters.
struct listener_runtime {
    const listener_config* cfg = nullptr;
    boost::asio::ip::tcp::endpoint endpoint;
    std::size_t pool_index = 0;
    std::shared_ptr<listener_stats> stats;
};

/// An immutable config with its runtime parts. Only the atomics in the stats
/// change after construction.
struct snapshot {
    std::shared_ptr<const config> cfg;
    std::vector<pool_runtime> pools;
    std::vector<listener_runtime> listeners;

    /// Resolves every address of `cfg` (numeric only, so this cannot block)
    /// and creates fresh counters, except for backends that `previous` has
    /// too (same_backend()): they share its counters and health, so a
    /// reload neither resets them nor makes them flap.
    static std::shared_ptr<const snapshot> build(std::shared_ptr<const config> cfg, const snapshot* previous = nullptr);

    /// The backend of `previous` that is the same as backend `b` of pool `p`
    /// here, or nullptr.
    const backend_runtime* find_same(const pool_runtime& p, const backend_runtime& b) const;
};

/// "" when `snap` can serve (every pool has a healthy backend), else why
/// not. Shared by /readyz and the VRRP track file so that both agree.
std::string unready_reason(const snapshot& snap);

/// The Asio endpoint for a validated address.
boost::asio::ip::tcp::endpoint to_endpoint(const socket_address& address);

}  // namespace apilb
