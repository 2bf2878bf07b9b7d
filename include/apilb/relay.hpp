// Moving bytes from one socket to the other, untouched: splice(2) through a
// pipe (zero copy) or recv/send through a buffer. Either way a direction holds
// a pipe or buffer only while bytes are in flight; an idle direction is one
// pending readiness wait and nothing else. One relay_resources per worker
// thread; nothing here is shared between threads.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "apilb/config.hpp"

namespace apilb {

/// The two ends of one pipe(2).
struct pipe_pair {
    int read_fd = -1;
    int write_fd = -1;
};

/// A per-thread free list of pipes, as HAProxy keeps: a direction borrows one
/// for a burst of data and gives it back empty.
class pipe_pool {
public:
    /// `pipe_size` 0 keeps the kernel default (64 KiB); `max_idle` bounds the free list.
    explicit pipe_pool(std::uint32_t pipe_size, std::size_t max_idle = 64);
    ~pipe_pool();
    pipe_pool(const pipe_pool&) = delete;
    pipe_pool& operator=(const pipe_pool&) = delete;

    /// A pipe from the free list or a new one; sets `ec` (e.g. EMFILE) on failure.
    pipe_pair acquire(boost::system::error_code& ec);
    /// Gives a pipe back. A pipe that may still hold bytes (`empty` false) is
    /// closed, never reused: its bytes belong to a dead session.
    void release(pipe_pair pipe, bool empty);

    std::size_t idle() const noexcept { return free_.size(); }
    std::size_t in_use() const noexcept { return in_use_; }

private:
    std::vector<pipe_pair> free_;
    std::uint32_t pipe_size_;
    std::size_t max_idle_;
    std::size_t in_use_ = 0;
};

/// A per-thread free list of fixed-size buffers for the copy relay.
class buffer_pool {
public:
    buffer_pool(std::size_t buffer_size, std::size_t max_idle = 64);
    std::unique_ptr<std::byte[]> acquire();
    void release(std::unique_ptr<std::byte[]> buffer);
    std::size_t buffer_size() const noexcept { return size_; }
    std::size_t idle() const noexcept { return free_.size(); }

private:
    std::vector<std::unique_ptr<std::byte[]>> free_;
    std::size_t size_;
    std::size_t max_idle_;
};

/// Everything a worker's relays share.
struct relay_resources {
    relay_resources(const relay_config& cfg)
        : mode(cfg.mode), pipes(cfg.pipe_size), buffers(cfg.buffer_size) {}
    relay_mode mode;
    pipe_pool pipes;
    buffer_pool buffers;
};

/// How one direction of a session ended.
enum class pump_end {
    eof,           ///< the source sent FIN; it was passed on as shutdown(SHUT_WR)
    source_reset,  ///< reading the source failed (RST); passed on as RST to the sink
    sink_failed,   ///< writing to the sink failed (RST/EPIPE); passed on as RST to the source
    aborted,       ///< cancelled: the other direction, idle timeout, drain, or shutdown
};

const char* to_string(pump_end);

/// The outcome of one direction.
struct pump_result {
    pump_end end = pump_end::aborted;
    std::uint64_t bytes = 0;
    boost::system::error_code error;  ///< the error behind source_reset / sink_failed / resources
};

/// Relays `from` → `to` until EOF, an error or cancellation. Both sockets
/// must be open and non-blocking. On EOF only this direction ends (half-close);
/// on an error both sockets are closed, with RST towards the peer that did not
/// fail. In splice mode, a direction that cannot get a pipe (out of
/// descriptors) carries on with the copy relay. `last_activity` is stamped whenever bytes move (for the idle timeout).
boost::asio::awaitable<pump_result> pump(boost::asio::ip::tcp::socket& from,
                                         boost::asio::ip::tcp::socket& to,
                                         relay_resources& resources,
                                         std::chrono::steady_clock::time_point& last_activity);

}  // namespace apilb
