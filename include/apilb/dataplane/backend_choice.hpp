// What a session asks before it connects: which backends may take it now
// (health tier, slow start, drain, limits, the ones it tried), a session
// slot on the chosen one, the client's Maglev key, and storm control's
// turns. Shared by every worker without a lock: the counters are atomics.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/container/small_vector.hpp>

#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "apilb/core/balancer.hpp"
#include "apilb/core/config.hpp"
#include "apilb/core/pacing.hpp"

namespace apilb {

struct backend_stats;
struct pool_runtime;

/// Backends tried so far by one session (1 = tried), by position in the
/// pool; no allocation for pools of up to 16.
using tried_set = boost::container::small_vector<std::uint8_t, 16>;

/// Reserves a session slot on a backend, honouring limits.per_backend across
/// all workers without a lock.
bool try_reserve(backend_stats& stats, std::uint32_t per_backend);

/// What the balancer needs of every backend of `pool` now: its health tier,
/// its weight scaled by slow start (in 1/1000), and whether it may be chosen
/// (not drained, not tried, under `per_backend`, not unhealthy unless the
/// pool tries all).
void fill_loads(std::vector<backend_load>& loads, const pool_runtime& pool, const tried_set& tried,
                std::uint32_t per_backend);

/// The Maglev key of a client: its address bytes (and port), hashed the same
/// way on every apilb, so both balancers of a pair agree.
std::uint64_t client_key_hash(const boost::asio::ip::tcp::endpoint& ep, hash_key key);

/// Reserves a turn in the GCRA `state`, shared with every worker, without a
/// lock; nullopt if it would wait longer than `max_delay` (nanoseconds).
std::optional<gcra_slot> reserve_turn(std::atomic<std::int64_t>& state, std::int64_t interval, std::uint32_t burst,
                                      std::int64_t max_delay);

/// Takes a turn in `state` if one is due now and returns 0; otherwise takes
/// nothing and returns how long until one is (nanoseconds, at least 1).
std::int64_t take_turn_now(std::atomic<std::int64_t>& state, std::int64_t interval, std::uint32_t burst);

}  // namespace apilb
