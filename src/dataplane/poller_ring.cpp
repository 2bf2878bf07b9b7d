// The poller's io_uring side (relay.io: io_uring): the loop's wait in the
// ring, the provided buffers, and a poll_socket's operations in the ring
// (recv, send, a wait's POLL_ADD, their cancellation, the close by an
// SQE). poller.cpp has the epoll side and what both share.
#include "apilb/dataplane/poller.hpp"

#include <liburing.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <cassert>
#include <cerrno>
#include <system_error>

#include "apilb/dataplane/uring.hpp"

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer's hook for a close(2) it does not intercept
// (<sanitizer/linux_syscall_hooks.h>, which GCC 12 does not ship).
extern "C" void __sanitizer_syscall_pre_impl_close(long fd);
#endif

namespace apilb {

namespace {

/// The user data of the ring's multishot POLL_ADD for the epoll set, and
/// of its removal.
constexpr std::uint64_t set_poll_tag = 1;
/// The user data of cancellations and closes (their completions say
/// nothing needed).
constexpr std::uint64_t cancel_tag = 2;
/// Above the tags: a poll_socket's address, its low bit the direction.
constexpr std::uint64_t first_socket_data = 8;

/// The buffer group of the provided buffers (one per ring).
constexpr int provided_group = 0;

using boost::system::error_code;

constexpr int read_dir = static_cast<int>(poll_socket::wait_type::read);
constexpr int write_dir = static_cast<int>(poll_socket::wait_type::write);

}  // namespace

struct poller::buffer_ring {
    buffer_ring(std::size_t size, unsigned count)
        : memory(std::make_unique_for_overwrite<std::byte[]>(size * count)), size(size), count(count) {
        // Page-aligned, as the kernel wants the ring's entries.
        void* m = ::mmap(nullptr, count * sizeof(::io_uring_buf), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
                         -1, 0);
        if (m == MAP_FAILED) throw std::bad_alloc();
        entries = static_cast<::io_uring_buf_ring*>(m);
    }
    ~buffer_ring() { ::munmap(entries, count * sizeof(::io_uring_buf)); }
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    void add(std::uint16_t id, int offset) noexcept {
        ::io_uring_buf_ring_add(entries, memory.get() + std::size_t{id} * size, static_cast<unsigned>(size), id,
                                ::io_uring_buf_ring_mask(count), offset);
    }

    std::unique_ptr<std::byte[]> memory;  ///< count buffers of size bytes; pages touched as they are used
    ::io_uring_buf_ring* entries = nullptr;
    std::size_t size;
    unsigned count;
};

void poller::buffer_ring_deleter::operator()(buffer_ring* b) const noexcept { delete b; }

bool poller::wait_in_ring(bool block) noexcept {
    ::io_uring& ring = ring_->get();
    if (!set_watched_) {
        // Multishot: one CQE for every wake-up of the set, flagged MORE while
        // the poll stays armed. Level semantics for the set itself: it
        // reports readable while events wait in it.
        if (::io_uring_sqe* sqe = ring_->sqe()) {
            ::io_uring_prep_poll_multishot(sqe, epfd_, POLLIN);
            ::io_uring_sqe_set_data64(sqe, set_poll_tag);
            set_watched_ = true;
        } else {
            block = false;  // unwatched, a wait could sleep on events: reap, and arm it next turn
        }
    }
    const int rc = block ? ::io_uring_submit_and_wait(&ring, 1) : ::io_uring_submit_and_get_events(&ring);
    // EBUSY: completions the kernel could not post wait for room, which
    // the reaping below makes. Anything else cannot happen with a ring that
    // exists; should it still, it is said, and the set looked at.
    const bool failed = rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EBUSY;
    if (failed) wait_failed({-rc, boost::system::system_category()});
    bool set_ready = failed;
    unsigned seen = 0;
    unsigned head;
    ::io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
        ++seen;
        const std::uint64_t data = ::io_uring_cqe_get_data64(cqe);
        if (data >= first_socket_data) {
            // The socket lives until its waiter has run (its contract).
            auto* s = reinterpret_cast<poll_socket*>(static_cast<std::uintptr_t>(data & ~std::uint64_t{1}));
            s->on_ring_completion(static_cast<int>(data & 1), cqe->res, cqe->flags);
            continue;
        }
        if (data != set_poll_tag) continue;  // a cancellation's
        if (cqe->res >= 0) set_ready = true;
        if ((cqe->flags & IORING_CQE_F_MORE) == 0) {
            // The kernel ended the poll (an error, or out of room for its
            // CQEs): armed again with the next wait; the set is looked at
            // now so that no edge that came meanwhile waits for another.
            set_watched_ = false;
            set_ready = true;
        }
    }
    ::io_uring_cq_advance(&ring, seen);
    return set_ready;
}

bool poller::submit_close(int fd) noexcept {
    ::io_uring_sqe* sqe = ring_->sqe();
    if (sqe == nullptr) return false;
    ::io_uring_prep_close(sqe, fd);
    ::io_uring_sqe_set_data64(sqe, cancel_tag);
    quiet_on_success(sqe);
#if defined(__SANITIZE_THREAD__)
    // ThreadSanitizer sees close(2), not this close by the kernel: told
    // nothing, it would take the next descriptor with this number (another
    // thread's socket, eventfd or timerfd) for this socket, and report
    // that thread's use of it as a race with this one's socket(2). This
    // thread does not touch the descriptor again.
    __sanitizer_syscall_pre_impl_close(fd);
#endif
    return true;
}

void poller::quiet_on_success(::io_uring_sqe* sqe) const noexcept {
    // A completion nobody needs would end the loop's next wait at once
    // (the entry completes inside that very io_uring_enter): one system
    // call more per turn that closes or cancels (kernel 5.17).
    if ((ring_->get().features & IORING_FEAT_CQE_SKIP) != 0) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

void poller::leave_ring(const std::exception& e) noexcept {
    if (failures_ != nullptr) failures_->fetch_add(1, std::memory_order_relaxed);
    try {
        spdlog::error("a worker's io_uring could not be enabled ({}); it waits in epoll_wait instead", e.what());
    } catch (const std::exception&) {}
    ring_.reset();
}

void poller::provide_buffers(std::size_t size, unsigned count) {
    assert(by_ == wait_by::ring && !ring_enabled_ && count > 0 && count <= 32768 && (count & (count - 1)) == 0);
    buffers_.reset(new buffer_ring(size, count));
}

void poller::register_buffers() noexcept {
    if (!buffers_ || buffers_registered_) return;
    ::io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uintptr_t>(buffers_->entries);
    reg.ring_entries = buffers_->count;
    reg.bgid = provided_group;
    if (const int rc = ::io_uring_register_buf_ring(&ring_->get(), &reg, 0); rc < 0) {
        if (failures_ != nullptr) failures_->fetch_add(1, std::memory_order_relaxed);
        try {
            spdlog::error("a worker's io_uring refused its provided buffers ({}); its relays read after readiness",
                          std::error_code(-rc, std::system_category()).message());
        } catch (const std::exception&) {}
        return;
    }
    ::io_uring_buf_ring_init(buffers_->entries);
    for (unsigned i = 0; i < buffers_->count; ++i) buffers_->add(static_cast<std::uint16_t>(i), static_cast<int>(i));
    ::io_uring_buf_ring_advance(buffers_->entries, static_cast<int>(buffers_->count));
    buffers_registered_ = true;
}

std::byte* poller::provided_buffer(std::uint16_t id) const noexcept {
    return buffers_->memory.get() + std::size_t{id} * buffers_->size;
}

std::size_t poller::provided_size() const noexcept { return buffers_ ? buffers_->size : 0; }

void poller::give_back(std::uint16_t id) noexcept {
    buffers_->add(id, 0);
    ::io_uring_buf_ring_advance(buffers_->entries, 1);
}

error_code poll_socket::adopt_connected(int fd) {
    if (!poller_->ring_runs()) return adopt(fd);
    close();
    forget_readiness();
    fd_ = fd;
    ring_watched_ = true;
    return {};
}

void poll_socket::cancel_submitted(wait_type w) noexcept { cancel_in_ring(static_cast<int>(w), false); }

void poll_socket::cancel_in_ring() noexcept {
    for (int d = 0; d < 2; ++d) cancel_in_ring(d, true);
}

void poll_socket::cancel_in_ring(int d, bool ending) noexcept {
    if (!waiters_[d].in_ring) return;
    // By user data, not by descriptor (IORING_ASYNC_CANCEL_FD): the kernel
    // looks a descriptor up when it takes the cancellation, in the loop's
    // next io_uring_enter, and by then close() has closed it and another
    // socket may have its number. The queue keeps order: a new operation of
    // this waiter, submitted once this one completed, comes after the
    // cancellation.
    ::io_uring_sqe* sqe = poller_->ring_->sqe();
    if (sqe == nullptr) {
        // No room even after submitting (the kernel holds completions
        // nobody reaped). A socket that is ending ends the operation by
        // ending its traffic (the recv completes with 0, the send with
        // EPIPE); a cancel_submitted() is left to complete by itself.
        if (ending) (void)::shutdown(fd_, SHUT_RDWR);
        return;
    }
    ::io_uring_prep_cancel64(sqe, reinterpret_cast<std::uintptr_t>(this) | static_cast<std::uint64_t>(d), 0);
    ::io_uring_sqe_set_data64(sqe, cancel_tag);
    poller_->quiet_on_success(sqe);
}

::io_uring_sqe* poll_socket::start_submit(int d, callback fn, void* arg) {
    waiter& x = waiters_[d];
    assert(!x.active() && !x.in_ring && poller_->ring_ != nullptr);
    x.fn = fn;
    x.arg = arg;
    x.transferred = 0;
    x.aborted = fd_ < 0;
    if (x.aborted) {
        poller_->defer(*this, d);
        return nullptr;
    }
    return ring_entry(d);
}

::io_uring_sqe* poll_socket::ring_entry(int d) noexcept {
    waiter& x = waiters_[d];
    ::io_uring_sqe* sqe = poller_->ring_->sqe();
    if (sqe == nullptr) {
        x.result = {EBUSY, boost::system::system_category()};
        poller_->defer(*this, d);
        return nullptr;
    }
    static_assert(alignof(poll_socket) >= 2, "the direction goes in the address's low bit");
    ::io_uring_sqe_set_data64(sqe, reinterpret_cast<std::uintptr_t>(this) | static_cast<std::uint64_t>(d));
    x.in_ring = true;
    ++poller_->ring_ops_;
    return sqe;
}

void poll_socket::submit_poll(int d) noexcept {
    // Oneshot, and level-triggered: the kernel looks at the socket when it
    // takes the entry, so bytes (or room) that came before it complete it
    // at once, and no edge can be missed between two waits. RDHUP and the
    // errors come with either direction's mask (peer_finished()).
    if (::io_uring_sqe* sqe = ring_entry(d)) {
        ::io_uring_prep_poll_add(sqe, fd_, d == read_dir ? POLLIN | POLLRDHUP : POLLOUT);
        waiters_[d].polling = true;
    }
}

void poll_socket::submit_recv(void* buf, std::size_t len, callback fn, void* arg) {
    if (::io_uring_sqe* sqe = start_submit(read_dir, fn, arg)) ::io_uring_prep_recv(sqe, fd_, buf, len, 0);
}

void poll_socket::submit_recv_provided(callback fn, void* arg, bool empty) {
    assert(poller_->provides_buffers());
    if (::io_uring_sqe* sqe = start_submit(read_dir, fn, arg)) {
        // Length 0: the buffer's. The kernel picks the buffer when the recv
        // runs with data to take; while it waits (its internal poll) it
        // holds none.
        ::io_uring_prep_recv(sqe, fd_, nullptr, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = provided_group;
        if (empty) sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    }
}

int poll_socket::take_provided() noexcept {
    waiter& w = waiters_[read_dir];
    if (!w.has_buffer) return -1;
    w.has_buffer = false;
    return w.buffer;
}

void poll_socket::submit_send(const void* buf, std::size_t len, callback fn, void* arg) {
    if (::io_uring_sqe* sqe = start_submit(write_dir, fn, arg)) ::io_uring_prep_send(sqe, fd_, buf, len, MSG_NOSIGNAL);
}

void poll_socket::on_ring_completion(int d, int res, std::uint32_t flags) noexcept {
    waiter& w = waiters_[d];
    w.in_ring = false;
    if (w.polling) {
        // A wait's POLL_ADD: its result is the socket's mask.
        w.polling = false;
        --poller_->ring_ops_;
        if (res >= 0) {
            note_events(static_cast<std::uint32_t>(res));
        } else if (res == -ECANCELED) {
            w.aborted = true;
        } else {
            w.result = {-res, boost::system::system_category()};
        }
        if (!w.queued) poller_->defer(*this, d);
        return;
    }
    if ((flags & IORING_CQE_F_BUFFER) != 0) {
        w.has_buffer = true;
        w.buffer = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    }
    --poller_->ring_ops_;
    if (res >= 0) {
        w.transferred = static_cast<std::uint32_t>(res);
        // Bytes a cancel() came too late for are the caller's: no error.
        if (res > 0 && fd_ >= 0) w.aborted = false;
    } else if (res == -ECANCELED) {
        w.aborted = true;
    } else {
        w.result = {-res, boost::system::system_category()};
    }
    if (!w.queued) poller_->defer(*this, d);
}

}  // namespace apilb
