// Socket-level behaviour: IPv6 listeners, TCP keepalive on both legs, and
// what apilb does when it runs out of file descriptors.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>

#include "harness.hpp"

namespace apilb::test {
namespace {

std::string config_for(const std::string& listen, const std::string& backend, const std::string& extra = {}) {
    return fmt::format(R"(workers: 1
listeners:
  - {{name: front, address: "{}", pool: p}}
pools:
  - name: p
    backends:
      - {{name: b, address: "{}"}}
log: {{level: debug}}
{})",
                       listen, backend, extra);
}

TEST(Sockets, Ipv6ListenerServesClients) {
    tcp_server echo("127.0.0.2", echo_handler());
    // Port from the v4 helper; good enough to find one free on ::1 too.
    const auto port = free_port();
    temp_dir dir;
    dir.write("apilb.yaml", config_for(fmt::format("[::1]:{}", port), echo.address()));
    process apilb({required_env("APILB_BIN"), "run", "--config", dir.file("apilb.yaml")}, dir.file("log"));
    int fd = -1;
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons(port);
    ::inet_pton(AF_INET6, "::1", &sa.sin6_addr);
    for (int i = 0; i < 500; ++i) {
        fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) break;
        ::close(fd);
        fd = -1;
        std::this_thread::sleep_for(10ms);
    }
    ASSERT_GE(fd, 0) << apilb.log();
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ASSERT_EQ(::send(fd, "v6", 2, MSG_NOSIGNAL), 2);
    char buf[2];
    EXPECT_EQ(::recv(fd, buf, 2, MSG_WAITALL), 2);
    EXPECT_EQ(std::string(buf, 2), "v6");
    ::close(fd);
    apilb.signal(SIGTERM);
    EXPECT_EQ(apilb.wait(10s), std::optional<int>(0)) << apilb.log();
    expect_no_sanitizer_report(apilb.log(), "apilb");
}

/// `ss` lines for established TCP sockets matching `filter`, with timers shown.
std::string ss(const std::string& filter) {
    return run_command({"/usr/bin/ss", "-tnoH", "state", "established", filter}, 10s).output;
}

/// Connects `c` to apilb at 127.0.0.1:`port` and has one byte echoed: the
/// session then has both legs.
void open_session(client& c, std::uint16_t port) {
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(c.send_all("k"));
    ASSERT_EQ(c.recv_exact(1), "k");
}

/// The keepalive timer's seconds left in an `ss -o` line; nullopt if none.
/// ss writes 42 s as "42sec", 4.5 s as "4.500ms", 0.2 s as "200ms" and
/// 61 s as "1min1sec".
std::optional<double> keepalive_left(const std::string& ss_line) {
    static const std::regex keepalive(R"(timer:\(keepalive,(?:([0-9]+)min)?(?:([0-9]+)(?:sec|\.))?(?:([0-9]+)ms)?,)");
    std::smatch m;
    if (!std::regex_search(ss_line, m, keepalive)) return std::nullopt;
    const auto part = [&m](std::size_t i) { return m[i].matched ? std::stod(m[i]) : 0.0; };
    return part(1) * 60 + part(2) + part(3) / 1000;
}

// The client leg inherits keepalive from the listener at once. The backend
// leg gets it from the worker's sweep once the session has outlived a sweep
// period (1 s here: a tenth of write_stall), and its timer still counts
// from the last segment received.
TEST(Sockets, KeepaliveIsArmedOnBothLegs) {
    if (::access("/usr/bin/ss", X_OK) != 0) GTEST_SKIP() << "ss (iproute2) is not installed";
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir,
                        config_for(fmt::format("127.0.0.1:{}", port), echo.address(),
                                   "tcp: {keepalive_idle: 42s, keepalive_interval: 5s, keepalive_count: 3}\n"
                                   "timeouts: {write_stall: 10s}\n"),
                        "127.0.0.1", port);
    client c;
    ASSERT_NO_FATAL_FAILURE(open_session(c, port));
    // apilb's side of the client leg: source port = the listener's port.
    const std::string client_leg = ss(fmt::format("( sport = :{} )", port));
    // apilb's side of the backend leg: destination = the backend.
    const auto backend_leg = [&] { return ss(fmt::format("( dst 127.0.0.2 and dport = :{} )", echo.port())); };
    const auto client_left = keepalive_left(client_leg);
    ASSERT_TRUE(client_left) << client_leg;
    EXPECT_LE(*client_left, 42.0);
    EXPECT_GT(*client_left, 30.0) << "keepalive_idle 42s should be what the timer counts down from";
    const std::string young = backend_leg();
    ASSERT_NE(young, "") << "no backend leg";
    EXPECT_FALSE(keepalive_left(young)) << "a session younger than a sweep period has no keepalive on the backend leg: "
                                        << young;
    std::string armed;
    ASSERT_TRUE(wait_until([&] { return keepalive_left(armed = backend_leg()).has_value(); }, 10s))
        << "the sweep never armed keepalive on the backend leg: " << armed;
    EXPECT_LE(*keepalive_left(armed), 42.0);
    EXPECT_GT(*keepalive_left(armed), 30.0);
    c.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

// A reload that gives the sweep something to do where the config had
// nothing (no keepalive, no user timeout, no session limits: no sweep at
// all) starts it: the backend legs of sessions opened after it get their
// keepalive options.
TEST(Sockets, AReloadThatTurnsKeepaliveOnStartsTheSweep) {
    if (::access("/usr/bin/ss", X_OK) != 0) GTEST_SKIP() << "ss (iproute2) is not installed";
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto config = [&](const std::string& tcp) {
        return config_for(fmt::format("127.0.0.1:{}", port), echo.address(),
                          fmt::format("tcp: {}\ntimeouts: {{idle: 0s, write_stall: 0s}}\n", tcp));
    };
    apilb_process apilb(dir, config("{keepalive: false, user_timeout: 0s}"), "127.0.0.1", port);
    // A sweep every 500 ms from here (a tenth of 5 s).
    dir.write("apilb.yaml", config("{keepalive_idle: 5s, user_timeout: 5s}"));
    apilb.proc().signal(SIGHUP);
    ASSERT_TRUE(apilb.wait_for_log("reload done in", 10s)) << apilb.log();
    client c;
    ASSERT_NO_FATAL_FAILURE(open_session(c, port));
    std::string leg;
    EXPECT_TRUE(wait_until(
        [&] {
            return keepalive_left(leg = ss(fmt::format("( dst 127.0.0.2 and dport = :{} )", echo.port()))).has_value();
        },
        10s))
        << "no sweep armed keepalive on the backend leg after the reload: " << leg;
    c.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

/// A copy, in this process, of `pid`'s descriptor for its TCP connection to
/// or from `peer` (pidfd_getfd(2): the same socket, so its options are
/// apilb's); -1 if there is none.
int socket_of(pid_t pid, const sockaddr_in& peer) {
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) return -1;
    int found = -1;
    for (const auto& entry : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid))) {
        const int fd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, std::stoi(entry.path().filename()), 0));
        if (fd < 0) continue;
        sockaddr_in ep{};
        socklen_t len = sizeof ep;
        if (found < 0 && ::getpeername(fd, reinterpret_cast<sockaddr*>(&ep), &len) == 0 && ep.sin_family == AF_INET &&
            ep.sin_addr.s_addr == peer.sin_addr.s_addr && ep.sin_port == peer.sin_port) {
            found = fd;
            continue;
        }
        ::close(fd);
    }
    ::close(pidfd);
    return found;
}

int int_option(int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    EXPECT_EQ(::getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

// The client leg is never set up by a system call of its own: it inherits
// every option from the listener (Linux copies them into the accepted
// socket). The backend leg sets each of them itself, but TCP_KEEPCNT, which
// TCP_USER_TIMEOUT overrides, and the four of dead-peer detection only once
// the session has outlived a sweep period (1 s here: a tenth of write_stall):
// a short session never pays for them.
TEST(Sockets, EveryTcpOptionIsOnBothLegs) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    // None of them a new socket's or the kernel's default.
    apilb_process apilb(dir,
                        config_for(fmt::format("127.0.0.1:{}", port), echo.address(),
                                   "tcp: {keepalive_idle: 42s, keepalive_interval: 7s, keepalive_count: 4, "
                                   "user_timeout: 21s, socket_buffer: 98304}\ntimeouts: {write_stall: 10s}\n"),
                        "127.0.0.1", port);
    client c;
    ASSERT_NO_FATAL_FAILURE(open_session(c, port));
    sockaddr_in client_ep{}, backend_ep{};
    socklen_t len = sizeof client_ep;
    ASSERT_EQ(::getsockname(c.fd(), reinterpret_cast<sockaddr*>(&client_ep), &len), 0);
    backend_ep.sin_family = AF_INET;
    backend_ep.sin_port = htons(echo.port());
    ASSERT_EQ(::inet_pton(AF_INET, "127.0.0.2", &backend_ep.sin_addr), 1);
    const int client_leg = socket_of(apilb.proc().pid(), client_ep);
    const int backend_leg = socket_of(apilb.proc().pid(), backend_ep);
    ASSERT_GE(client_leg, 0) << "apilb's socket of the client leg (pidfd_getfd)";
    ASSERT_GE(backend_leg, 0) << "apilb's socket of the backend leg (pidfd_getfd)";
    // A young session: the backend leg has what a connect needs, no more.
    EXPECT_EQ(int_option(backend_leg, SOL_SOCKET, SO_KEEPALIVE), 0) << "set before the session outlived a sweep";
    EXPECT_EQ(int_option(backend_leg, IPPROTO_TCP, TCP_USER_TIMEOUT), 0) << "set before the session outlived a sweep";
    // Then the sweep sets the rest.
    EXPECT_TRUE(wait_until([&] { return int_option(backend_leg, SOL_SOCKET, SO_KEEPALIVE) == 1; }, 10s))
        << "the sweep never set the backend leg's keepalive options";
    for (const int fd : {client_leg, backend_leg}) {
        const char* leg = fd == client_leg ? "client leg" : "backend leg";
        EXPECT_EQ(int_option(fd, IPPROTO_TCP, TCP_NODELAY), 1) << leg;
        EXPECT_EQ(int_option(fd, SOL_SOCKET, SO_KEEPALIVE), 1) << leg;
        EXPECT_EQ(int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE), 42) << leg;
        EXPECT_EQ(int_option(fd, IPPROTO_TCP, TCP_KEEPINTVL), 7) << leg;
        EXPECT_EQ(int_option(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 21000) << leg;
        EXPECT_EQ(int_option(fd, SOL_SOCKET, SO_RCVBUF), 98304) << leg << ": the kernel doubles half of it";
        EXPECT_EQ(int_option(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT), 98304) << leg;
    }
    EXPECT_EQ(int_option(client_leg, IPPROTO_TCP, TCP_KEEPCNT), 4);
    ::close(client_leg);
    ::close(backend_leg);
    c.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

/// CPU time (user+system) of a process, in clock ticks.
[[maybe_unused]] long cpu_ticks(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string field;
    long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stol(field);
        if (i == 15) stime = std::stol(field);
    }
    return utime + stime;
}

TEST(Sockets, FileDescriptorLimitCapsSessionsAndRefusesTheRestCleanly) {
    if (::access("/usr/bin/prlimit", X_OK) != 0) GTEST_SKIP() << "prlimit (util-linux) is not installed";
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    // 100 descriptors, copy relay: what is open at start (~15) and 64 of
    // slack leave room for about 10 sessions of two sockets each.
    apilb_process apilb(dir, config_for(fmt::format("127.0.0.1:{}", port), echo.address(), "relay: {mode: copy}\n"),
                        "127.0.0.1", port, {}, {"/usr/bin/prlimit", "--nofile=100:100"});
    const std::regex capped(R"(file-descriptor limit \(100\) holds about ([0-9]+) sessions)");
    std::smatch m;
    const std::string startup = apilb.log();
    ASSERT_TRUE(std::regex_search(startup, m, capped)) << startup;
    const int cap = std::stoi(m[1]);
    ASSERT_GT(cap, 3);
    ASSERT_LT(cap, 40);
    std::vector<client> clients;
    int served = 0, refused = 0;
    for (int i = 0; i < cap + 10; ++i) {
        client c;
        ASSERT_EQ(c.connect("127.0.0.1", port, 2s), 0);
        c.set_timeout(2s);
        if (c.send_all("a") && c.recv_exact(1) == "a") {
            ++served;
        } else {
            ++refused;
        }
        clients.push_back(std::move(c));
    }
    EXPECT_EQ(served, cap);
    EXPECT_EQ(refused, 10);
    EXPECT_EQ(apilb.log().find("Too many open files"), std::string::npos) << "the cap must come before EMFILE";
    // Sessions that were admitted keep working; freed slots are reused.
    ASSERT_TRUE(clients.front().send_all("b"));
    EXPECT_EQ(clients.front().recv_exact(1), "b");
    clients.clear();
    std::this_thread::sleep_for(200ms);
    client again;
    ASSERT_EQ(again.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(again.send_all("c"));
    EXPECT_EQ(again.recv_exact(1), "c");
    again.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

}  // namespace
}  // namespace apilb::test
