// A stalled log reader must not stop apilb: the real binary with its stderr
// on a FIFO that the test opens and then stops reading (journald or a
// container runtime under pressure), the pipe shrunk to one page so that it
// fills at once. Relaying, /livez and SIGTERM must not wait on it; the lines
// that did not fit are counted in /metrics and reported once the reader
// reads again.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <regex>
#include <thread>

#include "harness.hpp"

namespace apilb::test {
namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// One HTTP/1.1 GET on a fresh connection: the status (0 if it failed) and the body.
std::pair<int, std::string> http_get(std::uint16_t port, const std::string& path) {
    client c;
    if (c.connect("127.0.0.1", port) != 0) return {0, {}};
    c.set_timeout(milliseconds(5000));
    c.send_all(fmt::format("GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", path, port));
    int end = 0;
    const std::string raw = c.recv_until_eof(end, 1 << 22);
    if (raw.rfind("HTTP/1.1 ", 0) != 0) return {0, {}};
    const auto sep = raw.find("\r\n\r\n");
    return {std::stoi(raw.substr(9, 3)), sep == std::string::npos ? std::string() : raw.substr(sep + 4)};
}

/// apilb_log_lines_dropped_total from /metrics, or -1.
long dropped_lines(std::uint16_t admin) {
    const auto [status, body] = http_get(admin, "/metrics");
    std::smatch m;
    if (status != 200 || !std::regex_search(body, m, std::regex(R"(\napilb_log_lines_dropped_total (\d+))"))) return -1;
    return std::stol(m[1]);
}

/// The read end of a FIFO, opened before apilb opens the write end.
class fifo_reader {
public:
    explicit fifo_reader(const std::string& path) {
        if (::mkfifo(path.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + path);
        fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd_ < 0) throw std::runtime_error("open " + path);
    }
    ~fifo_reader() { ::close(fd_); }
    /// Shrinks the pipe to one page: a few dozen lines fill it. The pipe
    /// must hold no more than that to shrink, so it is read empty first.
    bool shrink() {
        const auto deadline = clock_type::now() + milliseconds(5000);
        while (::fcntl(fd_, F_SETPIPE_SZ, 4096) < 0) {
            if (errno != EBUSY || clock_type::now() >= deadline) return false;
            read_available();
            std::this_thread::sleep_for(milliseconds(2));
        }
        return true;
    }
    /// Lets the pipe hold 1 MiB again, so that reading what apilb queued
    /// (up to 1 MiB) does not take a thousand round trips through one page.
    bool grow() { return ::fcntl(fd_, F_SETPIPE_SZ, 1 << 20) >= 0; }
    /// Reads what is there, without waiting, into text().
    void read_available() {
        char buf[65536];
        for (;;) {
            const ssize_t n = ::read(fd_, buf, sizeof buf);
            if (n <= 0) return;
            text_.append(buf, static_cast<std::size_t>(n));
        }
    }
    /// Reads until `what` has come, for at most `timeout`.
    bool read_until(const std::string& what, milliseconds timeout) {
        const auto deadline = clock_type::now() + timeout;
        for (;;) {
            read_available();
            if (text_.find(what) != std::string::npos) return true;
            if (clock_type::now() >= deadline) return false;
            std::this_thread::sleep_for(milliseconds(2));
        }
    }
    const std::string& text() const { return text_; }

private:
    int fd_ = -1;
    std::string text_;
};

/// `n` sessions through apilb, from `threads` threads at once: each sends
/// a few bytes and reads the echo. Stops starting sessions after 60 s.
/// Returns how many were served.
int echo_sessions(std::uint16_t port, int n, int threads) {
    std::atomic<int> served{0};
    std::vector<std::thread> pool;
    const auto deadline = clock_type::now() + std::chrono::seconds(60);
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            for (int i = t; i < n && clock_type::now() < deadline; i += threads) {
                client c;
                if (c.connect("127.0.0.1", port, milliseconds(3000)) != 0) continue;
                c.set_timeout(milliseconds(3000));
                if (!c.send_all("ping") || c.recv_exact(4) != "ping") continue;
                ++served;
            }
        });
    }
    for (auto& th : pool) th.join();
    return served.load();
}

TEST(LogStall, StalledStderrStopsNeitherRelayingNorLivezNorSigterm) {
    tcp_server backend("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    // debug: two lines a session, far more than a page of pipe and the queue hold.
    dir.write("apilb.yaml", single_pool_config(port, {backend.address()}, "round-robin", 2,
                                               fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n"
                                                           "timeouts: {{drain: 1s}}\n",
                                                           admin)));
    fifo_reader reader(dir.file("stderr"));
    ASSERT_TRUE(reader.shrink());
    process apilb({required_env("APILB_BIN"), "run", "--config", dir.file("apilb.yaml")}, dir.file("stderr"));
    ASSERT_TRUE(reader.read_until("apilb started:", milliseconds(10000))) << reader.text();

    // The reader stops reading. 5000 sessions log about 10000 lines.
    const auto t0 = clock_type::now();
    constexpr int sessions = 5000;
    const int served = echo_sessions(port, sessions, 4);
    const auto took = std::chrono::duration_cast<milliseconds>(clock_type::now() - t0);
    const auto [livez, livez_body] = http_get(admin, "/livez");
    const long dropped = dropped_lines(admin);
    std::cout << fmt::format(
        "[ MEASURE ] stderr stalled: {} of {} sessions served in {} ms ({:.0f}/s); "
        "{} log lines dropped\n",
        served, sessions, took.count(), served * 1000.0 / std::max<long>(1, took.count()), dropped);
    EXPECT_EQ(served, sessions);
    EXPECT_EQ(livez, 200) << livez_body;
    EXPECT_GT(dropped, 0);

    // The reader reads again: the queued lines come, then the count of the dropped ones.
    EXPECT_TRUE(reader.grow());
    EXPECT_TRUE(reader.read_until("log line(s) dropped: stderr did not take them", milliseconds(30000)))
        << reader.text().substr(reader.text().size() > 2000 ? reader.text().size() - 2000 : 0);

    // Stalled again, SIGTERM: apilb exits within its drain plus the
    // logger's one-second budget, not whenever the reader wakes up.
    EXPECT_TRUE(reader.shrink());
    EXPECT_EQ(echo_sessions(port, 1000, 2), 1000);
    const auto t1 = clock_type::now();
    apilb.signal(SIGTERM);
    const auto code = apilb.wait(milliseconds(8000));
    const auto exit_took = std::chrono::duration_cast<milliseconds>(clock_type::now() - t1);
    std::cout << fmt::format("[ MEASURE ] SIGTERM with stderr stalled: exited after {} ms\n", exit_took.count());
    EXPECT_EQ(code, std::optional<int>(0));
    reader.read_available();
    expect_no_sanitizer_report(reader.text(), "apilb");
}

TEST(LogStall, AStartupErrorStillReachesStderr) {
    // A listener address another process holds: apilb logs why and exits 1.
    // The line goes through the queue; exit must not lose it.
    temp_dir dir;
    tcp_server holder("127.0.0.1", echo_handler());
    dir.write("apilb.yaml", single_pool_config(holder.port(), {"127.0.0.2:1"}, "round-robin", 1));
    process apilb({required_env("APILB_BIN"), "run", "--config", dir.file("apilb.yaml")}, dir.file("apilb.log"));
    EXPECT_EQ(apilb.wait(milliseconds(10000)), std::optional<int>(1));
    const std::string log = apilb.log();
    const auto at = log.find("critical listener front: ");
    EXPECT_NE(at, std::string::npos) << log;
    EXPECT_NE(log.find(fmt::format("127.0.0.1:{}", holder.port()), at), std::string::npos) << log;
}

}  // namespace
}  // namespace apilb::test
