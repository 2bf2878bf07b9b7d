#include "apilb/admin_server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fstream>

#include "apilb/logging.hpp"
#include <list>
#include <sstream>

namespace apilb {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using boost::system::error_code;
using namespace std::chrono_literals;

namespace {

/// How long /livez waits for every worker to answer.
constexpr auto livez_deadline = 1000ms;
/// Admin clients are few; more than this at once are turned away.
constexpr std::size_t max_connections = 64;
constexpr auto io_timeout = 10s;

std::string read_token(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("admin.token_file: cannot read " + path);
    std::ostringstream text;
    text << in.rdbuf();
    std::string token = text.str();
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
    if (token.empty()) throw std::runtime_error("admin.token_file: " + path + " is empty");
    return token;
}

/// Compares without an early exit, so timing does not reveal a prefix.
bool same_secret(std::string_view a, std::string_view b) {
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
    return diff == 0 && !b.empty();
}

std::string json_message(std::string_view key, std::string_view value) {
    boost::json::object o;
    o[key] = value;
    return boost::json::serialize(o) + "\n";
}

}  // namespace

struct admin_server::reply {
    http::status status = http::status::ok;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

admin_server::admin_server(asio::io_context& control, const admin_config& cfg, admin_hooks hooks)
    : control_(control), acceptor_(control), hooks_(std::move(hooks)) {
    if (!cfg.token_file.empty()) token_ = read_token(cfg.token_file);
    const tcp::endpoint ep = to_endpoint(cfg.address);
    error_code ec;
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) throw std::system_error(ec, "admin: cannot listen on " + cfg.address.to_string());
}

tcp::endpoint admin_server::local_endpoint() const {
    error_code ec;
    return acceptor_.local_endpoint(ec);
}

void admin_server::start() {
    spdlog::info("admin: listening on http://{}{}", local_endpoint().address().to_string() + ":" +
                                                        std::to_string(local_endpoint().port()),
                 token_.empty() ? "" : " (POST requires the bearer token)");
    asio::co_spawn(control_, accept_loop(), asio::detached);
}

void admin_server::stop() {
    stopped_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    // Their coroutines end at once; server::run() lets them unwind before
    // this object goes.
    for (auto* s : open_) s->socket().close(ignored);
}

asio::awaitable<void> admin_server::accept_loop() {
    while (!stopped_) {
        auto [ec, socket] = co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (stopped_ || ec == asio::error::operation_aborted) co_return;
            spdlog::warn("admin: accept: {}", ec.message());
            asio::steady_timer pause(control_, 100ms);
            co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
            continue;
        }
        if (connections_ >= max_connections) {
            error_code ignored;
            socket.close(ignored);
            continue;
        }
        asio::co_spawn(control_, serve(std::move(socket)), asio::detached);
    }
}

asio::awaitable<void> admin_server::serve(tcp::socket socket) {
    ++connections_;
    struct on_exit {
        std::size_t& n;
        ~on_exit() { --n; }
    } guard{connections_};
    beast::tcp_stream stream(std::move(socket));
    open_.push_back(&stream);
    struct unlist {
        std::list<beast::tcp_stream*>& l;
        std::list<beast::tcp_stream*>::iterator it;
        ~unlist() { l.erase(it); }
    } unlisted{open_, std::prev(open_.end())};
    beast::flat_buffer buffer;
    while (!stopped_) {
        http::request_parser<http::string_body> parser;
        parser.body_limit(64 * 1024);
        stream.expires_after(io_timeout);
        auto [rec, rn] = co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
        if (rec || stopped_) break;
        const http::request<http::string_body> req = parser.release();
        std::string path(req.target());
        if (auto q = path.find('?'); q != std::string::npos) path.resize(q);

        reply r;
        const bool get = req.method() == http::verb::get;
        const bool post = req.method() == http::verb::post;
        auto not_allowed = [&](const char* allowed) {
            r = {.status = http::status::method_not_allowed, .content_type = "text/plain; charset=utf-8",
                 .body = fmt::format("{} only\n", allowed)};
        };
        const std::string api_backends = "/api/v1/backends/";
        if (path == "/livez") {
            if (!get) {
                not_allowed("GET");
            } else {
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
                r.body = fmt::format("{}: {} of {} worker(s) answered within {}ms\n", ok ? "ok" : "not alive",
                                     st->answered, st->total, livez_deadline.count());
            }
        } else if (path == "/readyz") {
            if (!get) {
                not_allowed("GET");
            } else {
                const readiness rd = check_readiness(*hooks_.current(), hooks_.facts());
                r.status = rd.ready ? http::status::ok : http::status::service_unavailable;
                r.body = rd.body;
            }
        } else if (path == "/metrics") {
            if (!get) {
                not_allowed("GET");
            } else {
                r.content_type = "text/plain; version=0.0.4; charset=utf-8";
                r.body = render_metrics(*hooks_.current(), hooks_.facts());
            }
        } else if (path == "/api/v1/status") {
            if (!get) {
                not_allowed("GET");
            } else {
                r.content_type = "application/json";
                r.body = render_status_json(*hooks_.current(), hooks_.facts());
            }
        } else if (path == "/" || path == "/index.html") {
            if (!get) {
                not_allowed("GET");
            } else {
                r.content_type = "text/html; charset=utf-8";
                r.body = status_page_html();
            }
        } else if (path == "/api/v1/reload" || path.rfind(api_backends, 0) == 0) {
            r.content_type = "application/json";
            const auto auth = req[http::field::authorization];
            const auto origin = req[http::field::origin];
            if (!post) {
                not_allowed("POST");
            } else if (!token_.empty() && !(auth.starts_with("Bearer ") && same_secret(auth.substr(7), token_))) {
                r.status = http::status::unauthorized;
                r.body = json_message("error", "this request needs the admin bearer token (Authorization: Bearer ...)");
            } else if (!origin.empty() && origin != "http://" + std::string(req[http::field::host])) {
                // A page from another site that the operator's browser has
                // open must not drain backends (CSRF).
                r.status = http::status::forbidden;
                r.body = json_message("error", "cross-origin request refused");
            } else if (path == "/api/v1/reload") {
                const bool ok = hooks_.reload();
                r.status = ok ? http::status::ok : http::status::unprocessable_entity;
                r.body = json_message(ok ? "result" : "error",
                                      ok ? "reloaded" : "the configuration was rejected; the running one stays (see the log)");
            } else {
                // /api/v1/backends/{pool}/{name}/{drain|enable}
                std::vector<std::string> parts;
                std::string rest = path.substr(api_backends.size());
                for (std::size_t pos = 0;;) {
                    const auto slash = rest.find('/', pos);
                    parts.push_back(rest.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos));
                    if (slash == std::string::npos) break;
                    pos = slash + 1;
                }
                if (parts.size() != 3 || (parts[2] != "drain" && parts[2] != "enable")) {
                    r.status = http::status::not_found;
                    r.body = json_message("error", "expected /api/v1/backends/{pool}/{backend}/drain or /enable");
                } else {
                    const auto snap = hooks_.current();
                    const backend_runtime* found = nullptr;
                    bool pool_found = false;
                    for (const auto& p : snap->pools) {
                        if (p.cfg->name != parts[0]) continue;
                        pool_found = true;
                        for (const auto& b : p.backends) {
                            if (b.cfg->name == parts[1]) found = &b;
                        }
                    }
                    const bool drain = parts[2] == "drain";
                    if (found == nullptr) {
                        r.status = http::status::not_found;
                        r.body = json_message("error", pool_found ? fmt::format("pool {} has no backend {}", parts[0], parts[1])
                                                                  : fmt::format("no pool {}", parts[0]));
                    } else if (!drain && found->cfg->drain) {
                        r.status = http::status::conflict;
                        r.body = json_message("error", fmt::format("backend {} is drained in the config file (drain: true); "
                                                                   "change it there and reload", parts[1]));
                    } else {
                        const bool was = found->health->admin_drain.exchange(drain, std::memory_order_relaxed);
                        if (was != drain) {
                            const log_scope fields({.event = drain ? "backend_drained" : "backend_enabled",
                                                    .pool = parts[0],
                                                    .backend = parts[1],
                                                    .client = {},
                                                    .reason = "admin"});
                            spdlog::info("admin: backend {}/{} {}", parts[0], parts[1],
                                         drain ? "drained: no new sessions, open ones go on" : "enabled: takes new sessions again");
                        }
                        r.body = json_message("result", drain ? "drained" : "enabled");
                    }
                }
            }
        } else {
            r.status = http::status::not_found;
            r.body = "not found; see /api/v1/status, /metrics, /livez, /readyz\n";
        }

        http::response<http::string_body> res{r.status, req.version()};
        res.set(http::field::server, "apilb");
        res.set(http::field::content_type, r.content_type);
        res.set(http::field::cache_control, "no-store");
        res.keep_alive(req.keep_alive());
        res.body() = std::move(r.body);
        res.prepare_payload();
        stream.expires_after(io_timeout);
        auto [wec, wn] = co_await http::async_write(stream, res, asio::as_tuple(asio::use_awaitable));
        if (wec || !res.keep_alive()) break;
    }
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.close();
}

}  // namespace apilb
