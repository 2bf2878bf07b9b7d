#include "apilb/control/http_io.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

namespace apilb::http_io {

namespace asio = boost::asio;
namespace http = boost::beast::http;

namespace {
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);
}  // namespace

asio::awaitable<ec_result> connect(tcp_stream& stream, const asio::ip::tcp::endpoint& ep) {
    co_return co_await stream.async_connect(ep, tuple_awaitable);
}

asio::awaitable<ec_result> handshake(tls_stream& stream, asio::ssl::stream_base::handshake_type type) {
    co_return co_await stream.async_handshake(type, tuple_awaitable);
}

asio::awaitable<ec_result> shutdown(tls_stream& stream) { co_return co_await stream.async_shutdown(tuple_awaitable); }

asio::awaitable<io_result> write(tcp_stream& stream, string_request& msg) {
    co_return co_await http::async_write(stream, msg, tuple_awaitable);
}

asio::awaitable<io_result> write(tls_stream& stream, string_request& msg) {
    co_return co_await http::async_write(stream, msg, tuple_awaitable);
}

asio::awaitable<io_result> write(tls_stream& stream, empty_request& msg) {
    co_return co_await http::async_write(stream, msg, tuple_awaitable);
}

asio::awaitable<io_result> write(tcp_stream& stream, string_response& msg) {
    co_return co_await http::async_write(stream, msg, tuple_awaitable);
}

asio::awaitable<io_result> write(tls_stream& stream, string_response& msg) {
    co_return co_await http::async_write(stream, msg, tuple_awaitable);
}

asio::awaitable<io_result> read(tcp_stream& stream, boost::beast::flat_buffer& buffer, string_response& msg) {
    co_return co_await http::async_read(stream, buffer, msg, tuple_awaitable);
}

asio::awaitable<io_result> read(tls_stream& stream, boost::beast::flat_buffer& buffer, string_response& msg) {
    co_return co_await http::async_read(stream, buffer, msg, tuple_awaitable);
}

asio::awaitable<io_result> read(tls_stream& stream, boost::beast::flat_buffer& buffer, string_response_parser& parser) {
    co_return co_await http::async_read(stream, buffer, parser, tuple_awaitable);
}

asio::awaitable<io_result> read(tcp_stream& stream, boost::beast::flat_buffer& buffer, string_request_parser& parser) {
    co_return co_await http::async_read(stream, buffer, parser, tuple_awaitable);
}

asio::awaitable<io_result> read(tls_stream& stream, boost::beast::flat_buffer& buffer, string_request_parser& parser) {
    co_return co_await http::async_read(stream, buffer, parser, tuple_awaitable);
}

asio::awaitable<io_result> read_header(tls_stream& stream, boost::beast::flat_buffer& buffer,
                                       buffer_response_parser& parser) {
    co_return co_await http::async_read_header(stream, buffer, parser, tuple_awaitable);
}

asio::awaitable<io_result> read_some(tls_stream& stream, boost::beast::flat_buffer& buffer,
                                     buffer_response_parser& parser) {
    co_return co_await http::async_read_some(stream, buffer, parser, tuple_awaitable);
}

}  // namespace apilb::http_io
