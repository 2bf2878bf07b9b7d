// A listener address is one apilb's alone. apilb's listeners use
// SO_REUSEPORT, which lets any process of the same user bind beside them: a
// second apilb, or anything else that sets the option, would start silently
// and take part of the clients. The real binary must refuse such an address
// at start (exit 1, naming the holder) and on a reload that adds it.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <fstream>

#include "harness.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;

/// A backend that sends its tag ("a\n") and echoes after it.
tcp_server::handler tagged(const std::string& tag) {
    return [tag](int& fd) {
        const std::string t = tag + "\n";
        if (::send(fd, t.data(), t.size(), MSG_NOSIGNAL) < 0) return;
        echo_handler()(fd);
    };
}

/// The tag of the backend a fresh connection through `port` reaches ("" if none).
std::string tag_through(std::uint16_t port) {
    client c;
    if (c.connect("127.0.0.1", port, milliseconds(3000)) != 0) return "";
    c.set_timeout(milliseconds(3000));
    const std::string line = c.recv_exact(2);
    return line.size() == 2 ? line.substr(0, 1) : "";
}

/// A socket of this (test) process listening on 127.0.0.1:`port` with
/// SO_REUSEPORT, as a second apilb's would: the kernel lets apilb bind beside it.
class reuseport_holder {
public:
    explicit reuseport_holder(std::uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(port);
        ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        ok_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 && ::listen(fd_, 16) == 0;
    }
    ~reuseport_holder() { ::close(fd_); }
    bool ok() const { return ok_; }

private:
    int fd_ = -1;
    bool ok_ = false;
};

/// This process's name as /proc shows it (what apilb's message names).
std::string own_comm() {
    std::ifstream f("/proc/self/comm");
    std::string name;
    std::getline(f, name);
    return name;
}

TEST(ListenerOwner, SecondApilbOnTheSameListenerExitsAndTheFirstKeepsEveryClient) {
    tcp_server a("127.0.0.2", tagged("a"));
    tcp_server b("127.0.0.3", tagged("b"));
    temp_dir first_dir, second_dir;
    const auto port = free_port();
    apilb_process first(first_dir, single_pool_config(port, {a.address()}, "round-robin", 2), "127.0.0.1", port);

    // Same user, same address, SO_REUSEPORT on both sides: only apilb's own check stands in the way.
    second_dir.write("apilb.yaml", single_pool_config(port, {b.address()}, "round-robin", 2));
    process second({required_env("APILB_BIN"), "run", "--config", second_dir.file("apilb.yaml")},
                   second_dir.file("apilb.log"));
    const auto code = second.wait(milliseconds(10000));
    EXPECT_EQ(code, std::optional<int>(1)) << second.log();
    EXPECT_NE(second.log().find(fmt::format("listener front: 127.0.0.1:{} is taken: pid {} (apilb) listens on "
                                            "127.0.0.1:{}",
                                            port, first.proc().pid(), port)),
              std::string::npos)
        << second.log();

    // Every client still reaches the first apilb's backend.
    int on_a = 0;
    for (int i = 0; i < 40; ++i) on_a += tag_through(port) == "a" ? 1 : 0;
    EXPECT_EQ(on_a, 40);
    EXPECT_EQ(b.accepted(), 0);
    EXPECT_EQ(first.terminate(), std::optional<int>(0));
}

TEST(ListenerOwner, AnotherProcessHoldingThePortIsNamedAtStart) {
    const auto port = free_port();
    reuseport_holder holder(port);
    ASSERT_TRUE(holder.ok());
    temp_dir dir;
    dir.write("apilb.yaml", single_pool_config(port, {"127.0.0.2:1"}, "round-robin", 2));
    process apilb({required_env("APILB_BIN"), "run", "--config", dir.file("apilb.yaml")}, dir.file("apilb.log"));
    EXPECT_EQ(apilb.wait(milliseconds(10000)), std::optional<int>(1)) << apilb.log();
    EXPECT_NE(apilb.log().find(
                  fmt::format("listener front: 127.0.0.1:{} is taken: pid {} ({})", port, ::getpid(), own_comm())),
              std::string::npos)
        << apilb.log();
}

TEST(ListenerOwner, AReloadAddingAHeldAddressIsRejectedAndTheOldConfigServes) {
    tcp_server a("127.0.0.2", tagged("a"));
    temp_dir dir;
    const auto port = free_port();
    const auto taken = free_port();
    const std::string before = single_pool_config(port, {a.address()}, "round-robin", 2);
    apilb_process apilb(dir, before, "127.0.0.1", port);
    reuseport_holder holder(taken);
    ASSERT_TRUE(holder.ok());

    std::string with_second = before;
    const std::string anchor = "pools:\n";
    with_second.insert(with_second.find(anchor),
                       fmt::format("  - {{name: second, address: \"127.0.0.1:{}\", pool: p}}\n", taken));
    dir.write("apilb.yaml", with_second);
    apilb.proc().signal(SIGHUP);
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("reload failed: listener second: 127.0.0.1:{} is taken: pid {} ({})",
                                               taken, ::getpid(), own_comm()),
                                   milliseconds(10000)))
        << apilb.log();
    EXPECT_EQ(tag_through(port), "a");
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

}  // namespace
}  // namespace apilb::test
