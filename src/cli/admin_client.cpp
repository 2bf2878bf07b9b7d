#include "admin_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "apilb/config.hpp"

namespace apilb::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using asio::ip::tcp;

namespace {

struct response {
    unsigned status = 0;
    std::string body;
};

/// One request; nullopt (the reason printed) if apilb cannot be reached.
std::optional<response> call(const admin_target& t, http::verb method, const std::string& target) {
    const auto addr = parse_socket_address(t.address);
    if (!addr) {
        std::cerr << "error: bad admin address " << t.address << " (expected IP:PORT)\n";
        return std::nullopt;
    }
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, t.address);
    req.set(http::field::user_agent, "apilb-cli");
    if (!t.token_file.empty()) {
        std::ifstream in(t.token_file);
        std::ostringstream text;
        text << in.rdbuf();
        std::string token = text.str();
        while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
        if (!in || token.empty()) {
            std::cerr << "error: cannot read a token from " << t.token_file << '\n';
            return std::nullopt;
        }
        req.set(http::field::authorization, "Bearer " + token);
    }
    req.prepare_payload();

    asio::io_context io;
    beast::tcp_stream stream(io);
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    boost::system::error_code result;
    const tcp::endpoint ep{asio::ip::make_address(addr->ip), addr->port};
    stream.expires_after(std::chrono::seconds(10));
    stream.async_connect(ep, [&](boost::system::error_code ec) {
        if (ec) {
            result = ec;
            return;
        }
        http::async_write(stream, req, [&](boost::system::error_code ec, std::size_t) {
            if (ec) {
                result = ec;
                return;
            }
            http::async_read(stream, buffer, res, [&](boost::system::error_code ec, std::size_t) { result = ec; });
        });
    });
    io.run();
    if (result) {
        std::cerr << "error: apilb admin endpoint " << t.address << ": " << result.message() << '\n';
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
    std::cout << fmt::format("{:<12} {:<16} {:<8} {:>8} {:>10}  {}\n", "POOL", "BACKEND", "STATE", "ACTIVE", "SESSIONS",
                             "LAST PROBE");
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
            std::cout << fmt::format("{:<12} {:<16} {:<8} {:>8} {:>10}  {}\n", str(p.at("name")), str(b.at("name")), state,
                                     num(b.at("active_sessions")), num(b.at("sessions_total")), probe);
        }
    }
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
    return 1;
}

}  // namespace apilb::cli
