#include "apilb/dataplane/poller.hpp"

#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/detail/scheduler.hpp>
#include <boost/asio/error.hpp>

#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cassert>
#include <cerrno>
#include <chrono>
#include <system_error>
#include <type_traits>
#include <utility>

#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/socket_options.hpp"
#include "apilb/dataplane/uring.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

error_code last_error() { return {errno, boost::system::system_category()}; }

/// Events taken from the epoll set per epoll_wait.
constexpr int max_events = 256;

/// The event of wake()'s eventfd: no slot has this index and generation.
constexpr std::uint64_t wake_event = ~std::uint64_t{0};

/// Submission slots of a worker's ring. A full queue is submitted on the
/// spot (uring::sqe), so this bounds no session count: it is how many
/// operations one turn batches into its io_uring_enter.
constexpr unsigned ring_entries = 256;

constexpr int read_dir = static_cast<int>(poll_socket::wait_type::read);
constexpr int write_dir = static_cast<int>(poll_socket::wait_type::write);

}  // namespace

// The epoll set is watched through Asio's reactor itself rather than a
// posix::stream_descriptor: async_wait starts its operation with
// allow_speculative = false, and epoll_reactor::start_op then re-arms the
// descriptor with EPOLL_CTL_MOD on every wait -- one system call per wake-up
// for nothing, the set being registered edge-triggered for good. Started
// speculatively instead, a read operation is only queued: no system call.
// An edge that comes while no wait is queued is not lost: the reactor marks
// the registration for a speculative try, and the next wait completes at
// once. Boost 1.81 (Debian 12) is what this is written against.
static_assert(std::is_same_v<asio::detail::reactor, asio::detail::epoll_reactor>,
              "the poller waits through Asio's epoll reactor");

namespace {

/// wake_op and drain_op are made once by attach() and handed back by Asio
/// exactly once per posting: the poller they belong to, or null if the
/// poller went first (the operation is then freed here).
template <typename Op>
poller* owner_of(Op* op) {
    poller* p = op->poller_;
    if (p == nullptr) delete op;
    return p;
}

/// The poller is going: frees `op`, or orphans it while Asio still holds it.
template <typename Op>
void let_go(Op* op, bool queued) {
    if (op == nullptr) return;
    if (queued) {
        op->poller_ = nullptr;
    } else {
        delete op;
    }
}

}  // namespace

struct poller::watch {
    asio::detail::epoll_reactor& reactor;
    int fd;
    asio::detail::epoll_reactor::per_descriptor_data data = nullptr;
};

/// The one wait for the epoll set, made once per poller and started again
/// for every wake-up: a wake-up allocates nothing, so running out of memory
/// cannot leave the set unwatched. perform() runs when the set is readable,
/// or at once when started after an edge nobody waited for; it does no I/O
/// (on_ready does) and says "exhausted", so that the reactor starts the next
/// wait without a speculative completion and without a re-arm.
///
/// Ownership: the poller's while it is idle (armed_ false); the reactor's or
/// the scheduler's queue holds it while armed_. Asio hands a queued
/// operation back exactly once, either completed or destroyed (owner null:
/// the io_context is going away), and either way do_complete returns it to
/// the poller. A poller destroyed while its wait is queued orphans it
/// (poller_ null), and it then frees itself when Asio hands it back.
class poller::wake_op : public asio::detail::reactor_op {
public:
    explicit wake_op(poller& p) : reactor_op(error_code{}, &do_perform, &do_complete), poller_(&p) {}

    poller* poller_;  ///< null once orphaned

private:
    static status do_perform(reactor_op*) { return done_and_exhausted; }

    static void do_complete(void* owner, asio::detail::operation* base, const error_code&, std::size_t) {
        auto* op = static_cast<wake_op*>(base);
        poller* p = owner_of(op);
        if (p == nullptr) return;
        p->armed_ = false;
        // No owner: the io_context is being destroyed with the wait queued.
        if (owner != nullptr) p->on_wake(op->ec_);
    }
};

/// The run of deferred completions, posted to the io_context when a wait
/// completes outside the poller's loop (a wait on a socket already ready, a
/// close): made once per poller, like wake_op, and owned the same way, so
/// that posting it allocates nothing. An asio::post allocates its operation;
/// out of memory there, the completion would never run (a session leaked,
/// a worker's loop on a poll_timer lost).
class poller::drain_op : public asio::detail::scheduler_operation {
public:
    explicit drain_op(poller& p) : scheduler_operation(&do_complete), poller_(&p) {}

    poller* poller_;  ///< null once orphaned

private:
    static void do_complete(void* owner, scheduler_operation* base, const error_code&, std::size_t) {
        poller* p = owner_of(static_cast<drain_op*>(base));
        if (p == nullptr) return;
        p->drain_posted_ = false;
        if (owner == nullptr) return;  // the io_context is being destroyed with it queued
        p->dispatching_ = true;
        p->run_deferred();
        p->dispatching_ = false;
    }
};

void deferred_queue::push(deferred_link& l) noexcept {
    l.next = nullptr;
    if (tail == nullptr) {
        head = &l;
    } else {
        tail->next = &l;
    }
    tail = &l;
}

deferred_link* deferred_queue::pop() noexcept {
    deferred_link* l = head;
    if (l == nullptr) return nullptr;
    head = l->next;
    if (head == nullptr) tail = nullptr;
    l->next = nullptr;
    return l;
}

void deferred_queue::remove(const poll_socket& s) noexcept {
    deferred_link* prev = nullptr;
    for (deferred_link* l = head; l != nullptr;) {
        deferred_link* next = l->next;
        if (l->socket == &s) {
            (prev == nullptr ? head : prev->next) = next;
            if (tail == l) tail = prev;
            l->next = nullptr;
        } else {
            prev = l;
        }
        l = next;
    }
}

poller::poller() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (epfd_ < 0) throw std::system_error(errno, std::system_category(), "epoll_create1");
}

poller::~poller() {
    detach();
    // Still queued in the io_context, each frees itself when handed back.
    let_go(wake_, armed_);
    let_go(drain_, drain_posted_);
    ::close(epfd_);
}

void poller::attach(asio::io_context& io, wait_by by) {
    io_ = &io;
    by_ = by;
    if (by != wait_by::asio) {
        // No reactor: the io_context only queues handlers, and run() waits.
        if (by == wait_by::ring && !ring_) ring_ = std::make_unique<uring>(ring_entries);
        wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (wake_fd_ < 0) throw std::system_error(errno, std::system_category(), "eventfd for the worker's wake-ups");
        epoll_event ev{};
        ev.events = EPOLLIN;  // level-triggered: run() reads it empty
        ev.data.u64 = wake_event;
        if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
            const int err = errno;
            ::close(std::exchange(wake_fd_, -1));
            throw std::system_error(err, std::system_category(), "adding the wake-up eventfd to the epoll set");
        }
        watch_work_.emplace(io.get_executor());
        watching_ = true;
        return;
    }
    // The descriptor is watched through a duplicate, so that Asio's
    // deregistration on release never touches the set itself.
    const int watched = ::fcntl(epfd_, F_DUPFD_CLOEXEC, 0);
    if (watched < 0) throw std::system_error(errno, std::system_category(), "dup of the epoll descriptor");
    auto w = std::make_unique<watch>(watch{asio::use_service<asio::detail::epoll_reactor>(io), watched});
    // The scheduler runs the reactor only once a service has asked for it
    // (Asio's timers and sockets do so when made): an io_context whose only
    // I/O is the poller would otherwise never wait for the set.
    w->reactor.init_task();
    if (const int err = w->reactor.register_descriptor(watched, w->data); err != 0) {
        w->reactor.cleanup_descriptor_data(w->data);
        ::close(watched);
        throw std::system_error(err, std::system_category(), "registering the epoll descriptor with Asio");
    }
    watch_ = std::move(w);
    if (wake_ == nullptr) wake_ = new wake_op(*this);
    if (drain_ == nullptr) drain_ = new drain_op(*this);
    watching_ = true;
    arm();
}

void poller::stop_watching() {
    watching_ = false;
    if (watch_) watch_->reactor.cancel_ops(watch_->fd, watch_->data);
    watch_work_.reset();
}

void poller::detach() {
    stop_watching();
    if (watch_) {
        // A wait still queued completes with operation_aborted.
        watch_->reactor.deregister_descriptor(watch_->fd, watch_->data, false);
        ::close(watch_->fd);
        watch_->reactor.cleanup_descriptor_data(watch_->data);
        watch_.reset();
    }
    if (wake_fd_ >= 0) ::close(std::exchange(wake_fd_, -1));  // leaves the set with it
    io_ = nullptr;
}

void poller::wake() noexcept {
    if (wake_fd_ < 0) return;
    const std::uint64_t one = 1;
    // Fails only with the counter at its maximum: a wake-up is pending then.
    (void)!::write(wake_fd_, &one, sizeof one);
}

void poller::stop_running() noexcept {
    stop_requested_.store(true, std::memory_order_release);
    wake();
}

void poller::run() {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    assert(own_loop() && io_ != nullptr);
    if (ring_ && !ring_enabled_) {
        try {
            ring_->enable();
            ring_enabled_ = true;
        } catch (const std::exception& e) {
            leave_ring(e);
        }
        if (ring_enabled_) register_buffers();
    }
    // While the loop runs, a session's socket closes by an SQE (close());
    // those still queued when it returns go in now: nothing would submit
    // them after.
    struct in_run {
        poller& p;
        explicit in_run(poller& q) : p(q) { p.in_run_ = true; }
        ~in_run() {
            p.in_run_ = false;
            if (p.ring_runs()) (void)::io_uring_submit(&p.ring_->get());
        }
    } running{*this};
    epoll_event events[max_events];
    for (;;) {
        // Posted work first (a reload, a drain): with no reactor in the
        // io_context this runs what is queued and makes no system call.
        io_->poll();
        if (stop_requested_.load(std::memory_order_acquire)) return;
        if (io_->stopped()) {
            // Out of work: the set is no longer watched (watch_work_) and
            // nothing is posted. What is queued here is still delivered,
            // as a posted drain_op would have kept the io_context running,
            // and so is every operation still in the ring (a session closed
            // by the shutdown waits for its cancelled recv).
            if (deferred_.empty() && ring_ops_ == 0) return;
            io_->restart();
        }
#ifdef APILB_DATA_PATH_CHECKS
        // An Asio timer or socket made in this io_context started a reactor
        // that nothing here waits for: its completions would wait for the
        // poller's next event. (A lock per wake-up: debug builds only.)
        assert(!asio::has_service<asio::detail::epoll_reactor>(*io_));
#endif
        // Completions queued (a yield, a close from a posted handler) run
        // after the events that came meanwhile: look, do not wait.
        int n = 0;
        if (ring_) {
            const bool look = wait_in_ring(deferred_.empty() && !set_has_more_);
            if (look || set_has_more_) n = ::epoll_wait(epfd_, events, max_events, 0);
            set_has_more_ = n == max_events;
        } else {
            n = ::epoll_wait(epfd_, events, max_events, deferred_.empty() ? -1 : 0);
        }
        if (n < 0) {
            if (errno != EINTR) wait_failed(last_error());
            continue;
        }
        struct dispatch {
            poller& p;
            ~dispatch() { p.dispatching_ = false; }
        } guard{*this};
        dispatching_ = true;
        take_events(events, n);
        run_deferred();
    }
}

void poller::arm() noexcept {
    if (armed_ || !watching_) return;
    armed_ = true;
    wake_->ec_ = error_code{};
    watch_->reactor.start_op(asio::detail::epoll_reactor::read_op, watch_->fd, watch_->data, wake_, false, true);
}

void poller::on_wake(const error_code& ec) {
    if (!watching_) return;  // stop_watching() or detach() aborted the wait
    // The registration made by attach() cannot fail a wait while it is
    // there (start_op fails only without one); should it still, the set is
    // drained below and watched again at once: a worker that spins is seen
    // and serves, a worker that stopped watching would only hang.
    if (ec) wait_failed(ec);
    on_ready();
}

void poller::wait_failed(const error_code& ec) noexcept {
    if (failures_ != nullptr) failures_->fetch_add(1, std::memory_order_relaxed);
    try {
        std::uint64_t suppressed = 0;
        if (wake_warnings_.allow(suppressed))
            spdlog::critical("waiting for the sockets failed: {}; watching them again", ec.message());
    } catch (const std::exception&) {}
}

void poller::on_ready() {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    // Whatever happens below, the epoll set stays watched: unwatched, every
    // session of the worker would hang.
    struct rearm {
        poller& p;
        ~rearm() {
            p.dispatching_ = false;
            p.arm();
        }
    } guard{*this};
    epoll_event events[max_events];
    // The events below queue their waiters for run_deferred() in this very
    // call: no drain is posted for them (one was, for every wake-up).
    dispatching_ = true;
    int n;
    do {
        n = ::epoll_wait(epfd_, events, max_events, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        take_events(events, n);
        run_deferred();
    } while (n == max_events);
}

void poller::take_events(const epoll_event* events, int n) noexcept {
    // First every event marks its socket ready and queues its waiters;
    // only then do the waiters run. A waiter may close other sockets of
    // the batch; none is destroyed while a waiter of it is queued.
    for (int i = 0; i < n; ++i) {
        const std::uint64_t id = events[i].data.u64;
        if (id == wake_event) {
            std::uint64_t count;
            (void)!::read(wake_fd_, &count, sizeof count);  // run() polls the io_context next
            continue;
        }
        const auto index = static_cast<std::uint32_t>(id);
        if (index >= slots_.size()) continue;
        const slot& s = slots_[index];
        if (s.socket == nullptr || s.generation != static_cast<std::uint32_t>(id >> 32)) continue;
        s.socket->on_events(events[i].events);
    }
}

void poller::defer(poll_socket& s, int direction) noexcept {
    poll_socket::waiter& w = s.waiters_[direction];
    if (w.queued) return;  // once in the queue is once run
    w.queued = true;
    deferred_.push(w.link);
    if (!dispatching_) post_drain();
}

void poller::post_drain() noexcept {
    // run() looks at the queue before every wait: nothing to post.
    if (drain_posted_ || io_ == nullptr || own_loop()) return;
    drain_posted_ = true;
    // Queued, not run: no recursion. The scheduler's queue is intrusive.
    asio::use_service<asio::detail::scheduler>(*io_).post_immediate_completion(drain_, false);
}

void poller::run_deferred() {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    // One batch at a time: what the batch queues runs after Asio's other
    // ready handlers (timers, posted work), as Asio's own completions do.
    std::swap(running_, deferred_);
    while (deferred_link* c = running_.pop()) {
        try {
            c->socket->complete(c->direction);
        } catch (const std::exception& e) {
            // Out of memory in one session, say: its owner unwound (and
            // closed it). Let out of here, the exception would leave the
            // rest of the batch undelivered and the epoll set unwatched:
            // every session of the worker would hang.
            if (failures_ != nullptr) failures_->fetch_add(1, std::memory_order_relaxed);
            spdlog::error("a session failed: {}; it was reset, the others go on", e.what());
        }
    }
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
        // leave() (from close, from a destructor) must not allocate.
        free_slots_.reserve(slots_.capacity());
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

poll_socket::poll_socket(poller& p) : poller_(&p) {
    for (int d = 0; d < 2; ++d) waiters_[d].link = {.next = nullptr, .socket = this, .direction = d};
}

poll_socket::~poll_socket() {
    // Destroyed with an operation in the ring, the kernel would write into
    // and complete for freed memory: the owner's contract.
    assert(!waiters_[0].in_ring && !waiters_[1].in_ring);
    close();
    // Only a broken contract (destroyed with a waiter) leaves one queued:
    // forget it rather than call into a dead socket.
    if (waiters_[0].queued || waiters_[1].queued) {
        poller_->deferred_.remove(*this);
        poller_->running_.remove(*this);
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
    // Before the descriptor goes: an operation in the kernel holds the
    // socket open (no FIN, no RST) until it is cancelled.
    cancel_in_ring();
    if (registered_) {
        poller_->leave(*this);
        registered_ = false;
    }
    // A session's socket in a running ring closes by an SQE, after the
    // cancellations above and every other entry queued for it: batched into
    // the loop's next io_uring_enter, and the descriptor's number is not
    // free for another socket before those entries have looked it up.
    const bool by_ring = ring_watched_ && poller_->in_run_;
    ring_watched_ = false;
    if (!by_ring || !poller_->submit_close(fd_)) {
        // By a system call: entries still queued for this descriptor (the
        // queue could not be submitted, or the loop has ended) must not
        // reach whichever socket takes its number next.
        if (poller_->ring_) (void)poller_->ring_->forget_fd(fd_);
        ::close(fd_);  // leaves the epoll set with it
    }
    fd_ = -1;
    forget_readiness();
    abort_waiters();
}

int poll_socket::release() {
    if (fd_ < 0) return -1;
    cancel_in_ring();
    if (registered_) {
        // Explicitly: the descriptor lives on elsewhere, and an epoll entry
        // goes only with the last reference to the socket.
        (void)::epoll_ctl(poller_->epfd_, EPOLL_CTL_DEL, fd_, nullptr);
        poller_->leave(*this);
        registered_ = false;
    }
    ring_watched_ = false;
    const int fd = std::exchange(fd_, -1);
    forget_readiness();
    abort_waiters();
    return fd;
}

void poll_socket::forget_readiness() {
    ready_[0] = ready_[1] = false;
    ended_[0] = ended_[1] = false;
    connecting_ = false;
    fin_seen_ = error_seen_ = false;
}

void poll_socket::cancel() {
    // A waiter queued for an edge gives the edge back: what it announced is
    // still there for the next wait (a session that moves to another backend
    // goes on reading its client).
    for (int d = 0; d < 2; ++d) {
        const waiter& w = waiters_[d];
        if (w.active() && w.queued && !w.aborted && !w.result && !w.in_ring) ready_[d] = true;
    }
    cancel_in_ring();
    abort_waiters();
}

void poll_socket::abort_waiters() {
    for (int d = 0; d < 2; ++d) {
        waiter& w = waiters_[d];
        if (!w.active()) continue;
        w.aborted = true;
        // An operation in the ring completes when the kernel is done with
        // it (cancel_in_ring); its completion queues the waiter.
        if (!w.queued && !w.in_ring) poller_->defer(*this, d);
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

void poll_socket::defer_call(wait_type w, callback fn, void* arg) noexcept {
    const int d = static_cast<int>(w);
    waiter& x = waiters_[d];
    assert(!x.active());
    x.fn = fn;
    x.arg = arg;
    x.aborted = fd_ < 0;
    poller_->defer(*this, d);  // readiness untouched: an edge stays for the next wait
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
    } else if (ring_watched_) {
        submit_poll(d);
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
    // Watched only now: an unconnected socket reports EPOLLHUP.
    if (poller_->ring_runs()) {
        ring_watched_ = true;
    } else if (const error_code ec = add_to_epoll()) {
        x.result = ec;
        return poller_->defer(*this, write_dir);
    }
    connecting_ = true;
    start_wait(write_dir);
}

void poll_socket::on_events(std::uint32_t events) {
    note_events(events);
    // An error or hang-up wakes both directions: the next read or write
    // reports it.
    const bool broken = (events & (EPOLLERR | EPOLLHUP)) != 0;
    if (broken || (events & (EPOLLIN | EPOLLRDHUP)) != 0) mark_ready(read_dir);
    if (broken || (events & EPOLLOUT) != 0) mark_ready(write_dir);
}

void poll_socket::note_events(std::uint32_t events) noexcept {
    static_assert(EPOLLIN == POLLIN && EPOLLOUT == POLLOUT && EPOLLERR == POLLERR && EPOLLHUP == POLLHUP &&
                      EPOLLRDHUP == POLLRDHUP,
                  "a POLL_ADD's mask reads as epoll's events");
    const bool broken = (events & (EPOLLERR | EPOLLHUP)) != 0;
    // After a FIN (or an error) the socket stays readable for good: a read
    // that took the last data in part, shorter than asked, must still find
    // the end behind it, and no edge will come for it again.
    if (broken || (events & EPOLLRDHUP) != 0) ended_[read_dir] = true;
    if ((events & EPOLLRDHUP) != 0) fin_seen_ = true;
    if ((events & EPOLLERR) != 0) error_seen_ = true;
    if (broken) ended_[write_dir] = true;
}

void poll_socket::mark_ready(int d) {
    const waiter& w = waiters_[d];
    // A waiter whose operation is in the ring completes with it, not with
    // an edge; the edge is kept for a later wait (the relay waits for
    // readiness when the provided buffers ran out, and the bytes that made
    // this edge may be what it waits for).
    if (w.active() && !w.queued && !w.in_ring) {
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
    // The caller takes a provided buffer only from a recv that succeeded.
    if (ec && w.has_buffer) {
        w.has_buffer = false;
        poller_->give_back(w.buffer);
    }
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
