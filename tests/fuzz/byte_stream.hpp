// A synchronous read stream over fuzz bytes, for Beast's http::read: hands
// them out in chunks of the size the input asks for, then end of stream, as
// a socket would. Shared by the admin and probe fuzz targets.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace apilb::fuzz {

/// Bytes to read, `chunk` (at least 1) at a time, then asio::error::eof.
class byte_stream {
public:
    byte_stream(std::string_view bytes, std::size_t chunk) : bytes_(bytes), chunk_(std::max<std::size_t>(chunk, 1)) {}

    /// SyncReadStream.
    template <class Buffers>
    std::size_t read_some(const Buffers& buffers, boost::system::error_code& ec) {
        ec = {};
        if (bytes_.empty()) {
            ec = boost::asio::error::eof;
            return 0;
        }
        const std::size_t n = boost::asio::buffer_copy(
            buffers, boost::asio::buffer(bytes_.data(), std::min(chunk_, bytes_.size())));
        bytes_.remove_prefix(n);
        return n;
    }
    /// SyncReadStream, throwing.
    template <class Buffers>
    std::size_t read_some(const Buffers& buffers) {
        boost::system::error_code ec;
        const std::size_t n = read_some(buffers, ec);
        if (ec) throw boost::system::system_error(ec);
        return n;
    }

private:
    std::string_view bytes_;
    std::size_t chunk_;
};

}  // namespace apilb::fuzz
