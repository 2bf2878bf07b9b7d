// What a reload changes between the running config and a new one: which
// listeners and backends stay the same (and so keep their sockets, counters
// and health), which come and go, and which settings only a restart can
// change. Pure core: no Asio, no sockets.
#pragma once

#include <string>
#include <vector>

#include "apilb/core/config.hpp"

namespace apilb {

/// The same backend across a reload: same pool name, backend name and
/// address. It keeps its counters and health state; weight and drain may
/// differ. A new address is a new backend.
bool same_backend(const pool_config& old_pool, const backend_config& old_backend, const pool_config& new_pool,
                  const backend_config& new_backend);

/// The same listener across a reload: same address. Its sockets stay open
/// (the kernel keeps accepting through the reload); name, pool and backlog
/// may differ.
bool same_listener(const listener_config& old_listener, const listener_config& new_listener);

/// Differences between two configs, as text for the reload's log line.
struct config_diff {
    std::vector<std::string> listeners_added;    ///< "name@address"
    std::vector<std::string> listeners_removed;  ///< "name@address"
    std::vector<std::string> listeners_changed;  ///< same address; "name@address pool a->b"
    std::vector<std::string> backends_added;     ///< "pool/backend@address"
    std::vector<std::string> backends_removed;   ///< "pool/backend@address"
    std::vector<std::string> backends_changed;   ///< same identity; "pool/backend weight 1->3"
    std::vector<std::string> pools_changed;      ///< balance, attempts, health or maglev settings: "pool (health)"
    std::vector<std::string> settings_changed;   ///< applied sections: "timeouts", "tcp", "limits.per_backend"
    /// Settings a reload does not change: "workers 2->4". They keep their
    /// running value until apilb is restarted.
    std::vector<std::string> restart_only;

    /// Nothing that the reload applies differs (restart-only changes aside).
    bool empty() const;
    /// One line: "listeners +a -b ~c; backends +x -y ~z; ..." or "no changes".
    std::string summary() const;
};

/// Compares `running` with `next`.
config_diff diff_configs(const config& running, const config& next);

/// `next` with every restart-only setting (workers, relay, log,
/// limits.max_connections, timeouts.idle) set back to its value in
/// `running`, so that the running snapshot says what is really in force.
config keep_restart_only(const config& running, config next);

}  // namespace apilb
