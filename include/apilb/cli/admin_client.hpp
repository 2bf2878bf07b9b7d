// The CLI's side of the admin endpoint: `apilb status`, `drain`, `enable`,
// `reload` talk to a running apilb over HTTP or HTTPS (docs/admin.md).
#pragma once

#include <chrono>
#include <string>

namespace apilb::cli {

/// Where and how to reach the admin endpoint.
struct admin_target {
    std::string address;     ///< "127.0.0.1:6445"; 0.0.0.0 / :: reach the loopback
    std::string token_file;  ///< "" = send no token
    bool tls = false;        ///< HTTPS; the server's certificate is always verified
    /// Trust anchors for the server's certificate (PEM); "" = the system's.
    std::string ca_file;
    /// ca_file is the server's own certificate chain (its admin.tls.cert_file,
    /// read from the same config): any certificate in it is an anchor.
    bool ca_is_server_chain = false;
    std::string cert_file;    ///< client certificate (PEM); "" = none
    std::string key_file;     ///< its key
    std::string server_name;  ///< the name the certificate must carry; "" = the address's IP
};

/// Prints the pools and backends as a table. Returns 0, or 1 if apilb cannot be reached.
int admin_status(const admin_target& t);
/// POST /api/v1/backends/POOL/BACKEND/{drain|enable}. 0 ok, 1 unreachable or failed, 2 unknown pool/backend.
int admin_backend(const admin_target& t, const std::string& pool, const std::string& backend, bool drain);
/// POST /api/v1/reload. 0 applied, 1 unreachable or rejected.
int admin_reload(const admin_target& t);
/// POST /api/v1/upgrade?wait=1, waiting at most `timeout` for the outcome;
/// prints the old and new pid and the sessions handed over. 0 only once the
/// new process serves; 1 unreachable, refused, failed or out of time.
int admin_upgrade(const admin_target& t, std::chrono::seconds timeout);

}  // namespace apilb::cli
