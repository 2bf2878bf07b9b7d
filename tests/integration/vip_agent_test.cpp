// apilb's side of the VIP against the real binary, without a second host:
// the keepalived.conf it renders passes `keepalived -t`; the track file
// follows backend health and the drain; the notify FIFO sets the role.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <thread>

#include "apilb/vip/child_lifeline.hpp"
#include "apilb/vip/vip_address.hpp"
#include "harness.hpp"
#include "netns.hpp"

namespace apilb::test {
namespace {

std::string vrrp_section(const temp_dir& dir, const std::string& interface, const std::string& extra = {}) {
    return "vrrp:\n"
           "  interface: " +
           interface +
           "\n"
           "  virtual_router_id: 51\n"
           "  priority: 150\n"
           "  unicast_src_ip: 198.18.0.11\n"
           "  peers: [198.18.0.12]\n"
           "  vips: [\"198.18.0.100/24\", \"2001:db8::100/64\"]\n"
           "  advert_interval: 100ms\n"
           "  state_dir: " +
           dir.file("state") + "\n" + extra;
}

std::string read_or_empty(const std::string& path) {
    return std::filesystem::exists(path) ? read_file(path) : std::string();
}

/// Polls `path` until it holds `content`; bounded.
bool wait_for_content(const std::string& path, const std::string& content, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (read_or_empty(path) == content) return true;
        std::this_thread::sleep_for(5ms);
    }
    return read_or_empty(path) == content;
}

TEST(VipKeepalivedCheck, RenderedConfigPassesKeepalivedCheck) {
    const std::string keepalived = find_program("keepalived");
    if (keepalived.empty()) GTEST_SKIP() << "keepalived is not installed (scripts/install-deps.sh installs it)";
    if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
        GTEST_SKIP() << "keepalived -t checks the interface, which lives in a network namespace here: " << why;
    }
    // keepalived checks that the interface exists (and refuses loopback):
    // give it an eth0 in a namespace of its own.
    netns_segment segment("apilb-kcheck-" + std::to_string(::getpid()));
    const std::string ns = segment.add_host("n1", {"198.18.0.11/24"});
    temp_dir dir;
    tcp_server backend("127.0.0.1", echo_handler());
    const auto cfg = single_pool_config(free_port(), {backend.address()}, "round-robin", 1, vrrp_section(dir, "eth0"));
    dir.write("apilb.yaml", cfg);
    auto render = run_command({required_env("APILB_BIN"), "keepalived-config", "--config", dir.file("apilb.yaml"), "-o",
                               dir.file("keepalived.conf")});
    ASSERT_EQ(render.exit_code, 0) << render.output;
    const std::string text = read_file(dir.file("keepalived.conf"));
    EXPECT_NE(
        text.find("process \"" + required_env("APILB_BIN") + "\" run --config \"" + dir.file("apilb.yaml") + "\""),
        std::string::npos)
        << text;

    const std::string ip = find_program("ip");
    auto check = run_command({ip, "netns", "exec", ns, keepalived, "-t", "-f", dir.file("keepalived.conf")});
    EXPECT_EQ(check.exit_code, 0) << text << "\n" << check.output;

    // The check can fail: an interface that does not exist is refused.
    dir.write("bad.yaml",
              single_pool_config(free_port(), {backend.address()}, "round-robin", 1, vrrp_section(dir, "nosuchif9")));
    render = run_command(
        {required_env("APILB_BIN"), "keepalived-config", "--config", dir.file("bad.yaml"), "-o", dir.file("bad.conf")});
    ASSERT_EQ(render.exit_code, 0) << render.output;
    check = run_command({ip, "netns", "exec", ns, keepalived, "-t", "-f", dir.file("bad.conf")});
    EXPECT_NE(check.exit_code, 0) << check.output;
}

TEST(VipKeepalivedCheck, KeepalivedConfigNeedsAVrrpSection) {
    temp_dir dir;
    dir.write("apilb.yaml", single_pool_config(free_port(), {"127.0.0.1:1"}, "round-robin", 1));
    auto r = run_command({required_env("APILB_BIN"), "keepalived-config", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("there is no vrrp section"), std::string::npos) << r.output;
    dir.write("bad.yaml", single_pool_config(free_port(), {"127.0.0.1:1"}, "round-robin", 1,
                                             "vrrp:\n  interface: eth0\n  virtual_router_id: 51\n  priority: 300\n"
                                             "  vips: [198.18.0.100]\n"));
    r = run_command({required_env("APILB_BIN"), "keepalived-config", "--config", dir.file("bad.yaml")});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("vrrp.priority: 300 is out of range; expected 1..254"), std::string::npos) << r.output;
}

TEST(VipTrackFile, FollowsBackendHealthAndTheDrain) {
    temp_dir dir;
    auto backend = std::make_unique<tcp_server>("127.0.0.2", echo_handler());
    const std::uint16_t port = free_port();
    const std::uint16_t admin = free_port();
    const std::string cfg =
        "workers: 1\n"
        "admin: {address: \"127.0.0.1:" +
        std::to_string(admin) +
        "\"}\n"
        "listeners:\n  - {name: front, address: \"127.0.0.1:" +
        std::to_string(port) +
        "\", pool: p}\n"
        "pools:\n  - name: p\n"
        "    backends: [{name: b0, address: \"" +
        backend->address() +
        "\"}]\n"
        "    health: {type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1}\n"
        "log: {level: debug}\n" +
        vrrp_section(dir, "eth0", "  handoff_timeout: 300ms\n");
    apilb_process apilb(dir, cfg, "127.0.0.1", port);
    const std::string track = dir.file("state/vrrp-fault");

    ASSERT_TRUE(wait_for_content(track, "0\n", 3s)) << read_or_empty(track) << apilb.log();
    // Every backend of the pool down: FAULT within a probe round or two.
    const auto t0 = std::chrono::steady_clock::now();
    backend->stop();
    ASSERT_TRUE(wait_for_content(track, "1\n", 3s)) << apilb.log();
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    EXPECT_LT(took, 1000ms) << "the track file followed health only after " << took.count() << "ms";
    EXPECT_TRUE(apilb.wait_for_log("not ready (pool p has no healthy backend)")) << apilb.log();

    // The notify FIFO keepalived writes to sets the role apilb reports.
    {
        const int fd = ::open(dir.file("state/vrrp-notify.fifo").c_str(), O_WRONLY | O_NONBLOCK);
        ASSERT_GE(fd, 0);
        const std::string lines =
            "INSTANCE \"VI_APILB\" BACKUP 150\nGROUP \"G\" MASTER 0\n"
            "INSTANCE \"VI_APILB\" MASTER 150\n";
        ASSERT_EQ(::write(fd, lines.data(), lines.size()), static_cast<ssize_t>(lines.size()));
        ::close(fd);
    }
    EXPECT_TRUE(apilb.wait_for_log("vrrp: role BACKUP -> MASTER")) << apilb.log();
    // ... and the metrics show it.
    const auto metrics = run_command(
        {"/usr/bin/curl", "-s", "--max-time", "5", "http://127.0.0.1:" + std::to_string(admin) + "/metrics"});
    EXPECT_NE(metrics.output.find("apilb_vrrp_role{role=\"MASTER\"} 1"), std::string::npos) << metrics.output;
    EXPECT_NE(metrics.output.find("apilb_vrrp_role{role=\"BACKUP\"} 0"), std::string::npos) << metrics.output;

    // SIGTERM: FAULT at once. keepalived said MASTER but the VIP is not on
    // this host (no keepalived here), so it is already gone: no wait.
    ASSERT_EQ(apilb.terminate(), 0) << apilb.log();
    EXPECT_EQ(read_or_empty(track), "1\n");
    EXPECT_NE(apilb.log().find("vrrp: the VIPs left this node after"), std::string::npos) << apilb.log();
}

TEST(VipStateFiles, AFifoWhereTheTrackFileIsWrittenDoesNotBlockTheStart) {
    temp_dir dir;
    tcp_server backend("127.0.0.2", echo_handler());
    const std::uint16_t port = free_port();
    std::filesystem::create_directories(dir.file("state"));
    // The track file is written as vrrp-fault.tmp, then renamed: a FIFO
    // there with no reader made the open wait forever on the control thread.
    ASSERT_EQ(::mkfifo(dir.file("state/vrrp-fault.tmp").c_str(), 0600), 0);
    apilb_process apilb(dir, single_pool_config(port, {backend.address()}, "round-robin", 1, vrrp_section(dir, "eth0")),
                        "127.0.0.1", port);
    EXPECT_TRUE(apilb.wait_for_log("vrrp: cannot write the track file")) << apilb.log();
    client c;
    c.set_timeout(5s);
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(c.send_all("ping"));
    EXPECT_EQ(c.recv_exact(4), "ping") << "apilb serves while the track file cannot be written";
    // Retried every 10 ms, said at most every 10 s: a second of it is one line, not a hundred.
    std::this_thread::sleep_for(1s);
    const std::string log = apilb.log();
    std::size_t said = 0;
    for (auto at = log.find("cannot write the track file"); at != std::string::npos;
         at = log.find("cannot write the track file", at + 1)) {
        ++said;
    }
    EXPECT_EQ(said, 1u) << log;
}

TEST(VipStateFiles, ANotifyFifoThatIsARegularFileIsRefusedAtStart) {
    temp_dir dir;
    tcp_server backend("127.0.0.2", echo_handler());
    const std::uint16_t port = free_port();
    std::filesystem::create_directories(dir.file("state"));
    dir.write("state/vrrp-notify.fifo", "");
    dir.write("apilb.yaml", single_pool_config(port, {backend.address()}, "round-robin", 1, vrrp_section(dir, "eth0")));
    const auto r = run_command({required_env("APILB_BIN"), "run", "--config", dir.file("apilb.yaml")}, 10s);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("the notify FIFO " + dir.file("state/vrrp-notify.fifo") + " exists and is not a FIFO"),
              std::string::npos)
        << r.output;
}

TEST(VipAddressRemoval, RemovesTheVipAKeepalivedCrashLeftBehind) {
    if (auto why = netns_segment::unavailable_reason(); !why.empty()) GTEST_SKIP() << "needs a namespace: " << why;
    netns_segment segment("apilb-viprm-" + std::to_string(::getpid()));
    segment.add_host("n1", {"198.18.0.11/24"});
    segment.ip("n1", {"addr", "add", "198.18.0.100/24", "dev", "eth0"});
    segment.ip("n1", {"addr", "add", "2001:db8::100/64", "dev", "eth0", "nodad"});
    auto addresses = [&] {
        return run_command({find_program("ip"), "-n", segment.ns("n1"), "addr", "show", "dev", "eth0"}).output;
    };
    ASSERT_NE(addresses().find("198.18.0.100/24"), std::string::npos);
    std::error_code v4, v6, again;
    in_netns(segment.ns("n1"), [&] {
        v4 = remove_vip("eth0", vrrp_vip{.ip = "198.18.0.100", .prefix = 24, .is_v6 = false});
        v6 = remove_vip("eth0", vrrp_vip{.ip = "2001:db8::100", .prefix = 64, .is_v6 = true});
        again = remove_vip("eth0", vrrp_vip{.ip = "198.18.0.100", .prefix = 24, .is_v6 = false});
    });
    EXPECT_FALSE(v4) << v4.message();
    EXPECT_FALSE(v6) << v6.message();
    EXPECT_FALSE(again) << "an address that is already gone is not an error: " << again.message();
    const std::string left = addresses();
    EXPECT_EQ(left.find("198.18.0.100"), std::string::npos) << left;
    EXPECT_EQ(left.find("2001:db8::100"), std::string::npos) << left;
    EXPECT_NE(left.find("198.18.0.11/24"), std::string::npos) << left;
}

/// apilb in a namespace whose eth0 holds the VIP and no keepalived takes
/// it away: the hand-off waits for a peer that never comes.
TEST(VipHandoff, WaitsForThePeerThenDrainsAndASecondSignalCutsItShort) {
    if (auto why = netns_segment::unavailable_reason(); !why.empty()) GTEST_SKIP() << "needs a namespace: " << why;
    netns_segment segment("apilb-viphand-" + std::to_string(::getpid()));
    segment.add_host("n1", {"198.18.0.11/24", "198.18.0.100/24"});
    temp_dir dir;
    auto start = [&](const std::string& handoff) {
        dir.write("apilb.yaml",
                  "workers: 1\n"
                  "listeners:\n  - {name: api, address: \"198.18.0.100:6443\", pool: p}\n"
                  "pools:\n  - name: p\n    backends: [{name: b0, address: \"198.18.0.99:6443\"}]\n" +
                      vrrp_section(dir, "eth0", "  handoff_timeout: " + handoff + "\n"));
        auto p = std::make_unique<process>(
            std::vector<std::string>{find_program("ip"), "netns", "exec", segment.ns("n1"), required_env("APILB_BIN"),
                                     "run", "--config", dir.file("apilb.yaml")},
            dir.file("apilb-" + handoff + ".log"));
        EXPECT_TRUE(wait_for_content(dir.file("state/vrrp-fault"), "0\n", 5s)) << p->log();
        return p;
    };

    auto apilb = start("300ms");
    auto t0 = std::chrono::steady_clock::now();
    apilb->signal(SIGTERM);
    ASSERT_EQ(apilb->wait(10s), 0) << apilb->log();
    auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(took, 300ms);
    EXPECT_NE(apilb->log().find("vrrp: no peer took the VIPs within 300ms; draining anyway"), std::string::npos)
        << apilb->log();
    EXPECT_EQ(read_file(dir.file("state/vrrp-fault")), "1\n");
    expect_no_sanitizer_report(apilb->log(), "apilb");

    apilb = start("30s");
    apilb->signal(SIGTERM);
    ASSERT_TRUE(wait_for_content(dir.file("state/vrrp-fault"), "1\n", 5s));
    std::this_thread::sleep_for(200ms);
    t0 = std::chrono::steady_clock::now();
    apilb->signal(SIGTERM);
    ASSERT_EQ(apilb->wait(10s), 0) << apilb->log();
    took = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(took, 5s);
    EXPECT_NE(apilb->log().find("vrrp: hand-off cut short by a second signal"), std::string::npos) << apilb->log();
    expect_no_sanitizer_report(apilb->log(), "apilb");
}

/// A keeper as a supervisor holds it: the pid, a pidfd, whose child it is.
struct test_keeper {
    pid_t pid = -1;
    int pidfd = -1;
    bool adopted = false;
    ~test_keeper() {
        if (pidfd >= 0) ::close(pidfd);
    }
};

test_keeper spawn_test_keeper(const std::vector<std::string>& argv, const lifeline& line) {
    test_keeper k;
    k.pid = spawn_keeper(argv, line, {.out_path = {}, .death_signal = SIGTERM});
    k.pidfd = open_pidfd(k.pid);
    return k;
}

/// Whether `k` has ended, polled for up to `timeout`.
bool keeper_ends_within(const test_keeper& k, std::chrono::milliseconds timeout, int& status) {
    return wait_until([&] { return keeper_ended(k.pid, k.pidfd, k.adopted, status); }, timeout, 5ms);
}

TEST(VipKeeper, TheDaemonLivesWhileAnyCopyOfTheLifelineIsHeld) {
    lifeline line = lifeline::make();
    test_keeper own = spawn_test_keeper({"/bin/sleep", "60"}, line);
    ASSERT_GT(own.pid, 0);
    ASSERT_GE(own.pidfd, 0);
    // A second holder (what an upgrade's new process gets): closing ours
    // ends nothing while it holds its copy.
    lifeline other(::fcntl(line.read_fd(), F_DUPFD_CLOEXEC, 3), ::fcntl(line.write_fd(), F_DUPFD_CLOEXEC, 3));
    ASSERT_TRUE(other.valid());
    test_keeper adopted{.pid = own.pid, .pidfd = ::fcntl(own.pidfd, F_DUPFD_CLOEXEC, 3), .adopted = true};
    line.reset();
    int status = 0;
    EXPECT_FALSE(keeper_ends_within(adopted, 500ms, status)) << "the daemon ended with a lifeline still held";
    // The last copy gone (its apilb died): the keeper ends the daemon with
    // SIGTERM and exits with 128 + 15.
    other.reset();
    ASSERT_TRUE(keeper_ends_within(adopted, 5s, status));
    EXPECT_EQ(status, -1) << "not this holder's child: no status";
    ASSERT_TRUE(keeper_ends_within(own, 5s, status));
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
    EXPECT_EQ(describe_keeper_status(status), "was killed by signal Terminated");
}

TEST(VipKeeper, SignalsThroughThePidfdReachTheDaemonAndItsStatusComesBack) {
    lifeline line = lifeline::make();
    test_keeper k = spawn_test_keeper(
        {"/bin/sh", "-c", "trap 'exit 5' HUP; trap 'exit 7' TERM; while :; do sleep 0.05; done"}, line);
    ASSERT_GT(k.pid, 0);
    std::this_thread::sleep_for(200ms);  // the traps set
    // SIGHUP (a reload) goes on to the daemon; SIGTERM ends it.
    ASSERT_EQ(pidfd_signal(k.pidfd, SIGHUP), 0);
    int status = 0;
    ASSERT_TRUE(keeper_ends_within(k, 5s, status));
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 5) << "the keeper did not pass SIGHUP on";
    test_keeper t = spawn_test_keeper({"/bin/sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.05; done"}, line);
    std::this_thread::sleep_for(200ms);
    ASSERT_EQ(pidfd_signal(t.pidfd, SIGTERM), 0);
    ASSERT_TRUE(keeper_ends_within(t, 5s, status));
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 7);
    test_keeper missing = spawn_test_keeper({"/nonexistent/daemon"}, line);
    ASSERT_TRUE(keeper_ends_within(missing, 5s, status));
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 127);
}

}  // namespace
}  // namespace apilb::test
