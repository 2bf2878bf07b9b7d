// free_port(), which lets integration tests run side by side: the port it
// returns stays free until the test's own server binds it, whatever the
// tests running beside it do meanwhile.
#include "harness.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <set>

namespace apilb::test {
namespace {

TEST(FreePort, IsOutsideTheEphemeralRangeThatConnectsAndPortZeroBindsDrawFrom) {
    unsigned lo = 0, hi = 0;
    std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> lo >> hi;
    ASSERT_GT(lo, 0u);
    for (int i = 0; i < 50; ++i) {
        const unsigned port = free_port();
        EXPECT_TRUE(port < lo || port > hi) << port << " is in the ephemeral range " << lo << "-" << hi
                                            << ": any connect on the machine may take it before apilb binds it";
    }
}

TEST(FreePort, APortOneProcessHoldsIsNeverGivenToAnother) {
    std::set<std::uint16_t> mine;
    for (int i = 0; i < 300; ++i) mine.insert(free_port());
    EXPECT_EQ(mine.size(), 300u) << "the same port twice in one process";
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        // Another test process, started while this one still holds its ports.
        ::close(fds[0]);
        for (int i = 0; i < 300; ++i) {
            const std::uint16_t p = free_port();
            if (::write(fds[1], &p, sizeof p) != sizeof p) ::_exit(2);
        }
        ::_exit(0);
    }
    ::close(fds[1]);
    std::set<std::uint16_t> theirs;
    std::uint16_t p = 0;
    while (::read(fds[0], &p, sizeof p) == sizeof p) theirs.insert(p);
    ::close(fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ASSERT_EQ(theirs.size(), 300u);
    std::vector<std::uint16_t> both;
    for (auto q : theirs) {
        if (mine.contains(q)) both.push_back(q);
    }
    EXPECT_TRUE(both.empty()) << both.size() << " port(s) handed to both processes, e.g. " << both.front();
}

}  // namespace
}  // namespace apilb::test
