#include "apilb/core/pacing.hpp"

#include <algorithm>
#include <cmath>

namespace apilb {

std::optional<gcra_slot> gcra_reserve(std::int64_t tat, std::int64_t now, std::int64_t interval_ns, std::uint32_t burst,
                                      std::int64_t max_delay_ns) {
    // A turn may start once now >= tat - tolerance; burst turns fit in the tolerance.
    const std::int64_t tolerance = interval_ns * static_cast<std::int64_t>(std::max<std::uint32_t>(burst, 1) - 1);
    const std::int64_t earliest = std::max(now, tat - tolerance);
    const std::int64_t delay = earliest - now;
    if (delay > max_delay_ns) return std::nullopt;
    return gcra_slot{.new_tat = std::max(tat, now) + interval_ns, .delay_ns = delay};
}

std::vector<std::uint32_t> rebalance_plan(std::span<const backend_share> backends, double tolerance) {
    std::vector<std::uint32_t> closes(backends.size(), 0);
    std::uint64_t total = 0, weights = 0;
    for (const auto& b : backends) {
        if (!b.eligible) continue;
        total += b.active;
        weights += b.weight;
    }
    if (weights == 0 || total == 0) return closes;
    auto share = [&](const backend_share& b) {
        return static_cast<double>(total) * b.weight / static_cast<double>(weights);
    };
    const bool someone_starved = std::any_of(backends.begin(), backends.end(), [&](const backend_share& b) {
        // At least one session short as well: a pool of three sessions is
        // never "out of balance" by a fraction of one.
        return b.eligible && b.active < share(b) * (1.0 - tolerance) && share(b) - b.active >= 1.0;
    });
    if (!someone_starved) return closes;
    for (std::size_t i = 0; i < backends.size(); ++i) {
        const auto& b = backends[i];
        if (!b.eligible) continue;
        const double excess = b.active - std::ceil(share(b));
        if (excess >= 1.0) closes[i] = static_cast<std::uint32_t>(excess);
    }
    return closes;
}

}  // namespace apilb
