// Balancing decisions: which backend of a pool a new session goes to. Pure
// core: no Asio, no atomics; the caller passes a snapshot of the loads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "apilb/core/config.hpp"
#include "apilb/core/maglev.hpp"

namespace apilb {

/// What the balancer needs to know of one backend at the moment of choosing.
struct backend_load {
    std::uint32_t weight = 1;  ///< >= 1; the caller scales it for slow start
    std::uint32_t active = 0;  ///< sessions open on it now
    bool available = true;     ///< false: skip (at its limit, already tried, or unhealthy and not allowed)
    /// Health preference (health_tier): only the lowest tier among the
    /// available backends is chosen from, so a suspect or unhealthy backend
    /// is used only when nothing better is left.
    std::uint8_t tier = 0;
};

/// Per-worker choosing state for one pool. Not shared between threads: each
/// worker keeps its own, so choosing never takes a lock.
class balancer_state {
public:
    explicit balancer_state(std::size_t backends) : current_(backends, 0) {}

    /// Picks a backend, or nullopt when none is available.
    /// round-robin: smooth weighted round-robin (nginx's algorithm), which
    /// interleaves weights instead of sending bursts to the heaviest backend.
    /// least-connections: fewest (active + 1) sessions per unit of weight, so
    /// that a light weight (slow start) holds back a backend with no sessions
    /// too; ties are broken by a rotating cursor so equal backends share new
    /// sessions. Either way only backends of the lowest available tier count.
    std::optional<std::size_t> choose(balance_policy policy, std::span<const backend_load> loads);

private:
    std::optional<std::size_t> choose_round_robin(std::span<const backend_load> loads);
    std::optional<std::size_t> choose_least_connections(std::span<const backend_load> loads);

    std::vector<std::int64_t> current_;  ///< smooth WRR current weights
    std::size_t cursor_ = 0;             ///< least-connections tie breaker
};

/// maglev: the first backend on the key's own preference walk through
/// `table` that is available and of the lowest available tier. Keys whose
/// backend is fine never move; a key whose backend is down, full or already
/// tried moves to its own next choice. Weights act through the table (slow
/// start does not apply to maglev pools).
std::optional<std::size_t> choose_maglev(const maglev_table& table, std::uint64_t key_hash,
                                         std::span<const backend_load> loads);

}  // namespace apilb
