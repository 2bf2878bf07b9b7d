// Beast's HTTP and TLS operations on apilb's two stream types, compiled once
// (src/control/http_io.cpp). Each composed operation (http::async_read over
// an ssl_stream, the TLS handshake, ...) costs tens of seconds of compile
// time wherever it is instantiated; the admin endpoint, the admin client,
// the prober and the discovery client call these instead of instantiating
// their own. Each function is exactly the Beast call it names, awaited with
// as_tuple(use_awaitable): the same errors, the stream's own deadline
// (tcp_stream::expires_after), the parser's own limits, and the calling
// coroutine's cancellation.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/system/error_code.hpp>

#include <cstddef>
#include <tuple>

namespace apilb::http_io {

/// A TCP stream with a deadline.
using tcp_stream = boost::beast::tcp_stream;
/// TLS over a TCP stream with a deadline.
using tls_stream = boost::beast::ssl_stream<boost::beast::tcp_stream>;
/// An operation's error and the bytes it moved.
using io_result = std::tuple<boost::system::error_code, std::size_t>;
/// An operation's error.
using ec_result = std::tuple<boost::system::error_code>;

using string_request = boost::beast::http::request<boost::beast::http::string_body>;
using empty_request = boost::beast::http::request<boost::beast::http::empty_body>;
using string_response = boost::beast::http::response<boost::beast::http::string_body>;
using string_request_parser = boost::beast::http::request_parser<boost::beast::http::string_body>;
using string_response_parser = boost::beast::http::response_parser<boost::beast::http::string_body>;
using buffer_response_parser = boost::beast::http::response_parser<boost::beast::http::buffer_body>;

/// tcp_stream::async_connect.
boost::asio::awaitable<ec_result> connect(tcp_stream& stream, const boost::asio::ip::tcp::endpoint& ep);
/// ssl_stream::async_handshake (client or server).
boost::asio::awaitable<ec_result> handshake(tls_stream& stream, boost::asio::ssl::stream_base::handshake_type type);
/// ssl_stream::async_shutdown (sends close_notify, waits for the peer's).
boost::asio::awaitable<ec_result> shutdown(tls_stream& stream);

/// http::async_write of a whole message.
boost::asio::awaitable<io_result> write(tcp_stream& stream, string_request& msg);
boost::asio::awaitable<io_result> write(tls_stream& stream, string_request& msg);
boost::asio::awaitable<io_result> write(tls_stream& stream, empty_request& msg);
boost::asio::awaitable<io_result> write(tcp_stream& stream, string_response& msg);
boost::asio::awaitable<io_result> write(tls_stream& stream, string_response& msg);

/// http::async_read of a whole message.
boost::asio::awaitable<io_result> read(tcp_stream& stream, boost::beast::flat_buffer& buffer, string_response& msg);
boost::asio::awaitable<io_result> read(tls_stream& stream, boost::beast::flat_buffer& buffer, string_response& msg);
boost::asio::awaitable<io_result> read(tls_stream& stream, boost::beast::flat_buffer& buffer,
                                       string_response_parser& parser);
boost::asio::awaitable<io_result> read(tcp_stream& stream, boost::beast::flat_buffer& buffer,
                                       string_request_parser& parser);
boost::asio::awaitable<io_result> read(tls_stream& stream, boost::beast::flat_buffer& buffer,
                                       string_request_parser& parser);

/// http::async_read_header.
boost::asio::awaitable<io_result> read_header(tls_stream& stream, boost::beast::flat_buffer& buffer,
                                              buffer_response_parser& parser);
/// http::async_read_some.
boost::asio::awaitable<io_result> read_some(tls_stream& stream, boost::beast::flat_buffer& buffer,
                                            buffer_response_parser& parser);

}  // namespace apilb::http_io
