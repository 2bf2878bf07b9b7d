// apilb-standin: a small HTTPS server that behaves like kube-apiserver's health,
// version and watch endpoints, and serves the `kubernetes` EndpointSlices and
// Endpoints as the apiserver does (k8s_api.hpp lists that API and the control
// surface tests drive it with), for apilb's integration tests and demo.
//
// One io_context on two threads; every connection runs as one coroutine on its
// own strand, so a connection's TLS stream is never touched from two threads.
// Errors on a connection end that connection only; the process never exits
// because of a client.

#include "k8s_api.hpp"
#include "k8s_store.hpp"
#include "standin_http.hpp"

#include <boost/json.hpp>

#include <openssl/ssl.h>

#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace standin;
using net::use_awaitable;
using namespace std::chrono_literals;

constexpr std::uint64_t body_limit = 1024 * 1024;
constexpr std::uint32_t header_limit = 64 * 1024;
constexpr auto handshake_timeout = 10s;
// Between requests on a keep-alive connection; clients (kubectl, apilb probes)
// reconnect transparently when the server closes an idle connection.
constexpr auto idle_timeout = 120s;
constexpr auto shutdown_timeout = 3s;

std::optional<readiness> parse_readiness(std::string_view s) {
    if (s == "ok") return readiness::ok;
    if (s == "fail") return readiness::fail;
    if (s == "hang") return readiness::hang;
    return std::nullopt;
}

/// Command-line options.
struct options {
    tcp::endpoint listen;
    std::string cert;
    std::string key;
    std::string client_ca;
    bool require_client_cert = false;
    std::string bearer_token_file;
    std::string name = "standin";
    readiness ready = readiness::ok;
    k8s_api_options api;
    /// More apiservers in this process: address and name, on the --listen port.
    std::vector<std::pair<net::ip::address, std::string>> also;
};

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr std::string_view usage_text =
    "usage: apilb-standin --listen IP:PORT --cert FILE --key FILE\n"
    "                     [--client-ca FILE [--require-client-cert]] [--require-bearer-token FILE]\n"
    "                     [--name NAME] [--readyz ok|fail|hang] [--also-listen IP=NAME ...]\n"
    "                     [--token-auth-file FILE] [--forbidden-user USER] [--bookmark-interval-ms N]\n"
    "  --listen IP:PORT   address to bind (IPv4 or [IPv6]:PORT; port 0 picks one);\n"
    "                     prints 'listening on IP:PORT' once bound\n"
    "  --cert, --key      PEM server certificate (chain) and private key\n"
    "  --client-ca FILE   request a client certificate and verify it against FILE\n"
    "  --require-client-cert  refuse the TLS handshake without a client certificate\n"
    "  --require-bearer-token FILE  /healthz, /livez and /readyz answer 401 unless the\n"
    "                     request has 'Authorization: Bearer <token in FILE>'; FILE is\n"
    "                     read again for every request (like kube-apiserver with\n"
    "                     --anonymous-auth=false)\n"
    "  --name NAME        reported in X-Standin-Name and /whoami (default standin)\n"
    "  --readyz STATE     initial /readyz state (default ok)\n"
    "  --also-listen IP=NAME  another apiserver on IP, the --listen port, named NAME,\n"
    "                     with its own /readyz; it shares this one's API objects as\n"
    "                     apiservers share etcd (not in slice `kubernetes` at start)\n"
    "  --token-auth-file FILE  Kubernetes API bearer tokens, kube-apiserver's format\n"
    "                     (token,user,uid[,groups]), read again for every request;\n"
    "                     a client certificate from --client-ca authenticates its CN\n"
    "  --forbidden-user USER  an authenticated user the API answers 403\n"
    "  --bookmark-interval-ms N  watch BOOKMARK interval (default 60000, the apiserver's)\n"
    "The API serves slice `kubernetes` with this server's address at start;\n"
    "see tests/standin/k8s_api.hpp for its paths and the /control/ surface.\n";

std::string endpoint_string(const tcp::endpoint& ep) {
    const auto port = std::to_string(ep.port());
    if (ep.address().is_v6()) return "[" + ep.address().to_string() + "]:" + port;
    return ep.address().to_string() + ":" + port;
}

tcp::endpoint parse_endpoint(std::string_view s) {
    const auto colon = s.rfind(':');
    if (colon == std::string_view::npos || colon + 1 == s.size())
        throw usage_error("--listen: expected IP:PORT, got '" + std::string(s) + "'");
    auto host = s.substr(0, colon);
    const auto port_str = s.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    unsigned port = 0;
    const auto [end, ec] = std::from_chars(port_str.data(), port_str.data() + port_str.size(), port);
    if (ec != std::errc{} || end != port_str.data() + port_str.size() || port > 65535)
        throw usage_error("--listen: bad port '" + std::string(port_str) + "'");
    boost::system::error_code aec;
    const auto addr = net::ip::make_address(std::string(host), aec);
    if (aec) throw usage_error("--listen: bad IP address '" + std::string(host) + "'");
    return {addr, static_cast<unsigned short>(port)};
}

options parse_args(int argc, char** argv) {
    options opt;
    bool have_listen = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        std::string_view value;
        bool inline_value = false;
        if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
            value = arg.substr(eq + 1);
            arg = arg.substr(0, eq);
            inline_value = true;
        }
        if (arg == "-h" || arg == "--help") {
            std::cout << usage_text;
            std::exit(0);
        }
        if (arg == "--require-client-cert") {
            opt.require_client_cert = true;
            continue;
        }
        if (!inline_value) {
            if (i + 1 >= argc) throw usage_error(std::string(arg) + ": missing value");
            value = argv[++i];
        }
        if (arg == "--listen") {
            opt.listen = parse_endpoint(value);
            have_listen = true;
        } else if (arg == "--cert") {
            opt.cert = value;
        } else if (arg == "--key") {
            opt.key = value;
        } else if (arg == "--client-ca") {
            opt.client_ca = value;
        } else if (arg == "--require-bearer-token") {
            opt.bearer_token_file = value;
        } else if (arg == "--also-listen") {
            const auto eq = value.find('=');
            if (eq == std::string_view::npos || eq + 1 == value.size())
                throw usage_error("--also-listen: expected IP=NAME, got '" + std::string(value) + "'");
            boost::system::error_code aec;
            const auto addr = net::ip::make_address(std::string(value.substr(0, eq)), aec);
            if (aec) throw usage_error("--also-listen: bad IP address '" + std::string(value.substr(0, eq)) + "'");
            opt.also.emplace_back(addr, std::string(value.substr(eq + 1)));
        } else if (arg == "--name") {
            opt.name = value;
        } else if (arg == "--token-auth-file") {
            opt.api.token_auth_file = value;
        } else if (arg == "--forbidden-user") {
            opt.api.forbidden_user = value;
        } else if (arg == "--bookmark-interval-ms") {
            const auto ms = parse_u64(value);
            if (!ms || *ms < 10 || *ms > 3600 * 1000) throw usage_error("--bookmark-interval-ms: expected 10-3600000");
            opt.api.bookmark_interval = std::chrono::milliseconds{*ms};
        } else if (arg == "--readyz") {
            const auto r = parse_readiness(value);
            if (!r) throw usage_error("--readyz: expected ok, fail or hang");
            opt.ready = *r;
        } else {
            throw usage_error("unknown option '" + std::string(arg) + "'");
        }
    }
    if (!have_listen) throw usage_error("--listen is required");
    if (opt.cert.empty() || opt.key.empty()) throw usage_error("--cert and --key are required");
    if (opt.require_client_cert && opt.client_ca.empty()) throw usage_error("--require-client-cert needs --client-ca");
    return opt;
}

// ALPN: only HTTP/1.1. kubectl offers h2 first; a client that offers nothing we
// speak gets no ALPN answer rather than a failed handshake.
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
                void*) {
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, outlen, http11, sizeof http11 - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

ssl::context make_tls_context(const options& opt) {
    ssl::context ctx{ssl::context::tls_server};
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                    ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    ctx.use_certificate_chain_file(opt.cert);
    ctx.use_private_key_file(opt.key, ssl::context::pem);
    SSL_CTX* native = ctx.native_handle();
    SSL_CTX_set_alpn_select_cb(native, select_alpn, nullptr);
    // Session resumption with client verification needs a session id context.
    static const unsigned char sid_ctx[] = "apilb-standin";
    SSL_CTX_set_session_id_context(native, sid_ctx, sizeof sid_ctx - 1);
    if (!opt.client_ca.empty()) {
        // Like kube-apiserver (VerifyClientCertIfGiven): ask for a certificate,
        // accept its absence, reject one that does not verify.
        ctx.load_verify_file(opt.client_ca);
        ctx.set_verify_mode(opt.require_client_cert ? ssl::verify_peer | ssl::verify_fail_if_no_peer_cert
                                                    : ssl::verify_peer);
        if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(opt.client_ca.c_str()))
            SSL_CTX_set_client_CA_list(native, names);
    } else {
        ctx.set_verify_mode(ssl::verify_none);
    }
    return ctx;
}

constexpr std::string_view text_plain = "text/plain; charset=utf-8";

response text(const request& req, http::status status, std::string body, const server_state& state) {
    return make_response(status, req.version(), req.keep_alive(), std::move(body), text_plain, state);
}

response json_response(const request& req, const json::object& obj, const server_state& state) {
    return make_response(http::status::ok, req.version(), req.keep_alive(), json::serialize(obj), "application/json",
                         state);
}

// kube-apiserver's verbose readyz output (a subset of its checks).
std::string readyz_body(bool ready) {
    std::string body = "[+]ping ok\n[+]log ok\n";
    body += ready ? "[+]etcd ok\n" : "[-]etcd failed: reason withheld\n";
    body += "[+]informer-sync ok\n";
    body += ready ? "readyz check passed\n" : "readyz check failed\n";
    return body;
}

/// Sends a response whose connection is then closed (errors while reading the
/// request); ignores failures, the connection is going away anyway.
net::awaitable<void> send_error(tls_stream& stream, http::status status, std::string body, const server_state& state) {
    auto res = make_response(status, 11, false, std::move(body), text_plain, state);
    beast::get_lowest_layer(stream).expires_after(write_timeout);
    co_await http::async_write(stream, res, net::as_tuple(use_awaitable));
}

// /readyz in "hang": the request is swallowed and never answered. Reads (and
// discards) until the client goes away or the server stops.
net::awaitable<void> hang(tls_stream& stream) {
    beast::get_lowest_layer(stream).expires_never();
    std::array<char, 4096> sink;
    for (;;) {
        auto [ec, n] = co_await stream.async_read_some(net::buffer(sink), net::as_tuple(use_awaitable));
        if (ec) co_return;
    }
}

/// Streams kube-style watch events as chunked JSON lines. Returns whether the
/// connection may carry another request.
net::awaitable<bool> serve_watch(tls_stream& stream, const request& req, std::uint64_t events,
                                 std::chrono::milliseconds interval, const server_state& state) {
    if (!co_await write_stream_header(stream, req, state)) co_return false;

    net::steady_timer timer{co_await net::this_coro::executor};
    for (std::uint64_t i = 1; events == 0 || i <= events; ++i) {
        // The first event goes out at once (like a watch's initial ADDED
        // events); the rest are spaced by the interval.
        if (i > 1) {
            timer.expires_after(interval);
            co_await timer.async_wait(net::as_tuple(use_awaitable));
        }
        const auto rv = std::to_string(i);
        const std::string line =
            R"({"type":"ADDED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm-)" + rv +
            R"(","resourceVersion":")" + rv + "\"}}}\n";
        if (!co_await write_chunk(stream, line)) co_return false;
    }
    if (!co_await write_last_chunk(stream)) co_return false;
    co_return req.keep_alive();
}

/// The token in `file`, surrounding whitespace removed; "" if unreadable.
std::string read_token(const std::string& file) {
    std::FILE* f = std::fopen(file.c_str(), "rb");
    if (f == nullptr) return {};
    std::string text;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return {};
    return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

/// Health endpoints with --require-bearer-token: the request's bearer token
/// must equal the file's (read now, so a test can rotate it).
bool authorized(const request& req, const server_state& state) {
    if (state.bearer_token_file.empty()) return true;
    const std::string token = read_token(state.bearer_token_file);
    const auto header = req[http::field::authorization];
    return !token.empty() && std::string_view(header.data(), header.size()) == "Bearer " + token;
}

enum class action { respond, hang, watch, k8s };

/// What to do with one request: a plain response, or one of the two
/// long-running behaviours (watch parameters travel in the out-params).
action route(const request& req, const std::string& remote, tls_stream& stream, server_state& state, response& res,
             std::uint64_t& watch_events, std::chrono::milliseconds& watch_interval) {
    const target t{std::string_view{req.target().data(), req.target().size()}};
    const auto method = req.method();
    const bool get = method == http::verb::get;

    const bool health_path = t.path == "/healthz" || t.path == "/livez" || t.path == "/readyz";
    if (k8s_api::handles(t.path)) return action::k8s;
    if (get && health_path && !authorized(req, state)) {
        res = text(req, http::status::unauthorized,
                   R"({"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","code":401})",
                   state);
    } else if (get && (t.path == "/healthz" || t.path == "/livez")) {
        res = text(req, http::status::ok, "ok", state);
    } else if (get && t.path == "/readyz") {
        switch (state.ready.load()) {
        case readiness::hang: return action::hang;
        case readiness::fail: res = text(req, http::status::internal_server_error, readyz_body(false), state); break;
        case readiness::ok:
            res = text(req, http::status::ok, t.param("verbose") ? readyz_body(true) : "ok", state);
            break;
        }
    } else if (method == http::verb::post && t.path == "/control/readyz") {
        const auto status = t.param("status");
        const auto r = status ? parse_readiness(*status) : std::nullopt;
        if (r) {
            state.ready.store(*r);
            res = text(req, http::status::ok, "ok", state);
        } else {
            res = text(req, http::status::bad_request, "status must be ok, fail or hang\n", state);
        }
    } else if (get && t.path == "/version") {
        res = json_response(
            req,
            {{"major", "1"}, {"minor", "32"}, {"gitVersion", "v1.32.0-apilb-standin"}, {"platform", "linux/amd64"}},
            state);
    } else if ((method == http::verb::post || method == http::verb::put) && t.path == "/echo") {
        res = make_response(http::status::ok, req.version(), req.keep_alive(), req.body(), "application/octet-stream",
                            state);
    } else if (get && t.path == "/whoami") {
        res = json_response(
            req, {{"name", state.name}, {"remote", remote}, {"client_cert_subject", peer_subject(stream)}}, state);
    } else if (get && t.path == "/watch") {
        const auto events = t.param("events");
        const auto interval = t.param("interval_ms");
        const auto n = events ? parse_u64(*events) : std::optional<std::uint64_t>{0};
        const auto ms = interval ? parse_u64(*interval) : std::optional<std::uint64_t>{1000};
        if (!n || !ms || *ms > 24ull * 3600 * 1000) {
            res = text(req, http::status::bad_request, "events and interval_ms must be integers\n", state);
        } else {
            watch_events = *n;
            watch_interval = std::chrono::milliseconds{*ms};
            return action::watch;
        }
    } else {
        res = text(req, http::status::not_found, "404 page not found\n", state);
    }
    return action::respond;
}

bool is_http_parse_error(const boost::system::error_code& ec) {
    return ec.category() == http::make_error_code(http::error::bad_target).category() &&
           ec != http::error::end_of_stream && ec != http::error::partial_message;
}

net::awaitable<void> session(tcp::socket socket, ssl::context& tls, server_state& state) {
    boost::system::error_code ec;
    const auto remote_ep = socket.remote_endpoint(ec);
    const std::string remote = ec ? std::string{} : endpoint_string(remote_ep);
    tls_stream stream{std::move(socket), tls};
    auto& tcp_layer = beast::get_lowest_layer(stream);

    tcp_layer.expires_after(handshake_timeout);
    if (auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, net::as_tuple(use_awaitable)); hec)
        co_return;  // not TLS, wrong CA, timeout: just drop it

    beast::flat_buffer buffer;
    bool keep_alive = true;
    while (keep_alive) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(header_limit);
        parser.body_limit(body_limit);

        tcp_layer.expires_after(idle_timeout);
        auto [rec, rn] = co_await http::async_read_header(stream, buffer, parser, net::as_tuple(use_awaitable));
        if (!rec && !parser.is_done()) {
            // curl sends "Expect: 100-continue" for larger bodies and would
            // otherwise wait a second before sending the body.
            if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
                http::response<http::empty_body> cont{http::status::continue_, parser.get().version()};
                tcp_layer.expires_after(write_timeout);
                if (auto [wec, wn] = co_await http::async_write(stream, cont, net::as_tuple(use_awaitable)); wec)
                    co_return;
            }
            tcp_layer.expires_after(idle_timeout);
            std::tie(rec, rn) = co_await http::async_read(stream, buffer, parser, net::as_tuple(use_awaitable));
        }
        if (rec == http::error::body_limit) {
            co_await send_error(stream, http::status::payload_too_large, "request body too large\n", state);
            break;
        }
        if (rec == http::error::header_limit) {
            co_await send_error(stream, http::status::request_header_fields_too_large, "header too large\n", state);
            break;
        }
        if (rec) {
            if (is_http_parse_error(rec))
                co_await send_error(stream, http::status::bad_request, "bad request\n", state);
            break;
        }

        request req = parser.release();
        response res;
        std::uint64_t watch_events = 0;
        std::chrono::milliseconds watch_interval{1000};
        switch (route(req, remote, stream, state, res, watch_events, watch_interval)) {
        case action::hang: co_await hang(stream); co_return;
        case action::watch:
            keep_alive = co_await serve_watch(stream, req, watch_events, watch_interval, state);
            if (!keep_alive) co_return;
            continue;
        case action::k8s:
            keep_alive = co_await state.api->serve(stream, req, state);
            if (!keep_alive) co_return;
            continue;
        case action::respond: break;
        }
        keep_alive = res.keep_alive();
        tcp_layer.expires_after(write_timeout);
        if (auto [wec, wn] = co_await http::async_write(stream, res, net::as_tuple(use_awaitable)); wec) co_return;
    }

    tcp_layer.expires_after(shutdown_timeout);
    co_await stream.async_shutdown(net::as_tuple(use_awaitable));
}

net::awaitable<void> accept_loop(tcp::acceptor& acceptor, net::io_context& ioc, ssl::context& tls,
                                 server_state& state) {
    net::steady_timer backoff{co_await net::this_coro::executor};
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(net::any_io_executor{net::make_strand(ioc)},
                                                           net::as_tuple(use_awaitable));
        if (ec == net::error::operation_aborted || !acceptor.is_open()) co_return;
        if (ec) {
            // EMFILE and friends: back off instead of spinning.
            std::cerr << "apilb-standin: accept: " << ec.message() << "\n";
            backoff.expires_after(50ms);
            co_await backoff.async_wait(net::as_tuple(use_awaitable));
            continue;
        }
        const auto ex = socket.get_executor();
        net::co_spawn(ex, session(std::move(socket), tls, state), [](std::exception_ptr e) {
            if (!e) return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& x) {
                std::cerr << "apilb-standin: session failed: " << x.what() << "\n";
            }
        });
    }
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    try {
        opt = parse_args(argc, argv);
    } catch (const usage_error& e) {
        std::cerr << "apilb-standin: " << e.what() << "\n" << usage_text;
        return 2;
    }
    std::signal(SIGPIPE, SIG_IGN);

    try {
        // One state per apiserver (name, /readyz); a deque, as they cannot move.
        std::deque<server_state> states;
        states.emplace_back(opt.name, opt.ready, opt.bearer_token_file);
        for (const auto& [addr, name] : opt.also) states.emplace_back(name, readiness::ok, opt.bearer_token_file);
        // Declared before the io_context: pending sessions are destroyed with
        // the io_context and still reference the TLS context and state.
        ssl::context tls = make_tls_context(opt);
        std::optional<k8s_store> store;  // made once the port is known
        std::optional<k8s_api> api;
        net::io_context ioc{2};
        const net::any_io_executor control = net::make_strand(ioc);

        std::deque<tcp::acceptor> acceptors;
        auto listen_on = [&](const tcp::endpoint& ep) -> tcp::acceptor& {
            tcp::acceptor& acceptor = acceptors.emplace_back(control);
            acceptor.open(ep.protocol());
            acceptor.set_option(net::socket_base::reuse_address(true));
            if (ep.address().is_v6()) acceptor.set_option(net::ip::v6_only(true));
            acceptor.bind(ep);
            acceptor.listen(net::socket_base::max_listen_connections);
            return acceptor;
        };
        const auto bound = listen_on(opt.listen).local_endpoint();
        for (const auto& [addr, name] : opt.also) listen_on({addr, bound.port()});
        // The API's `kubernetes` slice starts with this apiserver in it, as
        // the endpoint reconciler writes it.
        store.emplace(bound.address().to_string(), bound.port());
        opt.api.advertise = endpoint_string(bound);
        api.emplace(*store, opt.api);
        for (auto& state : states) state.api = &*api;
        std::cout << "listening on " << endpoint_string(bound) << std::endl;

        net::signal_set signals{control, SIGINT, SIGTERM};
        signals.async_wait([&](const boost::system::error_code& ec, int) {
            if (ec) return;
            boost::system::error_code ignored;
            for (auto& acceptor : acceptors) acceptor.close(ignored);
            ioc.stop();
        });
        for (std::size_t i = 0; i < acceptors.size(); ++i) {
            net::co_spawn(control, accept_loop(acceptors[i], ioc, tls, states[i]), [&ioc](std::exception_ptr e) {
                if (!e) return;
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& x) {
                    std::cerr << "apilb-standin: accept loop failed: " << x.what() << "\n";
                }
                ioc.stop();
            });
        }

        std::thread second{[&ioc] { ioc.run(); }};
        ioc.run();
        second.join();
    } catch (const std::exception& e) {
        std::cerr << "apilb-standin: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
