// What the rebalancer (control thread) asks the workers to close. Its own
// header so that the worker takes the order without the rebalancer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "apilb/dataplane/snapshot.hpp"

namespace apilb {

/// What the rebalancer asks the workers to close in one tick: at most
/// `quota` sessions on `backend`, oldest first, or (maglev pools, `backend`
/// null) sessions of pool `pool` that are not on their preferred backend.
/// Quotas are shared by all workers and taken with fetch_sub. Pool and
/// backend are named by identities a reload keeps (name, health block), not
/// by position: the order may reach a worker after a reload renumbered them.
struct rebalance_order {
    std::string pool;
    std::shared_ptr<const backend_health> backend;
    std::shared_ptr<std::atomic<std::int64_t>> quota;
};

}  // namespace apilb
