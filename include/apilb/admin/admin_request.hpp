// What the admin endpoint does with one parsed request, decided from the
// request and the endpoint's guards alone: the route, and every refusal
// (Host, method, credentials, Origin, a malformed backend path). No socket,
// no clock, no log: admin_server calls it for every request and then acts;
// the admin fuzz target (tests/fuzz/admin_request_fuzz.cpp) calls the same.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace apilb {

/// An admin request as admin_server reads it.
using admin_request = boost::beast::http::request<boost::beast::http::string_body>;

/// Limits of one admin request; admin_server's parser enforces them.
inline constexpr std::uint32_t admin_header_limit = 8 * 1024;
inline constexpr std::uint64_t admin_body_limit = 4 * 1024;  ///< no request of ours has a body

/// How the endpoint authenticates state changes, as admin_server set it up.
struct admin_access {
    std::string token;          ///< the bearer token POSTs must carry; "" = none
    std::string token_file;     ///< where the token is, for the refusal's text
    std::string post_disabled;  ///< non-empty: every POST is refused with this reason
    bool tls = false;           ///< HTTPS
    bool client_ca = false;     ///< TLS with admin.tls.client_ca_file: POSTs need a verified client certificate
    /// Names a Host header may carry besides IP literals (lower case).
    std::vector<std::string> host_names;
};

/// Where a request goes once nothing refused it.
enum class admin_route { livez, readyz, metrics, status, page, reload, upgrade, backend };

/// An answer admin_server sends as it is.
struct admin_reply {
    boost::beast::http::status status = boost::beast::http::status::ok;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

/// The decision on one request.
struct admin_decision {
    /// Set: send this and do nothing else. Unset: serve `route`.
    std::optional<admin_reply> refusal;
    admin_route route = admin_route::livez;
    /// Non-empty: a refused POST's credentials (counted in
    /// admin_auth_failures_total and logged with this reason).
    std::string auth_failure;
    /// route backend: /api/v1/backends/{pool}/{backend}/{drain|enable}.
    std::string pool;
    std::string backend;
    bool drain = false;
    /// route upgrade: `?wait=1`, answer once the upgrade has ended, not once it started.
    bool wait = false;
};

/// Decides what to do with `req`; `client_verified`: a client certificate
/// was presented and verified against admin.tls.client_ca_file. A POST is
/// served only with every credential `access` asks for; the same arguments
/// always give the same decision.
admin_decision decide_admin_request(const admin_request& req, const admin_access& access, bool client_verified);

/// Whether a Host header value names this endpoint: an IP literal (with or
/// without a port) or one of `names` (lower case; "*.example" matches one
/// label). An empty value (HTTP/1.0, not a browser) passes.
bool admin_host_allowed(std::string_view host, const std::vector<std::string>& names);

/// {"key":"value"} and a newline: the JSON bodies of the admin endpoint.
std::string admin_json_message(std::string_view key, std::string_view value);

}  // namespace apilb
