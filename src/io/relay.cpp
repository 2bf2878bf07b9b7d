#include "apilb/relay.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/as_tuple.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "apilb/socket_options.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

/// A direction that keeps finding data yields to its worker's other sessions
/// after this many chunks, so one bulk transfer cannot starve a thousand watches.
constexpr int chunks_before_yield = 16;

/// splice(2) moves at most a pipe's capacity at a time; asking for more is harmless.
constexpr std::size_t splice_chunk = 1 << 20;

error_code last_error() { return {errno, boost::system::system_category()}; }

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

/// After an error on one side: close both, with RST towards `peer` so that a
/// reset is not turned into a clean FIN (a client must not take a truncated
/// response for a complete one).
void abort_both(tcp::socket& failed, tcp::socket& peer) {
    set_abortive_close(peer);
    error_code ignored;
    peer.close(ignored);
    failed.close(ignored);
}

/// A write to the sink failed: a cancelled write (drain, idle, the other
/// direction's error) ends quietly; a real failure closes both, with RST
/// towards the source.
pump_result end_on_write_error(pump_result result, const error_code& ec, tcp::socket& from, tcp::socket& to) {
    if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) {
        result.end = pump_end::aborted;
    } else {
        result.end = pump_end::sink_failed;
        result.error = ec;
        abort_both(to, from);
    }
    return result;
}

void half_close(tcp::socket& to) {
    error_code ignored;
    to.shutdown(tcp::socket::shutdown_send, ignored);
}

/// Writes `len` bytes of `data`, waiting for writability as needed.
asio::awaitable<error_code> write_all(tcp::socket& to, const std::byte* data, std::size_t len) {
    while (len > 0) {
        const ssize_t n = ::send(to.native_handle(), data, len, MSG_NOSIGNAL);
        if (n >= 0) {
            data += n;
            len -= static_cast<std::size_t>(n);
            continue;
        }
        if (errno == EINTR) continue;
        if (!would_block(errno)) co_return last_error();
        auto [ec] = co_await to.async_wait(tcp::socket::wait_write, asio::as_tuple(asio::use_awaitable));
        if (ec) co_return ec;
    }
    co_return error_code{};
}

/// Drains `pending` bytes from the pipe into `to`, waiting for writability as needed.
asio::awaitable<error_code> drain_pipe(const pipe_pair& pipe, tcp::socket& to, std::size_t& pending) {
    while (pending > 0) {
        const ssize_t n = ::splice(pipe.read_fd, nullptr, to.native_handle(), nullptr, pending,
                                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            pending -= static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && !would_block(errno)) co_return last_error();
        auto [ec] = co_await to.async_wait(tcp::socket::wait_write, asio::as_tuple(asio::use_awaitable));
        if (ec) co_return ec;
    }
    co_return error_code{};
}

asio::awaitable<pump_result> pump_copy(tcp::socket& from, tcp::socket& to, relay_resources& res,
                                       std::chrono::steady_clock::time_point& last_activity);

asio::awaitable<pump_result> pump_splice(tcp::socket& from, tcp::socket& to, relay_resources& res,
                                         std::chrono::steady_clock::time_point& last_activity) {
    pump_result result;
    int chunks = 0;
    for (;;) {
        auto [wait_ec] =
            co_await from.async_wait(tcp::socket::wait_read, asio::as_tuple(asio::use_awaitable));
        if (wait_ec) {
            result.end = pump_end::aborted;
            co_return result;
        }
        error_code pipe_ec;
        pipe_pair pipe = res.pipes.acquire(pipe_ec);
        if (pipe_ec) {
            // Out of descriptors for a pipe: carry on through a buffer rather
            // than drop a session that already has both its sockets. The data
            // is still readable, so the copy relay picks it up at once.
            const std::uint64_t before = result.bytes;
            result = co_await pump_copy(from, to, res, last_activity);
            result.bytes += before;
            co_return result;
        }
        // Holding the pipe: move chunks until the source has nothing more to give.
        for (;;) {
            const ssize_t n = ::splice(from.native_handle(), nullptr, pipe.write_fd, nullptr,
                                       splice_chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n == 0) {
                res.pipes.release(pipe, true);
                half_close(to);
                result.end = pump_end::eof;
                co_return result;
            }
            if (n < 0) {
                if (errno == EINTR) continue;
                if (would_block(errno)) break;
                result.error = last_error();
                res.pipes.release(pipe, true);
                result.end = pump_end::source_reset;
                abort_both(from, to);
                co_return result;
            }
            std::size_t pending = static_cast<std::size_t>(n);
            result.bytes += pending;
            last_activity = std::chrono::steady_clock::now();
            if (auto ec = co_await drain_pipe(pipe, to, pending)) {
                res.pipes.release(pipe, pending == 0);
                co_return end_on_write_error(result, ec, from, to);
            }
            if (++chunks >= chunks_before_yield) {
                chunks = 0;
                co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
            }
        }
        res.pipes.release(pipe, true);
    }
}

asio::awaitable<pump_result> pump_copy(tcp::socket& from, tcp::socket& to, relay_resources& res,
                                       std::chrono::steady_clock::time_point& last_activity) {
    pump_result result;
    int chunks = 0;
    for (;;) {
        auto [wait_ec] =
            co_await from.async_wait(tcp::socket::wait_read, asio::as_tuple(asio::use_awaitable));
        if (wait_ec) {
            result.end = pump_end::aborted;
            co_return result;
        }
        auto buffer = res.buffers.acquire();
        for (;;) {
            const ssize_t n = ::recv(from.native_handle(), buffer.get(), res.buffers.buffer_size(), 0);
            if (n == 0) {
                res.buffers.release(std::move(buffer));
                half_close(to);
                result.end = pump_end::eof;
                co_return result;
            }
            if (n < 0) {
                if (errno == EINTR) continue;
                if (would_block(errno)) break;
                result.error = last_error();
                res.buffers.release(std::move(buffer));
                result.end = pump_end::source_reset;
                abort_both(from, to);
                co_return result;
            }
            result.bytes += static_cast<std::uint64_t>(n);
            last_activity = std::chrono::steady_clock::now();
            if (auto ec = co_await write_all(to, buffer.get(), static_cast<std::size_t>(n))) {
                res.buffers.release(std::move(buffer));
                co_return end_on_write_error(result, ec, from, to);
            }
            if (++chunks >= chunks_before_yield) {
                chunks = 0;
                co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
            }
        }
        res.buffers.release(std::move(buffer));
    }
}

}  // namespace

pipe_pool::pipe_pool(std::uint32_t pipe_size, std::size_t max_idle)
    : pipe_size_(pipe_size), max_idle_(max_idle) {}

pipe_pool::~pipe_pool() {
    for (auto& p : free_) {
        ::close(p.read_fd);
        ::close(p.write_fd);
    }
}

pipe_pair pipe_pool::acquire(error_code& ec) {
    ec.clear();
    pipe_pair p;
    if (!free_.empty()) {
        p = free_.back();
        free_.pop_back();
    } else {
        int fds[2];
        if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
            ec = last_error();
            return p;
        }
        p = {fds[0], fds[1]};
        if (pipe_size_ != 0) {
            // Best effort: the kernel may refuse above /proc/sys/fs/pipe-max-size.
            (void)::fcntl(p.write_fd, F_SETPIPE_SZ, static_cast<int>(pipe_size_));
        }
    }
    ++in_use_;
    return p;
}

void pipe_pool::release(pipe_pair pipe, bool empty) {
    --in_use_;
    if (empty && free_.size() < max_idle_) {
        free_.push_back(pipe);
        return;
    }
    ::close(pipe.read_fd);
    ::close(pipe.write_fd);
}

buffer_pool::buffer_pool(std::size_t buffer_size, std::size_t max_idle)
    : size_(buffer_size), max_idle_(max_idle) {}

std::unique_ptr<std::byte[]> buffer_pool::acquire() {
    if (free_.empty()) return std::make_unique_for_overwrite<std::byte[]>(size_);
    auto b = std::move(free_.back());
    free_.pop_back();
    return b;
}

void buffer_pool::release(std::unique_ptr<std::byte[]> buffer) {
    if (free_.size() < max_idle_) free_.push_back(std::move(buffer));
}

const char* to_string(pump_end e) {
    switch (e) {
    case pump_end::eof: return "eof";
    case pump_end::source_reset: return "reset";
    case pump_end::sink_failed: return "peer-failed";
    case pump_end::aborted: return "aborted";
    }
    return "?";
}

asio::awaitable<pump_result> pump(tcp::socket& from, tcp::socket& to, relay_resources& resources,
                                  std::chrono::steady_clock::time_point& last_activity) {
    if (resources.mode == relay_mode::splice) {
        co_return co_await pump_splice(from, to, resources, last_activity);
    }
    co_return co_await pump_copy(from, to, resources, last_activity);
}

}  // namespace apilb
