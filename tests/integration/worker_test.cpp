// A worker in-process, for what the binary cannot show from outside: how it
// behaves when the process runs out of file descriptors, or an allocation
// on its thread fails.
#include "apilb/dataplane/worker.hpp"

#include <gtest/gtest.h>

#include <boost/asio/detail/thread_context.hpp>
#include <boost/asio/detail/thread_info_base.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <new>
#include <thread>

#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/session_impl.hpp"

namespace {

/// The next `failing_left` aligned_alloc calls of the thread whose
/// `thread_tag` is at `failing_on` fail, as under an address-space limit.
/// Asio allocates every operation it starts (and every coroutine frame) with
/// aligned_alloc, past its per-thread cache.
thread_local char thread_tag;
std::atomic<const char*> failing_on{nullptr};
std::atomic<int> failing_left{0};
/// Besides, while non-zero, every operator new of exactly this many bytes
/// on that thread fails (a relay buffer, of relay.buffer_size).
std::atomic<std::size_t> failing_new_size{0};
/// While set, every aligned_alloc and operator new on that thread fails.
std::atomic<bool> failing_all{false};

}  // namespace

extern "C" void* aligned_alloc(std::size_t align, std::size_t size) noexcept {
    if (failing_on.load() == &thread_tag && failing_all.load()) return nullptr;
    if (failing_on.load() == &thread_tag && failing_left.load() > 0) {
        failing_left.fetch_sub(1);
        return nullptr;
    }
    void* p = nullptr;
    return ::posix_memalign(&p, align, size) == 0 ? p : nullptr;
}

/// epoll_wait calls made by worker threads: all of them, and those that
/// could block (a timeout other than 0), one per wake-up.
std::atomic<long> worker_epoll_waits{0};
std::atomic<long> worker_blocking_epoll_waits{0};

// Interposed for the whole test binary (the poller and Asio's reactor call
// it); forwards to the kernel.
extern "C" int epoll_wait(int epfd, epoll_event* events, int max_events, int timeout) {
    if (apilb::current_thread_role() == apilb::thread_role::worker) {
        worker_epoll_waits.fetch_add(1, std::memory_order_relaxed);
        if (timeout != 0) worker_blocking_epoll_waits.fetch_add(1, std::memory_order_relaxed);
    }
    return ::epoll_pwait(epfd, events, max_events, timeout, nullptr);
}

bool apilb_test_new_fails(std::size_t n) noexcept {
    if (failing_on.load() != &thread_tag) return false;
    return failing_all.load() || (n != 0 && n == failing_new_size.load());
}
#include "../alloc_fault.hpp"

#include "harness.hpp"

namespace apilb::test {
namespace {

/// Uses up every free descriptor of the process (the limit caps descriptor
/// numbers, so holes below it must be filled too), then frees `spare` of them.
/// Everything is given back when the object dies.
class fd_exhaustion {
public:
    explicit fd_exhaustion(int spare) {
        ::getrlimit(RLIMIT_NOFILE, &saved_);
        int highest = 0;
        for (auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
            highest = std::max(highest, std::stoi(e.path().filename().string()));
        }
        rlimit rl{static_cast<rlim_t>(highest + 64), saved_.rlim_max};
        ::setrlimit(RLIMIT_NOFILE, &rl);
        for (;;) {
            const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd < 0) break;
            fillers_.push_back(fd);
        }
        for (int i = 0; i < spare && !fillers_.empty(); ++i) {
            ::close(fillers_.back());
            fillers_.pop_back();
        }
    }
    ~fd_exhaustion() {
        for (int fd : fillers_) ::close(fd);
        ::setrlimit(RLIMIT_NOFILE, &saved_);
    }

private:
    rlimit saved_{};
    std::vector<int> fillers_;
};

/// One started worker with no session limit, in front of one echo backend
/// (or of `backend`); `pool_extra` and `extra` are added to the pool's
/// mapping and to the config.
struct worker_rig {
    tcp_server echo{"127.0.0.2", echo_handler()};
    std::uint16_t port = free_port();
    process_stats stats;
    std::shared_ptr<const snapshot> snap;
    std::unique_ptr<worker> w;

    explicit worker_rig(const std::string& extra = "relay: {mode: copy}", const std::string& pool_extra = "",
                        const std::string& backend = "") {
        snap = snapshot::build(
            parse_config(fmt::format(R"(workers: 1
listeners: [{{name: f, address: "127.0.0.1:{}", pool: p}}]
pools: [{{name: p, backends: [{{name: b, address: "{}"}}]{}}}]
{}
)",
                                     port, backend.empty() ? echo.address() : backend, pool_extra, extra),
                         "test.yaml"));
        // `meson test --setup io_uring`: the worker's loop waits in a ring.
        w = std::make_unique<worker>(0, snap, stats, test_relay_io() == "io_uring");
        w->bind(0);
        w->set_max_connections(0);
        w->start();
    }
    ~worker_rig() {
        w->stop_accepting();
        w->close_sessions(apilb::every_session(), apilb::close_reason::drain);
        w->stop();
    }
    const backend_stats& backend() const { return *snap->pools[0].backends[0].stats; }
};

/// On the calling worker thread: empties Asio's cache of operation memory
/// (a failing allocation would otherwise be hidden by it), leaves one block
/// of `spare` bytes in it if asked (the next operation started takes it),
/// and makes the next `n` allocations of this thread fail.
void fail_asio_allocations_here(int n, std::size_t spare = 0) {
    namespace ad = boost::asio::detail;
    ad::thread_info_base* self = ad::thread_context::top_of_thread_call_stack();
    constexpr std::size_t slots = BOOST_ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE;
    void* taken[slots];
    for (auto*& p : taken) p = ad::thread_info_base::allocate(ad::thread_info_base::default_tag(), self, 1);
    for (auto* p : taken) ad::thread_info_base::deallocate(ad::thread_info_base::default_tag(), nullptr, p, 1);
    if (spare != 0) {
        void* p = ad::thread_info_base::allocate(ad::thread_info_base::default_tag(), nullptr, spare);
        ad::thread_info_base::deallocate(ad::thread_info_base::default_tag(), self, p, spare);
    }
    failing_left = n;
    failing_on = &thread_tag;
}

/// Runs `fn` on `w`'s thread and waits for it (5 s at most).
bool on_worker(apilb::worker& w, std::function<void()> fn) {
    auto done = std::make_shared<std::atomic<bool>>(false);
    w.ping([fn = std::move(fn), done] {
        fn();
        *done = true;
    });
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!*done && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    return *done;
}

/// No allocation fails any more.
void stop_failing() {
    failing_left = 0;
    failing_new_size = 0;
    failing_all = false;
    failing_on = nullptr;
}

/// On the calling worker thread: every operator new of exactly `n` bytes
/// fails from now on.
void fail_new_of_size_here(std::size_t n) {
    failing_new_size = n;
    failing_on = &thread_tag;
}

/// A new client through the worker listening on `port` is served (its
/// bytes echoed by the backend): the worker goes on after a failure.
void expect_served(std::uint16_t port) {
    client fresh;
    ASSERT_EQ(fresh.connect("127.0.0.1", port, 2s), 0);
    fresh.set_timeout(5s);
    ASSERT_TRUE(fresh.send_all("ok"));
    EXPECT_EQ(fresh.recv_exact(2), "ok");
}

/// A new client through the worker listening on `port`, sending nothing:
/// how its connection ended (ECONNRESET for a reset, 0 for a FIN, EAGAIN
/// if still open after 5 s; -1 if it could not connect).
int end_seen_by_a_client(std::uint16_t port) {
    client c;
    if (c.connect("127.0.0.1", port, 2s) != 0) return -1;
    c.set_timeout(5s);
    int end = 0;
    c.recv_until_eof(end);
    return end;
}

/// On the calling worker thread: every allocation fails from now on (Asio's
/// cache emptied first, so that none is hidden by it).
void fail_every_allocation_here() {
    fail_asio_allocations_here(0);
    failing_all = true;
}

/// Polls `pred` every 10 ms for up to `timeout`.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

/// A listening socket whose accept queue is full (backlog 0, one
/// connection queued and never accepted): the kernel drops further SYNs,
/// so a connect to it neither completes nor fails, on loopback only.
class blackhole {
public:
    blackhole() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(0x7f000003);  // 127.0.0.3
        socklen_t len = sizeof a;
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_, 0) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
            ADD_FAILURE() << "cannot make the listener: " << std::strerror(errno);
        }
        port_ = ntohs(a.sin_port);
        EXPECT_EQ(queued_.connect("127.0.0.3", port_, 2s), 0) << "the one connection the queue holds";
    }
    ~blackhole() { ::close(fd_); }
    std::string address() const { return fmt::format("127.0.0.3:{}", port_); }

private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
    client queued_;
};

TEST(Worker, OutOfDescriptorsPausesAcceptingInsteadOfSpinning) {
    worker_rig rig;
    auto& [echo, port, stats, snap, wp] = rig;
    worker& w = *wp;

    // Sockets made first; then the limit leaves no room for another descriptor,
    // so apilb's accept() fails with EMFILE while the clients' handshakes
    // complete in the kernel's backlog.
    constexpr int clients = 5;
    std::vector<client> cs(clients);
    for (auto& c : cs) ASSERT_TRUE(c.open());
    {
        fd_exhaustion full(0);
        for (auto& c : cs) ASSERT_EQ(c.connect("127.0.0.1", port, 2s), 0);
        std::this_thread::sleep_for(1s);
        const auto errors = stats.accept_errors_total.load();
        EXPECT_GE(errors, 1u) << "accept should have hit EMFILE";
        // Backing off 10 ms doubling to 1 s: a handful of tries in a second, not thousands.
        EXPECT_LE(errors, 10u);
        EXPECT_EQ(stats.accept_errors_total.load(), stats.resource_errors_total.load());
        EXPECT_EQ(stats.accepted_total.load(), 0u);
    }
    // Descriptors are back: the waiting clients are served from the backlog.
    for (int i = 0; i < clients; ++i) {
        cs[i].set_timeout(5s);
        ASSERT_TRUE(cs[i].send_all("hi"));
        EXPECT_EQ(cs[i].recv_exact(2), "hi") << "client " << i;
    }
    EXPECT_EQ(stats.accepted_total.load(), static_cast<std::uint64_t>(clients));
    cs.clear();
    w.stop_accepting();
    w.close_sessions(apilb::every_session(), apilb::close_reason::drain);
    w.stop();
}

/// A log sink that, the first time a worker thread says it pauses accepting,
/// makes that thread's next Asio allocation fail: the one that starts
/// whatever the accept loop waits on for the pause. Asio's per-thread cache
/// would hide a failing allocation, so the hook empties the cache the
/// operation comes from and fills the one coroutine frames come from (the
/// frame the wait needs must not be what fails).
class fail_pause_wait_sink : public spdlog::sinks::base_sink<std::mutex> {
public:
    std::atomic<bool> armed{false};
    /// Set before the pause; disarms through it. Atomic: the worker thread
    /// reads it for every line it logs, the test's thread sets it while the
    /// worker runs (ThreadSanitizer reported the plain pointer).
    std::atomic<apilb::worker*> target{nullptr};

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        namespace ad = boost::asio::detail;
        apilb::worker* const w = target.load();
        if (armed || w == nullptr || apilb::current_thread_role() != apilb::thread_role::worker) return;
        if (std::string_view(msg.payload.data(), msg.payload.size()).find("pausing accepts") == std::string_view::npos)
            return;
        // Disarmed once the worker is done with what it is doing now: on main
        // the pause's wait started (and failed) before that. Sessions started
        // later must not meet the failure: they are not what this test holds.
        w->ping([] { failing_left = 0; });
        ad::thread_info_base* self = ad::thread_context::top_of_thread_call_stack();
        constexpr std::size_t slots = BOOST_ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE;
        void* taken[slots];
        for (auto*& p : taken) p = ad::thread_info_base::allocate(ad::thread_info_base::default_tag(), self, 1);
        for (auto* p : taken) ad::thread_info_base::deallocate(ad::thread_info_base::default_tag(), nullptr, p, 1);
        constexpr std::size_t frame = 1000;  // the largest block the cache keeps
        for (auto*& p : taken) p = ad::thread_info_base::allocate(ad::thread_info_base::awaitable_frame_tag(), self, 1);
        for (auto* p : taken)
            ad::thread_info_base::deallocate(ad::thread_info_base::awaitable_frame_tag(), nullptr, p, 1);
        for (auto*& p : taken)
            p = ad::thread_info_base::allocate(ad::thread_info_base::awaitable_frame_tag(), nullptr, frame);
        for (auto* p : taken)
            ad::thread_info_base::deallocate(ad::thread_info_base::awaitable_frame_tag(), self, p, frame);
        failing_left = 1;
        failing_on = &thread_tag;
        armed = true;
    }
    void flush_() override {}
};

TEST(Worker, AnAcceptPauseWhoseWaitCannotStartStillAcceptsAfterwards) {
    // The pause after EMFILE used to be a steady_timer wait awaited by the
    // accept coroutine. Asio (1.81) starts an awaited operation only after the
    // coroutine has suspended: a failed allocation there destroyed the
    // coroutine unseen, and the worker never accepted again.
    auto sink = std::make_shared<fail_pause_wait_sink>();
    spdlog::default_logger()->sinks().push_back(sink);
    {
        worker_rig rig;
        auto& [echo, port, stats, snap, wp] = rig;
        worker& w = *wp;
        client waiting;
        ASSERT_TRUE(waiting.open());
        sink->target = &w;
        {
            fd_exhaustion full(0);
            ASSERT_EQ(waiting.connect("127.0.0.1", port, 2s), 0);
            const auto deadline = std::chrono::steady_clock::now() + 10s;
            while (!sink->armed && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
            ASSERT_TRUE(sink->armed) << "the worker never paused accepting";
            // Long enough for the pause's wait to start, or for its failure.
            std::this_thread::sleep_for(200ms);
        }
        failing_left = 0;
        failing_on = nullptr;
        // Descriptors are back, the pause (at most 1 s) is over: a new client
        // is served. The one that waited may have met the failed allocation.
        client fresh;
        ASSERT_TRUE(fresh.open());
        ASSERT_EQ(fresh.connect("127.0.0.1", port, 2s), 0);
        fresh.set_timeout(5s);
        ASSERT_TRUE(fresh.send_all("hi"));
        EXPECT_EQ(fresh.recv_exact(2), "hi") << "the worker stopped accepting";
        w.stop_accepting();
        w.close_sessions(apilb::every_session(), apilb::close_reason::drain);
        w.stop();
    }
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
}

TEST(Worker, OutOfDescriptorsForTheBackendSocketIsNotTheBackendsFault) {
    worker_rig rig;
    auto& [echo, port, stats, snap, wp] = rig;
    worker& w = *wp;
    client c;
    ASSERT_TRUE(c.open());
    {
        // Room for exactly the accepted socket, none for the backend socket.
        fd_exhaustion full(1);
        ASSERT_EQ(c.connect("127.0.0.1", port, 2s), 0);
        int end = -1;
        c.set_timeout(3s);
        c.recv_until_eof(end);
        EXPECT_EQ(end, ECONNRESET) << "the client is reset, not left hanging nor sent an empty answer";
    }
    EXPECT_GE(stats.resource_errors_total.load(), 1u);
    EXPECT_EQ(snap->pools[0].backends[0].stats->connect_failures_total.load(), 0u)
        << "a local EMFILE must not count against the backend";
    EXPECT_EQ(stats.no_backend_total.load(), 0u);
    w.stop_accepting();
    w.stop();
}

TEST(Worker, ConnectDeadlinesStillExpireAfterTheirTimerCouldNotStart) {
    // The connect deadlines' timer was an Asio timer: when its wait could
    // not allocate, the deadline it was armed for stayed recorded as armed
    // and no later connect armed it again -- connects to a backend that
    // never answers hung for the kernel's SYN retries (over two minutes).
    blackhole backend;
    worker_rig rig("timeouts: {connect: 200ms}\nrelay: {mode: copy}", "", backend.address());
    // Every Asio allocation of the worker thread fails for this client:
    // the deadline timer's wait, and whatever else it once allocated for.
    ASSERT_TRUE(on_worker(*rig.w, [] { fail_asio_allocations_here(1000); }));
    const int first_end = end_seen_by_a_client(rig.port);
    EXPECT_NE(first_end, -1);
    EXPECT_NE(first_end, EAGAIN) << "the first client was left hanging";
    stop_failing();
    EXPECT_EQ(end_seen_by_a_client(rig.port), ECONNRESET) << "the connect never timed out";
    EXPECT_TRUE(eventually([&] { return rig.backend().connect_timeout_total.load() >= 1; }));
}

TEST(Worker, SlotWakeUpsGoOnAfterTheirTickCouldNotStart) {
    // A connect slot freed on another worker is noticed by a 10 ms tick.
    // It was an Asio timer: a wait that could not allocate left it marked
    // running, and no waiter was woken by it again (each waited out its
    // queue_timeout and was refused).
    worker_rig rig("relay: {mode: copy}", ", storm_control: {max_connecting: 1, queue_timeout: 10s}");
    auto& connecting = rig.snap->pools[0].backends[0].stats->connecting;
    connecting = 1;  // the one slot, held by "another worker"
    // The session's own wait at the gate takes the block left in the cache;
    // the tick's wait, started next, is what fails.
    ASSERT_TRUE(on_worker(*rig.w, [] { fail_asio_allocations_here(1, 1000); }));
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", rig.port, 2s), 0);
    // Long enough, on an idle machine, for the session to be waiting; if it
    // is not yet, it finds the slot free and the test proves nothing.
    std::this_thread::sleep_for(300ms);
    connecting = 0;
    // Well before queue_timeout, whose own wake-up would find the slot free.
    c.set_timeout(5s);
    ASSERT_TRUE(c.send_all("hi"));
    EXPECT_EQ(c.recv_exact(2), "hi") << "the freed slot was never noticed";
    stop_failing();
}

TEST(Worker, ASessionWaitingForAConnectSlotWhileNothingCanBeAllocatedGoesOn) {
    // Storm control's gate waited on an Asio timer per session: out of
    // memory, a wait that could not start ended the session (the client
    // reset) with the backend's reservation still counted, so that each
    // such failure took one of limits.per_backend's places for good.
    worker_rig rig("relay: {mode: copy}\nlimits: {per_backend: 2}",
                   ", storm_control: {max_connecting: 1, queue_timeout: 10s}");
    auto& connecting = rig.snap->pools[0].backends[0].stats->connecting;
    connecting = 1;  // the one slot, held by "another worker"
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", rig.port, 2s), 0);
    // Reserved on the backend, no slot: the session waits at the gate (the
    // step that reserves and the one that starts the wait run together).
    ASSERT_TRUE(eventually([&] { return rig.backend().active.load() == 1; }));
    ASSERT_TRUE(on_worker(*rig.w, [] { fail_every_allocation_here(); }));
    // The slot tick wakes the waiter every 10 ms and it waits again: about
    // 30 waits started while nothing can be allocated.
    std::this_thread::sleep_for(300ms);
    ASSERT_TRUE(on_worker(*rig.w, [] { stop_failing(); }));
    connecting = 0;
    c.set_timeout(5s);
    ASSERT_TRUE(c.send_all("hi"));
    EXPECT_EQ(c.recv_exact(2), "hi") << "the session waiting at the gate was lost";
    c.close();
    EXPECT_TRUE(eventually([&] { return rig.stats.active_sessions.load() == 0; }));
    EXPECT_TRUE(eventually([&] { return rig.backend().active.load() == 0; })) << "the backend's reservation leaked";
    EXPECT_EQ(connecting.load(), 0u) << "the connect slot leaked";
}

TEST(Worker, TheFirstConnectWithATimeoutNewToTheWorkerGetsItsDeadlineWhileNothingCanBeAllocated) {
    // The worker kept one deadline queue per timeouts.connect value and
    // made it (a std::list node) at the first connect that used the value,
    // after a reload changed it: out of memory there, the session was lost
    // instead of connecting with its deadline.
    worker_rig rig("timeouts: {connect: 5s}\nrelay: {mode: copy}",
                   ", storm_control: {max_connecting: 1, queue_timeout: 10s}");
    {
        // One session served and gone: the poller's table keeps room for a
        // client and a backend socket, so that connecting allocates nothing.
        client warm;
        ASSERT_EQ(warm.connect("127.0.0.1", rig.port, 2s), 0);
        warm.set_timeout(5s);
        ASSERT_TRUE(warm.send_all("hi"));
        ASSERT_EQ(warm.recv_exact(2), "hi");
    }
    ASSERT_TRUE(eventually([&] { return rig.stats.active_sessions.load() == 0; }));
    blackhole backend;
    auto next = snapshot::build(parse_config(fmt::format(R"(workers: 1
listeners: [{{name: f, address: "127.0.0.1:{}", pool: p}}]
pools: [{{name: p, backends: [{{name: b, address: "{}"}}], storm_control: {{max_connecting: 1, queue_timeout: 10s}}}}]
timeouts: {{connect: 300ms}}
relay: {{mode: copy}}
)",
                                                         rig.port, backend.address()),
                                             "test.yaml"),
                                rig.snap.get());
    auto applied = std::make_shared<std::atomic<bool>>(false);
    rig.w->apply(next, {}, [applied] { *applied = true; });
    ASSERT_TRUE(eventually([&] { return applied->load(); }));
    const backend_stats& stats = *next->pools[0].backends[0].stats;
    auto& connecting = next->pools[0].backends[0].stats->connecting;
    connecting = 1;  // the one slot, held by "another worker"
    // The session is made, then waits at the gate; it connects (the new
    // timeout's first) once the slot is free, while nothing can be allocated.
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", rig.port, 2s), 0);
    ASSERT_TRUE(eventually([&] { return stats.active.load() == 1; }));
    ASSERT_TRUE(on_worker(*rig.w, [] { fail_every_allocation_here(); }));
    connecting = 0;
    // Counted when the session takes the slot it waited for; the connect
    // and its deadline start in the same step, before the worker runs this
    // test's stop_failing().
    const bool through = eventually([&] { return stats.storm_delayed_total.load() == 1; });
    ASSERT_TRUE(on_worker(*rig.w, [] { stop_failing(); }));
    ASSERT_TRUE(through) << "the session never got through the gate";
    c.set_timeout(5s);
    int end = 0;
    c.recv_until_eof(end);
    EXPECT_EQ(end, ECONNRESET);
    EXPECT_TRUE(eventually([&] { return stats.connect_timeout_total.load() == 1; }))
        << "the connect never timed out: it had no deadline";
    EXPECT_EQ(rig.stats.reset_no_memory_total.load(), 0u);
}

TEST(Worker, AWakeUpIsOneSystemCall) {
    // Issue 17: the worker's sockets live in the poller's epoll set. That set
    // was one descriptor in Asio's reactor, so each wake-up was Asio's
    // epoll_wait and then the poller's, where nginx makes one. The worker
    // now blocks in the poller's own epoll_wait.
    worker_rig rig;
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", rig.port, 2s), 0);
    c.set_timeout(5s);
    ASSERT_TRUE(c.send_all("hi"));
    ASSERT_EQ(c.recv_exact(2), "hi");
    const long waits_before = worker_epoll_waits.load();
    const long blocking_before = worker_blocking_epoll_waits.load();
    // Each round trip wakes the worker for the client's byte and for the
    // backend's echo (unless the echo is there before the worker waits).
    constexpr int rounds = 200;
    for (int i = 0; i < rounds; ++i) {
        ASSERT_TRUE(c.send_all("x")) << "round " << i;
        ASSERT_EQ(c.recv_exact(1), "x") << "round " << i;
    }
    const long waits = worker_epoll_waits.load() - waits_before;
    const long wake_ups = worker_blocking_epoll_waits.load() - blocking_before;
    if (test_relay_io() == "io_uring") {
        // The worker sleeps in its ring (io_uring_enter, uncounted here), and
        // the session's sockets are not in the epoll set: their waits, reads
        // and writes complete in the ring, so the worker looks into the set
        // only for its own descriptors (a timer's tick), never per round trip.
        EXPECT_EQ(wake_ups, 0) << "the worker slept in epoll_wait, not in its ring";
        EXPECT_LE(waits, rounds / 20) << waits << " looks into the set in " << rounds << " round trips";
        return;
    }
    ASSERT_GE(wake_ups, rounds) << "the worker did not sleep between round trips";
    // A look without a wait is allowed where completions were queued (a
    // yield); none is expected for one byte at a time.
    EXPECT_LE(static_cast<double>(waits) / static_cast<double>(wake_ups), 1.05)
        << waits << " epoll_waits in " << wake_ups << " wake-ups";
}

TEST(Worker, ARelayThatYieldsWhileAllocationsFailGoesOn) {
    // A direction that has read 16 chunks in a row yields to the worker's
    // other sessions. The yield was an asio::post: out of memory, the
    // exception left the direction without a pending wait, and the session
    // never ended (nor was freed).
    worker_rig rig("relay: {mode: copy, buffer_size: 4096}");  // 16 full reads come quickly
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", rig.port, 2s), 0);
    c.set_timeout(5s);
    ASSERT_TRUE(c.send_all("hi"));
    ASSERT_EQ(c.recv_exact(2), "hi");
    ASSERT_TRUE(on_worker(*rig.w, [] { fail_asio_allocations_here(1'000'000); }));
    constexpr std::size_t total = 8 << 20;
    const std::string chunk(64 << 10, 'x');
    std::thread sender([&] {
        for (std::size_t sent = 0; sent < total; sent += chunk.size()) {
            if (!c.send_all(chunk)) break;
        }
    });
    std::size_t got = 0;
    char buf[64 << 10];
    while (got < total) {
        const long n = c.recv_some(buf, sizeof buf);
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    sender.join();
    stop_failing();
    EXPECT_EQ(got, total) << "the relay stopped moving bytes";
    c.close();
    EXPECT_TRUE(eventually([&] { return rig.stats.active_sessions.load() == 0; })) << "the session was not freed";
}

TEST(Worker, ARelayWhoseBufferCannotBeAllocatedResetsBothPeersAndIsFreed) {
    // The copy relay takes a buffer for each burst. Out of memory there,
    // std::bad_alloc left the direction without a pending wait: the session
    // was never ended, counted or freed (ASan's leak check saw it).
    if (test_relay_io() == "io_uring") {
        GTEST_SKIP() << "with relay.io: io_uring the copy reads into the ring's provided buffers, made at start: "
                        "no allocation per burst to fail (relay_unit_test's RelayInARing covers the pool's fallback)";
    }
    constexpr std::size_t buffer_size = 20480;
    // An echo server that records how its first connection ended.
    std::atomic<int> first_end{-1};
    tcp_server backend("127.0.0.2", [&](int& fd) {
        char b[256];
        for (;;) {
            const ssize_t n = ::recv(fd, b, sizeof b, 0);
            if (n <= 0) {
                int expected = -1;
                first_end.compare_exchange_strong(expected, n < 0 ? errno : 0);
                return;
            }
            if (::send(fd, b, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) return;
        }
    });
    worker_rig rig(fmt::format("relay: {{mode: copy, buffer_size: {}}}", buffer_size), "", backend.address());
    ASSERT_TRUE(on_worker(*rig.w, [] { fail_new_of_size_here(buffer_size); }));
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", rig.port, 2s), 0);
    c.set_timeout(5s);
    ASSERT_TRUE(c.send_all("hi"));
    int end = 0;
    c.recv_until_eof(end);
    EXPECT_EQ(end, ECONNRESET) << "the client must be reset, not left hanging nor sent a FIN";
    EXPECT_TRUE(eventually([&] { return first_end.load() != -1; }));
    EXPECT_EQ(first_end.load(), ECONNRESET) << "the backend must be reset too";
    EXPECT_TRUE(eventually([&] { return rig.stats.active_sessions.load() == 0; })) << "the session was not freed";
    EXPECT_EQ(rig.stats.reset_no_memory_total.load(), 1u);
    stop_failing();
    expect_served(rig.port);
}

TEST(Worker, ASessionWhoseConnectStateCannotBeAllocatedIsResetAndCountedAndTheWorkerGoesOn) {
    // An accepted session allocates its connect_state (what it needs until
    // the backend's first byte) apart from itself. Out of memory there, the
    // client is reset and counted as for the session object itself, and the
    // worker goes on accepting.
    worker_rig rig;
    ASSERT_TRUE(on_worker(*rig.w, [] { fail_new_of_size_here(sizeof(apilb::session_impl::connect_state)); }));
    EXPECT_EQ(end_seen_by_a_client(rig.port), ECONNRESET)
        << "the client must be reset, not left hanging nor sent a FIN";
    EXPECT_TRUE(eventually([&] { return rig.stats.active_sessions.load() == 0; })) << "the session was not un-counted";
    EXPECT_EQ(rig.stats.reset_no_memory_total.load(), 1u);
    EXPECT_EQ(rig.backend().active.load(), 0u) << "no backend was reserved";
    stop_failing();
    expect_served(rig.port);
}

// The sweep sets the backend leg's keepalive options on sessions that have
// outlived a period: its period stays a tenth of the time before they could
// act, and of the session limits it enforces.
TEST(SweepPeriod, IsATenthOfTheShortestLimitInUseWithin100msAnd30s) {
    using namespace std::chrono_literals;
    apilb::config cfg;  // shipped: idle 1h, write_stall 60s, keepalive_idle 15s, user_timeout 30s
    EXPECT_EQ(apilb::sweep_period(cfg), 1500ms);
    cfg.tcp.keepalive_idle = 1s;  // netfault_test's
    EXPECT_EQ(apilb::sweep_period(cfg), 100ms);
    cfg.tcp.keepalive = false;  // the idle time is not in use then
    EXPECT_EQ(apilb::sweep_period(cfg), 3s);
    cfg.tcp.user_timeout = 0ms;
    EXPECT_EQ(apilb::sweep_period(cfg), 6s);
    cfg.timeouts.write_stall = 0ms;
    EXPECT_EQ(apilb::sweep_period(cfg), 30s);
    cfg.timeouts.idle = 0ms;
    EXPECT_EQ(apilb::sweep_period(cfg), 0ms) << "nothing to sweep for";
    cfg.tcp.user_timeout = 1s;
    EXPECT_EQ(apilb::sweep_period(cfg), 100ms) << "a user timeout alone needs the sweep too";
}

}  // namespace
}  // namespace apilb::test
