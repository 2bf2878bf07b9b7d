#include "apilb/dataplane/backend_choice.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "apilb/core/health.hpp"
#include "apilb/core/maglev.hpp"
#include "apilb/dataplane/snapshot.hpp"
#include "apilb/dataplane/stats.hpp"

namespace apilb {

using tcp = boost::asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

std::int64_t steady_now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

}  // namespace

bool try_reserve(backend_stats& stats, std::uint32_t per_backend) {
    auto current = stats.active.load(std::memory_order_relaxed);
    do {
        if (per_backend != 0 && current >= per_backend) return false;
    } while (!stats.active.compare_exchange_weak(current, current + 1, std::memory_order_relaxed));
    return true;
}

void fill_loads(std::vector<backend_load>& loads, const pool_runtime& pool, const tried_set& tried,
                std::uint32_t per_backend) {
    const health_config& health = pool.cfg->health;
    const bool try_all = health.all_unhealthy == all_unhealthy_policy::try_all;
    const std::int64_t now = steady_now_ns();
    loads.resize(pool.backends.size());
    for (std::size_t i = 0; i < loads.size(); ++i) {
        const auto& b = pool.backends[i];
        const auto active = b.stats->active.load(std::memory_order_relaxed);
        const bool healthy = b.health->healthy.load(std::memory_order_relaxed);
        const health_tier tier = tier_of(healthy, b.health->suspect.load(std::memory_order_relaxed));
        std::uint32_t permille = 1000;
        if (const auto ramp = b.health->ramp_start_ns.load(std::memory_order_relaxed); ramp != 0 && healthy) {
            permille = slow_start_permille(std::chrono::nanoseconds(now - ramp), health.slow_start);
        }
        loads[i] = {.weight = b.cfg->weight * permille,
                    .active = active,
                    // drain: no new sessions, like an unhealthy backend under
                    // all_unhealthy: reject (a Maglev key moves to its next choice).
                    .available = !b.drained() && !tried[i] && (per_backend == 0 || active < per_backend) &&
                                 (tier != health_tier::unhealthy || try_all),
                    .tier = static_cast<std::uint8_t>(tier)};
    }
}

std::uint64_t client_key_hash(const tcp::endpoint& ep, hash_key key) {
    std::string bytes;
    const auto addr = ep.address();
    if (addr.is_v4()) {
        const auto b = addr.to_v4().to_bytes();
        bytes.assign(b.begin(), b.end());
    } else {
        const auto b = addr.to_v6().to_bytes();
        bytes.assign(b.begin(), b.end());
    }
    if (key == hash_key::source_address_port) {
        bytes.push_back(static_cast<char>(ep.port() >> 8));
        bytes.push_back(static_cast<char>(ep.port() & 0xff));
    }
    return stable_hash(bytes);
}

std::optional<gcra_slot> reserve_turn(std::atomic<std::int64_t>& state, std::int64_t interval, std::uint32_t burst,
                                      std::int64_t max_delay) {
    const std::int64_t now = steady_now_ns();
    std::int64_t tat = state.load(std::memory_order_relaxed);
    std::optional<gcra_slot> slot;
    do {
        slot = gcra_reserve(tat, now, interval, burst, max_delay);
        if (!slot) break;
    } while (!state.compare_exchange_weak(tat, slot->new_tat, std::memory_order_relaxed));
    return slot;
}

std::int64_t take_turn_now(std::atomic<std::int64_t>& state, std::int64_t interval, std::uint32_t burst) {
    if (reserve_turn(state, interval, burst, 0)) return 0;
    const std::optional<gcra_slot> next = gcra_reserve(state.load(std::memory_order_relaxed), steady_now_ns(), interval,
                                                       burst, std::numeric_limits<std::int64_t>::max());
    return std::max<std::int64_t>(next->delay_ns, 1);
}

}  // namespace apilb
