#include "apilb/admin/admin_server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/json.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <list>

#include "apilb/admin/admin_guard.hpp"
#include "apilb/admin/admin_request.hpp"
#include "apilb/control/http_io.hpp"
#include "apilb/control/tls_files.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb/core/pem_passphrase.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/logging/logging.hpp"

namespace apilb {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using boost::system::error_code;
using namespace std::chrono_literals;

namespace {

/// How long /livez waits for every worker to answer.
constexpr auto livez_deadline = 1000ms;
/// Admin clients are few (probes, a scraper, the CLI). At these caps the
/// oldest idle connection is closed to make room for a new one, so a flood
/// of idle connections cannot lock out kubelet's /livez probe.
constexpr std::size_t max_connections = 64;
constexpr std::size_t max_per_peer = 16;
/// A whole request (headers and body) must arrive within this of the
/// connection's opening or of the previous answer: idle and slow (slowloris)
/// clients are cut off.
constexpr auto request_timeout = 5s;
constexpr auto io_timeout = 10s;
/// The longest POST /api/v1/upgrade?wait=1 waits for the outcome: above
/// the upgrade's own deadline (60 s to ready, the session phase within it).
constexpr auto upgrade_wait_limit = 90s;
/// How long a TLS client gets to answer our close_notify.
constexpr auto tls_shutdown_timeout = 1s;

/// The server side of admin.tls: TLS 1.2 or later, the certificate chain and
/// key, and with a client CA, a request for client certificates (required
/// at the handshake with client_auth: all). Throws std::runtime_error naming
/// the file that did not load.
std::shared_ptr<ssl::context> make_tls_context(const admin_tls_config& t) {
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    SSL_CTX* native = ctx->native_handle();
    ERR_clear_error();
    if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1)
        throw std::runtime_error("TLS 1.2: " + ssl_errors());
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_compression | ssl::context::single_dh_use);
    // TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 keeps OpenSSL's.
    if (SSL_CTX_set_cipher_list(native,
                                "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305") != 1) {
        throw std::runtime_error("TLS cipher list: " + ssl_errors());
    }
    SSL_CTX_set_default_passwd_cb(native, no_passphrase);
    load_certificate_chain_file(native, "admin.tls.cert_file", t.cert_file);
    load_private_key_file(native, "admin.tls.key_file", t.key_file);
    if (SSL_CTX_check_private_key(native) != 1) {
        throw std::runtime_error(fmt::format("admin.tls.key_file: the key in {} does not match the certificate in {}",
                                             t.key_file, t.cert_file));
    }
    if (!t.client_ca_file.empty()) {
        // The CA names go into the CertificateRequest, so that a client with
        // several certificates (a browser) offers the right one.
        load_ca_file(native, "admin.tls.client_ca_file", t.client_ca_file, true);
        int mode = SSL_VERIFY_PEER;
        if (t.client_auth == admin_client_auth::all) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(native, mode, nullptr);
        // Resumed sessions keep their verified client certificate; OpenSSL
        // refuses to resume without a context id once it verifies peers.
        static constexpr unsigned char session_id[] = "apilb-admin";
        SSL_CTX_set_session_id_context(native, session_id, sizeof session_id - 1);
    }
    return ctx;
}

/// "CN=..., expires 2026-12-01 10:00:00 GMT, sha256 ab12..." for the log.
std::string describe_certificate(const ssl::context& ctx) {
    X509* cert = SSL_CTX_get0_certificate(const_cast<ssl::context&>(ctx).native_handle());
    if (cert == nullptr) return "no certificate";
    std::string subject = "?";
    if (char* line = X509_NAME_oneline(X509_get_subject_name(cert), nullptr, 0)) {
        subject = line;
        OPENSSL_free(line);
    }
    std::string expires = "?";
    if (BIO* bio = BIO_new(BIO_s_mem())) {
        if (ASN1_TIME_print(bio, X509_get0_notAfter(cert)) == 1) {
            char* data = nullptr;
            const long n = BIO_get_mem_data(bio, &data);
            expires.assign(data, static_cast<std::size_t>(n));
        }
        BIO_free(bio);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    std::string fingerprint;
    if (X509_digest(cert, EVP_sha256(), md, &len) == 1) {
        for (unsigned int i = 0; i < len && i < 8; ++i) fingerprint += fmt::format("{:02x}", md[i]);
    }
    return fmt::format("{} (expires {}, sha256 {}...)", subject, expires, fingerprint);
}

/// A client certificate was presented and verified against the client CA.
bool client_verified(SSL* ssl) {
    return SSL_get0_peer_certificate(ssl) != nullptr && SSL_get_verify_result(ssl) == X509_V_OK;
}

/// Why a handshake failed, in the client's terms, for the log.
std::string handshake_failure(const error_code& ec, SSL* ssl) {
    std::string text = ec.message();
    if (ec == beast::error::timeout) return "no handshake within 10s";
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) text += fmt::format(" (client certificate: {})", X509_verify_cert_error_string(verify));
    return text;
}

}  // namespace

std::optional<std::string> read_admin_token(const std::string& path) {
    file_contents file = read_regular_file(path, max_token_bytes);
    if (!file) return std::nullopt;
    std::string token = std::move(file.bytes);
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
    return token;
}

admin_server::admin_server(asio::io_context& control, const admin_config& cfg, admin_hooks hooks, int inherited_fd)
    : control_(control), acceptor_(control), hooks_(std::move(hooks)), cfg_(cfg) {
    if (!cfg.token_file.empty()) {
        admin_token t = ensure_admin_token(cfg.token_file);
        access_.token = std::move(t.token);
        if (t.created) {
            spdlog::info(
                "admin: created the token file {} (mode 0600); `apilb drain|enable|reload` on this node "
                "reads it through the config",
                cfg.token_file);
        }
        if (!t.problem.empty()) {
            access_.post_disabled = t.problem +
                                    ": drain, enable and reload are refused until apilb is restarted "
                                    "with a token file it can read or create";
            spdlog::error("admin: {}", access_.post_disabled);
        }
    } else if (!cfg.tls || cfg.tls->client_ca_file.empty()) {
        access_.post_disabled =
            "drain, enable and reload are disabled: no credential is configured; set "
            "admin.token_file (apilb creates it, mode 0600, at start; the CLI on the node reads "
            "it from the config) or admin.tls.client_ca_file";
    }
    if (cfg.tls) {
        tls_ = make_tls_context(*cfg.tls);
        stats_.tls = true;
    }
    access_.token_file = cfg.token_file;
    access_.tls = tls_ != nullptr;
    access_.client_ca = cfg.tls && !cfg.tls->client_ca_file.empty();
    set_host_names();
    const tcp::endpoint ep = to_endpoint(cfg.address);
    error_code ec;
    if (inherited_fd >= 0) {
        acceptor_.assign(ep.protocol(), inherited_fd, ec);
        if (ec) ::close(inherited_fd);
        if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
        if (ec) throw std::system_error(ec, "admin: cannot take over the socket of " + cfg.address.to_string());
        return;
    }
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) throw std::system_error(ec, "admin: cannot listen on " + cfg.address.to_string());
}

admin_server::~admin_server() {
    if (spare_fd_ >= 0) ::close(spare_fd_);
}

tcp::endpoint admin_server::local_endpoint() const {
    error_code ec;
    return acceptor_.local_endpoint(ec);
}

void admin_server::start() {
    APILB_ASSERT_ROLE(control);
    spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const tcp::endpoint ep = local_endpoint();
    std::string guards;
    if (tls_ && !cfg_.tls->client_ca_file.empty()) {
        guards = cfg_.tls->client_auth == admin_client_auth::all ? "every request requires a client certificate"
                                                                 : "POST requires a client certificate";
    }
    if (!access_.token.empty()) guards += guards.empty() ? "POST requires the bearer token" : " and the bearer token";
    if (!access_.post_disabled.empty()) guards = access_.post_disabled;
    spdlog::info("admin: listening on {}://{}{}", tls_ ? "https" : "http",
                 ep.address().to_string() + ":" + std::to_string(ep.port()), guards.empty() ? "" : " (" + guards + ")");
    if (tls_) spdlog::info("admin: TLS certificate {}", describe_certificate(*tls_));
    asio::co_spawn(control_, accept_loop(), asio::detached);
}

void admin_server::stop() {
    APILB_ASSERT_ROLE(control);
    stopped_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    // Their coroutines end at once; server::run() lets them unwind before
    // this object goes.
    for (auto& c : open_) close_connection(c);
    if (upgrade_wait_ != nullptr) upgrade_wait_->cancel();
}

void admin_server::retire() {
    APILB_ASSERT_ROLE(control);
    retiring_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    for (auto& c : open_) {
        if (!c.busy) close_connection(c);
    }
}

bool admin_server::answering() const {
    return std::any_of(open_.begin(), open_.end(), [](const connection& c) { return c.busy && !c.closing; });
}

void admin_server::close_connection(connection& c) {
    c.closing = true;
    error_code ignored;
    // Its coroutine ends at once (or at its start, if it has not run yet).
    if (c.stream != nullptr) c.stream->socket().close(ignored);
}

bool admin_server::make_room(const asio::ip::address& peer) {
    APILB_ASSERT_ROLE(control);
    std::size_t total = 0;
    std::size_t same = 0;
    for (const auto& c : open_) {
        if (c.closing) continue;
        ++total;
        if (c.peer.address() == peer) ++same;
    }
    auto evict_oldest = [&](bool same_peer) {
        for (auto& c : open_) {
            if (c.closing || c.busy || (same_peer && c.peer.address() != peer)) continue;
            close_connection(c);
            ++stats_.connections_evicted_total;
            const auto now = std::chrono::steady_clock::now();
            const auto level = now - last_evict_log_ >= 1s ? spdlog::level::warn : spdlog::level::debug;
            if (level == spdlog::level::warn) last_evict_log_ = now;
            spdlog::log(level, "admin: {} connections open{}: closed the oldest idle one, from {}:{}", total,
                        same_peer ? fmt::format(" from {}", peer.to_string()) : "", c.peer.address().to_string(),
                        c.peer.port());
            --total;
            return true;
        }
        return false;
    };
    if (same >= max_per_peer && !evict_oldest(true)) return false;
    if (total >= max_connections && !evict_oldest(false)) return false;
    return true;
}

void admin_server::set_host_names() {
    access_.host_names = {"localhost"};
    access_.host_names.insert(access_.host_names.end(), cfg_.host_names.begin(), cfg_.host_names.end());
    if (tls_) {
        for (auto& n : certificate_dns_names(tls_->native_handle())) access_.host_names.push_back(std::move(n));
    }
}

std::string admin_server::describe_peer(const connection& conn) const {
    const std::string ip = conn.peer.address().to_string();
    std::string text = (conn.peer.address().is_v6() ? "[" + ip + "]" : ip) + ":" + std::to_string(conn.peer.port());
    if (const auto uid = loopback_peer_uid(conn.peer, conn.local)) text += fmt::format(" (uid {})", *uid);
    return text;
}

bool admin_server::reload_tls_files() {
    APILB_ASSERT_ROLE(control);
    if (!cfg_.tls) return true;
    try {
        auto next = make_tls_context(*cfg_.tls);
        const std::string before = describe_certificate(*tls_);
        const std::string after = describe_certificate(*next);
        tls_ = std::move(next);
        set_host_names();
        if (before == after) {
            spdlog::info("admin: TLS files re-read: certificate unchanged: {}", after);
        } else {
            spdlog::info("admin: TLS files re-read: new connections get the certificate {}; it was {}", after, before);
        }
        return true;
    } catch (const std::exception& e) {
        spdlog::error("admin: TLS files not re-read: {}; the running certificate stays: {}", e.what(),
                      describe_certificate(*tls_));
        return false;
    }
}

void admin_server::count_handshake_failure(const tcp::endpoint& peer, const std::string& why) {
    ++stats_.tls_handshake_failures_total;
    // A scanner or a misconfigured client can fail many times a second: one
    // line per second at info, the rest at debug; the counter has them all.
    const auto now = std::chrono::steady_clock::now();
    const auto level = now - last_failure_log_ >= 1s ? spdlog::level::info : spdlog::level::debug;
    if (level == spdlog::level::info) last_failure_log_ = now;
    spdlog::log(level, "admin: TLS handshake with {}:{} failed: {}; connection closed", peer.address().to_string(),
                peer.port(), why);
}

asio::awaitable<void> admin_server::accept_loop() {
    while (!stopped_) {
        auto [ec, socket] = co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (stopped_ || ec == asio::error::operation_aborted) co_return;
            const bool no_fds = ec == asio::error::no_descriptors || ec.value() == ENFILE;
            // A flood of these comes ten a second: one line a second says it.
            const auto now = std::chrono::steady_clock::now();
            if (now - last_accept_log_ >= 1s) {
                last_accept_log_ = now;
                spdlog::warn("admin: accept: {}{}{}", ec.message(),
                             no_fds && spare_fd_ >= 0 ? "; using the reserved descriptor" : "",
                             accept_errors_suppressed_
                                 ? fmt::format(" [{} similar suppressed]", accept_errors_suppressed_)
                                 : "");
                accept_errors_suppressed_ = 0;
            } else {
                ++accept_errors_suppressed_;
            }
            if (no_fds && spare_fd_ >= 0) {
                // Out of descriptors: /livez must still answer (else kubelet
                // restarts apilb, dropping every session it still serves).
                ::close(spare_fd_);
                spare_fd_ = -1;
                continue;
            }
            asio::steady_timer pause(control_, 100ms);
            co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
            if (spare_fd_ < 0) spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
            continue;
        }
        error_code pec, lec;
        const tcp::endpoint peer = socket.remote_endpoint(pec);
        const tcp::endpoint local = socket.local_endpoint(lec);
        if (pec || lec || !make_room(peer.address())) {
            error_code ignored;
            socket.close(ignored);
            continue;
        }
        const auto it = open_.insert(open_.end(), connection{.stream = nullptr, .peer = peer, .local = local});
        asio::co_spawn(control_, serve(std::move(socket), it), asio::detached);
    }
}

asio::awaitable<void> admin_server::serve(tcp::socket socket, connection_list::iterator conn) {
    // Listed from accept to here; stop() and make_room() close the socket
    // under whatever layer reads it.
    struct listed {
        admin_server& s;
        connection_list::iterator it;
        ~listed() {
            s.open_.erase(it);
            // Its socket is closed by now: the descriptor it freed becomes the spare again.
            if (s.spare_fd_ < 0 && !s.stopped_) s.spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
    } registered{*this, conn};
    error_code ignored;
    if (conn->closing) co_return;
    if (!tls_) {
        beast::tcp_stream stream(std::move(socket));
        conn->stream = &stream;
        co_await serve_requests(stream, *conn, false);
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
        stream.close();
        co_return;
    }
    // This connection keeps the context it started with through a rotation.
    const std::shared_ptr<ssl::context> ctx = tls_;
    const tcp::endpoint peer = conn->peer;
    beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *ctx);
    auto& tcp_layer = beast::get_lowest_layer(stream);
    conn->stream = &tcp_layer;
    tcp_layer.expires_after(io_timeout);
    auto [hec] = co_await http_io::handshake(stream, ssl::stream_base::server);
    if (hec) {
        // No certificate when one is required, an untrusted one, plain HTTP
        // on the HTTPS port, or a client that says nothing: cut off.
        if (!stopped_) count_handshake_failure(peer, handshake_failure(hec, stream.native_handle()));
        tcp_layer.close();
        co_return;
    }
    co_await serve_requests(stream, *conn, client_verified(stream.native_handle()));
    if (!stopped_) {
        // close_notify, so the client can tell the end from a truncation;
        // a client that does not answer it gets a short while only.
        tcp_layer.expires_after(tls_shutdown_timeout);
        co_await http_io::shutdown(stream);
    }
    tcp_layer.close();
}

template <class Stream>
asio::awaitable<void> admin_server::serve_requests(Stream& stream, connection& conn, bool client_verified) {
    auto& tcp_layer = beast::get_lowest_layer(stream);
    beast::flat_buffer buffer;
    while (!stopped_ && !retiring_ && !conn.closing) {
        conn.busy = false;
        http::request_parser<http::string_body> parser;
        parser.header_limit(admin_header_limit);
        parser.body_limit(admin_body_limit);
        // One deadline for the wait and the whole request, not per read:
        // a byte every few seconds does not keep a connection.
        tcp_layer.expires_after(request_timeout);
        auto [rec, rn] = co_await http_io::read(stream, buffer, parser);
        if (rec || stopped_ || conn.closing) break;
        conn.busy = true;
        const request req = parser.release();
        admin_reply r = co_await handle(req, conn, client_verified);
        if (stopped_) break;

        http::response<http::string_body> res{r.status, req.version()};
        res.set(http::field::server, "apilb");
        res.set(http::field::content_type, r.content_type);
        res.set(http::field::cache_control, "no-store");
        res.keep_alive(req.keep_alive() && !retiring_);
        res.body() = std::move(r.body);
        res.prepare_payload();
        tcp_layer.expires_after(io_timeout);
        auto [wec, wn] = co_await http_io::write(stream, res);
        conn.busy = false;
        if (wec || !res.keep_alive()) break;
    }
}

void admin_server::log_refused_post(const request& req, const connection& conn, http::status status,
                                    const std::string& why) {
    ++stats_.auth_failures_total;
    // Someone guessing the token can try many times a second: one line per
    // second at warn, the rest at debug; the counter has them all.
    const auto now = std::chrono::steady_clock::now();
    const auto level = now - last_auth_log_ >= 1s ? spdlog::level::warn : spdlog::level::debug;
    if (level == spdlog::level::warn) last_auth_log_ = now;
    if (spdlog::should_log(level)) {
        spdlog::log(level, "admin: {} {} from {} refused ({}): {}", std::string(req.method_string()),
                    std::string(req.target().substr(0, 200)), describe_peer(conn), static_cast<unsigned>(status), why);
    }
}

asio::awaitable<admin_reply> admin_server::handle(const request& req, const connection& conn, bool client_verified) {
    auto facts = [this] {
        admin_facts f = hooks_.facts();
        f.admin = &stats_;
        return f;
    };
    admin_decision d = decide_admin_request(req, access_, client_verified);
    if (d.refusal) {
        if (!d.auth_failure.empty()) log_refused_post(req, conn, d.refusal->status, d.auth_failure);
        co_return std::move(*d.refusal);
    }
    admin_reply r;
    switch (d.route) {
    case admin_route::livez: {
        // The workers answer on their own threads; wait here, on the
        // control thread, without blocking it.
        struct wait_state {
            asio::steady_timer timer;
            std::size_t answered = 0, total = 0;
            bool done = false;
        };
        auto st = std::make_shared<wait_state>(wait_state{.timer = asio::steady_timer(control_)});
        st->timer.expires_at(asio::steady_timer::time_point::max());
        hooks_.ping_workers(livez_deadline, [st](std::size_t answered, std::size_t total) {
            st->answered = answered;
            st->total = total;
            st->done = true;
            st->timer.cancel();
        });
        while (!st->done) co_await st->timer.async_wait(asio::as_tuple(asio::use_awaitable));
        const bool ok = st->answered == st->total;
        r.status = ok ? http::status::ok : http::status::service_unavailable;
        r.body = fmt::format("{}: {} of {} worker(s) answered within {}ms\n", ok ? "ok" : "not alive", st->answered,
                             st->total, livez_deadline.count());
        break;
    }
    case admin_route::readyz: {
        const readiness rd = check_readiness(*hooks_.current(), facts());
        r.status = rd.ready ? http::status::ok : http::status::service_unavailable;
        r.body = rd.body;
        break;
    }
    case admin_route::metrics:
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r.body = render_metrics(*hooks_.current(), facts());
        break;
    case admin_route::status:
        r.content_type = "application/json";
        r.body = render_status_json(*hooks_.current(), facts());
        break;
    case admin_route::page:
        r.content_type = "text/html; charset=utf-8";
        r.body = status_page_html();
        break;
    case admin_route::reload: {
        r.content_type = "application/json";
        spdlog::info("admin: reload asked by {}", describe_peer(conn));
        const std::vector<std::string> errors = hooks_.reload();
        if (errors.empty()) {
            r.body = admin_json_message("result", "reloaded");
        } else {
            r.status = http::status::unprocessable_entity;
            boost::json::object o;
            o["error"] = "the configuration was rejected; the running one stays";
            boost::json::array list;
            for (const auto& e : errors) list.emplace_back(e);
            o["errors"] = std::move(list);
            r.body = boost::json::serialize(o) + "\n";
        }
        break;
    }
    case admin_route::upgrade: r = co_await upgrade(d.wait, describe_peer(conn)); break;
    case admin_route::backend: r = drain_or_enable(d.pool, d.backend, d.drain, describe_peer(conn)); break;
    }
    co_return r;
}

asio::awaitable<admin_reply> admin_server::upgrade(bool wait, const std::string& who) {
    APILB_ASSERT_ROLE(control);
    admin_reply r{.status = http::status::accepted, .content_type = "application/json", .body = {}};
    spdlog::info("admin: upgrade asked by {}{}", who, wait ? " (waits for the outcome)" : "");
    struct wait_state {
        asio::steady_timer timer;
        std::optional<upgrade_outcome> outcome;
    };
    auto st = std::make_shared<wait_state>(wait_state{.timer = asio::steady_timer(control_), .outcome = {}});
    const upgrade_start started = hooks_.upgrade([st](const upgrade_outcome& o) {
        st->outcome = o;
        st->timer.cancel();
    });
    boost::json::object o;
    o["old_pid"] = static_cast<std::int64_t>(::getpid());
    if (!started.refused.empty()) {
        r.status = started.conflict ? http::status::conflict : http::status::internal_server_error;
        o["error"] = "upgrade refused: " + started.refused + "; still serving";
        r.body = boost::json::serialize(o) + "\n";
        co_return r;
    }
    if (started.new_pid != 0) o["new_pid"] = started.new_pid;
    if (!wait) {
        o["result"] = started.new_pid != 0
                          ? "upgrade started"
                          : "upgrade waits for a reload's apply to end; its outcome will be in the log";
        r.body = boost::json::serialize(o) + "\n";
        co_return r;
    }
    st->timer.expires_after(upgrade_wait_limit);
    upgrade_wait_ = &st->timer;
    // The outcome comes by done() on this thread: checked before each wait,
    // so a cancel that came before the wait is not missed.
    while (!st->outcome && !stopped_) {
        auto [ec] = co_await st->timer.async_wait(asio::as_tuple(asio::use_awaitable));
        if (!ec) break;  // the limit
    }
    upgrade_wait_ = nullptr;
    if (!st->outcome) {
        r.status = http::status::gateway_timeout;
        o["error"] = stopped_ ? "apilb is stopping; the upgrade's outcome is in its log"
                              : fmt::format("the upgrade did not end within {}s; its outcome will be in the log",
                                            upgrade_wait_limit.count());
        r.body = boost::json::serialize(o) + "\n";
        co_return r;
    }
    const upgrade_outcome& u = *st->outcome;
    if (u.new_pid != 0) o["new_pid"] = u.new_pid;  // one that waited for a reload had none before
    if (!u.failure.empty()) {
        r.status = u.conflict ? http::status::conflict : http::status::internal_server_error;
        o["error"] = "upgrade failed: " + u.failure + "; still serving";
    } else {
        r.status = http::status::ok;
        o["result"] = "upgraded";
        o["sessions_handed_over"] = u.handed_over;
        o["sessions_kept"] = u.kept;
        o["handover_ms"] = u.phase.count();
    }
    r.body = boost::json::serialize(o) + "\n";
    co_return r;
}

admin_reply admin_server::drain_or_enable(const std::string& pool, const std::string& backend, bool drain,
                                          const std::string& who) {
    APILB_ASSERT_ROLE(control);
    admin_reply r{.status = http::status::ok, .content_type = "application/json", .body = {}};
    const auto snap = hooks_.current();
    const backend_runtime* found = nullptr;
    bool pool_found = false;
    for (const auto& p : snap->pools) {
        if (p.cfg->name != pool) continue;
        pool_found = true;
        for (const auto& b : p.backends) {
            if (b.cfg->name == backend) found = &b;
        }
    }
    if (found == nullptr) {
        r.status = http::status::not_found;
        r.body = admin_json_message("error", pool_found ? fmt::format("pool {} has no backend {}", pool, backend)
                                                        : fmt::format("no pool {}", pool));
    } else if (!drain && found->cfg->drain) {
        r.status = http::status::conflict;
        r.body = admin_json_message("error", fmt::format("backend {} is drained in the config file (drain: true); "
                                                         "change it there and reload",
                                                         backend));
    } else {
        const bool was = found->health->admin_drain.exchange(drain, std::memory_order_relaxed);
        if (was != drain) {
            const log_scope fields({.event = drain ? "backend_drained" : "backend_enabled",
                                    .pool = pool,
                                    .backend = backend,
                                    .client = {},
                                    .reason = "admin"});
            spdlog::info("admin: backend {}/{} {} (asked by {})", pool, backend,
                         drain ? "drained: no new sessions, open ones go on" : "enabled: takes new sessions again",
                         who);
        }
        r.body = admin_json_message("result", drain ? "drained" : "enabled");
    }
    return r;
}

}  // namespace apilb
