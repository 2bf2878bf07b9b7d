// Turning discovery's set into a pool's backends: which apiservers are
// listed, which are terminating, which are leaving (gone from the list but
// kept for discovery.grace_period while they pass their probes), and the
// pool config that says so. Pure: no I/O, no clock reads (callers pass the
// time in). Control thread (or a test).
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <vector>

#include "apilb/control/endpoint_slices.hpp"
#include "apilb/core/config.hpp"

namespace apilb {

/// One apiserver of a discovery pool, as applied to its backends.
struct discovered_member {
    socket_address address;
    /// Listed, but not ready, not serving or terminating: no new sessions.
    bool terminating = false;
    /// When it left the API's list (steady clock); nullopt while listed.
    std::optional<std::chrono::steady_clock::time_point> left_at;
    friend bool operator==(const discovered_member&, const discovered_member&) = default;
};

/// The address a listed endpoint names.
socket_address address_of(const discovered_endpoint& e);

/// The members a pool has before the API answers: its static backends (the seed).
std::vector<discovered_member> seed_members(const pool_config& file_pool);

/// The members after the API listed `listed` at `now`: every listed address
/// once, in the list's order, with its conditions; then every earlier member
/// the list no longer names, leaving since it first left. `listed` is never
/// empty (discovery_client passes no empty set on).
std::vector<discovered_member> merge_listing(const std::vector<discovered_member>& before,
                                             const std::vector<discovered_endpoint>& listed,
                                             std::chrono::steady_clock::time_point now);

/// Whether a backend at this address passes its probes now.
using passing_fn = std::function<bool(const socket_address&)>;

/// `members` without the leaving ones whose grace is over at `now` or that
/// no longer pass their probes: they go, and the commit drains them.
std::vector<discovered_member> drop_departed(std::vector<discovered_member> members, duration grace,
                                             std::chrono::steady_clock::time_point now, const passing_fn& passing);

/// When the first leaving member's grace ends; nullopt when none is leaving.
std::optional<std::chrono::steady_clock::time_point> next_grace_end(const std::vector<discovered_member>& members,
                                                                    duration grace);

/// `file_pool` with its backends replaced by `members`. A member at a static
/// backend's address is that backend (its name, weight and drain, so it keeps
/// its health and counters); the others are discovered and named by their
/// address. connect_attempts (when it was "each backend once") and the
/// Maglev table size are resolved again as the loader resolves them.
pool_config discovered_pool(const pool_config& file_pool, const std::vector<discovered_member>& members);

}  // namespace apilb
