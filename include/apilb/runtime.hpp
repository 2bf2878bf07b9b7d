// The running form of a config: resolved endpoints and the counters that
// workers update. Built once per config by the control thread and handed to
// workers as std::shared_ptr<const snapshot>; a session keeps the snapshot it
// started with.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "apilb/config.hpp"

namespace apilb {

/// Counters of one backend, shared by all workers (relaxed atomics: they are
/// read for balancing and reporting, never to order other memory). Held by
/// shared_ptr so that a later snapshot can carry them over.
struct backend_stats {
    std::atomic<std::uint32_t> active{0};
    std::atomic<std::uint64_t> sessions_total{0};
    std::atomic<std::uint64_t> connect_failures_total{0};
    std::atomic<std::uint64_t> bytes_to_backend{0};
    std::atomic<std::uint64_t> bytes_from_backend{0};
};

struct backend_runtime {
    const backend_config* cfg = nullptr;
    boost::asio::ip::tcp::endpoint endpoint;
    std::shared_ptr<backend_stats> stats;
};

struct pool_runtime {
    const pool_config* cfg = nullptr;
    std::vector<backend_runtime> backends;
};

struct listener_runtime {
    const listener_config* cfg = nullptr;
    boost::asio::ip::tcp::endpoint endpoint;
    std::size_t pool_index = 0;
};

/// Process-wide counters.
struct process_stats {
    std::atomic<std::uint32_t> active_sessions{0};
    std::atomic<std::uint64_t> accepted_total{0};
    std::atomic<std::uint64_t> refused_limit_total{0};       ///< over limits.max_connections
    std::atomic<std::uint64_t> no_backend_total{0};          ///< every connect attempt failed
    std::atomic<std::uint64_t> accept_errors_total{0};
    std::atomic<std::uint64_t> resource_errors_total{0};    ///< out of fds/memory (accept, socket, pipe)
    std::atomic<std::uint64_t> closed_by_idle_total{0};
    std::atomic<std::uint64_t> closed_by_drain_total{0};
};

/// An immutable config with its runtime parts. Only the atomics in the stats
/// change after construction.
struct snapshot {
    std::shared_ptr<const config> cfg;
    std::vector<pool_runtime> pools;
    std::vector<listener_runtime> listeners;

    /// Resolves every address of `cfg` (numeric only, so this cannot block)
    /// and creates fresh counters.
    static std::shared_ptr<const snapshot> build(std::shared_ptr<const config> cfg);
};

/// The Asio endpoint for a validated address.
boost::asio::ip::tcp::endpoint to_endpoint(const socket_address& address);

}  // namespace apilb
