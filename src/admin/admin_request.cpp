#include "apilb/admin/admin_request.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace apilb {

namespace http = boost::beast::http;

namespace {

const std::string api_backends = "/api/v1/backends/";

/// Compares without an early exit, so timing does not reveal a prefix.
bool same_secret(std::string_view a, std::string_view b) {
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    for (std::size_t i = 0; i < a.size(); ++i)
        diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
    return diff == 0 && !b.empty();
}

bool name_matches(const std::string& host, const std::string& pattern) {
    if (pattern.rfind("*.", 0) != 0) return host == pattern;
    // "*.example.com" stands for exactly one label in front of example.com.
    const std::string_view suffix = std::string_view(pattern).substr(1);
    if (host.size() <= suffix.size() || !host.ends_with(suffix)) return false;
    const std::string_view label = std::string_view(host).substr(0, host.size() - suffix.size());
    return label.find('.') == std::string_view::npos;
}

admin_reply json_reply(http::status status, std::string_view key, std::string_view value) {
    return {.status = status, .content_type = "application/json", .body = admin_json_message(key, value)};
}

/// Why a POST is refused, or nullopt if it may go on; sets `auth_failure`
/// when its credentials are what is wrong.
std::optional<admin_reply> refuse_post(const admin_request& req, const admin_access& access, bool client_verified,
                                       std::string& auth_failure) {
    const auto auth = req[http::field::authorization];
    const auto origin = req[http::field::origin];
    http::status status = http::status::forbidden;
    if (!access.post_disabled.empty()) {
        auth_failure = access.post_disabled;
    } else if (access.client_ca && !client_verified) {
        // Unreachable with client_auth: all (the handshake failed).
        auth_failure =
            "this request needs a client certificate signed by the CA in admin.tls.client_ca_file "
            "(apilb --cert/--key, curl --cert/--key)";
    } else if (!access.token.empty() && !(auth.starts_with("Bearer ") && same_secret(auth.substr(7), access.token))) {
        status = http::status::unauthorized;
        auth_failure = "this request needs the admin bearer token (Authorization: Bearer ...) from " +
                       access.token_file +
                       ": run `apilb` as root on the node (it reads the file through the config), or give --token-file";
    } else if (access.token.empty() && !access.client_ca) {
        // No credential at all: admin_server sets post_disabled then; refuse
        // here too, so that no set-up can let an unauthenticated POST through.
        auth_failure = "drain, enable and reload are disabled: no credential is configured";
    } else if (!origin.empty() &&
               origin != (access.tls ? "https://" : "http://") + std::string(req[http::field::host])) {
        // A page from another site that the operator's browser has open
        // must not drain backends (CSRF); the Host is one of ours by now.
        return json_reply(status, "error", "cross-origin request refused");
    } else {
        return std::nullopt;
    }
    return json_reply(status, "error", auth_failure);
}

}  // namespace

std::string admin_json_message(std::string_view key, std::string_view value) {
    boost::json::object o;
    o[key] = value;
    return boost::json::serialize(o) + "\n";
}

bool admin_host_allowed(std::string_view host, const std::vector<std::string>& names) {
    if (host.empty()) return true;
    std::string_view name = host;
    if (name.front() == '[') {
        const auto close = name.find(']');
        if (close == std::string_view::npos) return false;
        boost::system::error_code ec;
        boost::asio::ip::make_address_v6(std::string(name.substr(1, close - 1)), ec);
        return !ec;
    }
    if (const auto colon = name.rfind(':'); colon != std::string_view::npos) name = name.substr(0, colon);
    if (name.ends_with('.')) name.remove_suffix(1);
    if (name.empty()) return false;
    boost::system::error_code ec;
    boost::asio::ip::make_address_v4(std::string(name), ec);
    // An IP literal cannot be a name an attacker's DNS rebinds.
    if (!ec) return true;
    std::string h(name);
    std::transform(h.begin(), h.end(), h.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return name_matches(h, n); });
}

admin_decision decide_admin_request(const admin_request& req, const admin_access& access, bool client_verified) {
    std::string path(req.target());
    std::string query;
    if (auto q = path.find('?'); q != std::string::npos) {
        query = path.substr(q + 1);
        path.resize(q);
    }
    admin_decision d;
    const bool get = req.method() == http::verb::get;
    const bool post = req.method() == http::verb::post;
    auto refuse = [&](admin_reply r) {
        d.refusal = std::move(r);
        return d;
    };
    auto not_allowed = [&](const char* allowed) {
        return refuse({.status = http::status::method_not_allowed,
                       .content_type = "text/plain; charset=utf-8",
                       .body = fmt::format("{} only\n", allowed)});
    };
    const bool probe = path == "/livez" || path == "/readyz";
    if (!probe && !admin_host_allowed(req[http::field::host], access.host_names)) {
        // DNS rebinding: a web page whose name now resolves to this host
        // would read the status and POST here; its Host names that page.
        return refuse({.status = http::status::misdirected_request,
                       .content_type = "text/plain; charset=utf-8",
                       .body = fmt::format("this endpoint does not answer to Host: {}; use its IP address, localhost, "
                                           "or a name in admin.host_names\n",
                                           std::string(req[http::field::host].substr(0, 100)))});
    }
    struct get_route {
        std::string_view path;
        admin_route route;
    };
    static constexpr get_route gets[] = {
        {"/livez", admin_route::livez},          {"/readyz", admin_route::readyz}, {"/metrics", admin_route::metrics},
        {"/api/v1/status", admin_route::status}, {"/", admin_route::page},         {"/index.html", admin_route::page},
    };
    for (const auto& g : gets) {
        if (path != g.path) continue;
        if (!get) return not_allowed("GET");
        d.route = g.route;
        return d;
    }
    if (path != "/api/v1/reload" && path != "/api/v1/upgrade" && !path.starts_with(api_backends)) {
        return refuse({.status = http::status::not_found,
                       .content_type = "text/plain; charset=utf-8",
                       .body = "not found; see /api/v1/status, /metrics, /livez, /readyz\n"});
    }
    if (!post) return not_allowed("POST");
    if (auto refused = refuse_post(req, access, client_verified, d.auth_failure)) return refuse(std::move(*refused));
    if (path == "/api/v1/reload") {
        d.route = admin_route::reload;
        return d;
    }
    if (path == "/api/v1/upgrade") {
        // The one parameter: anything else is a typo the caller should hear
        // of, not an upgrade that answers before it was meant to.
        if (query == "wait=1" || query == "wait=true") {
            d.wait = true;
        } else if (!query.empty() && query != "wait=0" && query != "wait=false") {
            return refuse(json_reply(http::status::bad_request, "error", "expected /api/v1/upgrade or ?wait=1"));
        }
        d.route = admin_route::upgrade;
        return d;
    }
    // /api/v1/backends/{pool}/{name}/{drain|enable}
    std::vector<std::string> parts;
    const std::string rest = path.substr(api_backends.size());
    for (std::size_t pos = 0;;) {
        const auto slash = rest.find('/', pos);
        parts.push_back(rest.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos));
        if (slash == std::string::npos) break;
        pos = slash + 1;
    }
    if (parts.size() != 3 || (parts[2] != "drain" && parts[2] != "enable")) {
        return refuse(json_reply(http::status::not_found, "error",
                                 "expected /api/v1/backends/{pool}/{backend}/drain or /enable"));
    }
    d.route = admin_route::backend;
    d.pool = std::move(parts[0]);
    d.backend = std::move(parts[1]);
    d.drain = parts[2] == "drain";
    return d;
}

}  // namespace apilb
