#include "apilb/core/balancer.hpp"

#include <algorithm>
#include <cassert>
#include <cstdint>

namespace apilb {

std::optional<std::size_t> balancer_state::choose(balance_policy policy, std::span<const backend_load> loads) {
    assert(loads.size() == current_.size());
    // Only the best tier on offer takes part; the others are as if unavailable.
    std::uint8_t best_tier = UINT8_MAX;
    for (const auto& l : loads) {
        if (l.available) best_tier = std::min(best_tier, l.tier);
    }
    if (best_tier == UINT8_MAX) return std::nullopt;
    std::span<const backend_load> view = loads;
    std::vector<backend_load> filtered;
    if (std::any_of(loads.begin(), loads.end(), [&](const auto& l) { return l.available && l.tier != best_tier; })) {
        filtered.assign(loads.begin(), loads.end());
        for (auto& l : filtered) l.available = l.available && l.tier == best_tier;
        view = filtered;
    }
    switch (policy) {
    case balance_policy::round_robin: return choose_round_robin(view);
    case balance_policy::least_connections: return choose_least_connections(view);
    case balance_policy::maglev:
        // Needs the pool's table and the client's key: choose_maglev().
        break;
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

std::optional<std::size_t> balancer_state::choose_least_connections(std::span<const backend_load> loads) {
    const std::size_t n = loads.size();
    std::optional<std::size_t> best;
    for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (cursor_ + k) % n;
        if (!loads[i].available) continue;
        if (!best) {
            best = i;
            continue;
        }
        // (active_i + 1) / weight_i < (active_b + 1) / weight_b, without division.
        const auto lhs = (std::uint64_t{loads[i].active} + 1) * loads[*best].weight;
        const auto rhs = (std::uint64_t{loads[*best].active} + 1) * loads[i].weight;
        if (lhs < rhs) best = i;
    }
    if (best) cursor_ = (*best + 1) % n;
    return best;
}

std::optional<std::size_t> choose_maglev(const maglev_table& table, std::uint64_t key_hash,
                                         std::span<const backend_load> loads) {
    std::optional<std::uint8_t> best_tier;
    for (const auto& l : loads) {
        if (l.available && (!best_tier || l.tier < *best_tier)) best_tier = l.tier;
    }
    if (!best_tier) return std::nullopt;
    auto fits = [&](std::size_t i) { return loads[i].available && loads[i].tier == *best_tier; };
    // With a share of at least 1/n per backend, 64 × n steps miss a fitting
    // backend with a probability far below 1e-9; the scan below is for that.
    const std::uint32_t walk = 64 * static_cast<std::uint32_t>(loads.size());
    for (std::uint32_t attempt = 0; attempt < walk; ++attempt) {
        const std::size_t b = table.lookup(key_hash, attempt);
        if (b < loads.size() && fits(b)) return b;
    }
    for (std::size_t i = 0; i < loads.size(); ++i) {
        if (fits(i)) return i;
    }
    return std::nullopt;
}

}  // namespace apilb
