// What the admin endpoint says about a running apilb, as text: the Prometheus
// exposition, the status JSON, readiness and the status page. Control
// thread only (it reads the health checker's probe records).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apilb/core/bgp_report.hpp"
#include "apilb/dataplane/snapshot.hpp"

namespace apilb {

/// The admin endpoint's own counters. Control thread only, like the endpoint.
struct admin_stats {
    bool tls = false;                                ///< the endpoint speaks HTTPS: its TLS counters are reported
    std::uint64_t tls_handshake_failures_total = 0;  ///< connections cut off before a request
    std::uint64_t auth_failures_total = 0;           ///< state-changing requests refused for want of a credential
    std::uint64_t connections_evicted_total = 0;     ///< idle connections closed to make room for new ones
};

class discovery_client;

/// The state beyond the snapshot that the admin endpoint reports.
struct admin_facts {
    const process_stats* stats = nullptr;
    const admin_stats* admin = nullptr;  ///< set by the admin server; nullptr = none
    std::string config_hash;             ///< short hash of the loaded config file's bytes
    std::string vrrp_role;               ///< "" when there is no vrrp section
    bgp_report bgp;                      ///< enabled = false when there is no bgp section
    bool draining = false;               ///< SIGTERM seen
    std::size_t workers = 0;
    bool relay_io_uring = false;  ///< the workers wait in io_uring (relay.io), not epoll
    /// One per pool with a discovery section; owned by the process.
    std::vector<const discovery_client*> discovery;
    /// The config as its file says, before discovery replaced any pool's
    /// backends (the seed); nullptr = the snapshot's.
    std::shared_ptr<const config> file_config;
};

/// Prometheus text exposition format 0.0.4, every name under apilb_ (docs/admin.md).
std::string render_metrics(const snapshot& snap, const admin_facts& facts);

/// GET /api/v1/status: pools, backends, health, sessions, weights, drain state.
std::string render_status_json(const snapshot& snap, const admin_facts& facts);

/// GET /readyz's body and verdict: one line per pool, then "ready" or why not.
struct readiness {
    bool ready = false;
    std::string body;
};
readiness check_readiness(const snapshot& snap, const admin_facts& facts);

/// GET /: the self-contained status page (no external assets).
const std::string& status_page_html();

/// Escapes a Prometheus label value: backslash, double quote, newline.
std::string escape_label_value(const std::string& value);

}  // namespace apilb
