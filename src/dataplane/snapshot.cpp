#include "apilb/dataplane/snapshot.hpp"

#include <algorithm>

#include "apilb/core/config_diff.hpp"
#include "apilb/dataplane/pool_readiness.hpp"

namespace apilb {

boost::asio::ip::tcp::endpoint to_endpoint(const socket_address& address) {
    // The loader validated the address; make_address cannot fail here.
    return {boost::asio::ip::make_address(address.ip), address.port};
}

const backend_runtime* snapshot::find_same(const pool_runtime& p, const backend_runtime& b) const {
    for (const auto& mine : pools) {
        if (mine.cfg->name != p.cfg->name) continue;
        for (const auto& candidate : mine.backends) {
            if (same_backend(*mine.cfg, *candidate.cfg, *p.cfg, *b.cfg)) return &candidate;
        }
    }
    return nullptr;
}

std::shared_ptr<const snapshot> snapshot::build(std::shared_ptr<const config> cfg, const snapshot* previous) {
    auto snap = std::make_shared<snapshot>();
    snap->cfg = cfg;
    snap->pools.reserve(cfg->pools.size());
    for (const auto& p : cfg->pools) {
        pool_runtime pr{.cfg = &p, .maglev = {}, .backends = {}};
        for (const auto& b : p.backends) {
            // Until the first check completes a backend is what the config assumes.
            pr.backends.push_back({.cfg = &b,
                                   .endpoint = to_endpoint(b.address),
                                   .stats = std::make_shared<backend_stats>(),
                                   .health = std::make_shared<backend_health>()});
            backend_runtime& br = pr.backends.back();
            if (const backend_runtime* old = previous ? previous->find_same(pr, br) : nullptr) {
                br.stats = old->stats;
                br.health = old->health;
            } else {
                br.health->healthy.store(p.health.initial_healthy, std::memory_order_relaxed);
                // A new apiserver from the API earns its sessions with a
                // passing probe; without active checks nothing would admit it.
                br.health->pending.store(b.discovered && p.health.type != health_check_type::none,
                                         std::memory_order_relaxed);
            }
        }
        if (p.balance == balance_policy::maglev) {
            std::vector<maglev_backend> mb;
            for (const auto& b : p.backends) mb.push_back({.name = b.name, .weight = b.weight});
            pr.maglev = std::make_shared<const maglev_table>(maglev_table::build(mb, p.maglev_table_size));
        }
        snap->pools.push_back(std::move(pr));
    }
    for (const auto& l : cfg->listeners) {
        auto it = std::find_if(cfg->pools.begin(), cfg->pools.end(),
                               [&](const pool_config& p) { return p.name == l.pool; });
        std::shared_ptr<listener_stats> stats;
        if (previous) {
            for (const auto& old : previous->listeners) {
                if (old.cfg->name == l.name) stats = old.stats;
            }
        }
        if (!stats) stats = std::make_shared<listener_stats>();
        snap->listeners.push_back({.cfg = &l,
                                   .endpoint = to_endpoint(l.address),
                                   .pool_index = static_cast<std::size_t>(it - cfg->pools.begin()),
                                   .stats = std::move(stats)});
    }
    return snap;
}

bool has_ready_backend(const pool_runtime& pool) {
    return std::any_of(pool.backends.begin(), pool.backends.end(), [](const backend_runtime& b) {
        return b.health->healthy.load(std::memory_order_relaxed) && !b.health->pending.load(std::memory_order_relaxed);
    });
}

std::string unready_reason(const snapshot& snap) {
    for (const auto& pool : snap.pools) {
        if (!has_ready_backend(pool)) return "pool " + pool.cfg->name + " has no healthy backend";
    }
    return {};
}

}  // namespace apilb
