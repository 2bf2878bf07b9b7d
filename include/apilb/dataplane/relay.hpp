// Moving bytes from one socket to the other, untouched: splice(2) through a
// pipe (zero copy) or recv/send through a buffer. Either way a direction holds
// a pipe or buffer only while bytes are in flight; an idle direction is one
// pending readiness wait and nothing else. One relay_resources per worker
// thread; nothing here is shared between threads.
#pragma once

#include <boost/asio/async_result.hpp>
#include <boost/system/error_code.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apilb/core/config.hpp"
#include "apilb/dataplane/erased_handler.hpp"
#include "apilb/dataplane/poller.hpp"

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
    /// Room for `max_idle` is reserved, so release() never allocates.
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
    /// Room for `max_idle` is reserved, so release() never allocates.
    buffer_pool(std::size_t buffer_size, std::size_t max_idle = 64);
    /// A free buffer, or a new one: throws std::bad_alloc.
    std::unique_ptr<std::byte[]> acquire();
    void release(std::unique_ptr<std::byte[]> buffer) noexcept;
    std::size_t buffer_size() const noexcept { return size_; }
    std::size_t idle() const noexcept { return free_.size(); }

private:
    std::vector<std::unique_ptr<std::byte[]>> free_;
    std::size_t size_;
    std::size_t max_idle_;
};

/// Everything a worker's relays share.
struct relay_resources {
    relay_resources(const relay_config& cfg) : mode(cfg.mode), pipes(cfg.pipe_size), buffers(cfg.buffer_size) {}
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

/// Relays both directions of one session until both have ended, driven by
/// readiness callbacks rather than coroutines: an idle session costs two
/// pending waits and nothing else, and a connection pays for no coroutine
/// frame or parallel group of its own. Lives in the session's frame; both
/// sockets must be open and non-blocking. Worker thread only (checked in
/// debug and sanitizer builds: APILB_ASSERT_DATA_PATH_ROLE).
///
/// Each direction ends on its own: on EOF it passes the half-close on as
/// shutdown(SHUT_WR) and the other direction goes on; when the second
/// direction ends with EOF too, the owner's close of both sockets sends the
/// last FIN (one system call fewer). On a read error (RST)
/// or a failed write both sockets are closed, with RST towards the peer that
/// did not fail. A direction that cannot get a pipe (out of descriptors)
/// carries on with the copy relay.
class relay {
public:
    using clock = std::chrono::steady_clock;

    /// `last_activity` is stamped whenever bytes move (for the idle timeout).
    relay(poll_socket& client, poll_socket& upstream, relay_resources& resources, clock::time_point& last_activity);
    ~relay();
    relay(const relay&) = delete;
    relay& operator=(const relay&) = delete;

    /// Makes a relay that has completed ready to run again (the session
    /// moved to another backend on the same upstream socket object).
    void rearm();

    /// No byte is inside apilb (a buffer or a pipe), no direction ended but
    /// by EOF, and one still runs: the two sockets hold the session's whole
    /// state, so it may move to another process (an upgrade). Worker thread.
    bool quiet() const noexcept;
    /// An upgrade's quiesce (docs/upgrade.md, "Sessions"): stops reading
    /// from both peers, while what was read already is still written out;
    /// quiet() says when it is all out. What the peers send meanwhile waits
    /// in the kernel's socket buffers. A direction that ended stays ended.
    /// A read in the ring (relay.io: io_uring) is cancelled; bytes it took
    /// before the cancel reached it are written out too. Worker thread.
    void quiesce() noexcept;
    /// Reads again after quiesce(): a direction that stopped goes on where
    /// it stopped. Also how a quiesced relay whose sockets were closed or
    /// released from outside ends: a stopped direction has no wait pending
    /// for the close to complete. Worker thread.
    void end_quiesce() noexcept;
    /// The client (to) and backend (from) sent FIN, passed on already.
    bool client_ended() const noexcept { return dirs_[0].done; }
    bool backend_ended() const noexcept { return dirs_[1].done; }

    /// A session adopted from the process before (an upgrade): the counts go
    /// on from `to` and `from`, and the backend has answered (nothing is
    /// kept for a replay). Call after rearm(), before async_run.
    void resume(std::uint64_t to, std::uint64_t from) noexcept {
        dirs_[0].result.bytes = to;
        dirs_[1].result.bytes = from;
        answered_ = true;
    }

    /// Until the backend's first byte, appends what the client sends to
    /// `*sent` (at most `limit` bytes; beyond that nothing is kept). If the
    /// backend then closes or resets before sending anything while the client
    /// is still sending, the run ends early (backend_failed_early()) so that
    /// the session can replay `*sent` to another backend. `*sent` is emptied
    /// (and its memory freed) once the backend's first byte arrives or the
    /// limit is passed. Call before async_run.
    void keep_for_replay(std::string* sent, std::size_t limit);

    /// Calls `fn(arg)` once when the backend's first byte arrives (the end
    /// of its TLS handshake, for storm control's connect slots).
    void on_answered(void (*fn)(void*), void* arg) {
        answered_fn_ = fn;
        answered_arg_ = arg;
    }

    /// Runs until both directions have ended, then calls `done(arg)` from
    /// the poller's loop. Allocates nothing (the session's way).
    void run(void (*done)(void*), void* arg);

    /// Runs until both directions have ended (signature `void()`); one
    /// allocation for the handler.
    template <typename CompletionToken>
    auto async_run(CompletionToken&& token) {
        return boost::asio::async_initiate<CompletionToken, void()>(
            [this](auto handler) { start(erased_handler<>(std::move(handler))); }, token);
    }

    /// Client → backend. Complete once the run has completed; while it
    /// runs, `bytes` counts what has moved so far (read from the client).
    const pump_result& to_backend() const noexcept { return dirs_[0].result; }
    /// Backend → client; like to_backend().
    const pump_result& from_backend() const noexcept { return dirs_[1].result; }
    /// The backend closed or reset (or refused the client's bytes) before
    /// sending anything, and `*sent` holds all the client sent: the session
    /// may go to another backend. The upstream socket is closed; the client
    /// socket is open and untouched.
    bool backend_failed_early() const noexcept { return failed_early_; }
    /// Why the backend failed early (eof for a clean close).
    const boost::system::error_code& early_error() const noexcept { return early_error_; }
    /// The backend has sent at least one byte.
    bool backend_answered() const noexcept { return answered_; }
    /// An allocation failed while relaying (a buffer, the replay copy): both
    /// peers were reset.
    bool ran_out_of_memory() const noexcept { return no_memory_; }
    /// Since when a write has been waiting for a peer to take bytes, with no
    /// byte taken since (the earlier of the two directions); time_point::max()
    /// if neither direction is waiting to write.
    clock::time_point write_blocked_since() const noexcept {
        return std::min(dirs_[0].blocked_since, dirs_[1].blocked_since);
    }

private:
    struct direction {
        relay* owner = nullptr;
        bool to_backend = false;  ///< client -> backend; source() and sink() follow from it
        bool done = false;
        bool splicing = false;  ///< this burst goes through `pipe`, else through `buffer`
        pipe_pair pipe{};
        bool holding_pipe = false;
        std::unique_ptr<std::byte[]> buffer;
        std::size_t offset = 0;    ///< copy: first unsent byte in `buffer`
        std::size_t pending = 0;   ///< bytes read but not yet written
        int chunks = 0;            ///< reads since the last yield
        bool short_read = false;   ///< the last read took less than it could: wait, do not read again
        bool full_read = false;    ///< the last read filled its buffer or pipe: bulk, splice next
        bool parked = false;       ///< stopped by quiesce(): no wait pending until end_quiesce()
        bool read_to_fin = false;  ///< the last read was short and the source's FIN had come: it took the last byte
        // relay.io: io_uring (reads and writes submitted to the worker's ring)
        bool fin_at_submit = false;   ///< the source's FIN had come when the recv in the ring was submitted
        bool fallback = false;        ///< the provided buffers ran out: this burst reads after readiness
        bool quiesce_cancel = false;  ///< quiesce() cancelled the recv in the ring
        bool provided = false;        ///< the bytes pending are in the poller's provided buffer `provided_id`
        std::uint16_t provided_id = 0;
        // The next recv goes into the ring with the send of the bytes just
        // read (one io_uring_enter per turn for both); it may complete
        // first, and its outcome then waits here for the send: at most one
        // buffer sent and one filled per direction, and the bytes in order.
        std::uint16_t ahead_id = 0;   ///< the provided buffer of that outcome, if ahead_buffer
        bool reading : 1 = false;     ///< a recv of this direction is in the ring
        bool sending : 1 = false;     ///< a send of this direction is in the ring
        bool ahead_done : 1 = false;  ///< a recv completed while the send was in the ring: ahead_* hold it
        bool ahead_buffer : 1 = false;
        bool ending : 1 = false;  ///< finish() came with a recv in the ring: it ends once that completes
        std::int16_t ahead_errno = 0;
        std::uint32_t ahead_got = 0;
        /// The first write that found the sink full since bytes last went out; max() if none.
        clock::time_point blocked_since = clock::time_point::max();
        pump_result result;
    };

    /// Where `d` reads from and writes to: derived, not stored (an idle
    /// session's memory, docs/internals.md).
    poll_socket& source(const direction& d) const noexcept { return d.to_backend ? client_ : upstream_; }
    poll_socket& sink(const direction& d) const noexcept { return d.to_backend ? upstream_ : client_; }

    void start(erased_handler<> handler);
    void start_directions();
    /// Both directions have ended: the owner's completion, from the loop.
    static void done(void* self, const boost::system::error_code& ec);
    void wait_readable(direction& d);
    /// relay.io: io_uring: `d` reads through the ring into a provided buffer.
    bool reads_in_ring(const direction& d) const noexcept;
    /// Submits the recv of reads_in_ring().
    void recv_in_ring(direction& d, bool empty = false);
    static void received(void* d, const boost::system::error_code& ec);
    void on_received(direction& d, const boost::system::error_code& ec);
    /// A recv in the ring completed with `ec` and `got` bytes, in order
    /// (no send of `d` in the ring): relays them, or ends the direction.
    void on_recv_result(direction& d, const boost::system::error_code& ec, std::size_t got);
    /// The recv that completed while `d`'s send was in the ring, now in order.
    void take_ahead(direction& d);
    /// Gives back what a recv read ahead holds (the direction ends).
    void drop_ahead(direction& d) noexcept;
    /// The next recv may go into the ring with the send of the bytes just
    /// read: the copy path goes on (no splice, yield, quiesce, FIN or replay next).
    bool may_read_ahead(const direction& d) const noexcept;
    /// Submits the send of what a recv in the ring took.
    void send_in_ring(direction& d);
    static void sent(void* d, const boost::system::error_code& ec);
    void on_sent(direction& d, const boost::system::error_code& ec);
    /// A read took `got` bytes of `asked` at `data`: counts them and keeps
    /// them for a replay (may throw std::bad_alloc); the first byte from the
    /// backend answers.
    void took(direction& d, std::size_t got, std::size_t asked, const std::byte* data);
    /// Writing to the sink failed with `ec`: replay, or both reset.
    void sink_failed(direction& d, const boost::system::error_code& ec);
    /// An allocation failed in `d`: both peers reset, the direction ended.
    void out_of_memory(direction& d) noexcept;
    void on_readable(direction& d, const boost::system::error_code& ec);
    static void readable(void* d, const boost::system::error_code& ec);
    static void writable(void* d, const boost::system::error_code& ec);
    /// Moves bytes until the source would block, the sink would block, the
    /// direction yields to other sessions, or it ends.
    void transfer(direction& d);
    /// transfer(), and on std::bad_alloc both peers reset and the direction
    /// ended (never throws: a direction that ended in an exception would
    /// never complete, and its session would never be freed).
    void transfer_or_reset(direction& d) noexcept;
    /// Writes what is pending; false if it is now waiting for the sink or ended.
    bool flush(direction& d);
    /// Reading the source failed (RST): end both, with RST towards the sink.
    void source_failed(direction& d, const boost::system::error_code& ec);
    /// The source sent FIN and every byte before it was read: pass the
    /// half-close on (or replay, before the backend's first byte).
    void source_ended(direction& d);
    void on_writable(direction& d, const boost::system::error_code& ec);
    void release(direction& d);
    void finish(direction& d, pump_end end);
    /// The backend failed before its first byte: stop both directions so the
    /// session can try another backend. False if a replay is not possible.
    bool fail_early(direction& d, const boost::system::error_code& ec);
    void stop_recording();
    bool stale(const direction& d) const;

    poll_socket& client_;
    poll_socket& upstream_;
    relay_resources& res_;
    clock::time_point& last_activity_;
    direction dirs_[2];
    erased_handler<> handler_;
    void (*done_fn_)(void*) = nullptr;  ///< run()'s completion, instead of handler_
    void* done_arg_ = nullptr;
    std::string* sent_ = nullptr;  ///< non-null while the client's bytes are kept for a replay
    std::size_t replay_limit_ = 0;
    bool answered_ = false;
    void (*answered_fn_)(void*) = nullptr;
    void* answered_arg_ = nullptr;
    bool stopping_ = false;
    bool quiescing_ = false;  ///< quiesce(): no direction reads
    bool failed_early_ = false;
    bool no_memory_ = false;
    boost::system::error_code early_error_;
};

}  // namespace apilb
