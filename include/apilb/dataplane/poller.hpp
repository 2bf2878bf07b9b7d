// A worker's own epoll instance for its listening sockets and the two
// sockets of every session (with wait_by::ring, the sessions' sockets are
// watched by the ring instead: poll_socket::adopt_connected). Asio's reactor re-arms a descriptor with
// EPOLL_CTL_MOD on every async_wait, removes accepted sockets with
// EPOLL_CTL_DEL before closing them, and needs an ioctl to make each socket
// non-blocking; here a descriptor is added once, edge-triggered for both
// directions, made non-blocking when it is created (accept4, socket), and
// leaves the epoll set with its close. Posted work stays Asio's; the
// worker's timers are poll_timers (timerfds in the set). Who waits for the
// set is chosen by attach(): Asio's reactor, watching the set as one
// descriptor (registered once, waited for without a re-arm, see
// poller.cpp), so that a wake-up costs Asio's epoll_wait and the poller's;
// or run(), the poller's own loop, blocking in its own epoll_wait (one
// system call per wake-up) and running the io_context's ready handlers
// between wake-ups. Worker thread only (checked in debug and sanitizer
// builds), except wake(), stop_running() and post(); nothing here takes a
// lock.
#pragma once

#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/system/error_code.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "apilb/dataplane/erased_handler.hpp"
#include "apilb/logging/logging.hpp"

struct epoll_event;   // <sys/epoll.h>
struct io_uring_sqe;  // <liburing.h>

namespace apilb {

class poll_socket;
class uring;

/// A waiter's place in its poller's queue of completions to run: intrusive,
/// so that queueing one allocates nothing, however many are queued.
struct deferred_link {
    deferred_link* next = nullptr;
    poll_socket* socket = nullptr;
    int direction = 0;
};

/// A FIFO of deferred_links (no allocation, no ownership).
struct deferred_queue {
    deferred_link* head = nullptr;
    deferred_link* tail = nullptr;
    bool empty() const noexcept { return head == nullptr; }
    void push(deferred_link& l) noexcept;
    deferred_link* pop() noexcept;
    /// Unlinks every link of `s` (a socket destroyed with a waiter queued).
    void remove(const poll_socket& s) noexcept;
};

/// The epoll set of one worker. Create it before, and destroy it after,
/// every poll_socket registered with it; attach() it to the io_context that
/// runs them and detach() it before that io_context is destroyed.
class poller {
public:
    /// Who blocks waiting for the epoll set.
    enum class wait_by {
        /// Asio's reactor, in whatever runs the io_context (io_context::run
        /// and friends): two epoll_waits per wake-up.
        asio,
        /// run(), the poller's own epoll_wait: one per wake-up. The
        /// io_context is then a queue of handlers that run() runs; it must
        /// hold no Asio I/O object (timer, socket: their reactor would never
        /// wake run(); checked in debug and sanitizer builds), and work posted to it from
        /// another thread must be followed by wake() (post() does both).
        run,
        /// As run, but run() blocks in the worker's io_uring
        /// (io_uring_submit_and_wait: one system call submits the turn's
        /// entries and waits), which watches the epoll set with one
        /// multishot POLL_ADD; when that reports the set readable, run()
        /// takes its events with epoll_wait(0). The ring is made by
        /// attach() (throws std::system_error if it cannot be) and enabled
        /// by run()'s thread; should enabling fail there, the loop logs it
        /// and waits in epoll_wait as with run.
        ring,
    };

    poller();
    ~poller();
    poller(const poller&) = delete;
    poller& operator=(const poller&) = delete;

    /// Starts delivering readiness through `io`, waited for by `by`.
    /// Throws std::system_error.
    void attach(boost::asio::io_context& io, wait_by by = wait_by::asio);
    /// Stops watching the epoll set, so that the io_context runs out of work
    /// once everything else has ended (a worker's shutdown). Waits completed
    /// or cancelled are still delivered.
    void stop_watching();
    /// Lets go of the io_context, before it is destroyed: nothing more is
    /// delivered or posted.
    void detach();

    /// wait_by::run and ring: the worker's loop, on the thread the poller
    /// serves. Blocks in one epoll_wait (ring: io_uring_enter) per wake-up
    /// (without a timeout while nothing is queued), delivers what it
    /// reports, and runs the io_context's ready
    /// handlers (io_context::poll, no system call) before each wait. Returns
    /// once stop_running() was called, or once the io_context ran out of
    /// work after stop_watching() with no completion left to deliver. An
    /// exception from a posted handler leaves run(); calling it again goes on.
    void run();
    /// wait_by::run and ring: run() looks at the io_context again (work posted from
    /// another thread, the end of its work). Any thread; one write to an
    /// eventfd; nothing with wait_by::asio (Asio's reactor wakes itself).
    void wake() noexcept;
    /// wait_by::run and ring: run() returns at its next turn, whatever is left (a
    /// shutdown that took too long). Any thread.
    void stop_running() noexcept;
    /// Posts `handler` to the io_context and wakes the loop. Any thread;
    /// allocates (asio::post) and may throw std::bad_alloc.
    template <typename Handler>
    void post(Handler&& handler) {
        boost::asio::post(*io_, std::forward<Handler>(handler));
        wake();
    }

    boost::asio::io_context::executor_type get_executor() const { return io_->get_executor(); }

    /// run() waits in an io_uring (wait_by::ring, and enabling it did not fail).
    bool waits_in_ring() const noexcept { return ring_ != nullptr; }
    /// run()'s thread has enabled the ring: poll_sockets may submit to it.
    bool ring_runs() const noexcept { return ring_ != nullptr && ring_enabled_; }

    /// wait_by::ring: `count` buffers (a power of two up to 32768) of
    /// `size` bytes that the kernel hands to poll_socket::submit_recv_provided
    /// only when data arrives, so that a recv waiting on an idle socket
    /// holds no memory (IORING_REGISTER_PBUF_RING, kernel 6.1). Registered
    /// by run()'s thread once it enabled the ring; should that fail, it is
    /// logged and provides_buffers() stays false. Call after attach(),
    /// before run(). Throws std::bad_alloc.
    void provide_buffers(std::size_t size, unsigned count);
    /// submit_recv_provided may be used: the buffers are registered.
    bool provides_buffers() const noexcept { return ring_ != nullptr && buffers_registered_; }
    /// The bytes of provided buffer `id`, and their number.
    std::byte* provided_buffer(std::uint16_t id) const noexcept;
    std::size_t provided_size() const noexcept;
    /// Gives provided buffer `id` back to the kernel. Worker thread.
    void give_back(std::uint16_t id) noexcept;
    /// Where to count recvs that found every provided buffer in use (they
    /// fail with ENOBUFS; the relay then waits for readiness and reads as
    /// with epoll).
    void count_empty_buffers_in(std::atomic<std::uint64_t>* counter) { empty_buffers_ = counter; }
    /// A recv found every provided buffer in use: counted.
    void note_buffers_empty() noexcept {
        if (empty_buffers_ != nullptr) empty_buffers_->fetch_add(1, std::memory_order_relaxed);
    }

    /// Where to count waiters that ended in an exception (std::bad_alloc):
    /// each is logged and counted, and the others of its batch still run.
    void count_failures_in(std::atomic<std::uint64_t>* counter) { failures_ = counter; }

private:
    friend class poll_socket;

    /// The epoll set's registration in Asio's reactor (poller.cpp).
    struct watch;
    /// provide_buffers()'s memory and ring (poller_ring.cpp).
    struct buffer_ring;
    struct buffer_ring_deleter {
        void operator()(buffer_ring* b) const noexcept;
    };
    /// Asio's wait for that registration to be readable (poller.cpp).
    class wake_op;
    /// The posted run of deferred completions (poller.cpp).
    class drain_op;

    /// Starts the wait for the epoll set again; allocates nothing.
    void arm() noexcept;
    /// The wait armed by arm() completed with `ec`.
    void on_wake(const boost::system::error_code& ec);
    void on_ready();
    /// Marks the sockets of `n` events ready and queues their waiters
    /// (consumes a wake() on the way); runs nothing.
    void take_events(const ::epoll_event* events, int n) noexcept;
    /// The wait for the set failed with `ec` (cannot while the set and its
    /// registration exist): logged at critical, rate-limited, and counted;
    /// the set is watched on.
    void wait_failed(const boost::system::error_code& ec) noexcept;
    /// Queues `s`'s waiter of `direction` to run from the poller's loop,
    /// never from inside the caller (no recursion, no re-entry). Allocates
    /// nothing, never throws.
    void defer(poll_socket& s, int direction) noexcept;
    void run_deferred();
    /// Posts drain_ unless it is queued already; allocates nothing.
    void post_drain() noexcept;
    /// A slot for `s` in the table the epoll set's events point into.
    std::uint64_t enter(poll_socket& s);
    /// Frees `s`'s slot: an event still queued for it (the descriptor may
    /// live on in a forked child until its exec) finds another generation.
    void leave(poll_socket& s);
    /// run()'s loop itself (wait_by::run and ring).
    bool own_loop() const noexcept { return by_ != wait_by::asio; }
    /// wait_by::ring: one turn's wait in the ring (`block`: until something
    /// completes, else only what completed meanwhile); true if the epoll
    /// set has events to take. Runs nothing.
    bool wait_in_ring(bool block) noexcept;
    /// wait_by::ring: the ring could not be enabled on run()'s thread:
    /// logged, and run() waits in epoll_wait from now on.
    void leave_ring(const std::exception& e) noexcept;
    /// Registers provide_buffers()'s ring, on run()'s thread once the ring
    /// is enabled (SINGLE_ISSUER); logs a failure.
    void register_buffers() noexcept;
    /// Queues an IORING_OP_CLOSE of `fd` (in_run_ only); false if the ring
    /// has no room (close it now then).
    bool submit_close(int fd) noexcept;
    /// No completion for `sqe` if it succeeds (closes, cancellations:
    /// nothing waits for those), where the kernel can (IORING_FEAT_CQE_SKIP).
    void quiet_on_success(::io_uring_sqe* sqe) const noexcept;

    struct slot {
        poll_socket* socket = nullptr;
        std::uint32_t generation = 0;
    };

    int epfd_ = -1;
    wait_by by_ = wait_by::asio;
    int wake_fd_ = -1;  ///< wait_by::run and ring: the eventfd wake() writes, in the set
    /// Before ring_: the kernel lets go of the buffers when the ring goes.
    std::unique_ptr<buffer_ring, buffer_ring_deleter> buffers_;
    bool buffers_registered_ = false;
    std::atomic<std::uint64_t>* empty_buffers_ = nullptr;  ///< see count_empty_buffers_in()
    std::unique_ptr<uring> ring_;                          ///< wait_by::ring
    bool ring_enabled_ = false;                            ///< by run()'s thread (SINGLE_ISSUER)
    bool in_run_ = false;                                  ///< run() is looping: SQEs queued now are submitted
    bool set_watched_ = false;                             ///< the multishot POLL_ADD for the epoll set is in the ring
    bool set_has_more_ = false;  ///< the last epoll_wait(0) filled its array: look again before waiting
    std::size_t ring_ops_ = 0;   ///< poll_sockets' operations in the ring, not yet completed
    boost::asio::io_context* io_ = nullptr;
    /// wait_by::run: the io_context has work while the set is watched, as
    /// wake_ counts while queued with wait_by::asio.
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> watch_work_;
    std::atomic<bool> stop_requested_{false};  ///< stop_running()
    std::unique_ptr<watch> watch_;
    wake_op* wake_ = nullptr;                             ///< made by attach(); see wake_op for who owns it
    bool armed_ = false;                                  ///< wake_ is queued in the io_context
    drain_op* drain_ = nullptr;                           ///< made by attach(); owned as wake_ is
    std::atomic<std::uint64_t>* failures_ = nullptr;      ///< see count_failures_in()
    log_limiter wake_warnings_{std::chrono::seconds(1)};  ///< for on_wake's failures
    bool watching_ = false;
    bool dispatching_ = false;   ///< inside on_ready or run_deferred
    bool drain_posted_ = false;  ///< drain_ is queued in the io_context
    deferred_queue deferred_;
    deferred_queue running_;  ///< the batch run_deferred is working through
    std::vector<slot> slots_;
    std::vector<std::uint32_t> free_slots_;
};

/// One non-blocking descriptor in a poller: a TCP socket or a listener. At
/// most one waiter per direction; a waiter always completes from the
/// poller's loop, with operation_aborted if the socket was closed or
/// cancelled meanwhile. The owner must not destroy a poll_socket that has a
/// waiter (as with the relay: the session lives until both directions
/// completed). Not movable: the epoll set points at it.
class poll_socket {
public:
    enum class wait_type { read = 0, write = 1 };
    /// A waiter without an allocation, for the relay's hot path.
    using callback = void (*)(void* arg, const boost::system::error_code& ec);

    explicit poll_socket(poller& p);
    ~poll_socket();
    poll_socket(const poll_socket&) = delete;
    poll_socket& operator=(const poll_socket&) = delete;

    /// Takes ownership of the non-blocking descriptor `fd` and adds it to the
    /// epoll set. On failure `fd` is closed and the error returned.
    boost::system::error_code adopt(int fd);
    /// adopt() for a connected socket of a session. With a poller whose ring
    /// runs (wait_by::ring, on the loop's thread) the socket never enters
    /// the epoll set: each wait() is a oneshot POLL_ADD submitted with the
    /// loop's next io_uring_enter, so a session costs no epoll_ctl and its
    /// wake-ups no epoll_wait. Without a ring, adopt().
    boost::system::error_code adopt_connected(int fd);
    /// A new non-blocking TCP socket of `protocol`'s family (not yet watched:
    /// async_connect adds it to the epoll set, or with a running ring watches
    /// it as adopt_connected() does, once the connect is under way).
    boost::system::error_code open(const boost::asio::ip::tcp& protocol);

    bool is_open() const noexcept { return fd_ >= 0; }
    int native_handle() const noexcept { return fd_; }
    boost::asio::io_context::executor_type get_executor() const { return poller_->get_executor(); }
    /// The poller the socket is in.
    poller& owner() const noexcept { return *poller_; }

    /// Closes the descriptor (leaving the epoll set with it); waiters
    /// complete with operation_aborted. A socket watched by the ring closes
    /// by an IORING_OP_CLOSE submitted with the loop's next wait (no
    /// system call of its own), after the cancellation of its operations;
    /// set_abortive_close() still makes that a reset.
    void close();
    /// Waiters complete with operation_aborted; the descriptor stays open.
    void cancel();
    /// Takes the descriptor out of the epoll set and hands it to the caller
    /// (an upgrade sends it to the new process); waiters complete with
    /// operation_aborted as after close(). -1 if none was open.
    int release();
    /// The next close() sends RST instead of FIN (SO_LINGER 0).
    void set_abortive_close();
    /// shutdown(SHUT_WR): passes a half-close on.
    boost::system::error_code shutdown_send();
    /// The peer's FIN has come (EPOLLRDHUP) and no error (EPOLLERR): no byte
    /// arrives after it, so a read that takes less than it asked has emptied
    /// the socket for good and the next one would only return the end of
    /// stream (nginx's `pending_eof`). Reset by adopt() and open().
    bool peer_finished() const noexcept { return fin_seen_ && !error_seen_; }
    /// The peer's address (getpeername).
    boost::asio::ip::tcp::endpoint remote_endpoint(boost::system::error_code& ec) const;

    /// Calls `fn(arg, ec)` from the poller's loop once the descriptor is
    /// ready for `w` -- at once if it became ready since the last wait for
    /// `w` completed. Edge-triggered: wait only after a read or write found
    /// EAGAIN, or a read took less than asked (the socket was then empty).
    void wait(wait_type w, callback fn, void* arg);

    /// Calls `fn(arg, ec)` from the poller's loop in its next batch, ready
    /// or not (a yield, or a completion that must not run inside its
    /// caller): ec is empty unless the socket was closed or cancelled
    /// meanwhile. Takes the waiter of `w`; allocates nothing.
    void defer_call(wait_type w, callback fn, void* arg) noexcept;

    /// wait() for any completion token; signature `void(error_code)`.
    template <typename CompletionToken>
    auto async_wait(wait_type w, CompletionToken&& token) {
        return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code)>(
            [this, w](auto handler) { wait_erased(w, erased_handler<boost::system::error_code>(std::move(handler))); },
            token);
    }

    /// Connects the socket made by open() to `ep`; signature
    /// `void(error_code)`. Close the socket to abandon the connect (it then
    /// completes with operation_aborted).
    template <typename CompletionToken>
    auto async_connect(const boost::asio::ip::tcp::endpoint& ep, CompletionToken&& token) {
        return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code)>(
            [this, &ep](auto handler) {
                connect_erased(ep, erased_handler<boost::system::error_code>(std::move(handler)));
            },
            token);
    }

    /// async_connect with a plain callback, as wait() is to async_wait:
    /// `fn(arg, ec)` once connected or failed, no allocation.
    void connect(const boost::asio::ip::tcp::endpoint& ep, callback fn, void* arg);

    /// Only with a poller that waits in a ring (poller::waits_in_ring()): a
    /// recv of up to `len` bytes into `buf`, submitted with the loop's next
    /// wait; `fn(arg, ec)` from the loop once it completed, transferred(read)
    /// saying how many bytes came (0: the peer's FIN). close() and release()
    /// cancel it in the kernel: fn then gets operation_aborted, once the
    /// kernel has let go of `buf` and of the socket (until then the socket
    /// sends neither FIN nor RST, and its owner may not destroy it, as with
    /// any waiter). cancel() cancels it too, but a recv that took bytes
    /// before the cancel reached it completes with them and no error: the
    /// caller keeps them. Takes the read waiter; allocates nothing.
    void submit_recv(void* buf, std::size_t len, callback fn, void* arg);
    /// submit_recv's twin for the write waiter: a send (MSG_NOSIGNAL) of up
    /// to `len` bytes of `buf`; transferred(write) says how many went.
    void submit_send(const void* buf, std::size_t len, callback fn, void* arg);
    /// The bytes the last operation of `w` submitted to the ring moved.
    std::size_t transferred(wait_type w) const noexcept { return waiters_[static_cast<int>(w)].transferred; }
    /// Only with a poller that provides buffers (poller::provides_buffers()):
    /// submit_recv into a buffer the kernel takes from the poller's provided
    /// ones only once data has arrived, so that a recv on an idle socket
    /// holds none. Completes as submit_recv does, or with ENOBUFS when every
    /// provided buffer was in use (nothing read). On success the caller owns
    /// the buffer that took the bytes (take_provided()) and gives it back
    /// with poller::give_back(); with an error it is given back here.
    /// `empty`: the caller knows the socket has nothing to read now (its
    /// last read was short), so the kernel waits for bytes before it tries
    /// (IORING_RECVSEND_POLL_FIRST) instead of failing a first attempt.
    void submit_recv_provided(callback fn, void* arg, bool empty = false);
    /// The provided buffer the last recv filled, now the caller's; -1 if none.
    int take_provided() noexcept;
    /// A recv or send of `w` is in the ring: the kernel holds its buffer and
    /// the socket (a wait() watched by the ring is not counted: it moves no
    /// byte, and close() and release() end it as they end any wait).
    bool submitted(wait_type w) const noexcept {
        const waiter& x = waiters_[static_cast<int>(w)];
        return x.in_ring && !x.polling;
    }
    /// Cancels the recv or send of `w` in the ring, if any (not the other
    /// direction's): it completes with operation_aborted, or with the bytes
    /// it took before the cancel reached it. The waiter of `w` stays set.
    void cancel_submitted(wait_type w) noexcept;
    /// Its readiness comes from the ring (adopt_connected, connect), not the epoll set.
    bool watched_by_ring() const noexcept { return ring_watched_; }

private:
    friend class poller;

    struct waiter {
        deferred_link link;  ///< in the poller's queue while `queued`
        callback fn = nullptr;
        void* arg = nullptr;
        erased_handler<boost::system::error_code> handler;  ///< set instead of fn for async_wait
        // Bit-fields: an idle session holds four waiters (its budget,
        // session_size_unit_test).
        bool queued : 1 = false;           ///< in the poller's deferred list
        bool aborted : 1 = false;          ///< complete with operation_aborted
        bool in_ring : 1 = false;          ///< an operation of it is in the kernel (submit_*, or a wait's POLL_ADD)
        bool polling : 1 = false;          ///< that operation is a wait's POLL_ADD (ring_watched_)
        bool has_buffer : 1 = false;       ///< `buffer` holds bytes of a recv_provided, not yet taken
        std::uint16_t buffer = 0;          ///< the provided buffer of that recv
        std::uint32_t transferred = 0;     ///< what that operation moved
        boost::system::error_code result;  ///< an error known before any wait (a failed connect())
        bool active() const noexcept { return fn != nullptr || static_cast<bool>(handler); }
    };

    void wait_erased(wait_type w, erased_handler<boost::system::error_code> handler);
    void connect_erased(const boost::asio::ip::tcp::endpoint& ep, erased_handler<boost::system::error_code> handler);
    /// The write waiter is set: starts the connect and waits for its end.
    void start_connect(const boost::asio::ip::tcp::endpoint& ep);
    boost::system::error_code add_to_epoll();
    /// epoll reported `events`: mark ready and queue the waiters concerned.
    void on_events(std::uint32_t events);
    /// What `events` (epoll's or a POLL_ADD's mask) says of the peer: FIN,
    /// error, hang-up. Queues nothing.
    void note_events(std::uint32_t events) noexcept;
    /// ring_watched_: the waiter of `direction` waits through a POLL_ADD.
    void submit_poll(int direction) noexcept;
    /// The entry for an operation of `direction`'s waiter (set already),
    /// its user data filled in and counted in the ring; null if the ring
    /// has no room (the waiter is then queued to complete with EBUSY).
    ::io_uring_sqe* ring_entry(int direction) noexcept;
    void mark_ready(int direction);
    /// A waiter of `direction` was just set: queue it if it can run now.
    void start_wait(int direction);
    void abort_waiters();
    /// A new descriptor: nothing known about it yet.
    void forget_readiness();
    /// Runs the waiter of `direction` (from the poller's loop).
    void complete(int direction);
    /// Takes the waiter of `d` for an operation in the ring; the entry to
    /// fill, or null if the waiter was queued to complete at once (closed,
    /// or no room in the ring).
    ::io_uring_sqe* start_submit(int d, callback fn, void* arg);
    /// The ring completed the operation of `direction` with `res` (-errno
    /// or bytes): queues the waiter.
    void on_ring_completion(int direction, int res, std::uint32_t flags) noexcept;
    /// Cancels the operations of this socket in the ring (close, release,
    /// cancel): by user data, so the descriptor may be closed at once.
    void cancel_in_ring() noexcept;
    /// The same for the operation of `direction` alone; `ending`: the
    /// socket is closing (with no room for the cancel, its traffic is shut).
    void cancel_in_ring(int direction, bool ending) noexcept;

    poller* poller_;
    int fd_ = -1;
    bool registered_ = false;
    bool ring_watched_ = false;       ///< readiness from POLL_ADDs in the ring, not from the epoll set
    std::uint32_t slot_ = 0;          ///< in the poller's table while registered_
    bool ready_[2] = {false, false};  ///< an edge came that no waiter has been queued for since
    bool ended_[2] = {false, false};  ///< FIN or error seen: that direction never blocks again
    bool connecting_ = false;         ///< the write waiter is a connect: finish it with SO_ERROR
    bool fin_seen_ = false;           ///< EPOLLRDHUP seen (peer_finished())
    bool error_seen_ = false;         ///< EPOLLERR seen: reads report the error, not a clean end
    waiter waiters_[2];
};

}  // namespace apilb
