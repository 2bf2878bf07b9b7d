#include "apilb/dataplane/poller.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cassert>
#include <cerrno>
#include <system_error>
#include <utility>

#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/socket_options.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

error_code last_error() { return {errno, boost::system::system_category()}; }

/// Events taken from the epoll set per epoll_wait.
constexpr int max_events = 256;

constexpr int read_dir = static_cast<int>(poll_socket::wait_type::read);
constexpr int write_dir = static_cast<int>(poll_socket::wait_type::write);

}  // namespace

poller::poller() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (epfd_ < 0) throw std::system_error(errno, std::system_category(), "epoll_create1");
}

poller::~poller() {
    detach();
    ::close(epfd_);
}

void poller::attach(asio::io_context& io) {
    io_ = &io;
    // The descriptor is watched through a duplicate, so that Asio's
    // deregistration on release never touches the set itself.
    const int watched = ::dup(epfd_);
    if (watched < 0) throw std::system_error(errno, std::system_category(), "dup of the epoll descriptor");
    watch_.emplace(io, watched);
    watching_ = true;
    arm();
}

void poller::stop_watching() {
    watching_ = false;
    if (watch_) {
        error_code ignored;
        watch_->cancel(ignored);
    }
}

void poller::detach() {
    stop_watching();
    watch_.reset();  // closes the duplicate
    io_ = nullptr;
}

void poller::arm() {
    if (armed_ || !watching_) return;
    armed_ = true;
    watch_->async_wait(asio::posix::stream_descriptor::wait_read, [this](const error_code& ec) {
        armed_ = false;
        if (ec || !watching_) return;
        on_ready();
    });
}

void poller::on_ready() {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    // Whatever happens below, the epoll set stays watched: unwatched, every
    // session of the worker would hang.
    struct rearm {
        poller& p;
        ~rearm() {
            p.dispatching_ = false;
            try {
                p.arm();
            } catch (const std::exception& e) {
                spdlog::critical("cannot watch the sockets again: {}", e.what());
            }
        }
    } guard{*this};
    epoll_event events[max_events];
    int n;
    do {
        n = ::epoll_wait(epfd_, events, max_events, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        // First every event marks its socket ready and queues its waiters;
        // only then do the waiters run. A waiter may close other sockets of
        // the batch; none is destroyed while a waiter of it is queued.
        for (int i = 0; i < n; ++i) {
            const std::uint64_t id = events[i].data.u64;
            const auto index = static_cast<std::uint32_t>(id);
            if (index >= slots_.size()) continue;
            const slot& s = slots_[index];
            if (s.socket == nullptr || s.generation != static_cast<std::uint32_t>(id >> 32)) continue;
            s.socket->on_events(events[i].events);
        }
        dispatching_ = true;
        run_deferred();
        dispatching_ = false;
    } while (n == max_events);
}

void poller::defer(poll_socket& s, int direction) {
    s.waiters_[direction].queued = true;
    deferred_.push_back({&s, direction});
    if (!dispatching_) post_drain();
}

void poller::post_drain() {
    if (drain_posted_ || io_ == nullptr) return;
    drain_posted_ = true;
    asio::post(*io_, [this] {
        drain_posted_ = false;
        dispatching_ = true;
        run_deferred();
        dispatching_ = false;
    });
}

void poller::run_deferred() {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    // One batch at a time: what the batch queues runs after Asio's other
    // ready handlers (timers, posted work), as Asio's own completions do.
    std::swap(running_, deferred_);
    for (std::size_t i = 0; i < running_.size(); ++i) {
        const completion c = running_[i];
        if (c.socket == nullptr) continue;
        try {
            c.socket->complete(c.direction);
        } catch (const std::exception& e) {
            // Out of memory in one session, say: its owner unwound (and
            // closed it). Let out of here, the exception would leave the
            // rest of the batch undelivered and the epoll set unwatched:
            // every session of the worker would hang.
            if (failures_ != nullptr) failures_->fetch_add(1, std::memory_order_relaxed);
            spdlog::error("a session failed: {}; it was reset, the others go on", e.what());
        }
    }
    running_.clear();
    if (!deferred_.empty()) post_drain();
}

std::uint64_t poller::enter(poll_socket& s) {
    std::uint32_t index;
    if (!free_slots_.empty()) {
        index = free_slots_.back();
        free_slots_.pop_back();
    } else {
        index = static_cast<std::uint32_t>(slots_.size());
        slots_.emplace_back();
    }
    slots_[index].socket = &s;
    s.slot_ = index;
    return (static_cast<std::uint64_t>(slots_[index].generation) << 32) | index;
}

void poller::leave(poll_socket& s) {
    slot& entry = slots_[s.slot_];
    entry.socket = nullptr;
    ++entry.generation;
    free_slots_.push_back(s.slot_);
}

poll_socket::~poll_socket() {
    close();
    // Only a broken contract (destroyed with a waiter) leaves one queued:
    // forget it rather than call into a dead socket.
    if (waiters_[0].queued || waiters_[1].queued) {
        for (auto* list : {&poller_->deferred_, &poller_->running_}) {
            for (auto& c : *list) {
                if (c.socket == this) c.socket = nullptr;
            }
        }
    }
}

error_code poll_socket::open(const asio::ip::tcp& protocol) {
    close();
    forget_readiness();
    fd_ = ::socket(protocol.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    return fd_ < 0 ? last_error() : error_code{};
}

error_code poll_socket::adopt(int fd) {
    close();
    forget_readiness();
    fd_ = fd;
    const error_code ec = add_to_epoll();
    if (ec) close();
    return ec;
}

error_code poll_socket::add_to_epoll() {
    epoll_event ev{};
    // Both directions, edge-triggered, once for the socket's whole life.
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = poller_->enter(*this);
    if (::epoll_ctl(poller_->epfd_, EPOLL_CTL_ADD, fd_, &ev) != 0) {
        const error_code ec = last_error();
        poller_->leave(*this);
        return ec;
    }
    registered_ = true;
    return {};
}

void poll_socket::close() {
    if (fd_ < 0) return;
    if (registered_) {
        poller_->leave(*this);
        registered_ = false;
    }
    ::close(fd_);  // leaves the epoll set with it
    fd_ = -1;
    forget_readiness();
    abort_waiters();
}

void poll_socket::forget_readiness() {
    ready_[0] = ready_[1] = false;
    ended_[0] = ended_[1] = false;
    connecting_ = false;
}

void poll_socket::cancel() {
    // A waiter queued for an edge gives the edge back: what it announced is
    // still there for the next wait (a session that moves to another backend
    // goes on reading its client).
    for (int d = 0; d < 2; ++d) {
        const waiter& w = waiters_[d];
        if (w.active() && w.queued && !w.aborted && !w.result) ready_[d] = true;
    }
    abort_waiters();
}

void poll_socket::abort_waiters() {
    for (int d = 0; d < 2; ++d) {
        waiter& w = waiters_[d];
        if (!w.active()) continue;
        w.aborted = true;
        if (!w.queued) poller_->defer(*this, d);
    }
}

void poll_socket::set_abortive_close() { set_reset_on_close(fd_); }

error_code poll_socket::shutdown_send() { return ::shutdown(fd_, SHUT_WR) != 0 ? last_error() : error_code{}; }

asio::ip::tcp::endpoint poll_socket::remote_endpoint(error_code& ec) const {
    asio::ip::tcp::endpoint ep;
    socklen_t len = static_cast<socklen_t>(ep.capacity());
    if (::getpeername(fd_, ep.data(), &len) != 0) {
        ec = last_error();
        return {};
    }
    ep.resize(len);
    ec.clear();
    return ep;
}

void poll_socket::wait(wait_type w, callback fn, void* arg) {
    const int d = static_cast<int>(w);
    waiter& x = waiters_[d];
    assert(!x.active());
    x.fn = fn;
    x.arg = arg;
    start_wait(d);
}

void poll_socket::wait_erased(wait_type w, erased_handler<error_code> handler) {
    const int d = static_cast<int>(w);
    waiter& x = waiters_[d];
    assert(!x.active());
    x.handler = std::move(handler);
    start_wait(d);
}

void poll_socket::start_wait(int d) {
    waiter& x = waiters_[d];
    x.aborted = fd_ < 0;
    if (x.aborted || ended_[d]) return poller_->defer(*this, d);
    if (ready_[d]) {
        // An edge came since the last wait: this one is for it. Edges that
        // come before the waiter runs mark the socket ready again, for the
        // next wait -- a FIN behind data the waiter reads only in part.
        ready_[d] = false;
        poller_->defer(*this, d);
    }
}

void poll_socket::connect_erased(const asio::ip::tcp::endpoint& ep, erased_handler<error_code> handler) {
    waiter& x = waiters_[write_dir];
    assert(!x.active());
    x.handler = std::move(handler);
    start_connect(ep);
}

void poll_socket::connect(const asio::ip::tcp::endpoint& ep, callback fn, void* arg) {
    waiter& x = waiters_[write_dir];
    assert(!x.active());
    x.fn = fn;
    x.arg = arg;
    start_connect(ep);
}

void poll_socket::start_connect(const asio::ip::tcp::endpoint& ep) {
    waiter& x = waiters_[write_dir];
    x.aborted = fd_ < 0;
    if (x.aborted) return poller_->defer(*this, write_dir);
    if (::connect(fd_, ep.data(), static_cast<socklen_t>(ep.size())) != 0 && errno != EINPROGRESS && errno != EINTR) {
        x.result = last_error();
        return poller_->defer(*this, write_dir);
    }
    // Added only now: an unconnected socket reports EPOLLHUP.
    if (const error_code ec = add_to_epoll()) {
        x.result = ec;
        return poller_->defer(*this, write_dir);
    }
    connecting_ = true;
    start_wait(write_dir);
}

void poll_socket::on_events(std::uint32_t events) {
    // An error or hang-up wakes both directions: the next read or write
    // reports it.
    const bool broken = (events & (EPOLLERR | EPOLLHUP)) != 0;
    // After a FIN (or an error) the socket stays readable for good: a read
    // that took the last data in part, shorter than asked, must still find
    // the end behind it, and no edge will come for it again.
    if (broken || (events & EPOLLRDHUP) != 0) ended_[read_dir] = true;
    if (broken) ended_[write_dir] = true;
    if (broken || (events & (EPOLLIN | EPOLLRDHUP)) != 0) mark_ready(read_dir);
    if (broken || (events & EPOLLOUT) != 0) mark_ready(write_dir);
}

void poll_socket::mark_ready(int d) {
    const waiter& w = waiters_[d];
    if (w.active() && !w.queued) {
        poller_->defer(*this, d);  // the edge is this waiter's
    } else {
        // Nobody waits, or the waiter is queued already (and may read only
        // part of what came): the next wait completes at once.
        ready_[d] = true;
    }
}

void poll_socket::complete(int d) {
    waiter& w = waiters_[d];
    w.queued = false;
    if (!w.active()) return;
    error_code ec;
    if (w.aborted || fd_ < 0) {
        ec = asio::error::operation_aborted;
    } else if (w.result) {
        ec = w.result;
    } else {
        // A connect that failed has shown an error or hang-up (tcp_poll sets
        // EPOLLERR with sk_err, EPOLLHUP once closed); one that only became
        // writable is established, and SO_ERROR would say 0. An error that
        // comes after is the relay's first read's or write's.
        if (d == write_dir && connecting_ && ended_[write_dir]) {
            int err = 0;
            socklen_t len = sizeof err;
            if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
            if (err != 0) ec = {err, boost::system::system_category()};
        }
    }
    if (d == write_dir) connecting_ = false;
    w.aborted = false;
    w.result.clear();
    if (w.fn != nullptr) {
        const callback fn = std::exchange(w.fn, nullptr);
        fn(w.arg, ec);
    } else {
        auto handler = std::move(w.handler);
        handler(ec);
    }
}

}  // namespace apilb
