#include "apilb/dataplane/socket_options.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

/// setsockopt calls made by this process (the library under test and the
/// test's own).
std::atomic<int> setsockopt_calls{0};

// Interposed for the whole test binary; forwards to the kernel.
extern "C" int setsockopt(int fd, int level, int name, const void* value, socklen_t len) noexcept {
    setsockopt_calls.fetch_add(1, std::memory_order_relaxed);
    return static_cast<int>(::syscall(SYS_setsockopt, fd, level, name, value, len));
}

namespace apilb {
namespace {

int get_int(int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    EXPECT_EQ(::getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

/// A TCP socket as socket() makes it, closed with the object.
struct fresh_socket {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ~fresh_socket() { ::close(fd); }
};

TEST(SocketOptions, ANewSocketGetsWhatAConnectNeedsInThreeCallsAndTheKeepaliveSetInFourMore) {
    // The shipped defaults: what the backend socket of every session gets
    // at its connect, and (the worker's sweep) once it has lived a while.
    const tcp_config cfg;
    fresh_socket s;
    ASSERT_GE(s.fd, 0);
    int before = setsockopt_calls.load();
    ASSERT_FALSE(apply_new_socket_tcp_options(s.fd, cfg));
    EXPECT_EQ(setsockopt_calls.load() - before, 3) << "TCP_NODELAY and the two buffer bounds";
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_NODELAY), 1);
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_RCVBUF), 256 * 1024);  // asked for half; the kernel doubles it
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT), 256 * 1024);
    // None of the dead-peer detection: a short connection ends before it could act.
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_KEEPALIVE), 0);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 0);
    before = setsockopt_calls.load();
    ASSERT_FALSE(apply_keepalive_tcp_options(s.fd, cfg, true));
    EXPECT_EQ(setsockopt_calls.load() - before, 4) << "TCP_KEEPCNT does nothing beside TCP_USER_TIMEOUT";
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_KEEPIDLE), 15);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_KEEPINTVL), 5);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 30000);
    EXPECT_TRUE(has_keepalive_tcp_options(cfg));
}

TEST(SocketOptions, WithoutAUserTimeoutANewSocketGetsTheKeepaliveCount) {
    tcp_config cfg;
    cfg.user_timeout = {};
    cfg.keepalive_count = 4;
    fresh_socket s;
    ASSERT_FALSE(apply_new_socket_tcp_options(s.fd, cfg));
    ASSERT_FALSE(apply_keepalive_tcp_options(s.fd, cfg, true));
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_KEEPCNT), 4);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 0);
}

TEST(SocketOptions, OptionsTurnedOffAreLeftAsANewSocketHasThemButSetOnAListener) {
    tcp_config on;
    tcp_config off;
    off.nodelay = false;
    off.keepalive = false;
    fresh_socket s;
    int before = setsockopt_calls.load();
    ASSERT_FALSE(apply_new_socket_tcp_options(s.fd, off));
    EXPECT_EQ(setsockopt_calls.load() - before, 2) << "only the two buffer bounds";
    before = setsockopt_calls.load();
    ASSERT_FALSE(apply_keepalive_tcp_options(s.fd, off, true));
    EXPECT_EQ(setsockopt_calls.load() - before, 1) << "only TCP_USER_TIMEOUT";
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_NODELAY), 0);
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_KEEPALIVE), 0);
    off.user_timeout = {};
    EXPECT_FALSE(has_keepalive_tcp_options(off)) << "nothing for the sweep to set";
    off.user_timeout = on.user_timeout;
    // A socket that had them on (a listener before a reload) is turned off.
    fresh_socket l;
    ASSERT_FALSE(apply_tcp_options(l.fd, on));
    ASSERT_FALSE(apply_tcp_options(l.fd, off));
    EXPECT_EQ(get_int(l.fd, IPPROTO_TCP, TCP_NODELAY), 0);
    EXPECT_EQ(get_int(l.fd, SOL_SOCKET, SO_KEEPALIVE), 0);
    // And a listener keeps the count it passes on, whatever user_timeout is.
    before = setsockopt_calls.load();
    ASSERT_FALSE(apply_tcp_options(l.fd, on));
    EXPECT_EQ(setsockopt_calls.load() - before, 8);
    EXPECT_EQ(get_int(l.fd, IPPROTO_TCP, TCP_KEEPCNT), 3);
}

TEST(SocketOptions, ASocketAnotherProcessSetUpGetsEveryKeepaliveOption) {
    // An upgrade's adopted backend socket may hold the old process's values.
    tcp_config on;
    tcp_config off;
    off.keepalive = false;
    fresh_socket s;
    ASSERT_FALSE(apply_keepalive_tcp_options(s.fd, on, true));
    int before = setsockopt_calls.load();
    ASSERT_FALSE(apply_keepalive_tcp_options(s.fd, off, false));
    EXPECT_EQ(setsockopt_calls.load() - before, 2) << "SO_KEEPALIVE off, TCP_USER_TIMEOUT";
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_KEEPALIVE), 0);
    on.keepalive_count = 5;
    before = setsockopt_calls.load();
    ASSERT_FALSE(apply_keepalive_tcp_options(s.fd, on, false));
    EXPECT_EQ(setsockopt_calls.load() - before, 5);
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_KEEPCNT), 5);
}

/// /proc/net/tcp's "ADDR:PORT" for `a` (the address as the kernel prints
/// its network-order word, the port in host order).
std::string proc_net_tcp_endpoint(const sockaddr_in& a) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%08X:%04X", a.sin_addr.s_addr, ntohs(a.sin_port));
    return buf;
}

/// The keepalive timer of the TCP socket from `local` to `remote`, as
/// /proc/net/tcp shows it: how long until it fires; nullopt if that socket
/// has no keepalive timer pending. Both ends are matched: a port alone can
/// also be another test's socket on another loopback address, or one in
/// TIME_WAIT.
std::optional<std::chrono::milliseconds> keepalive_timer_of(const sockaddr_in& local, const sockaddr_in& remote) {
    const std::string want_local = proc_net_tcp_endpoint(local);
    const std::string want_remote = proc_net_tcp_endpoint(remote);
    std::ifstream in("/proc/net/tcp");
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string sl, local_field, remote_field, state, queues, timer;
        fields >> sl >> local_field >> remote_field >> state >> queues >> timer;
        if (local_field != want_local || remote_field != want_remote) continue;
        // "tr:when": timer 2 is the keepalive timer; when is in USER_HZ ticks.
        if (std::stoul(timer.substr(0, 2), nullptr, 16) != 2) return std::nullopt;
        const long ticks = std::stol(timer.substr(3), nullptr, 16);
        return std::chrono::milliseconds(ticks * 1000 / ::sysconf(_SC_CLK_TCK));
    }
    return std::nullopt;
}

TEST(SocketOptions, KeepaliveSetLateFiresKeepaliveIdleAfterTheLastSegmentReceived) {
    // The sweep sets the keepalive options on a connection some time after
    // its last segment came: the first probe must still be due
    // keepalive_idle after that segment, not after the setsockopt.
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(listener, 1), 0);
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    fresh_socket c;
    ASSERT_EQ(::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    const int peer = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(peer, 0);
    ASSERT_EQ(::send(peer, "x", 1, 0), 1);
    char byte = 0;
    ASSERT_EQ(::recv(c.fd, &byte, 1, 0), 1);
    const auto last_received = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    tcp_config cfg;
    cfg.keepalive_idle = std::chrono::seconds(3);
    ASSERT_FALSE(apply_keepalive_tcp_options(c.fd, cfg, true));
    const auto set_at = std::chrono::steady_clock::now();
    sockaddr_in local{};
    len = sizeof local;
    ASSERT_EQ(::getsockname(c.fd, reinterpret_cast<sockaddr*>(&local), &len), 0);
    const auto left = keepalive_timer_of(local, addr);
    ASSERT_TRUE(left.has_value()) << "no keepalive timer on the socket";
    const auto due = std::chrono::duration_cast<std::chrono::milliseconds>(set_at - last_received) + *left;
    // Due 3 s after the byte came (a tick of /proc/net/tcp's rounding and
    // the time between the calls aside), not 3 s after the setsockopt.
    EXPECT_GE(due.count(), 2900);
    EXPECT_LE(due.count(), 3200) << "the timer counts from the setsockopt: " << left->count() << " ms left when set "
                                 << (set_at - last_received) / std::chrono::milliseconds(1)
                                 << " ms after the last segment";
    ::close(peer);
    ::close(listener);
}

}  // namespace
}  // namespace apilb
