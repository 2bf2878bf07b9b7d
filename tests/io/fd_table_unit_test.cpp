#include "apilb/dataplane/fd_table.hpp"

#include <gtest/gtest.h>

#include <sys/resource.h>

#include <fstream>
#include <future>
#include <string>
#include <thread>

namespace apilb {
namespace {

/// The size of this process's descriptor table, as the kernel reports it.
long fd_table_size() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("FDSize:", 0) == 0) return std::stol(line.substr(7));
    }
    return -1;
}

TEST(ReserveFdTable, GrowsTheTableAndLeavesNothingOpen) {
    rlimit rl{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < rl.rlim_max) {  // as apilb does; a soft limit of 1024 is common
        rl.rlim_cur = rl.rlim_max;
        ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    const std::uint64_t want = std::min<std::uint64_t>(rl.rlim_cur, 4096);
    ASSERT_LT(fd_table_size(), static_cast<long>(want)) << "a fresh test process starts with a small table";
    // A second thread shares the table while it grows: the case in which
    // growing it waits for a grace period, the case apilb is in.
    std::promise<void> done;
    std::thread other([finished = done.get_future()] { finished.wait(); });
    const std::uint64_t open_before = count_open_fds();
    EXPECT_FALSE(reserve_fd_table(want));
    done.set_value();
    other.join();
    EXPECT_GE(fd_table_size(), static_cast<long>(want));
    EXPECT_EQ(count_open_fds(), open_before);
}

TEST(ReserveFdTable, BeyondTheLimitIsAnErrorAndHarmless) {
    rlimit rl{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
    ASSERT_NE(rl.rlim_cur, RLIM_INFINITY);
    const std::uint64_t open_before = count_open_fds();
    EXPECT_TRUE(reserve_fd_table(rl.rlim_cur + 1));
    EXPECT_EQ(count_open_fds(), open_before);
    EXPECT_FALSE(reserve_fd_table(0)) << "nothing to reserve is not an error";
}

}  // namespace
}  // namespace apilb
