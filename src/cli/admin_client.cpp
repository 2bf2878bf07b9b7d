#include "apilb/cli/admin_client.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <optional>
#include <vector>

#include "apilb/admin/admin_server.hpp"
#include "apilb/control/http_io.hpp"
#include "apilb/control/tls_files.hpp"
#include "apilb/core/config.hpp"
#include "apilb/core/file_read.hpp"

namespace apilb::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

struct response {
    unsigned status = 0;
    std::string body;
};

/// Where an exchange failed, for the message.
enum class phase { connect, handshake, exchange, done };

/// Writes the request and reads the response on a connected (and, for TLS,
/// handshaken) stream.
template <class Stream>
asio::awaitable<error_code> exchange(Stream& stream, http::request<http::string_body>& req,
                                     http::response<http::string_body>& res) {
    beast::flat_buffer buffer;
    auto [wec, wn] = co_await http_io::write(stream, req);
    if (wec) co_return wec;
    auto [rec, rn] = co_await http_io::read(stream, buffer, res);
    co_return rec;
}

/// The TLS client side: TLS 1.2+, the server's certificate verified against
/// the anchors and checked for the address's IP (or --server-name), and the
/// client certificate if one was given. nullopt (the reason printed) if a
/// file does not load.
std::optional<ssl::context> client_context(const admin_target& t, const std::string& name) {
    ssl::context ctx(ssl::context::tls_client);
    SSL_CTX* native = ctx.native_handle();
    SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
    ERR_clear_error();
    auto fail = [](const std::string& what) {
        const unsigned long code = ERR_get_error();
        const char* reason = code != 0 ? ERR_reason_error_string(code) : nullptr;
        std::cerr << "error: " << what << ": " << (reason != nullptr ? reason : "cannot be loaded") << '\n';
        ERR_clear_error();
        return std::nullopt;
    };
    auto refuse = [](const std::runtime_error& e) -> std::optional<ssl::context> {
        std::cerr << "error: " << e.what() << '\n';
        return std::nullopt;
    };
    if (!t.ca_file.empty()) {
        try {
            load_ca_file(native, t.ca_is_server_chain ? "admin.tls.cert_file" : "--cacert", t.ca_file);
        } catch (const std::runtime_error& e) {
            return refuse(e);
        }
        // The server's own certificate as the anchor: it need not be a root.
        if (t.ca_is_server_chain) X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(native), X509_V_FLAG_PARTIAL_CHAIN);
    } else if (SSL_CTX_set_default_verify_paths(native) != 1) {
        return fail("the system's CA certificates");
    }
    SSL_CTX_set_verify(native, SSL_VERIFY_PEER, nullptr);
    X509_VERIFY_PARAM* param = SSL_CTX_get0_param(native);
    error_code ec;
    asio::ip::make_address(name, ec);
    if (!ec) {
        X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
    }
    if (!t.cert_file.empty()) {
        try {
            load_certificate_chain_file(native, "--cert", t.cert_file);
            load_private_key_file(native, "--key", t.key_file);
        } catch (const std::runtime_error& e) {
            return refuse(e);
        }
        if (SSL_CTX_check_private_key(native) != 1) return fail("--key " + t.key_file + " does not match --cert");
    }
    return ctx;
}

/// What went wrong, in an operator's terms.
std::string explain(const error_code& ec, phase at, long verify_result, const admin_target& t,
                    const std::string& name) {
    const bool tls_error = ec.category() == asio::error::get_ssl_category();
    if (t.tls && verify_result != X509_V_OK) {
        std::string hint;
        if (verify_result == X509_V_ERR_IP_ADDRESS_MISMATCH || verify_result == X509_V_ERR_HOSTNAME_MISMATCH) {
            hint = fmt::format("it is not issued for {}; --server-name NAME checks another name", name);
        } else if (t.ca_file.empty()) {
            hint = "give the CA that signed it with --cacert FILE";
        } else if (t.ca_is_server_chain) {
            // Replaced on disk, not yet reloaded: the server still presents the old one.
            hint = fmt::format(
                "trusted: the certificate in {}; if it was replaced since apilb loaded it, reload with "
                "`systemctl reload apilb` or give --cacert FILE",
                t.ca_file);
        } else {
            hint = "trusted: " + t.ca_file;
        }
        return fmt::format("TLS: the server's certificate failed verification: {} ({})",
                           X509_verify_cert_error_string(verify_result), hint);
    }
    const std::string text = ec.message();
    if (tls_error && text.find("alert") != std::string::npos) {
        // With TLS 1.3 the server's verdict on our certificate arrives after
        // our side of the handshake, so it shows here as a failed read.
        return fmt::format(
            "TLS: the server refused the connection ({}): it needs a client certificate signed by "
            "its admin.tls.client_ca_file{}",
            text, t.cert_file.empty() ? "; give --cert FILE --key FILE" : "; --cert is not one");
    }
    if (tls_error && text.find("wrong version number") != std::string::npos) {
        return "TLS handshake failed (" + text + "): the endpoint does not speak HTTPS; use http:// or drop --cacert";
    }
    if (!t.tls && at == phase::exchange &&
        (ec == http::error::end_of_stream || ec == asio::error::connection_reset || ec == asio::error::eof)) {
        return text + " (does the endpoint speak HTTPS? give --admin https://ADDRESS --cacert FILE)";
    }
    return (at == phase::handshake ? "TLS handshake: " : "") + text;
}

/// One request, all of it within `timeout`; nullopt (the reason printed)
/// if apilb cannot be reached.
std::optional<response> call(const admin_target& t, http::verb method, const std::string& target,
                             std::chrono::seconds timeout = std::chrono::seconds(10)) {
    auto addr = parse_socket_address(t.address);
    if (!addr) {
        std::cerr << "error: bad admin address " << t.address << " (expected IP:PORT)\n";
        return std::nullopt;
    }
    // Bound to every address: reach it on the loopback, and check that name.
    if (addr->ip == "0.0.0.0") addr->ip = "127.0.0.1";
    if (addr->ip == "::") addr->ip = "::1";
    const std::string url = fmt::format("{}://{}", t.tls ? "https" : "http", t.address);
    const std::string name = t.server_name.empty() ? addr->ip : t.server_name;
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, t.address);
    req.set(http::field::user_agent, "apilb-cli");
    if (!t.token_file.empty()) {
        const std::optional<std::string> token = read_admin_token(t.token_file);
        if (!token || token->empty()) {
            // read_admin_token says only that it failed; the reason, e.g. "is a FIFO".
            const std::string why = token ? "is empty" : read_regular_file(t.token_file, max_token_bytes).error;
            std::cerr << "error: cannot read a token from " << t.token_file << ": it " << why
                      << " (apilb creates it, mode 0600, at start: run this as root or as apilb's user)\n";
            return std::nullopt;
        }
        req.set(http::field::authorization, "Bearer " + *token);
    }
    req.prepare_payload();

    std::optional<ssl::context> ctx;
    if (t.tls) {
        ctx = client_context(t, name);
        if (!ctx) return std::nullopt;
    }
    asio::io_context io;
    http::response<http::string_body> res;
    error_code result;
    phase at = phase::connect;
    long verify_result = X509_V_OK;
    const tcp::endpoint ep{asio::ip::make_address(addr->ip), addr->port};
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            beast::tcp_stream tcp_stream(io);
            // One deadline for the whole exchange, as before TLS.
            tcp_stream.expires_after(timeout);
            auto [cec] = co_await http_io::connect(tcp_stream, ep);
            if (cec) {
                result = cec;
                co_return;
            }
            if (!ctx) {
                at = phase::exchange;
                result = co_await exchange(tcp_stream, req, res);
                if (!result) at = phase::done;
                co_return;
            }
            beast::ssl_stream<beast::tcp_stream> stream(std::move(tcp_stream), *ctx);
            error_code ignored;
            // SNI carries host names only (RFC 6066), never an IP.
            if (asio::ip::make_address(name, ignored); ignored) {
                SSL_set_tlsext_host_name(stream.native_handle(), name.c_str());
            }
            at = phase::handshake;
            auto [hec] = co_await http_io::handshake(stream, ssl::stream_base::client);
            verify_result = SSL_get_verify_result(stream.native_handle());
            if (hec) {
                result = hec;
                co_return;
            }
            at = phase::exchange;
            result = co_await exchange(stream, req, res);
            if (result) co_return;
            at = phase::done;
            // The response is complete (Content-Length); a slow close_notify
            // from the server is not worth waiting for.
            beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(1));
            co_await http_io::shutdown(stream);
        },
        asio::detached);
    io.run();
    if (result && at != phase::done) {
        std::cerr << "error: apilb admin endpoint " << url << ": " << explain(result, at, verify_result, t, name)
                  << (result == beast::error::timeout ? fmt::format(" (after {}s)", timeout.count()) : "") << '\n';
        return std::nullopt;
    }
    return response{.status = res.result_int(), .body = res.body()};
}

std::string message_of(const std::string& body) {
    boost::system::error_code ec;
    const json::value v = json::parse(body, ec);
    if (!ec && v.is_object()) {
        for (const char* key : {"error", "result"}) {
            if (const auto* m = v.as_object().if_contains(key); m && m->is_string()) return std::string(m->as_string());
        }
    }
    return body;
}

std::string str(const json::value& v) { return v.is_string() ? std::string(v.as_string()) : ""; }
std::uint64_t num(const json::value& v) {
    if (v.is_uint64()) return v.as_uint64();
    if (v.is_int64()) return static_cast<std::uint64_t>(v.as_int64());
    return 0;
}

/// "12s ago", "3m ago", "never" for a Unix time in seconds.
std::string age_of(std::int64_t unix_s) {
    if (unix_s <= 0) return "never";
    const auto now =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    const std::int64_t s = std::max<std::int64_t>(0, now - unix_s);
    if (s < 120) return fmt::format("{}s ago", s);
    if (s < 7200) return fmt::format("{}m ago", s / 60);
    return fmt::format("{}h ago", s / 3600);
}

/// What `source` in the status means, for the operator.
std::string source_text(const std::string& source) {
    if (source == "api") return "the API";
    if (source == "state_file") return "the state file (last-known-good: the API has not answered since start)";
    if (source == "seed") return "the seed (the API has not answered since start)";
    return single_line(source);
}

/// `o[key]`, or null when it is missing: a status from another version of
/// apilb may lack a field.
const json::value& field(const json::object& o, const char* key) {
    static const json::value none;
    const auto* v = o.if_contains(key);
    return v != nullptr ? *v : none;
}

/// The `discovery` section, one block per pool: the watch, where the set
/// came from, the discovered set beside the seed, the state file.
void print_discovery(const json::object& st) {
    const json::value& list = field(st, "discovery");
    if (!list.is_array()) return;
    for (const auto& dv : list.as_array()) {
        if (!dv.is_object()) continue;
        const auto& d = dv.as_object();
        const auto text = [&](const char* key) { return single_line(str(field(d, key))); };
        std::cout << fmt::format(
            "\nDISCOVERY {}: watch {}, last sync {}, lists {}, relists {}, events {}, errors {}, empty lists {}\n",
            text("pool"), text("watch_state"), age_of(static_cast<std::int64_t>(num(field(d, "last_sync_unix")))),
            num(field(d, "lists")), num(field(d, "relists")), num(field(d, "events")), num(field(d, "errors")),
            num(field(d, "empty_lists")));
        std::cout << "  set from    " << source_text(str(field(d, "source"))) << '\n';
        const std::string api_server = text("api_server");
        std::cout << "  api server  " << (api_server.empty() ? "none tried yet" : api_server) << '\n';
        const std::string last_error = text("last_error");
        std::cout << "  last error  "
                  << (last_error.empty()
                          ? std::string("none")
                          : fmt::format("{} ({})", last_error,
                                        age_of(static_cast<std::int64_t>(num(field(d, "last_error_unix"))))))
                  << '\n';
        std::string discovered;
        if (const json::value& eps = field(d, "discovered"); eps.is_array()) {
            for (const auto& ev : eps.as_array()) {
                if (!ev.is_object()) continue;
                const auto& e = ev.as_object();
                const std::string ip = single_line(str(field(e, "ip")));
                if (!discovered.empty()) discovered += ", ";
                discovered += ip.find(':') != std::string::npos ? fmt::format("[{}]:{}", ip, num(field(e, "port")))
                                                                : fmt::format("{}:{}", ip, num(field(e, "port")));
                if (field(e, "terminating") == json::value(true)) {
                    discovered += " (terminating)";
                } else if (field(e, "serving") == json::value(false)) {
                    discovered += " (not serving)";
                }
            }
        }
        std::cout << "  discovered  " << (discovered.empty() ? "none yet" : discovered) << '\n';
        std::string seed;
        if (const json::value& bs = field(d, "seed"); bs.is_array()) {
            for (const auto& bv : bs.as_array()) {
                if (!bv.is_object()) continue;
                if (!seed.empty()) seed += ", ";
                seed += single_line(str(field(bv.as_object(), "name"))) + " " +
                        single_line(str(field(bv.as_object(), "address")));
            }
        }
        std::cout << "  seed        " << (seed.empty() ? "-" : seed) << '\n';
        const std::string state_file = text("state_file");
        std::cout << "  state file  "
                  << (state_file.empty()               ? std::string("none (discovery.state_file is not set)")
                      : text("source") == "state_file" ? state_file + " (in use)"
                                                       : state_file)
                  << '\n';
    }
}

}  // namespace

int admin_status(const admin_target& t) {
    const auto r = call(t, http::verb::get, "/api/v1/status");
    if (!r) return 1;
    if (r->status != 200) {
        std::cerr << "error: HTTP " << r->status << ": " << r->body;
        return 1;
    }
    boost::system::error_code ec;
    const json::value v = json::parse(r->body, ec);
    if (ec || !v.is_object()) {
        std::cerr << "error: the admin endpoint sent something that is not JSON\n";
        return 1;
    }
    const auto& st = v.as_object();
    std::cout << fmt::format("{}{}  sessions {}  config {}{}\n", st.at("ready").as_bool() ? "READY" : "NOT READY",
                             st.at("ready").as_bool() ? "" : " (" + str(st.at("ready_reason")) + ")",
                             num(st.at("sessions_active")), str(st.at("config_hash")),
                             str(st.at("vrrp_role")).empty() ? "" : "  vrrp " + str(st.at("vrrp_role")));
    struct row {
        std::string pool, backend, state, active, sessions, probe;
    };
    std::vector<row> rows{{"POOL", "BACKEND", "STATE", "ACTIVE", "SESSIONS", "LAST PROBE"}};
    for (const auto& pv : st.at("pools").as_array()) {
        const auto& p = pv.as_object();
        for (const auto& bv : p.at("backends").as_array()) {
            const auto& b = bv.as_object();
            std::string probe = "-";
            if (const auto& lp = b.at("last_probe"); lp.is_object()) {
                const auto& o = lp.as_object();
                probe = o.at("passed").as_bool() ? fmt::format("ok {:.1f}ms", o.at("duration_ms").to_number<double>())
                                                 : str(o.at("detail"));
            }
            std::string state = str(b.at("state"));
            if (b.at("drain").as_bool()) state += "(" + str(b.at("drain_source")) + ")";
            // A pool that follows the API: where the backend came from and what discovery makes of it.
            if (const auto* d = b.if_contains("discovery"); d != nullptr && !str(*d).empty()) {
                state += " " + str(b.at("origin")) + "/" + str(*d);
            }
            rows.push_back({str(p.at("name")), str(b.at("name")), state, std::to_string(num(b.at("active_sessions"))),
                            std::to_string(num(b.at("sessions_total"))), probe});
        }
    }
    // Columns as wide as their widest cell: pool names like "control-plane"
    // (13) must not push the rest out of line.
    std::size_t w[5] = {};
    for (const auto& r : rows) {
        for (std::size_t i = 0; const std::string* cell : {&r.pool, &r.backend, &r.state, &r.active, &r.sessions}) {
            w[i] = std::max(w[i], cell->size());
            ++i;
        }
    }
    for (const auto& r : rows) {
        std::cout << fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>{}}  {:>{}}  {}\n", r.pool, w[0], r.backend, w[1], r.state,
                                 w[2], r.active, w[3], r.sessions, w[4], r.probe);
    }
    print_discovery(st);
    return 0;
}

int admin_backend(const admin_target& t, const std::string& pool, const std::string& backend, bool drain) {
    const auto r = call(t, http::verb::post,
                        fmt::format("/api/v1/backends/{}/{}/{}", pool, backend, drain ? "drain" : "enable"));
    if (!r) return 1;
    if (r->status == 200) {
        std::cout << pool << "/" << backend << ": " << message_of(r->body) << '\n';
        return 0;
    }
    std::cerr << "error: " << message_of(r->body) << '\n';
    return r->status == 404 || r->status == 409 ? 2 : 1;
}

int admin_reload(const admin_target& t) {
    const auto r = call(t, http::verb::post, "/api/v1/reload");
    if (!r) return 1;
    if (r->status == 200) {
        std::cout << message_of(r->body) << '\n';
        return 0;
    }
    std::cerr << "error: " << message_of(r->body) << '\n';
    // Every reason the server gave, as check-config prints them.
    boost::system::error_code ec;
    const json::value v = json::parse(r->body, ec);
    if (const auto* list = !ec && v.is_object() ? v.as_object().if_contains("errors") : nullptr;
        list && list->is_array()) {
        for (const auto& e : list->as_array()) std::cerr << "error: " << str(e) << '\n';
    }
    return 1;
}

int admin_upgrade(const admin_target& t, std::chrono::seconds timeout) {
    // The server waits for the outcome at most 90 s; --timeout bounds it here.
    const auto r = call(t, http::verb::post, "/api/v1/upgrade?wait=1", timeout);
    if (!r) return 1;
    boost::system::error_code ec;
    const json::value v = json::parse(r->body, ec);
    const json::object empty;
    const json::object& o = !ec && v.is_object() ? v.as_object() : empty;
    if (r->status == 200) {
        std::cout << fmt::format(
            "upgraded: pid {} -> pid {}; {} session(s) handed over in {}ms, {} left with pid {} to drain "
            "(their bytes in flight could not be written out)\n",
            num(field(o, "old_pid")), num(field(o, "new_pid")), num(field(o, "sessions_handed_over")),
            num(field(o, "handover_ms")), num(field(o, "sessions_kept")), num(field(o, "old_pid")));
        return 0;
    }
    if (r->status == 404) {
        // An apilb from before the endpoint: the package's postinst says what to do then.
        std::cerr << "error: this apilb has no POST /api/v1/upgrade (an older version): restart it instead, "
                     "or send it SIGUSR2\n";
        return 1;
    }
    std::cerr << "error: " << single_line(message_of(r->body)) << '\n';
    return 1;
}

}  // namespace apilb::cli
