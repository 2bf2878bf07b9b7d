#include "apilb/logging/log_sink.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <spdlog/logger.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>

namespace apilb {
namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

/// A pipe of one page whose read end the test reads only when it says so.
struct small_pipe {
    int rd = -1;
    int wr = -1;
    small_pipe() {
        int fds[2];
        EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
        rd = fds[0];
        wr = fds[1];
        EXPECT_GE(::fcntl(rd, F_SETPIPE_SZ, 4096), 0);
        ::fcntl(rd, F_SETFL, O_NONBLOCK);
    }
    ~small_pipe() {
        ::close(rd);
        ::close(wr);
    }
    /// Reads until `what` has come (bounded); everything read so far.
    std::string read_until(const std::string& what, std::chrono::milliseconds timeout) {
        const auto deadline = clock_type::now() + timeout;
        while (text.find(what) == std::string::npos && clock_type::now() < deadline) {
            char buf[4096];
            const ssize_t n = ::read(rd, buf, sizeof buf);
            if (n > 0) {
                text.append(buf, static_cast<std::size_t>(n));
            } else {
                std::this_thread::sleep_for(5ms);
            }
        }
        return text;
    }
    std::string text;
};

TEST(LogSink, AFullQueueDropsAndCountsWithoutWaitingAndSaysSoWhenWritingWorksAgain) {
    small_pipe p;
    auto sink = std::make_shared<log_sink>(p.wr, log_sink::limits{.max_lines = 16, .max_bytes = 1 << 20});
    spdlog::logger logger("t", sink);
    logger.set_pattern("%v");
    const auto before = log_sink::dropped_total();
    const auto t0 = clock_type::now();
    for (int i = 0; i < 2000; ++i) logger.info("line {} {}", i, std::string(100, 'x'));
    // 2000 lines of 100 bytes into a page of pipe: without the queue the
    // logging thread would block at the 40th line until the test read.
    EXPECT_LT(clock_type::now() - t0, 2s);
    const auto dropped = log_sink::dropped_total() - before;
    EXPECT_GT(dropped, 1000u);
    EXPECT_NE(p.read_until("log line(s) dropped", 5s).find("line 0 "), std::string::npos);
    // Lines after the gap come after the notice(s); the notices add up to the count.
    logger.info("after the gap");
    const std::string text = p.read_until("after the gap", 5s);
    ASSERT_NE(text.find("after the gap"), std::string::npos) << text;
    std::uint64_t reported = 0;
    const std::regex notice(R"((\d+) log line\(s\) dropped)");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), notice); it != std::sregex_iterator(); ++it) {
        reported += std::stoull((*it)[1]);
    }
    EXPECT_EQ(reported, dropped) << text.substr(text.size() > 3000 ? text.size() - 3000 : 0);
    sink->stop(1s);
}

TEST(LogSink, StopGivesUpOnAStalledReaderWithinItsBudget) {
    small_pipe p;
    auto sink = std::make_shared<log_sink>(p.wr, log_sink::limits{});
    spdlog::logger logger("t", sink);
    for (int i = 0; i < 500; ++i) logger.info("line {} {}", i, std::string(100, 'x'));
    const auto t0 = clock_type::now();
    sink->stop(300ms);
    const auto took = clock_type::now() - t0;
    EXPECT_LT(took, 2s) << "stop() must not wait for the reader";
    EXPECT_GE(took, 300ms) << "stop() gives the queue its budget";
}

TEST(LogSink, StopWritesWhatIsQueuedWhenTheReaderReads) {
    small_pipe p;
    auto sink = std::make_shared<log_sink>(p.wr, log_sink::limits{});
    spdlog::logger logger("t", sink);
    logger.set_pattern("%v");
    for (int i = 0; i < 100; ++i) logger.info("line {}", i);
    logger.critical("the last words");
    std::thread reader([&] { p.read_until("the last words", 5s); });
    sink->stop(5s);
    reader.join();
    EXPECT_NE(p.text.find("the last words"), std::string::npos);
}

}  // namespace
}  // namespace apilb
