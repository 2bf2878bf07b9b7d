#include "apilb/balancer.hpp"

#include <cassert>

namespace apilb {

std::optional<std::size_t> balancer_state::choose(balance_policy policy,
                                                  std::span<const backend_load> loads) {
    assert(loads.size() == current_.size());
    switch (policy) {
    case balance_policy::round_robin:
        return choose_round_robin(loads);
    case balance_policy::least_connections:
        return choose_least_connections(loads);
    }
    return std::nullopt;
}

std::optional<std::size_t> balancer_state::choose_round_robin(std::span<const backend_load> loads) {
    // Only available backends take part, so a skipped backend does not bank
    // credit and then receive a burst when it comes back.
    std::int64_t total = 0;
    std::optional<std::size_t> best;
    for (std::size_t i = 0; i < loads.size(); ++i) {
        if (!loads[i].available) continue;
        current_[i] += loads[i].weight;
        total += loads[i].weight;
        if (!best || current_[i] > current_[*best]) best = i;
    }
    if (best) current_[*best] -= total;
    return best;
}

std::optional<std::size_t> balancer_state::choose_least_connections(
    std::span<const backend_load> loads) {
    const std::size_t n = loads.size();
    std::optional<std::size_t> best;
    for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (cursor_ + k) % n;
        if (!loads[i].available) continue;
        if (!best) {
            best = i;
            continue;
        }
        // active_i / weight_i < active_b / weight_b, without division.
        const auto lhs = std::uint64_t{loads[i].active} * loads[*best].weight;
        const auto rhs = std::uint64_t{loads[*best].active} * loads[i].weight;
        if (lhs < rhs) best = i;
    }
    if (best) cursor_ = (*best + 1) % n;
    return best;
}

}  // namespace apilb
