#include "apilb/dataplane/relay.hpp"

#include "apilb/core/thread_role.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <new>
#include <utility>


namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

/// A direction that keeps finding data yields to its worker's other sessions
/// after this many reads, so one bulk transfer cannot starve a thousand watches.
constexpr int chunks_before_yield = 16;

/// splice(2) moves at most a pipe's capacity at a time; asking for more is harmless.
constexpr std::size_t splice_chunk = 1 << 20;

/// A splice that moved less than this most likely emptied the socket (a pipe
/// holds 64 KiB by default; a full pipe also stops a splice short, and then
/// the wait finds the socket readable again at once).
constexpr std::size_t short_splice = 32 * 1024;

error_code last_error() { return {errno, boost::system::system_category()}; }

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

void half_close(poll_socket& to) { (void)to.shutdown_send(); }

/// After an error on one side: close both, with RST towards `peer` so that a
/// reset is not turned into a clean FIN (a client must not take a truncated
/// response for a complete one).
void abort_both(poll_socket& failed, poll_socket& peer) {
    peer.set_abortive_close();
    peer.close();
    failed.close();
}

}  // namespace

relay::relay(poll_socket& client, poll_socket& upstream, relay_resources& resources, clock::time_point& last_activity)
    : client_(client), upstream_(upstream), res_(resources), last_activity_(last_activity) {
    for (auto& d : dirs_) d.owner = this;
    dirs_[0].to_backend = true;
}

relay::~relay() {
    for (auto& d : dirs_) {
        release(d);
        drop_ahead(d);
    }
}

void relay::rearm() {
    for (auto& d : dirs_) {
        release(d);
        drop_ahead(d);
        d.reading = d.sending = d.ending = false;
        d.done = false;
        d.chunks = 0;
        d.short_read = false;
        d.full_read = false;
        d.parked = false;
        d.read_to_fin = false;
        d.fallback = false;
        d.quiesce_cancel = false;
        d.blocked_since = clock::time_point::max();
        d.result = {};
    }
    answered_ = false;
    answered_fn_ = nullptr;
    stopping_ = false;
    quiescing_ = false;
    failed_early_ = false;
    no_memory_ = false;
    early_error_ = {};
    sent_ = nullptr;
}

bool relay::quiet() const noexcept {
    if (stopping_ || failed_early_ || (dirs_[0].done && dirs_[1].done)) return false;
    for (const auto& d : dirs_) {
        if (d.pending > 0 || d.holding_pipe || d.buffer || d.provided || d.ahead_done) return false;
        // The kernel holds an operation of it: bytes may be on their way in
        // or out, and the sockets cannot leave until it completed.
        if (source(d).submitted(poll_socket::wait_type::read) || sink(d).submitted(poll_socket::wait_type::write))
            return false;
        if (d.done && d.result.end != pump_end::eof) return false;
    }
    return true;
}

void relay::quiesce() noexcept {
    quiescing_ = true;
    for (auto& d : dirs_) {
        // An idle read in the ring waits for bytes: cancelled, it completes
        // (aborted, or with what it took meanwhile) and the direction stops.
        if (d.done || !source(d).submitted(poll_socket::wait_type::read)) continue;
        d.quiesce_cancel = true;
        source(d).cancel_submitted(poll_socket::wait_type::read);
    }
}

void relay::end_quiesce() noexcept {
    quiescing_ = false;
    for (auto& d : dirs_) {
        if (!d.parked) continue;
        d.parked = false;
        // From the loop, ready or not: the edge that woke the direction
        // before it stopped was used up, so a wait could sleep on bytes that
        // are there. Aborted if the socket was closed or released meanwhile.
        source(d).defer_call(poll_socket::wait_type::read, &relay::readable, &d);
    }
}

void relay::keep_for_replay(std::string* sent, std::size_t limit) {
    sent_ = sent;
    replay_limit_ = limit;
}

void relay::start(erased_handler<> handler) {
    handler_ = std::move(handler);
    done_fn_ = nullptr;
    start_directions();
}

void relay::run(void (*done)(void*), void* arg) {
    done_fn_ = done;
    done_arg_ = arg;
    start_directions();
}

void relay::start_directions() {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    for (auto& d : dirs_) wait_readable(d);
}

void relay::done(void* self, const error_code&) {
    // Closed meanwhile or not, the run is over: the owner takes it from here.
    auto& r = *static_cast<relay*>(self);
    if (r.done_fn_ != nullptr) return std::exchange(r.done_fn_, nullptr)(r.done_arg_);
    auto h = std::move(r.handler_);
    h();
}

void relay::wait_readable(direction& d) {
    d.fallback = false;
    // A burst that went by splice waits for readiness, to splice again.
    if (reads_in_ring(d) && !(res_.mode == relay_mode::splice && d.full_read)) return recv_in_ring(d);
    source(d).wait(poll_socket::wait_type::read, &relay::readable, &d);
}

bool relay::reads_in_ring(const direction& d) const noexcept { return source(d).owner().provides_buffers(); }

void relay::recv_in_ring(direction& d, bool empty) {
    // As fin_before_read in transfer(): a short recv submitted after the
    // FIN took the last byte.
    d.fin_at_submit = source(d).peer_finished();
    d.reading = true;
    source(d).submit_recv_provided(&relay::received, &d, empty);
}

void relay::received(void* arg, const error_code& ec) {
    auto& d = *static_cast<direction*>(arg);
    try {
        d.owner->on_received(d, ec);
    } catch (const std::bad_alloc&) {
        d.owner->out_of_memory(d);
    }
}

void relay::on_received(direction& d, const error_code& ec) {
    poll_socket& from = source(d);
    d.reading = false;
    const std::size_t got = ec ? 0 : from.transferred(poll_socket::wait_type::read);
    const int id = from.take_provided();
    if (d.ending) {
        // The direction ended while this recv was in the ring: what it took
        // goes nowhere (the session is being reset or closed).
        if (id >= 0) from.owner().give_back(static_cast<std::uint16_t>(id));
        d.ending = false;
        return finish(d, d.result.end);
    }
    if (d.sending) {
        // Read ahead, and the send before it is still in the ring: this
        // outcome waits for it (its bytes go after the send's).
        d.ahead_done = true;
        d.ahead_buffer = id >= 0;
        d.ahead_id = static_cast<std::uint16_t>(id >= 0 ? id : 0);
        d.ahead_errno = static_cast<std::int16_t>(ec.value());
        d.ahead_got = static_cast<std::uint32_t>(got);
        return;
    }
    if (id >= 0) {
        d.provided = true;
        d.provided_id = static_cast<std::uint16_t>(id);
    }
    on_recv_result(d, ec, got);
}

void relay::take_ahead(direction& d) {
    d.ahead_done = false;
    const error_code ec = d.ahead_errno != 0 ? error_code{d.ahead_errno, boost::system::system_category()}
                                             : error_code{};
    if (ec.value() == ENOBUFS && !d.ahead_buffer) {
        // It found every buffer taken while the send held one, given back
        // now: read again through the ring, not after readiness.
        return transfer_or_reset(d);
    }
    if (d.ahead_buffer) {
        d.ahead_buffer = false;
        d.provided = true;
        d.provided_id = d.ahead_id;
    }
    try {
        on_recv_result(d, ec, d.ahead_got);
    } catch (const std::bad_alloc&) {
        out_of_memory(d);
    }
}

void relay::drop_ahead(direction& d) noexcept {
    if (d.ahead_buffer) source(d).owner().give_back(d.ahead_id);
    d.ahead_buffer = false;
    d.ahead_done = false;
}

bool relay::may_read_ahead(const direction& d) const noexcept {
    // What transfer() would do once the send completed, decided now: a FIN
    // already read past, a yield, a switch to splice, a quiesce and the
    // client's bytes kept for a replay all want no recv in the ring.
    return !quiescing_ && !stopping_ && !d.read_to_fin && d.chunks < chunks_before_yield &&
           !(res_.mode == relay_mode::splice && d.full_read) && !(d.to_backend && sent_) && source(d).is_open();
}

void relay::on_recv_result(direction& d, const error_code& ec, std::size_t got) {
    poll_socket& from = source(d);
    const bool quiesce_cancel = std::exchange(d.quiesce_cancel, false);
    if (stale(d)) {
        // The backend failed early and the client's recv took bytes before
        // fail_early's cancel reached it: they are the client's, and the
        // replay must carry them (the limit may be passed by this one read).
        if (got > 0 && d.to_backend && failed_early_ && sent_)
            sent_->append(reinterpret_cast<const char*>(from.owner().provided_buffer(d.provided_id)), got);
        return finish(d, pump_end::aborted);
    }
    if (ec == asio::error::operation_aborted && quiesce_cancel) {
        if (quiescing_) {
            d.parked = true;
            return;
        }
        return wait_readable(d);  // end_quiesce() came before the cancel completed
    }
    if (ec.value() == ENOBUFS && ec.category() == boost::system::system_category()) {
        // Every provided buffer holds bytes on their way out: this burst
        // borrows a buffer of the pool once the socket is readable, as with
        // epoll, and the next idle read is the ring's again.
        from.owner().note_buffers_empty();
        d.fallback = true;
        return from.wait(poll_socket::wait_type::read, &relay::readable, &d);
    }
    if (ec == asio::error::operation_aborted) return finish(d, pump_end::aborted);
    if (ec) return source_failed(d, ec);
    if (got == 0) return source_ended(d);
    took(d, got, from.owner().provided_size(), from.owner().provided_buffer(d.provided_id));
    d.read_to_fin = d.short_read && d.fin_at_submit;
    // A short read emptied the socket: the direction takes no more than its
    // turn, as a wait for readiness after it would (epoll's on_readable).
    if (d.short_read) d.chunks = 0;
    send_in_ring(d);
    // After a short read the socket is empty: the next recv waits for bytes
    // before it tries (a request's answer, the next watch event).
    if (may_read_ahead(d)) recv_in_ring(d, d.short_read);
}

void relay::send_in_ring(direction& d) {
    // The write-stall clock runs from the submission: the kernel holds the
    // send until the sink takes bytes.
    if (d.blocked_since == clock::time_point::max()) d.blocked_since = clock::now();
    d.sending = true;
    sink(d).submit_send(source(d).owner().provided_buffer(d.provided_id) + d.offset, d.pending, &relay::sent, &d);
}

void relay::sent(void* arg, const error_code& ec) {
    auto& d = *static_cast<direction*>(arg);
    d.owner->on_sent(d, ec);
}

void relay::on_sent(direction& d, const error_code& ec) {
    d.sending = false;
    if (ec == asio::error::operation_aborted || stale(d)) return finish(d, pump_end::aborted);
    const std::size_t n = ec ? 0 : sink(d).transferred(poll_socket::wait_type::write);
    // A send that took nothing and failed nothing: the sink cannot take more.
    if (ec || n == 0) return sink_failed(d, ec ? ec : error_code{EPIPE, boost::system::system_category()});
    d.pending -= n;
    d.offset += n;
    d.blocked_since = clock::time_point::max();
    if (d.pending > 0) return send_in_ring(d);
    release(d);
    // The next recv went into the ring with this send: it goes on there,
    // or its outcome waited for this completion.
    if (d.reading) {
        d.short_read = false;
        return;
    }
    if (d.ahead_done) {
        d.short_read = false;
        return take_ahead(d);
    }
    transfer_or_reset(d);
}

void relay::readable(void* arg, const error_code& ec) {
    auto& d = *static_cast<direction*>(arg);
    d.owner->on_readable(d, ec);
}

void relay::writable(void* arg, const error_code& ec) {
    auto& d = *static_cast<direction*>(arg);
    d.owner->on_writable(d, ec);
}

bool relay::stale(const direction& d) const {
    // Closed from outside (drain, idle, health), by the other direction's
    // error, or stopped for a replay: nothing more to move.
    return stopping_ || !source(d).is_open() || !sink(d).is_open();
}

void relay::on_readable(direction& d, const error_code& ec) {
    if (ec || stale(d)) return finish(d, pump_end::aborted);
    d.chunks = 0;
    transfer_or_reset(d);
}

void relay::transfer_or_reset(direction& d) noexcept {
    try {
        transfer(d);
    } catch (const std::bad_alloc&) {
        out_of_memory(d);
    }
}

void relay::out_of_memory(direction& d) noexcept {
    // A buffer, or the copy kept for a replay. Nothing half-done stays
    // behind: the sockets are reset (a reset, not a FIN: the peers must not
    // take what came through for all of it), the other direction's wait
    // completes aborted, and the owner frees the session.
    no_memory_ = true;
    d.result.error = boost::system::errc::make_error_code(boost::system::errc::not_enough_memory);
    for (poll_socket* s : {&source(d), &sink(d)}) {
        if (s->is_open()) s->set_abortive_close();
    }
    abort_both(source(d), sink(d));
    finish(d, pump_end::aborted);
}

void relay::stop_recording() {
    if (!sent_) return;
    std::string().swap(*sent_);
    sent_ = nullptr;
}

void relay::transfer(direction& d) {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    for (;;) {
        if (d.pending > 0 && !flush(d)) return;
        if (quiescing_) {
            // Everything read is written: stop here, with no wait, so that
            // no read follows an edge; end_quiesce() starts it again.
            release(d);
            d.parked = true;
            return;
        }
        if (d.short_read) {
            // The last read took less than it could: the socket is empty now
            // but for bytes that arrived since, whose edge completes the wait
            // at once. A read that would only find EAGAIN is saved (two
            // system calls per request on a keep-alive stream).
            d.short_read = false;
            release(d);
            // And the FIN had come before that read: it took the last byte.
            // A wait would complete at once (ended) for a read that returns
            // only the end: both are saved, one per session (nginx's
            // pending_eof).
            if (std::exchange(d.read_to_fin, false)) return source_ended(d);
            return wait_readable(d);
        }
        if (d.buffer && d.full_read && res_.mode == relay_mode::splice && !(d.to_backend && sent_)) {
            // A read filled the buffer: bulk data. Splice the rest of the burst.
            release(d);
        }
        if (d.chunks >= chunks_before_yield) {
            // Let the worker's other sessions run; carry on from here after
            // them (on_readable). Queued in the poller: an asio::post would
            // allocate, and a yield that failed to start would leave the
            // direction, and its session, stuck for good.
            release(d);
            return source(d).defer_call(poll_socket::wait_type::read, &relay::readable, &d);
        }
        if (!d.holding_pipe && !d.buffer) {
            // A burst starts: borrow a pipe or a buffer for it. Its first read
            // copies (requests, responses and watch events are small, and
            // recv/send cost less than two splices through a pipe); once a
            // read fills the buffer the burst goes on by splice. The client's
            // bytes go through a buffer while they are kept for a replay.
            d.splicing = res_.mode == relay_mode::splice && !(d.to_backend && sent_) && d.full_read;
            // relay.io: io_uring: a copy goes through the ring, into a
            // buffer the kernel provides when the bytes are there.
            if (!d.splicing && !d.fallback && reads_in_ring(d)) return recv_in_ring(d);
            if (d.splicing) {
                error_code pipe_ec;
                d.pipe = res_.pipes.acquire(pipe_ec);
                // Out of descriptors for a pipe: carry on through a buffer
                // rather than drop a session that already has both sockets.
                d.splicing = !pipe_ec;
                d.holding_pipe = !pipe_ec;
            }
            if (!d.splicing) {
                d.buffer = res_.buffers.acquire();
                d.offset = 0;
            }
        }
        ssize_t n;
        // Taken before the read: a FIN that comes after it may follow bytes
        // the read did not see. A short splice is no proof of an empty
        // socket (a pipe fills its slots with small segments), a short recv
        // is (tcp_recvmsg stops short only on an empty queue; urgent data,
        // which no API client sends, aside).
        const bool fin_before_read = !d.splicing && source(d).peer_finished();
        if (d.splicing) {
            n = ::splice(source(d).native_handle(), nullptr, d.pipe.write_fd, nullptr, splice_chunk,
                         SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        } else {
            n = ::recv(source(d).native_handle(), d.buffer.get(), res_.buffers.buffer_size(), 0);
        }
        if (n == 0) return source_ended(d);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (would_block(errno)) {
                release(d);
                return wait_readable(d);
            }
            return source_failed(d, last_error());
        }
        const auto got = static_cast<std::size_t>(n);
        took(d, got, d.splicing ? short_splice : res_.buffers.buffer_size(), d.buffer.get());
        d.read_to_fin = d.short_read && fin_before_read;
    }
}

void relay::took(direction& d, std::size_t got, std::size_t asked, const std::byte* data) {
    d.short_read = got < asked;
    d.full_read = !d.short_read;
    d.result.bytes += got;
    d.pending = got;
    d.offset = 0;
    ++d.chunks;
    last_activity_ = clock::now();
    if (d.to_backend) {
        if (sent_) {
            if (sent_->size() + got > replay_limit_) {
                stop_recording();  // too much to replay: this backend owns the session now
            } else {
                sent_->append(reinterpret_cast<const char*>(data), got);
            }
        }
    } else if (!answered_) {
        answered_ = true;
        stop_recording();
        if (answered_fn_) std::exchange(answered_fn_, nullptr)(answered_arg_);
    }
}

void relay::source_ended(direction& d) {
    if (!d.to_backend && !answered_ && fail_early(d, asio::error::eof)) return;
    // Pass the half-close on, unless the other way has ended too: the
    // session closes both sockets now, which sends the FIN anyway.
    const direction& other = &d == &dirs_[0] ? dirs_[1] : dirs_[0];
    if (!(other.done && other.result.end == pump_end::eof)) half_close(sink(d));
    finish(d, pump_end::eof);
}

void relay::source_failed(direction& d, const error_code& ec) {
    if (!d.to_backend && !answered_ && fail_early(d, ec)) return;
    d.result.error = ec;
    abort_both(source(d), sink(d));
    finish(d, pump_end::source_reset);
}

bool relay::flush(direction& d) {
    while (d.pending > 0) {
        ssize_t n;
        if (d.splicing) {
            n = ::splice(d.pipe.read_fd, nullptr, sink(d).native_handle(), nullptr, d.pending,
                         SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        } else {
            n = ::send(sink(d).native_handle(), d.buffer.get() + d.offset, d.pending, MSG_NOSIGNAL);
        }
        if (n > 0) {
            d.pending -= static_cast<std::size_t>(n);
            d.offset += static_cast<std::size_t>(n);
            d.blocked_since = clock::time_point::max();
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && would_block(errno)) {
            // The peer takes nothing now: the worker's sweep resets the
            // session if it takes nothing for timeouts.write_stall.
            if (d.blocked_since == clock::time_point::max()) d.blocked_since = clock::now();
            sink(d).wait(poll_socket::wait_type::write, &relay::writable, &d);
            return false;
        }
        // A zero-length splice to a socket means it cannot take more: treat as EPIPE.
        sink_failed(d, n < 0 ? last_error() : error_code{EPIPE, boost::system::system_category()});
        return false;
    }
    return true;
}

void relay::sink_failed(direction& d, const error_code& ec) {
    if (d.to_backend && !answered_ && fail_early(d, ec)) return;
    d.result.error = ec;
    abort_both(sink(d), source(d));
    finish(d, pump_end::sink_failed);
}

void relay::on_writable(direction& d, const error_code& ec) {
    if (ec || stale(d)) return finish(d, pump_end::aborted);
    if (flush(d)) transfer_or_reset(d);
}

bool relay::fail_early(direction& d, const error_code& ec) {
    // Only while every byte of the client is still kept, and the client has
    // not ended its side (its EOF would have to be replayed too).
    if (!sent_ || dirs_[0].done) return false;
    failed_early_ = true;
    early_error_ = ec;
    stopping_ = true;
    upstream_.close();
    // The other direction's pending wait completes with operation_aborted.
    client_.cancel();
    finish(d, pump_end::aborted);
    return true;
}

void relay::release(direction& d) {
    if (d.holding_pipe) {
        res_.pipes.release(d.pipe, d.pending == 0);
        d.holding_pipe = false;
    }
    if (d.buffer) res_.buffers.release(std::move(d.buffer));
    d.buffer.reset();
    if (d.provided) {
        source(d).owner().give_back(d.provided_id);
        d.provided = false;
    }
    d.pending = 0;
}

void relay::finish(direction& d, pump_end end) {
    release(d);
    drop_ahead(d);
    d.blocked_since = clock::time_point::max();
    d.result.end = end;
    if (d.reading) {
        // A recv read ahead is in the ring (the send before it ended the
        // direction): the kernel holds the socket and may fill a buffer
        // until it completes, cancelled here if the close that ended the
        // direction did not cancel it already.
        d.ending = true;
        source(d).cancel_submitted(poll_socket::wait_type::read);
        return;
    }
    d.done = true;
    if (direction& other = &d == &dirs_[0] ? dirs_[1] : dirs_[0]; other.parked) {
        // A quiesced direction has no wait that the close completes: it ends
        // with this one (by an error, which closed both sockets).
        other.parked = false;
        return finish(other, pump_end::aborted);
    }
    if (!dirs_[0].done || !dirs_[1].done) return;
    if (failed_early_) {
        // Keep the client's bytes for the replay; undo the direction results.
        for (auto& x : dirs_) x.result = {};
    } else {
        stop_recording();
    }
    // Complete from the poller's loop, never from inside a handler of ours:
    // the session may destroy this relay as soon as it resumes. Both
    // directions have ended, so the client's read waiter is free; queueing
    // allocates nothing (an asio::post did: out of memory, the session
    // was never freed).
    client_.defer_call(poll_socket::wait_type::read, &relay::done, this);
}

pipe_pool::pipe_pool(std::uint32_t pipe_size, std::size_t max_idle) : pipe_size_(pipe_size), max_idle_(max_idle) {
    free_.reserve(max_idle_);
}

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

buffer_pool::buffer_pool(std::size_t buffer_size, std::size_t max_idle) : size_(buffer_size), max_idle_(max_idle) {
    free_.reserve(max_idle_);
}

std::unique_ptr<std::byte[]> buffer_pool::acquire() {
    if (free_.empty()) return std::make_unique_for_overwrite<std::byte[]>(size_);
    auto b = std::move(free_.back());
    free_.pop_back();
    return b;
}

void buffer_pool::release(std::unique_ptr<std::byte[]> buffer) noexcept {
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

}  // namespace apilb
