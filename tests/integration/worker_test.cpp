// A worker in-process, for what the binary cannot show from outside: how it
// behaves when the process runs out of file descriptors.
#include "apilb/dataplane/worker.hpp"

#include <gtest/gtest.h>

#include <boost/asio/detail/thread_context.hpp>
#include <boost/asio/detail/thread_info_base.hpp>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>

#include "apilb/core/thread_role.hpp"

namespace {

/// The next `failing_left` aligned_alloc calls of the thread whose
/// `thread_tag` is at `failing_on` fail, as under an address-space limit.
/// Asio allocates every operation it starts (and every coroutine frame) with
/// aligned_alloc, past its per-thread cache.
thread_local char thread_tag;
std::atomic<const char*> failing_on{nullptr};
std::atomic<int> failing_left{0};

}  // namespace

extern "C" void* aligned_alloc(std::size_t align, std::size_t size) noexcept {
    if (failing_on.load() == &thread_tag && failing_left.load() > 0) {
        failing_left.fetch_sub(1);
        return nullptr;
    }
    void* p = nullptr;
    return ::posix_memalign(&p, align, size) == 0 ? p : nullptr;
}

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

/// One started worker with no session limit, in front of one echo backend.
struct worker_rig {
    tcp_server echo{"127.0.0.2", echo_handler()};
    std::uint16_t port = free_port();
    process_stats stats;
    std::shared_ptr<const snapshot> snap = snapshot::build(parse_config(fmt::format(R"(workers: 1
listeners: [{{name: f, address: "127.0.0.1:{}", pool: p}}]
pools: [{{name: p, backends: [{{name: b, address: "{}"}}]}}]
relay: {{mode: copy}}
)",
                                                                                    port, echo.address()),
                                                                        "test.yaml"));
    worker w{0, snap, stats};

    worker_rig() {
        w.bind(0);
        w.set_max_connections(0);
        w.start();
    }
};

TEST(Worker, OutOfDescriptorsPausesAcceptingInsteadOfSpinning) {
    worker_rig rig;
    auto& [echo, port, stats, snap, w] = rig;

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
    apilb::worker* target = nullptr;  ///< set before the pause; disarms through it

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        namespace ad = boost::asio::detail;
        if (armed || target == nullptr || apilb::current_thread_role() != apilb::thread_role::worker) return;
        if (std::string_view(msg.payload.data(), msg.payload.size()).find("pausing accepts") == std::string_view::npos)
            return;
        // Disarmed once the worker is done with what it is doing now: on main
        // the pause's wait started (and failed) before that. Sessions started
        // later must not meet the failure: they are not what this test holds.
        target->ping([] { failing_left = 0; });
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
        auto& [echo, port, stats, snap, w] = rig;
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
    auto& [echo, port, stats, snap, w] = rig;
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

}  // namespace
}  // namespace apilb::test
