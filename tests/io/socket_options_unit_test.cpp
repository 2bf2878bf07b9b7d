#include "apilb/dataplane/socket_options.hpp"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

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

TEST(SocketOptions, ANewSocketGetsEveryEffectiveOptionInSevenCalls) {
    // The shipped defaults: what the backend socket of every session gets.
    const tcp_config cfg;
    fresh_socket s;
    ASSERT_GE(s.fd, 0);
    const int before = setsockopt_calls.load();
    ASSERT_FALSE(apply_new_socket_tcp_options(s.fd, cfg));
    EXPECT_EQ(setsockopt_calls.load() - before, 7) << "TCP_KEEPCNT does nothing beside TCP_USER_TIMEOUT";
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_NODELAY), 1);
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_KEEPIDLE), 15);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_KEEPINTVL), 5);
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 30000);
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_RCVBUF), 256 * 1024);  // asked for half; the kernel doubles it
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT), 256 * 1024);
}

TEST(SocketOptions, WithoutAUserTimeoutANewSocketGetsTheKeepaliveCount) {
    tcp_config cfg;
    cfg.user_timeout = {};
    cfg.keepalive_count = 4;
    fresh_socket s;
    ASSERT_FALSE(apply_new_socket_tcp_options(s.fd, cfg));
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
    EXPECT_EQ(setsockopt_calls.load() - before, 3) << "only TCP_USER_TIMEOUT and the two buffer bounds";
    EXPECT_EQ(get_int(s.fd, IPPROTO_TCP, TCP_NODELAY), 0);
    EXPECT_EQ(get_int(s.fd, SOL_SOCKET, SO_KEEPALIVE), 0);
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

}  // namespace
}  // namespace apilb
