// Pacing decisions, pure functions: when a new connection to a backend may
// start (reconnect storm control) and how many long-lived sessions to move
// off over-loaded backends (rebalancing). No clock, no I/O.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace apilb {

/// A turn reserved by gcra_reserve.
struct gcra_slot {
    std::int64_t new_tat = 0;   ///< the state to store (ns)
    std::int64_t delay_ns = 0;  ///< how long the caller waits before it goes (0 = now)
};

/// The generic cell rate algorithm (a token bucket without a refill timer):
/// one connection per `interval_ns`, with up to `burst` at once above that
/// rate. `tat` is the stored state (theoretical arrival time, ns on the same
/// clock as `now`, 0 at first). Reserves the next turn and says how long to
/// wait for it, or nullopt if that wait would exceed `max_delay_ns` (then
/// nothing is reserved).
std::optional<gcra_slot> gcra_reserve(std::int64_t tat, std::int64_t now, std::int64_t interval_ns, std::uint32_t burst,
                                      std::int64_t max_delay_ns);

/// One backend of a pool as the rebalancer sees it.
struct backend_share {
    std::uint32_t active = 0;  ///< established sessions
    std::uint32_t weight = 1;
    bool eligible = true;  ///< healthy and not drained: may take sessions
};

/// How many sessions to close on each backend (same order as `backends`) so
/// that the pool's sessions spread by weight over its eligible backends.
/// Nothing is closed unless some eligible backend holds less than
/// (1 - tolerance) of its weighted share; then each backend holding more
/// than its share gives up the excess. Ineligible backends are left alone
/// (health and drain close their sessions).
std::vector<std::uint32_t> rebalance_plan(std::span<const backend_share> backends, double tolerance);

}  // namespace apilb
