// Hitless reload (SIGHUP) of the real binary: many reloads under streaming
// load lose no byte and refuse no client; a bad file changes nothing; kept
// listeners keep accepting, added ones accept, removed ones refuse while
// their sessions go on; removed backends' sessions end after
// timeouts.reload_drain; kept backends keep their health; drain: true sends
// no new sessions to a backend.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>

#include "harness.hpp"

namespace apilb::test {
namespace {

using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// Echo after a 3-byte tag ("b0\n") naming the backend, so a client knows
/// where apilb sent it.
tcp_server::handler tagged_echo(std::string tag) {
    return [tag = std::move(tag), echo = echo_handler()](int& fd) {
        const std::string line = tag + "\n";
        if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) return;
        echo(fd);
    };
}

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

enum class reload_outcome { done, failed, timed_out };

/// Writes `yaml` as apilb's config, sends SIGHUP and waits for the outcome.
/// `took` is the time from the signal to the "reload done" line being seen.
reload_outcome reload(apilb_process& apilb, const temp_dir& dir, const std::string& yaml,
                      milliseconds* took = nullptr) {
    const std::string before = apilb.log();
    const auto done = count(before, "reload done in");
    const auto failed = count(before, "reload failed");
    dir.write("apilb.yaml", yaml);
    const auto t0 = steady::now();
    apilb.proc().signal(SIGHUP);
    const auto deadline = t0 + 10s;
    while (steady::now() < deadline) {
        const std::string log = apilb.log();
        if (count(log, "reload done in") > done) {
            if (took) *took = std::chrono::duration_cast<milliseconds>(steady::now() - t0);
            return reload_outcome::done;
        }
        if (count(log, "reload failed") > failed) return reload_outcome::failed;
        std::this_thread::sleep_for(1ms);
    }
    return reload_outcome::timed_out;
}

/// Connects through apilb and returns the backend's tag ("" on failure).
std::string open_tagged(client& c, std::uint16_t port, milliseconds timeout = 5s) {
    if (c.connect("127.0.0.1", port, timeout) != 0) return "";
    c.set_timeout(timeout);
    std::string tag = c.recv_exact(3);
    return tag.size() == 3 ? tag.substr(0, 2) : "";
}

/// The inodes of the listening sockets `pid` holds on `port` (IPv4), from
/// /proc: a listener that kept its sockets across a reload keeps them.
std::set<std::string> listen_inodes(pid_t pid, std::uint16_t port) {
    std::set<std::string> held;
    const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
    for (int fd = 0; fd < 4096; ++fd) {
        char target[128] = {};
        const std::string link = fd_dir + "/" + std::to_string(fd);
        const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
        if (n > 0 && std::string(target).rfind("socket:[", 0) == 0) {
            held.insert(std::string(target + 8, static_cast<std::size_t>(n) - 9));
        }
    }
    std::set<std::string> out;
    std::istringstream table(read_file("/proc/net/tcp"));
    std::string line;
    std::getline(table, line);  // header
    const std::string want = fmt::format(":{:04X}", port);
    while (std::getline(table, line)) {
        std::istringstream f(line);
        std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
        f >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode;
        if (st == "0A" && local.size() > want.size() && local.ends_with(want) && held.count(inode)) out.insert(inode);
    }
    return out;
}

bool echoes(client& c, const std::string& msg) { return c.send_all(msg) && c.recv_exact(msg.size()) == msg; }

struct backend_spec {
    std::string name;
    std::string address;
    unsigned weight = 1;
    bool drain = false;
};

std::string listener_line(const std::string& name, std::uint16_t port) {
    return fmt::format("  - {{name: {}, address: \"127.0.0.1:{}\", pool: p}}\n", name, port);
}

std::string config_with(const std::vector<std::pair<std::string, std::uint16_t>>& listeners,
                        const std::vector<backend_spec>& backends, const std::string& balance,
                        const std::string& pool_extra = {}, const std::string& top_extra = {},
                        const std::string& level = "debug") {
    std::string s = "workers: 2\nlisteners:\n";
    for (const auto& [name, port] : listeners) s += listener_line(name, port);
    s += "pools:\n  - name: p\n    balance: " + balance + "\n    backends:\n";
    for (const auto& b : backends) {
        s += fmt::format("      - {{name: {}, address: \"{}\", weight: {}{}}}\n", b.name, b.address, b.weight,
                         b.drain ? ", drain: true" : "");
    }
    s += pool_extra;
    s += "log: {level: " + level + "}\n" + top_extra;
    return s;
}

/// Streams pseudo-random chunks through apilb and checks each echo, until
/// told to stop; records the first failure.
class streamer {
public:
    streamer(std::uint16_t port, std::uint32_t seed) : port_(port), seed_(seed) {
        thread_ = std::thread([this] { run(); });
    }
    ~streamer() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    std::uint64_t bytes() const { return bytes_; }
    std::string failure() const {
        std::lock_guard lock(mu_);
        return failure_;
    }
    bool connected() const { return connected_; }

private:
    void fail(std::string why) {
        std::lock_guard lock(mu_);
        if (failure_.empty()) failure_ = std::move(why);
    }
    void run() {
        client c;
        if (open_tagged(c, port_).empty()) return fail("connect or tag failed");
        connected_ = true;
        // Bounded: at most 20000 round trips or until stopped.
        for (std::uint32_t i = 0; i < 20000 && !stop_; ++i) {
            const std::string chunk = random_bytes(8192 + (i % 7) * 1000, seed_ + i);
            if (!c.send_all(chunk)) return fail(fmt::format("send failed at round {}: {}", i, std::strerror(errno)));
            const std::string back = c.recv_exact(chunk.size());
            if (back.size() != chunk.size() || fnv1a(back.data(), back.size()) != fnv1a(chunk.data(), chunk.size())) {
                return fail(
                    fmt::format("round {}: sent {}B, got {}B back, checksums differ", i, chunk.size(), back.size()));
            }
            bytes_ += 2 * chunk.size();
            // Steady traffic, not a benchmark: the machine is shared.
            std::this_thread::sleep_for(5ms);
        }
        c.shutdown_write();
        int end = -1;
        if (!c.recv_until_eof(end).empty() || end != 0) fail("no clean end after half-close");
    }

    std::uint16_t port_;
    std::uint32_t seed_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> connected_{false};
    std::atomic<std::uint64_t> bytes_{0};
    mutable std::mutex mu_;
    std::string failure_;
    std::thread thread_;
};

TEST(Reload, ManyReloadsUnderStreamingLoadLoseNothing) {
    tcp_server b0("127.0.0.2", tagged_echo("b0"));
    tcp_server b1("127.0.0.3", tagged_echo("b1"));
    tcp_server b2("127.0.0.4", tagged_echo("b2"));
    temp_dir dir;
    const auto port = free_port();
    const auto side = free_port();
    // A and B differ in weights, a new listener, the balance and a timeout.
    const std::string a = config_with({{"front", port}},
                                      {{"b0", b0.address()}, {"b1", b1.address()}, {"b2", b2.address()}}, "round-robin",
                                      "", "", "info");
    const std::string b = config_with({{"front", port}, {"side", side}},
                                      {{"b0", b0.address(), 3}, {"b1", b1.address()}, {"b2", b2.address(), 2}},
                                      "least-connections", "", "timeouts: {connect: 3s}\n", "info");
    apilb_process apilb(dir, a, "127.0.0.1", port);

    std::vector<std::unique_ptr<streamer>> streams;
    for (std::uint32_t i = 0; i < 20; ++i) streams.push_back(std::make_unique<streamer>(port, 1000 * i));

    // New clients all the time, each a short echo; every one must succeed.
    std::atomic<bool> stop{false};
    std::atomic<int> opened{0};
    std::mutex mu;
    std::vector<std::string> failures;
    std::thread churn([&] {
        for (int i = 0; i < 100000 && !stop; ++i) {
            client c;
            std::string why;
            if (open_tagged(c, port).empty()) {
                why = fmt::format("client {}: connect or tag failed: {}", i, std::strerror(errno));
            } else if (!echoes(c, fmt::format("hello {}", i))) {
                why = fmt::format("client {}: echo failed", i);
            }
            if (!why.empty()) {
                std::lock_guard lock(mu);
                failures.push_back(why);
            }
            ++opened;
            std::this_thread::sleep_for(2ms);
        }
    });

    const auto front_sockets = listen_inodes(apilb.proc().pid(), port);
    EXPECT_EQ(front_sockets.size(), 2u);
    std::vector<milliseconds> times;
    for (int i = 0; i < 25; ++i) {
        milliseconds took{};
        ASSERT_EQ(reload(apilb, dir, i % 2 == 0 ? b : a, &took), reload_outcome::done) << apilb.log();
        times.push_back(took);
        if (i % 2 == 0) {
            // B is in force: its new listener accepts.
            client c;
            EXPECT_FALSE(open_tagged(c, side).empty()) << "listener side after reload " << i;
        }
        std::this_thread::sleep_for(100ms);
    }
    EXPECT_EQ(listen_inodes(apilb.proc().pid(), port), front_sockets) << "front was never re-bound";
    std::this_thread::sleep_for(300ms);
    stop = true;
    churn.join();
    std::uint64_t total = 0;
    for (auto& s : streams) {
        s->stop();
        EXPECT_TRUE(s->connected());
        EXPECT_EQ(s->failure(), "");
        total += s->bytes();
    }
    {
        std::lock_guard lock(mu);
        EXPECT_TRUE(failures.empty()) << failures.size() << " client(s) failed, first: " << failures.front();
    }
    EXPECT_GT(opened.load(), 100) << "new clients kept coming during the reloads";
    EXPECT_GT(total, std::uint64_t{20} * 1024 * 1024);
    std::sort(times.begin(), times.end());
    std::cout << "[ reload ] 25 reloads: SIGHUP to \"reload done\" seen: median " << times[times.size() / 2].count()
              << "ms, max " << times.back().count() << "ms; " << opened.load() << " new clients, " << (total >> 20)
              << " MiB streamed\n";
    const std::string log = apilb.log();
    EXPECT_EQ(count(log, "reload: config "), 25u);
    EXPECT_EQ(count(log, "reload failed"), 0u);
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
    EXPECT_TRUE(apilb.wait_for_log("25 reload(s), 0 failed reload(s)")) << apilb.log();
}

TEST(Reload, InvalidConfigIsRejectedWithEveryErrorAndTheOldOneServes) {
    tcp_server b0("127.0.0.2", tagged_echo("b0"));
    tcp_server b1("127.0.0.3", tagged_echo("b1"));
    temp_dir dir;
    const auto port = free_port();
    const std::string good = config_with({{"front", port}}, {{"b0", b0.address()}}, "round-robin");
    apilb_process apilb(dir, good, "127.0.0.1", port);
    client held;
    ASSERT_EQ(open_tagged(held, port), "b0");

    // Two errors: an out-of-range weight (line 9) and an unknown key (line 11).
    std::string bad = config_with({{"front", port}}, {{"b0", b0.address()}, {"b1", b1.address(), 999}}, "round-robin");
    bad += "bogus: 1\n";
    ASSERT_EQ(reload(apilb, dir, bad), reload_outcome::failed) << apilb.log();
    const std::string log = apilb.log();
    EXPECT_NE(log.find("reload: error: " + dir.file("apilb.yaml") + ":9:"), std::string::npos) << log;
    EXPECT_NE(log.find("pools[0].backends[1].weight"), std::string::npos) << log;
    EXPECT_NE(log.find(dir.file("apilb.yaml") + ":11:1: bogus: unknown key"), std::string::npos) << log;
    EXPECT_NE(log.find("reload failed: 2 error(s) in the configuration; keeping the running configuration"),
              std::string::npos)
        << log;

    // The old config serves: the open session and new ones, all on b0.
    EXPECT_TRUE(echoes(held, "still here"));
    for (int i = 0; i < 6; ++i) {
        client c;
        EXPECT_EQ(open_tagged(c, port), "b0");
    }
    EXPECT_EQ(b1.accepted(), 0);

    // A bind failure fails the whole reload too: b1 is not added either.
    const int blocker = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = 0;
    ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ASSERT_EQ(::bind(blocker, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    ASSERT_EQ(::listen(blocker, 1), 0);
    socklen_t len = sizeof sa;
    ::getsockname(blocker, reinterpret_cast<sockaddr*>(&sa), &len);
    const auto taken = ntohs(sa.sin_port);
    ASSERT_EQ(reload(apilb, dir,
                     config_with({{"front", port}, {"taken", taken}}, {{"b0", b0.address()}, {"b1", b1.address()}},
                                 "round-robin")),
              reload_outcome::failed);
    ::close(blocker);
    EXPECT_TRUE(apilb.wait_for_log(
        fmt::format("reload failed: listener taken: 127.0.0.1:{} is taken: pid {}", taken, ::getpid())))
        << apilb.log();
    for (int i = 0; i < 4; ++i) {
        client c;
        EXPECT_EQ(open_tagged(c, port), "b0");
    }
    EXPECT_EQ(b1.accepted(), 0);

    // Fixed: the next SIGHUP applies it, all but the restart-only worker count.
    std::string fixed = config_with({{"front", port}}, {{"b0", b0.address()}, {"b1", b1.address()}}, "round-robin");
    fixed.replace(fixed.find("workers: 2"), 10, "workers: 3");
    ASSERT_EQ(reload(apilb, dir, fixed), reload_outcome::done);
    EXPECT_TRUE(apilb.wait_for_log("reload: workers 2->3 changed: applies only when apilb is restarted"))
        << apilb.log();
    std::set<std::string> seen;
    for (int i = 0; i < 4; ++i) {
        client c;
        seen.insert(open_tagged(c, port));
    }
    EXPECT_EQ(seen, (std::set<std::string>{"b0", "b1"}));
    EXPECT_TRUE(echoes(held, "through it all"));
    held.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
    EXPECT_TRUE(apilb.wait_for_log("1 reload(s), 2 failed reload(s)")) << apilb.log();
}

TEST(Reload, AddedListenerAcceptsRemovedOneRefusesItsSessionsContinue) {
    tcp_server b0("127.0.0.2", tagged_echo("b0"));
    temp_dir dir;
    const auto front = free_port();
    const auto old_port = free_port();
    const auto new_port = free_port();
    apilb_process apilb(dir, config_with({{"front", front}, {"old", old_port}}, {{"b0", b0.address()}}, "round-robin"),
                        "127.0.0.1", front);
    client on_old;
    ASSERT_EQ(open_tagged(on_old, old_port), "b0");
    {
        client c;
        EXPECT_NE(c.connect("127.0.0.1", new_port, 1s), 0) << "not yet configured";
    }
    milliseconds took{};
    ASSERT_EQ(reload(apilb, dir,
                     config_with({{"front", front}, {"new", new_port}}, {{"b0", b0.address()}}, "round-robin"), &took),
              reload_outcome::done)
        << apilb.log();
    const auto t0 = steady::now();
    client on_new;
    EXPECT_EQ(open_tagged(on_new, new_port), "b0");
    std::cout << "[ reload ] SIGHUP to \"reload done\": " << took.count() << "ms; new listener served a client "
              << std::chrono::duration_cast<milliseconds>(steady::now() - t0).count() << "ms after that\n";
    EXPECT_TRUE(echoes(on_new, "new"));
    // The removed listener refuses new clients...
    for (int i = 0; i < 3; ++i) {
        client c;
        EXPECT_EQ(c.connect("127.0.0.1", old_port, 1s), ECONNREFUSED);
    }
    // ...while the session it accepted goes on, and the kept one still accepts.
    EXPECT_TRUE(echoes(on_old, "old session still relays"));
    client on_front;
    EXPECT_EQ(open_tagged(on_front, front), "b0");
    EXPECT_TRUE(apilb.wait_for_log("listeners added [new@127.0.0.1:" + std::to_string(new_port) +
                                   "] removed [old@127.0.0.1:" + std::to_string(old_port) + "]"))
        << apilb.log();
    on_old.close();
    on_new.close();
    on_front.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST(Reload, RemovedBackendsSessionsCloseAfterReloadDrainOthersUntouched) {
    tcp_server b0("127.0.0.2", tagged_echo("b0"));
    tcp_server b1("127.0.0.3", tagged_echo("b1"));
    temp_dir dir;
    const auto port = free_port();
    const std::string top = "timeouts: {reload_drain: 1500ms}\n";
    apilb_process apilb(
        dir, config_with({{"front", port}}, {{"b0", b0.address()}, {"b1", b1.address()}}, "round-robin", "", top),
        "127.0.0.1", port);
    std::vector<client> on0, on1;
    // Each worker balances on its own: open until both backends hold some.
    for (int i = 0; i < 20 && (on0.size() < 3 || on1.size() < 3); ++i) {
        client c;
        const auto tag = open_tagged(c, port);
        ASSERT_FALSE(tag.empty());
        (tag == "b0" ? on0 : on1).push_back(std::move(c));
    }
    ASSERT_GE(on0.size(), 3u);
    ASSERT_GE(on1.size(), 3u);
    const std::size_t removed_sessions = on1.size();
    ASSERT_EQ(reload(apilb, dir, config_with({{"front", port}}, {{"b0", b0.address()}}, "round-robin", "", top)),
              reload_outcome::done);
    const auto t0 = steady::now();
    // During the drain the removed backend's sessions go on; new ones go to b0.
    for (auto& c : on1) EXPECT_TRUE(echoes(c, "draining"));
    {
        client c;
        EXPECT_EQ(open_tagged(c, port), "b0");
    }
    // Then they are closed, about reload_drain after the reload.
    std::vector<milliseconds> closed_after;
    for (auto& c : on1) {
        c.set_timeout(5s);
        int end = -1;
        c.recv_until_eof(end);
        closed_after.push_back(std::chrono::duration_cast<milliseconds>(steady::now() - t0));
    }
    for (auto t : closed_after) {
        EXPECT_GE(t, 1200ms);
        EXPECT_LE(t, 3000ms);
    }
    std::cout << "[ reload ] sessions of the removed backend closed " << closed_after.front().count() << ".."
              << closed_after.back().count() << "ms after the reload (reload_drain 1500ms)\n";
    for (auto& c : on0) EXPECT_TRUE(echoes(c, "untouched"));
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("1 removed backend(s) with {} open session(s)", removed_sessions)))
        << apilb.log();
    on0.clear();
    on1.clear();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("{} closed because a reload removed their backend", removed_sessions)))
        << apilb.log();
}

TEST(Reload, ListenerMovedToAnotherPoolKeepsItsSocket) {
    tcp_server b0("127.0.0.2", tagged_echo("b0"));
    tcp_server q0("127.0.0.5", tagged_echo("q0"));
    temp_dir dir;
    const auto port = free_port();
    auto cfg = [&](const std::string& pool) {
        return fmt::format(
            "workers: 2\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: {}}}\n"
            "pools:\n"
            "  - {{name: p, backends: [{{name: b0, address: \"{}\"}}]}}\n"
            "  - {{name: q, backends: [{{name: q0, address: \"{}\"}}]}}\n",
            port, pool, b0.address(), q0.address());
    };
    apilb_process apilb(dir, cfg("p"), "127.0.0.1", port);
    client before;
    ASSERT_EQ(open_tagged(before, port), "b0");
    const auto sockets = listen_inodes(apilb.proc().pid(), port);
    EXPECT_EQ(sockets.size(), 2u) << "one SO_REUSEPORT socket per worker";
    ASSERT_EQ(reload(apilb, dir, cfg("q")), reload_outcome::done) << apilb.log();
    EXPECT_EQ(listen_inodes(apilb.proc().pid(), port), sockets) << "the listener's sockets must be the same ones";
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("listeners changed [front@127.0.0.1:{} pool p->q]", port)))
        << apilb.log();
    for (int i = 0; i < 4; ++i) {
        client c;
        EXPECT_EQ(open_tagged(c, port), "q0");
    }
    EXPECT_TRUE(echoes(before, "still on p"));
    before.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

/// A listening socket whose accept queue is full: connects to it hang (the
/// kernel drops the SYNs), as to a host that is gone.
class full_listener {
public:
    explicit full_listener(const std::string& ip) {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd_, 0) != 0) return;
        socklen_t len = sizeof sa;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
        address_ = ip + ":" + std::to_string(ntohs(sa.sin_port));
        for (int i = 0; i < 4; ++i) {
            fillers_.emplace_back();
            fillers_.back().connect(ip, ntohs(sa.sin_port), 300ms);
        }
    }
    ~full_listener() { ::close(fd_); }
    const std::string& address() const { return address_; }

private:
    int fd_ = -1;
    std::string address_;
    std::vector<client> fillers_;
};

TEST(Reload, KeptBackendKeepsItsHealthNoFlapToInitial) {
    tcp_server b0("127.0.0.2", tagged_echo("b0"));
    full_listener dead("127.0.0.3");
    ASSERT_FALSE(dead.address().empty());
    {
        client probe;
        ASSERT_EQ(probe.connect("127.0.0.3", static_cast<std::uint16_t>(std::stoi(dead.address().substr(10))), 500ms),
                  ETIMEDOUT)
            << "the full listener must make connects hang";
    }
    temp_dir dir;
    const auto port = free_port();
    // fall 1: the first failed probe makes it unhealthy; a probe takes the
    // whole 1s timeout, so a checker that started over would leave b1
    // "healthy" (health.initial) for a second after the reload.
    const std::string health = "    health: {type: tcp, interval: 300ms, timeout: 1s, fall: 1, rise: 1}\n";
    auto cfg = [&](unsigned w) {
        return config_with({{"front", port}}, {{"b0", b0.address(), w}, {"b1", dead.address()}}, "least-connections",
                           health, "timeouts: {connect: 3s}\n");
    };
    apilb_process apilb(dir, cfg(1), "127.0.0.1", port);
    ASSERT_TRUE(apilb.wait_for_log("backend b1 (" + dead.address() + ") is unhealthy", 5s)) << apilb.log();
    ASSERT_EQ(reload(apilb, dir, cfg(2)), reload_outcome::done) << apilb.log();
    const auto reloaded_at = apilb.log().size();
    for (int i = 0; i < 10; ++i) {
        client c;
        const auto t0 = steady::now();
        EXPECT_EQ(open_tagged(c, port), "b0");
        EXPECT_LT(steady::now() - t0, 700ms) << "client " << i << " waited on the unhealthy backend";
    }
    const std::string after = apilb.log().substr(reloaded_at);
    EXPECT_EQ(after.find("backend b1 (" + dead.address() + ") failed"), std::string::npos) << after;
    EXPECT_EQ(after.find("b1 (" + dead.address() + ") is healthy"), std::string::npos) << after;
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

class ReloadDrain : public ::testing::TestWithParam<std::string> {};

TEST_P(ReloadDrain, DrainByReloadSendsNoNewSessionsExistingContinue) {
    tcp_server b0("127.0.0.2", tagged_echo("b0"));
    tcp_server b1("127.0.0.3", tagged_echo("b1"));
    temp_dir dir;
    const auto port = free_port();
    auto cfg = [&](bool drain) {
        return config_with({{"front", port}}, {{"b0", b0.address()}, {"b1", b1.address(), 1, drain}}, GetParam());
    };
    apilb_process apilb(dir, cfg(false), "127.0.0.1", port);
    // Clients from different source addresses (maglev hashes the address).
    // All held open, so that least-connections sends some to b1 too.
    std::vector<client> on0, on1;
    for (int i = 0; i < 40 && on1.size() < 3; ++i) {
        client c;
        ASSERT_TRUE(c.bind(fmt::format("127.0.1.{}", i + 1)));
        (open_tagged(c, port) == "b1" ? on1 : on0).push_back(std::move(c));
    }
    ASSERT_EQ(on1.size(), 3u);
    ASSERT_EQ(reload(apilb, dir, cfg(true)), reload_outcome::done) << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log("backends changed [p/b1 drain on]")) << apilb.log();
    for (int i = 0; i < 20; ++i) {
        client c;
        ASSERT_TRUE(c.bind(fmt::format("127.0.1.{}", i + 1)));
        EXPECT_EQ(open_tagged(c, port), "b0") << "client " << i;
    }
    std::this_thread::sleep_for(500ms);
    for (auto& c : on1) EXPECT_TRUE(echoes(c, "drained, not cut"));
    // Undrained: it takes new sessions again.
    ASSERT_EQ(reload(apilb, dir, cfg(false)), reload_outcome::done);
    std::set<std::string> seen;
    for (int i = 0; i < 40; ++i) {
        client c;
        ASSERT_TRUE(c.bind(fmt::format("127.0.1.{}", i + 1)));
        seen.insert(open_tagged(c, port));
    }
    EXPECT_TRUE(seen.count("b1"));
    on0.clear();
    on1.clear();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

INSTANTIATE_TEST_SUITE_P(Balancers, ReloadDrain, ::testing::Values("round-robin", "least-connections", "maglev"),
                         [](const auto& info) {
                             std::string n = info.param;
                             std::erase(n, '-');
                             return n;
                         });

}  // namespace
}  // namespace apilb::test
