// The stand-in apiserver's HTTP plumbing shared by its parts: the stream and
// message types, the server's switchable state, request-target parsing and
// responses with the headers every answer carries.
#pragma once

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace standin {

namespace net = boost::asio;
namespace ssl = net::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

using tls_stream = beast::ssl_stream<beast::tcp_stream>;
using request = http::request<http::string_body>;
using response = http::response<http::string_body>;

class k8s_api;

/// How long one write of a response (or of one watch event) may take.
inline constexpr std::chrono::seconds write_timeout{30};

enum class readiness { ok, fail, hang };

/// State shared by all connections; readiness is switched at run time.
struct server_state {
    std::string name;
    std::atomic<readiness> ready;
    std::string bearer_token_file;  ///< when set, health endpoints need this token
    k8s_api* api = nullptr;         ///< the Kubernetes API part (list/watch, discovery, control)
};

/// Request target split into path and query parameters; values are
/// percent-decoded ('+' is a space, as in a form), the path is not.
struct target {
    std::string_view path;
    std::vector<std::pair<std::string, std::string>> query;

    explicit target(std::string_view t);
    /// The first value of `key`, or nullopt when the parameter is absent.
    std::optional<std::string_view> param(std::string_view key) const;
};

/// `s` as a whole unsigned decimal number, or nullopt.
std::optional<std::uint64_t> parse_u64(std::string_view s);

/// The verified client certificate's subject in RFC 2253 form, or "" if none.
std::string peer_subject(tls_stream& stream);
/// The verified client certificate's common name (the Kubernetes user), or "" if none.
std::string peer_common_name(tls_stream& stream);
/// The verified client certificate's serial number in lower-case hex ("" without one).
std::string peer_serial(tls_stream& stream);

/// Server, X-Standin-Name and Cache-Control, as on every answer.
template <class Body>
void set_common_headers(http::response<Body>& res, const server_state& state) {
    res.set(http::field::server, "apilb-standin");
    res.set("X-Standin-Name", state.name);
    res.set(http::field::cache_control, "no-cache, private");
}

/// A complete response with the common headers and a Content-Length.
response make_response(http::status status, unsigned version, bool keep_alive, std::string body,
                       std::string_view content_type, const server_state& state);

/// The header of a 200 chunked application/json stream (a watch); false if it could not be sent.
net::awaitable<bool> write_stream_header(tls_stream& stream, const request& req, const server_state& state);
/// One chunk of such a stream (one watch event); false if it could not be sent.
net::awaitable<bool> write_chunk(tls_stream& stream, std::string_view data);
/// The last chunk: the stream ends cleanly.
net::awaitable<bool> write_last_chunk(tls_stream& stream);

}  // namespace standin
