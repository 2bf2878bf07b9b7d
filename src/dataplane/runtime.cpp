#include "apilb/dataplane/runtime.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <filesystem>

#include "apilb/core/config_diff.hpp"

namespace apilb {

std::uint64_t count_open_fds() {
    struct stat st {};
    if (::stat("/proc/self/fd", &st) == 0 && st.st_size > 0) return static_cast<std::uint64_t>(st.st_size);
    std::error_code ec;
    std::uint64_t n = 0;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        ++n;
    }
    return n > 0 ? n - 1 : 0;  // less the listing's own descriptor
}

std::error_code reserve_fd_table(std::uint64_t descriptors) {
    if (descriptors < 2 || descriptors > INT_MAX) return {};
    // Any open descriptor will do to duplicate; /dev/null is always there.
    const int probe = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (probe < 0) return {errno, std::system_category()};
    std::error_code ec;
    // F_DUPFD takes the lowest free descriptor from the one asked for: the
    // table is grown to hold it, and stays so after the close.
    const int high = ::fcntl(probe, F_DUPFD_CLOEXEC, static_cast<int>(descriptors - 1));
    if (high < 0) {
        ec = {errno, std::system_category()};
    } else {
        ::close(high);
    }
    ::close(probe);
    return ec;
}

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

std::string unready_reason(const snapshot& snap) {
    for (const auto& pool : snap.pools) {
        const bool any = std::any_of(pool.backends.begin(), pool.backends.end(), [](const backend_runtime& b) {
            return b.health->healthy.load(std::memory_order_relaxed);
        });
        if (!any) return "pool " + pool.cfg->name + " has no healthy backend";
    }
    return {};
}

}  // namespace apilb
