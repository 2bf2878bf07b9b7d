// The upgrade asked for over the admin endpoint (`POST /api/v1/upgrade`,
// docs/upgrade.md "Trigger") and by `apilb upgrade`: only with the token,
// answered once the new process serves, refused while another runs.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <regex>
#include <thread>

#include "harness.hpp"
#include "upgrade_support.hpp"

namespace apilb::test {
namespace {

/// An UpgradeTest whose apilb has an admin endpoint guarded by a token file.
class AdminUpgradeTest : public UpgradeTest {
protected:
    std::uint16_t admin = free_port();

    AdminUpgradeTest() { dir.write("token", "s3cret-token\n"); }

    std::string admin_yaml() const {
        return config(
            fmt::format("timeouts: {{drain: 3s}}\nadmin:\n  address: \"127.0.0.1:{}\"\n  token_file: \"{}\"\n", admin,
                        dir.file("token")));
    }

    /// `curl -X POST` to the admin endpoint's `path`, with `headers`;
    /// the body, then the status on the last line.
    command_result curl_post(const std::string& path, std::vector<std::string> headers = {}) const {
        std::vector<std::string> argv{"/usr/bin/curl", "-sS", "--max-time", "80", "-X", "POST", "-w", "\n%{http_code}"};
        for (auto& h : headers) {
            argv.push_back("-H");
            argv.push_back(h);
        }
        argv.push_back(fmt::format("http://127.0.0.1:{}{}", admin, path));
        return run_command(argv, 90s);
    }
};

/// The status curl_post() printed last.
std::string status_of(const command_result& r) {
    const auto nl = r.output.rfind('\n');
    return nl == std::string::npos ? r.output : r.output.substr(nl + 1);
}

/// The number after "key": in a JSON body; 0 if none.
long json_number(const std::string& body, const std::string& key) {
    const std::regex re("\"" + key + R"(\":(\d+))");
    std::smatch m;
    return std::regex_search(body, m, re) ? std::stol(m[1]) : 0;
}

TEST_F(AdminUpgradeTest, PostUpgradeNeedsTheTokenAndHandsOverOnlyThen) {
    apilb_process old(dir, admin_yaml(), "127.0.0.1", port);
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    const pid_t old_pid = old.proc().pid();
    // An established session that must go on through the upgrade.
    client idle;
    idle.set_timeout(5s);
    ASSERT_EQ(idle.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(idle.send_all("before\n"));
    ASSERT_EQ(idle.recv_exact(7), "before\n");

    // No token, a wrong one, a GET: refused, and nothing starts.
    auto r = curl_post("/api/v1/upgrade?wait=1");
    EXPECT_EQ(status_of(r), "401") << r.output;
    r = curl_post("/api/v1/upgrade", {"Authorization: Bearer wrong"});
    EXPECT_EQ(status_of(r), "401") << r.output;
    r = run_command(
        {"/usr/bin/curl", "-sS", "-w", "\n%{http_code}", fmt::format("http://127.0.0.1:{}/api/v1/upgrade", admin)});
    EXPECT_EQ(status_of(r), "405") << r.output;
    r = curl_post("/api/v1/upgrade?wiat=1", {"Authorization: Bearer s3cret-token"});
    EXPECT_EQ(status_of(r), "400") << r.output;
    EXPECT_EQ(old.log().find("upgrade: started"), std::string::npos) << old.log();
    EXPECT_TRUE(old.proc().running());

    // An idle admin connection, open while the new binary starts: it must
    // end when the old process closes it, so the new one must hold no copy.
    client admin_idle;
    admin_idle.set_timeout(10s);
    ASSERT_EQ(admin_idle.connect("127.0.0.1", admin), 0);

    // With the token: answered once the new process serves.
    r = curl_post("/api/v1/upgrade?wait=1", {"Authorization: Bearer s3cret-token"});
    ASSERT_EQ(status_of(r), "200") << r.output << "\n" << old.log();
    const pid_t new_pid = static_cast<pid_t>(json_number(r.output, "new_pid"));
    end_at_exit guard{{new_pid}};
    EXPECT_EQ(json_number(r.output, "old_pid"), old_pid) << r.output;
    EXPECT_EQ(handed_to(old.log()), new_pid) << old.log();
    EXPECT_EQ(json_number(r.output, "sessions_handed_over"), 1) << r.output;
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    EXPECT_TRUE(alive(new_pid));
    ASSERT_TRUE(idle.send_all("after\n"));
    EXPECT_EQ(idle.recv_exact(6), "after\n");
    int end = -1;
    admin_idle.recv_until_eof(end);
    EXPECT_EQ(end, 0) << "the idle admin connection did not end (errno " << end << ")";
    // The admin endpoint moved with it: the new process answers.
    const auto st = http_exchange(admin, "GET", "/metrics");
    EXPECT_EQ(st.status, 200);
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

TEST_F(AdminUpgradeTest, CliUpgradePrintsBothPidsAndExitsZero) {
    apilb_process old(dir, admin_yaml(), "127.0.0.1", port);
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    const pid_t old_pid = old.proc().pid();
    steady_load load(port, 150, 20ms);
    ASSERT_TRUE(wait_until([&] { return load.done() >= 25; }, 20s));
    // As root on the node: the admin endpoint and the token from the config.
    const auto r = run_command(
        {required_env("APILB_BIN"), "upgrade", "--config", dir.file("apilb.yaml"), "--timeout", "60"}, 90s);
    ASSERT_EQ(r.exit_code, 0) << r.output << "\n" << old.log();
    const std::regex line(R"(upgraded: pid (\d+) -> pid (\d+); (\d+) session\(s\) handed over)");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.output, m, line)) << r.output;
    const pid_t new_pid = static_cast<pid_t>(std::stoi(m[2]));
    end_at_exit guard{{new_pid}};
    EXPECT_EQ(std::stoi(m[1]), old_pid);
    // The CLI hears the outcome from the admin endpoint; the old process's
    // log line may reach its file a moment later (the logger is async).
    EXPECT_TRUE(wait_until([&] { return handed_to(old.log()) == new_pid; }, 10s)) << old.log();
    load.join();
    EXPECT_EQ(load.failed(), 0) << load.last_error() << "\n" << old.log();
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    EXPECT_TRUE(alive(new_pid));
    end_by_pid(new_pid);
}

TEST_F(AdminUpgradeTest, SecondUpgradeIsRefusedAndAFailedOneExitsNonZero) {
    // A "new binary" that never speaks (test only).
    scoped_env binary("APILB_UPGRADE_BINARY", hanging_binary(dir).c_str());
    // 5 s: long enough for the second POST to come while the first runs.
    scoped_env deadline("APILB_UPGRADE_DEADLINE_MS", "5000");
    apilb_process old(dir, admin_yaml(), "127.0.0.1", port);
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    auto r = curl_post("/api/v1/upgrade", {"Authorization: Bearer s3cret-token"});
    ASSERT_EQ(status_of(r), "202") << r.output;
    EXPECT_GT(json_number(r.output, "new_pid"), 0) << r.output;
    r = curl_post("/api/v1/upgrade", {"Authorization: Bearer s3cret-token"});
    EXPECT_EQ(status_of(r), "409") << r.output;
    EXPECT_NE(r.output.find("is in progress"), std::string::npos) << r.output;
    ASSERT_TRUE(old.wait_for_log("upgrade failed:", 60s)) << old.log();
    // The CLI waits for the outcome and says it failed.
    const auto cli = run_command(
        {required_env("APILB_BIN"), "upgrade", "--config", dir.file("apilb.yaml"), "--timeout", "60"}, 90s);
    EXPECT_EQ(cli.exit_code, 1) << cli.output;
    EXPECT_NE(cli.output.find("upgrade failed: "), std::string::npos) << cli.output;
    EXPECT_NE(cli.output.find("still serving"), std::string::npos) << cli.output;
    EXPECT_TRUE(old.proc().running());
    client c;
    c.set_timeout(5s);
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(c.send_all("still\n"));
    EXPECT_EQ(c.recv_exact(6), "still\n");
    EXPECT_EQ(old.terminate(), 0);
}

// With a vrrp section keepalived and the track file belong to the running
// process: the POST is refused (409, with the reason), nothing is started,
// and apilb serves on. manage: false: no keepalived runs, none is needed.
TEST_F(AdminUpgradeTest, PostUpgradeWithAVrrpSectionMovesTheTrackFileAndTheNotifyFifo) {
    // No keepalived here (manage: false, docs/upgrade.md "With a vrrp
    // section"): the test writes keepalived's notify lines itself and reads
    // the track file. vip_upgrade_test does it with real keepalived.
    const std::string state = dir.file("state");
    const std::string yaml = admin_yaml() +
                             "vrrp:\n  interface: eth0\n  virtual_router_id: 51\n  vips: [198.18.0.100]\n"
                             "  state_dir: " +
                             state + "\n";
    apilb_process old(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for_port("127.0.0.1", admin));
    const std::string track = state + "/vrrp-fault", fifo = state + "/vrrp-notify.fifo";
    ASSERT_TRUE(wait_until([&] { return read_file(track) == "0\n"; }, 10s)) << old.log();
    // keepalived says BACKUP, with the FIFO held open as keepalived does.
    const int notify = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(notify, 0) << std::strerror(errno);
    auto say = [&](const std::string& line) {
        ASSERT_EQ(::write(notify, line.data(), line.size()), static_cast<ssize_t>(line.size()));
    };
    say("INSTANCE \"VI_APILB\" BACKUP 100\n");
    ASSERT_TRUE(wait_until([&] { return old.log().find("vrrp: role unknown -> BACKUP") != std::string::npos; }, 5s))
        << old.log();
    client held;
    held.set_timeout(5s);
    ASSERT_EQ(held.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(held.send_all("before\n"));
    ASSERT_EQ(held.recv_exact(7), "before\n");

    // The track file never leaves 0 (a 1 would move the VIP to the peer).
    std::atomic<bool> stop{false}, flapped{false};
    std::thread watch([&] {
        const auto until = std::chrono::steady_clock::now() + 60s;
        while (!stop && std::chrono::steady_clock::now() < until) {
            if (read_file(track) != "0\n") flapped = true;
            std::this_thread::sleep_for(1ms);
        }
    });
    const auto r = curl_post("/api/v1/upgrade?wait=1", {"Authorization: Bearer s3cret-token"});
    const pid_t new_pid = static_cast<pid_t>(json_number(r.output, "new_pid"));
    end_at_exit guard{{new_pid}};
    std::this_thread::sleep_for(200ms);
    stop = true;
    watch.join();
    ASSERT_EQ(status_of(r), "200") << r.output << "\n" << old.log();
    ASSERT_GT(new_pid, 0) << r.output;  // kill(0, ...) below would signal this test's group
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    EXPECT_FALSE(flapped) << "the track file left 0 during the upgrade\n" << old.log();
    EXPECT_NE(old.log().find("vrrp: took over the track file, the notify FIFO from the old process (role BACKUP)"),
              std::string::npos)
        << old.log();
    const std::string log = old.log();
    EXPECT_EQ(log.find("vrrp: not ready", log.find("upgrade: started")), std::string::npos) << log;
    // The new process reads the FIFO now, with the role it was handed.
    say("INSTANCE \"VI_APILB\" MASTER 100\n");
    EXPECT_TRUE(wait_until([&] { return old.log().find("vrrp: role BACKUP -> MASTER") != std::string::npos; }, 5s))
        << old.log();
    ::close(notify);
    EXPECT_TRUE(alive(new_pid));
    ASSERT_TRUE(held.send_all("after\n"));
    EXPECT_EQ(held.recv_exact(6), "after\n");
    // It owns the track file: stopping, it hands off (writes 1).
    ::kill(new_pid, SIGTERM);
    EXPECT_TRUE(wait_until([&] { return read_file(track) == "1\n"; }, 10s)) << old.log();
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb");
}

}  // namespace
}  // namespace apilb::test
