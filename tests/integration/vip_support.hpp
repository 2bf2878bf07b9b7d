// What the tests of two apilb nodes sharing a VIP through real keepalived
// share (vip_failover_test, vip_upgrade_test): network namespaces on a
// private bridge (198.18.0.0/24), stand-in backends that answer with the
// address of the node that relayed, a client that connects to the VIP every
// few milliseconds and records who answered, watches of who holds the VIP,
// and the fixture that writes both nodes' configs and starts apilb and
// keepalived.
#pragma once

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "netns.hpp"

namespace apilb::test {

using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

inline const bool sanitized = apilb_sanitized();

constexpr milliseconds advert{100};
inline const std::string vip = "198.18.0.100";
constexpr std::uint16_t vip_port = 6443;

/// What a backend_server does with a connection.
enum class backend_kind {
    answers_peer,  ///< sends the address of its peer (the apilb node that relayed it), then closes
    echoes,        ///< sends back what it gets until the peer ends (at most 64 at once)
};

/// A stand-in apiserver for the data path, accepting on ip:port (made inside
/// a namespace). One thread, poll-bounded.
class backend_server {
public:
    backend_server(const std::string& ns, const std::string& ip, backend_kind kind = backend_kind::answers_peer) {
        fd_ = listen_in_netns(ns, ip, 1024, port_);
        address_ = ip + ":" + std::to_string(port_);
        thread_ = std::thread([this, kind] {
            std::vector<int> conns;  // echoes
            while (!stop_) {
                std::vector<pollfd> p{{fd_, POLLIN, 0}};
                for (int c : conns) p.push_back({c, POLLIN, 0});
                if (::poll(p.data(), p.size(), 20) <= 0) continue;
                for (std::size_t i = 1; i < p.size(); ++i) {
                    if (p[i].revents == 0) continue;
                    char buf[4096];
                    const ssize_t n = ::recv(p[i].fd, buf, sizeof buf, 0);
                    if (n <= 0 || ::send(p[i].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) {
                        ::close(p[i].fd);
                        std::erase(conns, p[i].fd);
                    }
                }
                if ((p[0].revents & POLLIN) == 0) continue;
                sockaddr_in peer{};
                socklen_t len = sizeof peer;
                const int c = ::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
                if (c < 0) continue;
                if (kind == backend_kind::echoes && conns.size() < 64) {
                    conns.push_back(c);
                    continue;
                }
                char text[INET_ADDRSTRLEN] = {};
                ::inet_ntop(AF_INET, &peer.sin_addr, text, sizeof text);
                const std::string reply = std::string(text) + "\n";
                (void)!::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
                ::close(c);
            }
            for (int c : conns) ::close(c);
        });
    }
    ~backend_server() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
    }
    const std::string& address() const { return address_; }

private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::string address_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

/// One attempt of the client: when, and which node answered ("" = failed).
struct attempt {
    steady::time_point start;
    steady::time_point end;
    std::string node;
    std::string error;  ///< why it failed: "connect: ..." or "reply: ..."
};

/// Connects to VIP:port every 2 ms from the client namespace and records
/// every attempt. A connect that gets no answer in 30 ms, or a reply that
/// does not come in 25 ms, counts as failed (set_patience changes both).
class vip_client {
public:
    vip_client(const std::string& ns, std::map<std::string, std::string> node_by_ip)
        : node_by_ip_(std::move(node_by_ip)) {
        thread_ = std::thread([this, ns] {
            enter_netns(ns);
            const auto hard_stop = steady::now() + 10min;
            while (!stop_ && steady::now() < hard_stop) {
                attempt a{.start = steady::now(), .end = {}, .node = {}, .error = {}};
                client c;
                const milliseconds connect_patience(connect_ms_.load());
                const milliseconds reply_patience(reply_ms_.load());
                if (const int err = c.connect(vip, vip_port, connect_patience); err == 0) {
                    // The backend answers at once; a reply that takes longer is
                    // a connection caught in the switch (its segments went to
                    // the node that just lost the VIP), waiting out TCP's
                    // 200 ms minimum retransmission timeout. Give up on it so
                    // the next attempt can find the new master.
                    c.set_timeout(reply_patience);
                    int end = 0;
                    std::string reply = c.recv_until_eof(end, 64);
                    if (!reply.empty() && reply.back() == '\n') reply.pop_back();
                    if (auto it = node_by_ip_.find(reply); it != node_by_ip_.end()) a.node = it->second;
                    if (a.node.empty()) a.error = "reply: " + (end != 0 ? std::string(std::strerror(end)) : "EOF");
                } else {
                    a.error = "connect: " + std::string(std::strerror(err));
                }
                a.end = steady::now();
                {
                    std::lock_guard lock(mu_);
                    attempts_.push_back(a);
                }
                std::this_thread::sleep_for(2ms);
            }
        });
    }
    ~vip_client() { stop(); }
    /// How long later attempts wait for the connect and for the reply.
    void set_patience(milliseconds connect, milliseconds reply) {
        connect_ms_ = static_cast<int>(connect.count());
        reply_ms_ = static_cast<int>(reply.count());
    }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    std::vector<attempt> since(steady::time_point t) const {
        std::lock_guard lock(mu_);
        std::vector<attempt> out;
        for (const auto& a : attempts_) {
            if (a.end >= t) out.push_back(a);
        }
        return out;
    }
    /// True if the last `n` attempts were all served by `node`.
    bool steadily_on(const std::string& node, std::size_t n = 5) const {
        std::lock_guard lock(mu_);
        if (attempts_.size() < n) return false;
        return std::all_of(attempts_.end() - static_cast<long>(n), attempts_.end(),
                           [&](const attempt& a) { return a.node == node; });
    }

private:
    std::map<std::string, std::string> node_by_ip_;
    mutable std::mutex mu_;
    std::vector<attempt> attempts_;
    std::atomic<int> connect_ms_{30};
    std::atomic<int> reply_ms_{25};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

/// Watches whether the VIP is on a node's interfaces, every 2 ms, from a
/// thread inside that node's namespace; records the times it was seen held.
class vip_watch {
public:
    explicit vip_watch(const std::string& ns) {
        thread_ = std::thread([this, ns] {
            enter_netns(ns);
            const auto hard_stop = steady::now() + 10min;
            while (!stop_ && steady::now() < hard_stop) {
                const bool held = holds();
                const auto now = steady::now();
                {
                    std::lock_guard lock(mu_);
                    if (held && (spans_.empty() || spans_.back().second != last_)) {
                        spans_.emplace_back(now, now);  // a new span
                    } else if (held) {
                        spans_.back().second = now;
                    }
                    last_ = held ? now : steady::time_point{};
                    held_ = held;
                }
                std::this_thread::sleep_for(2ms);
            }
        });
    }
    ~vip_watch() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    bool held() const {
        std::lock_guard lock(mu_);
        return held_;
    }
    /// Spans [first seen, last seen] during which the VIP was held.
    std::vector<std::pair<steady::time_point, steady::time_point>> spans() const {
        std::lock_guard lock(mu_);
        return spans_;
    }

private:
    static bool holds() {
        ifaddrs* list = nullptr;
        if (::getifaddrs(&list) != 0) return false;
        bool found = false;
        for (auto* a = list; a != nullptr; a = a->ifa_next) {
            if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
            char text[INET_ADDRSTRLEN] = {};
            ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text, sizeof text);
            found = found || vip == text;
        }
        ::freeifaddrs(list);
        return found;
    }

    mutable std::mutex mu_;
    std::vector<std::pair<steady::time_point, steady::time_point>> spans_;
    steady::time_point last_{};
    bool held_ = false;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

/// The longest time both watches saw the VIP held at once.
inline double longest_overlap_ms(const vip_watch& a, const vip_watch& b) {
    double worst = 0;
    for (const auto& [a0, a1] : a.spans()) {
        for (const auto& [b0, b1] : b.spans()) {
            const auto from = std::max(a0, b0);
            const auto to = std::min(a1, b1);
            if (to > from) worst = std::max(worst, ms_since(from, to));
        }
    }
    return worst;
}

/// One apilb node: its config, apilb and keepalived.
struct node {
    std::string name;  ///< "n1"
    std::string ns;
    std::string ip;
    unsigned priority = 0;
    std::string backend;  ///< its pool's only backend
    std::string dir;      ///< config and state
    std::unique_ptr<process> apilb;
    std::unique_ptr<process> keepalived;
    int apilb_runs = 0;
    int keepalived_runs = 0;

    std::string config_path() const { return dir + "/apilb.yaml"; }
    std::string track_file() const { return dir + "/state/vrrp-fault"; }
};

class vip_pair_fixture : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
            GTEST_SKIP() << "needs network namespaces (root, iproute2, veth and bridge): " << why;
        }
        keepalived_bin_ = find_program("keepalived");
        if (keepalived_bin_.empty()) GTEST_SKIP() << "keepalived is not installed (scripts/install-deps.sh)";
        ip_bin_ = find_program("ip");

        // Unique per run: parallel runs and leftovers of a crashed one cannot collide.
        netns_segment::remove_orphans("apilb-vip-");
        segment_ = std::make_unique<netns_segment>("apilb-vip-" + std::to_string(::getpid()));
        segment_->add_host("be", {"198.18.0.20/24", "198.18.0.21/24", "198.18.0.22/24"});
        segment_->add_host("cl", {"198.18.0.50/24"});
        const std::array<std::tuple<const char*, const char*, unsigned>, 2> plan{
            {{"n1", "198.18.0.11", 150}, {"n2", "198.18.0.12", 100}}};
        for (std::size_t i = 0; i < 2; ++i) {
            const auto& [name, ip, priority] = plan[i];
            nodes_[i].name = name;
            nodes_[i].ip = ip;
            nodes_[i].priority = priority;
            nodes_[i].ns = segment_->add_host(name, {std::string(ip) + "/24"});
        }
        for (auto& n : nodes_) {
            // The backup binds the VIP it does not hold yet.
            auto r = run_command(
                {ip_bin_, "netns", "exec", n.ns, find_program("sysctl"), "-qw", "net.ipv4.ip_nonlocal_bind=1"});
            ASSERT_EQ(r.exit_code, 0) << r.output;
        }
        // .20 stays as the primary address, so .21 and .22 can be removed alone.
        backends_.push_back(std::make_unique<backend_server>(segment_->ns("be"), "198.18.0.21"));
        backends_.push_back(std::make_unique<backend_server>(segment_->ns("be"), "198.18.0.22"));
        nodes_[0].backend = backends_[0]->address();
        nodes_[1].backend = backends_[1]->address();
        for (auto& n : nodes_) {
            n.dir = dir_.file(n.name);
            std::filesystem::create_directories(n.dir);
        }
    }

    void TearDown() override {
        if (client_) client_->stop();
        for (auto& w : watches_) {
            if (w) w->stop();
        }
        // apilb first (keepalived then faults), then keepalived gracefully,
        // so that no VIP is left configured; the namespaces go last.
        for (auto& n : nodes_) stop(n.apilb, "apilb " + n.name);
        // Started by an upgrade, so not this test's children: by pid.
        for (pid_t p : upgraded_) {
            if (p <= 0 || ::kill(p, SIGTERM) != 0) continue;
            if (!wait_until([&] { return ::kill(p, 0) != 0; }, 10s, 20ms)) ::kill(p, SIGKILL);
        }
        for (auto& n : nodes_) stop(n.keepalived, "keepalived " + n.name);
        backends_.clear();
        segment_.reset();
    }

    static void stop(std::unique_ptr<process>& p, const std::string& what) {
        if (!p) return;
        if (p->running()) {
            p->signal(SIGTERM);
            if (!p->wait(5s)) {
                p->signal(SIGKILL);
                p->wait(5s);
            }
        }
        expect_no_sanitizer_report(p->log(), what);
        p.reset();
    }

    /// `listeners` and `pools` are YAML list items added to the node's own
    /// (the listener on the VIP, its pool of one backend).
    void write_config(node& n, bool preempt, bool manage = false, const std::string& listeners = "",
                      const std::string& pools = "") {
        const node& peer = &n == &nodes_[0] ? nodes_[1] : nodes_[0];
        // The state directory must exist before keepalived starts: keepalived
        // drops a track file whose directory is missing, silently (what
        // tmpfiles.d or RuntimeDirectory= do in production; docs/vip.md).
        std::filesystem::create_directories(n.dir + "/state");
        std::ofstream(n.config_path())
            << "workers: 1\n"
               "listeners:\n"
               "  - {name: api, address: \""
            << vip << ":" << vip_port << "\", pool: cp}\n"
            << listeners
            << "pools:\n"
               "  - name: cp\n"
               "    backends: [{name: be, address: \""
            << n.backend
            << "\"}]\n"
               "    health: {type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1, initial: unhealthy}\n"
            << pools
            << "timeouts: {connect: 100ms, drain: 1s}\n"
               "log: {level: info}\n"
               "vrrp:\n"
               "  interface: eth0\n"
               "  virtual_router_id: 51\n"
               "  priority: "
            << n.priority
            << "\n"
               "  router_id: "
            << n.name
            << "\n"
               "  unicast_src_ip: "
            << n.ip
            << "\n"
               "  peers: ["
            << peer.ip
            << "]\n"
               "  vips: [\""
            << vip
            << "/24\"]\n"
               "  advert_interval: "
            << advert.count()
            << "ms\n"
               "  preempt: "
            << (preempt ? "true" : "false")
            << "\n"
               "  state_dir: "
            << n.dir
            << "/state\n"
               "  handoff_timeout: 1s\n"
               // keepalived's VRRP process runs SCHED_RR: a neighbour test
               // taking both cores cannot delay its adverts (every 100 ms)
               // into a takeover by the backup.
               "  realtime_priority: 50\n";
        if (manage)
            std::ofstream(n.config_path(), std::ios::app)
                << "  manage: true\n  keepalived_path: " << keepalived_bin_ << "\n";
        auto r = run_command({required_env("APILB_BIN"), "keepalived-config", "--config", n.config_path(), "-o",
                              n.dir + "/keepalived.conf", "--apilb-path", required_env("APILB_BIN")});
        ASSERT_EQ(r.exit_code, 0) << r.output;
    }

    /// `argv` run so that it gets SIGTERM if this test process dies (a crash
    /// or abort skips TearDown): setpriv sets the parent-death signal and
    /// execs, so the command line (which track_process matches) is unchanged.
    std::vector<std::string> with_parent_death(std::vector<std::string> argv) const {
        if (setpriv_bin_.empty()) return argv;
        argv.insert(argv.begin(), {setpriv_bin_, "--pdeathsig", "TERM", "--"});
        return argv;
    }

    void start_apilb(node& n) {
        // Through `ip netns exec`, which execs apilb in place: the command
        // line keepalived's track_process matches is exactly this one.
        n.apilb = std::make_unique<process>(
            with_parent_death(
                {ip_bin_, "netns", "exec", n.ns, required_env("APILB_BIN"), "run", "--config", n.config_path()}),
            n.dir + "/apilb-" + std::to_string(++n.apilb_runs) + ".log");
    }

    void start_keepalived(node& n) {
        // -s, not `ip netns exec`: keepalived opens its process-event socket
        // before it enters the namespace (under ip netns exec, track_process
        // fails and the instance stays in FAULT).
        const std::string d = n.dir;
        n.keepalived = std::make_unique<process>(
            with_parent_death({keepalived_bin_, "-s", n.ns, "-n", "-l", "-D", "-G", "-P", "-f", d + "/keepalived.conf",
                               "-p", d + "/k.pid", "-r", d + "/k-vrrp.pid", "-c", d + "/k-check.pid", "-b",
                               d + "/k-bfd.pid"}),
            d + "/keepalived-" + std::to_string(++n.keepalived_runs) + ".log");
    }

    /// Until n1 holds the VIP, n2 does not, and the client is served by n1.
    bool settled_on(const node& n, milliseconds timeout = 15s) {
        const std::size_t i = &n == &nodes_[0] ? 0 : 1;
        return wait_until(
            [&] { return watches_[i]->held() && !watches_[1 - i]->held() && client_->steadily_on(n.name); }, timeout,
            5ms);
    }

    std::string diagnostics() {
        std::string out;
        for (auto& n : nodes_) {
            if (n.apilb) out += "--- apilb " + n.name + ":\n" + n.apilb->log();
            if (n.keepalived) out += "--- keepalived " + n.name + ":\n" + n.keepalived->log();
        }
        return out.size() > 20000 ? out.substr(out.size() - 20000) : out;
    }

    /// Outage seen by the client after `t`: from the start of the first
    /// failed attempt to the end of the first success on `to`; 0 when no
    /// attempt failed before `to` answered. nullopt if `to` never answered.
    std::optional<double> outage_after(steady::time_point t, const std::string& to) {
        std::optional<steady::time_point> first_failure;
        for (const auto& a : client_->since(t)) {
            if (a.node.empty() && !first_failure) first_failure = a.start;
            if (a.node == to) return first_failure ? ms_since(*first_failure, a.end) : 0.0;
        }
        return std::nullopt;
    }

    /// The client's attempts from `t` to the first success on `to`, for a slow case.
    std::string timeline(steady::time_point t, const std::string& to) {
        std::string out;
        for (const auto& a : client_->since(t)) {
            out += fmt::format("  +{:.1f} ms, {:.1f} ms: {}\n", ms_since(t, a.start), ms_since(a.start, a.end),
                               a.node.empty() ? a.error : a.node);
            if (a.node == to) break;
        }
        return out;
    }

    void start_everything(bool preempt, bool manage = false, const std::string& listeners = "",
                          const std::string& pools = "") {
        for (auto& n : nodes_) write_config(n, preempt, manage, listeners, pools);
        if (HasFatalFailure()) return;
        for (auto& n : nodes_) start_apilb(n);
        if (!manage) {
            for (auto& n : nodes_) start_keepalived(n);
        }
        if (!client_) {
            client_ = std::make_unique<vip_client>(
                segment_->ns("cl"), std::map<std::string, std::string>{{"198.18.0.11", "n1"}, {"198.18.0.12", "n2"}});
            watches_[0] = std::make_unique<vip_watch>(nodes_[0].ns);
            watches_[1] = std::make_unique<vip_watch>(nodes_[1].ns);
        }
    }

    temp_dir dir_;
    std::vector<pid_t> upgraded_;  ///< apilb processes an upgrade started, ended in TearDown
    std::string keepalived_bin_;
    std::string ip_bin_;
    std::string setpriv_bin_ = find_program("setpriv");
    std::unique_ptr<netns_segment> segment_;
    std::vector<std::unique_ptr<backend_server>> backends_;
    std::array<node, 2> nodes_;
    std::unique_ptr<vip_client> client_;
    std::array<std::unique_ptr<vip_watch>, 2> watches_;
};

inline pid_t managed_keepalived_pid(const node& n) {
    const std::string path = n.dir + "/state/keepalived.pid";
    if (!std::filesystem::exists(path)) return -1;
    try {
        return static_cast<pid_t>(std::stol(read_file(path)));
    } catch (const std::exception&) {
        return -1;
    }
}

}  // namespace apilb::test
