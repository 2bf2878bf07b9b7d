// balance: maglev through the real binary: a client keeps its apiserver, and
// two apilb instances (the two balancers of a VIP pair) whose files list the
// backends in a different order send every client to the same apiserver.
#include <gtest/gtest.h>

#include <sys/socket.h>

#include <fmt/format.h>

#include <map>
#include <set>

#include "harness.hpp"

namespace apilb::test {
namespace {

/// A backend that greets every connection with its name.
tcp_server::handler says(const std::string& name) {
    return [name](int& fd) { ::send(fd, name.data(), name.size(), MSG_NOSIGNAL); };
}

std::string maglev_config(std::uint16_t port, const std::vector<std::pair<std::string, std::string>>& backends) {
    std::string b;
    for (const auto& [name, address] : backends)
        b += fmt::format("      - {{name: {}, address: \"{}\"}}\n", name, address);
    return fmt::format(R"(workers: 2
listeners:
  - {{name: f, address: "127.0.0.1:{}", pool: p}}
pools:
  - name: p
    balance: maglev
    backends:
{})",
                       port, b);
}

/// Which backend a client from `source` reaches through apilb on `port`.
std::string backend_for(const std::string& source, std::uint16_t port) {
    client c;
    if (!c.bind(source) || c.connect("127.0.0.1", port) != 0) return "connect failed";
    return c.recv_exact(4);
}

TEST(Maglev, BothBalancersOfAPairSendEachClientToTheSameApiserver) {
    tcp_server a("127.0.0.2", says("cp-a")), b("127.0.0.3", says("cp-b")), c("127.0.0.4", says("cp-c"));
    temp_dir dir1, dir2;
    const auto port1 = free_port(), port2 = free_port();
    apilb_process lb1(dir1, maglev_config(port1, {{"cp-a", a.address()}, {"cp-b", b.address()}, {"cp-c", c.address()}}),
                      "127.0.0.1", port1);
    apilb_process lb2(dir2, maglev_config(port2, {{"cp-c", c.address()}, {"cp-a", a.address()}, {"cp-b", b.address()}}),
                      "127.0.0.1", port2);
    std::map<std::string, int> spread;
    for (int i = 10; i < 70; ++i) {
        const std::string source = fmt::format("127.0.1.{}", i);
        const std::string first = backend_for(source, port1);
        ASSERT_EQ(first.rfind("cp-", 0), 0u) << first << '\n' << lb1.log();
        EXPECT_EQ(backend_for(source, port1), first) << source << " must keep its apiserver";
        EXPECT_EQ(backend_for(source, port2), first)
            << source << " must get the same apiserver from the other balancer";
        ++spread[first];
    }
    // 60 clients over three apiservers: every one gets a fair part.
    ASSERT_EQ(spread.size(), 3u);
    for (auto& [name, n] : spread) EXPECT_GE(n, 8) << name;
    EXPECT_EQ(lb1.terminate(), std::optional<int>(0));
    EXPECT_EQ(lb2.terminate(), std::optional<int>(0));
}

TEST(Maglev, ClientsOfADownApiserverMoveAndNoOneElseDoes) {
    tcp_server a("127.0.0.2", says("cp-a")), b("127.0.0.3", says("cp-b"));
    auto c = std::make_unique<tcp_server>("127.0.0.4", says("cp-c"));
    const std::string c_address = c->address();
    temp_dir dir;
    const auto port = free_port();
    apilb_process lb(dir, maglev_config(port, {{"cp-a", a.address()}, {"cp-b", b.address()}, {"cp-c", c_address}}),
                     "127.0.0.1", port);
    std::map<std::string, std::string> before;
    for (int i = 10; i < 70; ++i) {
        const std::string source = fmt::format("127.0.1.{}", i);
        before[source] = backend_for(source, port);
    }
    c->stop();  // cp-c refuses from now on
    int moved = 0;
    for (const auto& [source, was] : before) {
        const std::string now = backend_for(source, port);
        if (was == "cp-c") {
            EXPECT_NE(now, "cp-c");
            EXPECT_EQ(now.rfind("cp-", 0), 0u) << now;
            ++moved;
        } else {
            EXPECT_EQ(now, was) << source << " was on a healthy apiserver and must stay";
        }
    }
    EXPECT_GT(moved, 0);
    EXPECT_EQ(lb.terminate(), std::optional<int>(0));
}

}  // namespace
}  // namespace apilb::test
