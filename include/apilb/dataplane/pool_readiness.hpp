// Whether one pool can serve: the test /readyz, the VRRP track file
// (through unready_reason) and the BGP announcement of each VIP share.
#pragma once

#include "apilb/dataplane/snapshot.hpp"

namespace apilb {

/// True while `pool` has a backend that is healthy and not waiting for its
/// first passing probe. Any thread (it reads the health atomics).
bool has_ready_backend(const pool_runtime& pool);

}  // namespace apilb
