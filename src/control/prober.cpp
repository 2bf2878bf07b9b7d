#include "apilb/control/prober.hpp"

#include <boost/asio/ssl/error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/error.hpp>

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "apilb/control/http_io.hpp"
#include "apilb/control/tls_files.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb_build_config.h"

namespace apilb {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;
using tcp = asio::ip::tcp;

// ---------------------------------------------------------------- token_file

token_file::token_file(std::string path) : path_(std::move(path)) {}

const std::string& token_file::get() {
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) {
        if (!failing_) {
            spdlog::warn("health: cannot read bearer_token_file {}: {}; probes keep the last token read", path_,
                         std::strerror(errno));
        }
        failing_ = true;
        return token_;
    }
    const bool unchanged = reads_ > 0 && st.st_dev == dev_ && st.st_ino == ino_ && st.st_size == size_ &&
                           st.st_mtim.tv_sec == mtime_.tv_sec && st.st_mtim.tv_nsec == mtime_.tv_nsec;
    if (unchanged) return token_;
    file_contents file = read_regular_file(path_, max_token_bytes);
    if (!file) {
        if (!failing_) {
            spdlog::warn("health: bearer_token_file {} {}; probes keep the last token read", path_, file.error);
        }
        failing_ = true;
        return token_;
    }
    std::string token = std::move(file.bytes);
    const auto first = token.find_first_not_of(" \t\r\n");
    const auto last = token.find_last_not_of(" \t\r\n");
    token = first == std::string::npos ? std::string() : token.substr(first, last - first + 1);
    if (token.empty() && !failing_) spdlog::warn("health: bearer_token_file {} is empty", path_);
    if (reads_ > 0 && token != token_) spdlog::info("health: bearer_token_file {} changed; using the new token", path_);
    failing_ = false;
    token_ = std::move(token);
    dev_ = st.st_dev;
    ino_ = st.st_ino;
    size_ = st.st_size;
    mtime_ = st.st_mtim;
    ++reads_;
    return token_;
}

// ---------------------------------------------------------------- probe_setup

namespace {

ssl::context make_probe_tls(const pool_config& pool) {
    const health_tls_config& t = pool.health.tls;
    ssl::context ctx(ssl::context::tls_client);
    SSL_CTX* native = ctx.native_handle();
    set_client_defaults(native);
    const std::string what = fmt::format("pool {}: health.tls.", pool.name);
    if (!t.insecure_skip_verify) {
        load_ca_file(native, what + "ca_file", t.ca_file);
        ctx.set_verify_mode(ssl::verify_peer);
    } else {
        ctx.set_verify_mode(ssl::verify_none);
    }
    if (!t.cert_file.empty()) {
        load_certificate_chain_file(native, what + "cert_file", t.cert_file);
        load_private_key_file(native, what + "key_file", t.key_file);
        if (SSL_CTX_check_private_key(native) != 1) {
            throw std::runtime_error(fmt::format("pool {}: health.tls.key_file {} does not match cert_file {}",
                                                 pool.name, t.key_file, t.cert_file));
        }
    }
    return ctx;
}

}  // namespace

probe_setup::probe_setup(const pool_config& pool) : cfg_(pool.health) {
    if (cfg_.type == health_check_type::https) tls_.emplace(make_probe_tls(pool));
    if (!cfg_.bearer_token_file.empty()) token_.emplace(cfg_.bearer_token_file);
}

void probe_cancel::cancel() {
    cancelled = true;
    if (socket != nullptr) {
        error_code ignored;
        socket->close(ignored);
    }
}

// ---------------------------------------------------------------- the probes

namespace {

/// Registers the probe's socket with its canceller for as long as it runs.
struct cancel_registration {
    cancel_registration(probe_cancel& c, tcp::socket& s) : cancel(c) { cancel.socket = &s; }
    ~cancel_registration() { cancel.socket = nullptr; }
    probe_cancel& cancel;
};

std::string ms_text(duration d) { return fmt::format("{}ms", d.count()); }

check_result connect_failure(const error_code& ec, const tcp::endpoint& ep, duration timeout) {
    const std::string where = fmt::format(
        "connect to {}", ep.address().is_v6() ? fmt::format("[{}]:{}", ep.address().to_string(), ep.port())
                                              : fmt::format("{}:{}", ep.address().to_string(), ep.port()));
    if (ec == beast::error::timeout) {
        return {check_failure::tcp_timeout, where + ": no answer within " + ms_text(timeout)};
    }
    if (ec == asio::error::connection_refused) return {check_failure::tcp_refused, where + ": connection refused"};
    return {check_failure::tcp_error, where + ": " + ec.message()};
}

bool is_ssl_error(const error_code& ec) {
    return ec.category() == asio::error::get_ssl_category() || ec == ssl::error::stream_truncated;
}

/// The handshake's error with OpenSSL's verification result when there is
/// one ("unable to get local issuer certificate", "hostname mismatch").
std::string tls_error_text(const error_code& ec, SSL* native) {
    std::string text = ec.message();
    const long verify = SSL_get_verify_result(native);
    if (verify != X509_V_OK)
        text += fmt::format(": certificate verification failed: {}", X509_verify_cert_error_string(verify));
    return text;
}

/// What to do about an alert by which the server refused the handshake for
/// want of a (good) client certificate; "" for any other error.
std::string client_certificate_hint(const std::string& text, const health_tls_config& t) {
    const bool refused = text.find("alert bad certificate") != std::string::npos ||
                         text.find("alert certificate required") != std::string::npos ||
                         text.find("alert unknown ca") != std::string::npos ||
                         text.find("alert certificate unknown") != std::string::npos ||
                         text.find("alert certificate expired") != std::string::npos;
    if (!refused) return {};
    if (t.cert_file.empty()) {
        return "; the server wants a client certificate: set health.tls.cert_file and health.tls.key_file "
               "(a certificate signed by a CA in the apiserver's --client-ca-file)";
    }
    return "; the server refused the client certificate in health.tls.cert_file " + t.cert_file +
           ": is it signed by a CA in the apiserver's --client-ca-file, and not expired?";
}

asio::awaitable<check_result> probe_tcp(const tcp::endpoint& ep, duration timeout,
                                        std::shared_ptr<probe_cancel> cancel) {
    beast::tcp_stream stream(co_await asio::this_coro::executor);
    cancel_registration reg(*cancel, stream.socket());
    if (cancel->cancelled) co_return check_result{check_failure::tcp_error, "cancelled"};
    stream.expires_after(timeout);
    auto [ec] = co_await http_io::connect(stream, ep);
    if (ec) co_return connect_failure(ec, ep, timeout);
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    co_return check_result{check_failure::none, "connected"};
}

asio::awaitable<check_result> probe_https(probe_setup& setup, const tcp::endpoint& ep,
                                          std::shared_ptr<probe_cancel> cancel) {
    const health_config& cfg = setup.cfg();
    beast::ssl_stream<beast::tcp_stream> stream(co_await asio::this_coro::executor, *setup.tls());
    auto& lower = beast::get_lowest_layer(stream);
    cancel_registration reg(*cancel, lower.socket());
    if (cancel->cancelled) co_return check_result{check_failure::tcp_error, "cancelled"};

    // One deadline for the whole probe: connect, handshake, request, response.
    lower.expires_after(cfg.timeout);
    if (auto [ec] = co_await http_io::connect(lower, ep); ec) {
        co_return connect_failure(ec, ep, cfg.timeout);
    }

    SSL* native = stream.native_handle();
    const std::string& name = cfg.tls.server_name;
    const bool ip_name = set_server_name(native, name, !cfg.tls.insecure_skip_verify);
    if (auto [ec] = co_await http_io::handshake(stream, ssl::stream_base::client); ec) {
        if (ec == beast::error::timeout) {
            co_return check_result{check_failure::tls_timeout,
                                   "TLS handshake did not complete within " + ms_text(cfg.timeout) +
                                       " (the backend accepts connections but does not answer)"};
        }
        const std::string text = tls_error_text(ec, native);
        co_return check_result{check_failure::tls_failed,
                               "TLS handshake failed: " + text + client_certificate_hint(text, cfg.tls)};
    }

    http::request<http::empty_body> req{http::verb::get, cfg.path, 11};
    req.set(http::field::host, ip_name && name.find(':') != std::string::npos ? "[" + name + "]" : name);
    req.set(http::field::user_agent, "apilb/" APILB_VERSION " health-check");
    req.set(http::field::accept, "text/plain, */*");
    req.keep_alive(false);
    if (token_file* token = setup.token()) {
        const std::string& value = token->get();
        if (!value.empty()) req.set(http::field::authorization, "Bearer " + value);
    }
    if (auto [ec, n] = co_await http_io::write(stream, req); ec) {
        if (ec == beast::error::timeout) {
            co_return check_result{check_failure::http_timeout, "sending GET " + cfg.path + " timed out"};
        }
        if (is_ssl_error(ec)) {
            co_return check_result{check_failure::tls_failed,
                                   "TLS: " + ec.message() + client_certificate_hint(ec.message(), cfg.tls)};
        }
        co_return check_result{check_failure::http_error, "sending GET " + cfg.path + ": " + ec.message()};
    }

    beast::flat_buffer buffer;
    probe_response_parser parser;
    limit_probe_response(parser);
    auto [ec, n] = co_await http_io::read(stream, buffer, parser);
    // A server that closes without TLS close_notify after a complete response is fine.
    if (ec == ssl::error::stream_truncated && parser.is_done()) ec = {};
    if (ec) {
        if (ec == beast::error::timeout) {
            co_return check_result{check_failure::http_timeout,
                                   "no complete response to GET " + cfg.path + " within " + ms_text(cfg.timeout)};
        }
        // TLS 1.3 reports a refused client certificate only now, as an alert
        // on the first read after the handshake.
        if (is_ssl_error(ec)) {
            const std::string text = tls_error_text(ec, native);
            co_return check_result{check_failure::tls_failed, "TLS: " + text + client_certificate_hint(text, cfg.tls)};
        }
    }
    co_return judge_probe_read(ec, parser, cfg);
}

}  // namespace

asio::awaitable<check_result> run_probe(probe_setup& setup, health_check_type as_type, const tcp::endpoint& endpoint,
                                        std::shared_ptr<probe_cancel> cancel) {
    if (as_type == health_check_type::https && setup.tls() != nullptr) {
        co_return co_await probe_https(setup, endpoint, std::move(cancel));
    }
    co_return co_await probe_tcp(endpoint, setup.cfg().timeout, std::move(cancel));
}

}  // namespace apilb
