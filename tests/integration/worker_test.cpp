// A worker in-process, for what the binary cannot show from outside: how it
// behaves when the process runs out of file descriptors.
#include "apilb/dataplane/worker.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>

#include <filesystem>

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
