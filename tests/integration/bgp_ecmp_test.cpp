// Three apilb nodes announcing one VIP over BGP to a router with ECMP and
// BFD (100 ms x 3), everything real and in network namespaces this test
// creates on a private bridge (198.18.40.0/24) and removes afterwards: the
// router runs FRR (zebra, bgpd, bfdd) with conf/examples/frr-tor.conf, the
// top-of-rack example, its addresses replaced by the test's; each node runs FRR
// with the frr.conf `apilb frr-config` renders, the real apilb and its
// backend; a client behind the router opens connections to the VIP. Each
// backend says which node it sits behind, so the client knows who served it.
//
// Shown and measured (docs/bgp.md): new connections spread over the three
// nodes; a node whose backend fails its probes withdraws and nothing fails
// after; a graceful stop (SIGTERM) under a steady connect rate fails no new
// connection; how many established connections of the other nodes break
// when a node leaves and when it rejoins; a dead node (apilb and its FRR
// SIGKILLed) loses its route at once, and a node cut off its link within
// the BFD detection time (timed by the kernel's stamps, FRR's steps
// logged); every new connection succeeds afterwards. A second case puts the
// router's route in by hand as hash-threshold and resilient next-hop groups
// and counts the established connections a leave and a join break. Needs
// root and FRR; skips without.
//
// About 25 s and 22 s; in `meson test`. The figures are printed as "[ MEASURED ]"
// lines (docs/bgp.md quotes them); the bounds asserted are loose.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csignal>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "frr_host.hpp"
#include "harness.hpp"
#include "netns.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

constexpr const char* router_ip = "198.18.40.1";
constexpr const char* client_ip = "198.18.40.50";
constexpr const char* vip = "198.18.41.100";
constexpr int node_count = 3;

std::string node_ip(int i) { return fmt::format("198.18.40.{}", 11 + i); }
/// Node i's backend answers on this address of the node's loopback: taking
/// it away makes the backend fail its probes at once.
std::string backend_ip(int i) { return fmt::format("198.18.42.{}", 11 + i); }
std::string node_name(int i) { return fmt::format("n{}", i + 1); }

/// Says the node's name, then echoes until the client closes.
tcp_server::handler naming_echo(std::string name) {
    return [name](int& fd) {
        const std::string hello = name + "\n";
        if (::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(hello.size())) return;
        char buf[256];
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0 || ::send(fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) return;
        }
    };
}

/// The router: conf/examples/frr-tor.conf, the example operators start
/// from, with only its documentation addresses replaced by the test's (ECMP
/// over the three nodes, BFD 100 ms x 3, only the VIP accepted, nothing
/// sent), so that the example cannot rot.
std::string router_conf() {
    std::string text = read_file(required_env("APILB_SOURCE_ROOT") + "/conf/examples/frr-tor.conf");
    const std::vector<std::pair<std::string, std::string>> addresses{{"192.0.2.1", router_ip},
                                                                     {"192.0.2.11", node_ip(0)},
                                                                     {"192.0.2.12", node_ip(1)},
                                                                     {"192.0.2.13", node_ip(2)},
                                                                     {"203.0.113.100", vip}};
    std::string out;
    std::set<std::string> replaced;
    // Whole addresses only: 192.0.2.1 is also the start of 192.0.2.11.
    auto is_address_char = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; };
    for (std::size_t i = 0; i < text.size();) {
        if (!is_address_char(text[i]) || (i > 0 && is_address_char(text[i - 1]))) {
            out += text[i++];
            continue;
        }
        std::size_t end = i;
        while (end < text.size() && is_address_char(text[end])) ++end;
        std::string token = text.substr(i, end - i);
        for (const auto& [from, to] : addresses) {
            if (token == from) {
                token = to;
                replaced.insert(from);
            }
        }
        out += token;
        i = end;
    }
    for (const auto& [from, to] : addresses) {
        EXPECT_TRUE(replaced.count(from)) << "conf/examples/frr-tor.conf no longer has " << from;
    }
    return out;
}

/// What the test adds to the router's FRR beside the example: its daemons
/// log to `log_file` with microseconds (the figures of the link cut).
std::string router_logging(const std::string& log_file) {
    return fmt::format(R"(log file {} debugging
log timestamp precision 6
debug bfd peer
debug bgp bfd
debug zebra kernel
debug zebra rib
)",
                       log_file);
}

/// One connection from the client to the VIP: which node answered ("" on failure).
struct attempt {
    double at_ms = 0;  ///< since the test's t0
    std::string node;
};

/// The time of day in seconds of the first line of `ip -ts monitor` output
/// that holds `what`, at or after `after`; -1 if none. A line begins with
/// "[2026-12-05T13:47:00.123456]".
double first_stamp(const std::string& log, const std::string& what, double after = 0) {
    std::istringstream lines(log);
    for (std::string line; std::getline(lines, line);) {
        if (line.size() < 28 || line[0] != '[' || line.find(what) == std::string::npos) continue;
        const double t = std::stoi(line.substr(12, 2)) * 3600 + std::stoi(line.substr(15, 2)) * 60 +
                         std::stod(line.substr(18, 9));
        if (t >= after) return t;
    }
    return -1;
}

/// The lines of the router's FRR log (bfdd, bgpd and zebra write to it)
/// about n2 or the VIP stamped within 2 s after `after` (seconds of the
/// day): how a lost peer became a route change. FRR stamps
/// "2026/12/05 13:47:00.123456" (log timestamp precision 6).
std::string frr_lines_after(const std::string& log_file, double after) {
    std::string out;
    int n = 0;
    std::istringstream lines(read_file(log_file));
    for (std::string line; std::getline(lines, line) && n < 30;) {
        if (line.size() < 27 || line[4] != '/' || line[19] != '.') continue;
        if (line.find("198.18.40.12") == std::string::npos && line.find("198.18.41.100") == std::string::npos) continue;
        const double t = std::stoi(line.substr(11, 2)) * 3600 + std::stoi(line.substr(14, 2)) * 60 +
                         std::stod(line.substr(17, 9));
        if (t < after || t > after + 0.5) continue;
        out += fmt::format("  +{:.1f} ms {}\n", (t - after) * 1000, line.substr(27, 170));
        ++n;
    }
    return out;
}

class BgpEcmp : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
            GTEST_SKIP() << "needs network namespaces (root, iproute2, veth and bridge): " << why;
        }
        if (auto why = frr_unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
        ip_bin_ = find_program("ip");
        netns_segment::remove_orphans("apilb-ecmp-");
        segment_ = std::make_unique<netns_segment>("apilb-ecmp-" + std::to_string(::getpid()));
        segment_->add_host("r", {std::string(router_ip) + "/24"});
        segment_->add_host("c", {std::string(client_ip) + "/24"});
        // The client reaches the VIP through the router, which must forward
        // and must not redirect it to a node on the same segment.
        segment_->ip("c", {"route", "add", std::string(vip) + "/32", "via", router_ip});
        sysctl("r", "net.ipv4.ip_forward=1");
        sysctl("r", "net.ipv4.conf.all.send_redirects=0");
        sysctl("r", "net.ipv4.conf.eth0.send_redirects=0");
        // Hash on ports too, so that one client's connections spread.
        sysctl("r", "net.ipv4.fib_multipath_hash_policy=1");
        sysctl("c", "net.ipv4.conf.all.accept_redirects=0");
        sysctl("c", "net.ipv4.conf.eth0.accept_redirects=0");

        const passwd* pw = ::getpwnam("frr");
        ::chmod(dir_.path().c_str(), 0755);
        auto frr_dir_for = [&](const std::string& host) {
            const std::string d = dir_.path() + "/" + host;
            std::filesystem::create_directories(d);
            EXPECT_EQ(::chown(d.c_str(), pw->pw_uid, pw->pw_gid), 0);
            return d;
        };
        router_ = std::make_unique<frr_host>(segment_->ns("r"), frr_dir_for("r"), ip_bin_);
        port_ = free_port();
        for (int i = 0; i < node_count; ++i) {
            const std::string n = node_name(i);
            segment_->add_host(n, {node_ip(i) + "/24"});
            segment_->ip(n, {"addr", "add", backend_ip(i) + "/32", "dev", "lo"});
            frr_.push_back(std::make_unique<frr_host>(segment_->ns(n), frr_dir_for(n), ip_bin_));
            in_netns(segment_->ns(n),
                     [&] { backends_.push_back(std::make_unique<tcp_server>("0.0.0.0", naming_echo(n))); });
            dir_.write(n + ".yaml",
                       bgp_node_yaml({.vip = vip,
                                      .port = port_,
                                      .backend = fmt::format("{}:{}", backend_ip(i), backends_.back()->port()),
                                      .router_id = node_ip(i),
                                      .peer = router_ip,
                                      .peer_options = ", bfd: true, bfd_interval: 100ms, bfd_multiplier: 3",
                                      .vty_socket_dir = dir_.path() + "/" + n,
                                      .head = "timeouts: {drain: 3s}\n",
                                      .bgp_tail = "  withdraw_wait: 2s\n"}));
        }
        apilb_.resize(node_count);
    }

    /// The router's FRR, then each node's FRR (what `apilb frr-config`
    /// rendered) and apilb; returns once the router has all three next hops from settled peerings.
    void start_all() {
        ASSERT_NO_FATAL_FAILURE(router_->start());
        ASSERT_NO_FATAL_FAILURE(router_->apply(router_logging(dir_.path() + "/r/frr.log")));
        ASSERT_NO_FATAL_FAILURE(router_->apply(router_conf()));
        for (int i = 0; i < node_count; ++i) {
            const std::string n = node_name(i);
            auto rendered = run_command({required_env("APILB_BIN"), "frr-config", "-c", dir_.file(n + ".yaml"), "-o",
                                         dir_.file(n + "-frr.conf")});
            ASSERT_EQ(rendered.exit_code, 0) << rendered.output;
            ASSERT_NO_FATAL_FAILURE(frr_[i]->start());
            ASSERT_NO_FATAL_FAILURE(frr_[i]->apply(read_file(dir_.file(n + "-frr.conf"))));
            start_apilb(i);
        }
        // Past the one reset every new peering goes through (frr_host::bfd_settled):
        // a next hop seen before it may vanish for about 2 s in the middle of a phase.
        ASSERT_TRUE(wait_until(
            [&] {
                return next_hops() == all_but(-1) && router_->bfd_settled(node_count) &&
                       std::all_of(frr_.begin(), frr_.end(), [](const auto& f) { return f->bfd_settled(1); });
            },
            90s, 50ms))
            << diagnose() << router_->show("show bfd peers");
    }

    void sysctl(const std::string& host, const std::string& setting) const {
        auto r = run_command({ip_bin_, "netns", "exec", segment_->ns(host), find_program("sysctl"), "-qw", setting});
        ASSERT_EQ(r.exit_code, 0) << setting << ": " << r.output;
    }

    void start_apilb(int i) {
        const std::string n = node_name(i);
        apilb_[i] = std::make_unique<process>(
            std::vector<std::string>{ip_bin_, "netns", "exec", segment_->ns(n), required_env("APILB_BIN"), "run",
                                     "--config", dir_.file(n + ".yaml")},
            dir_.file(n + "-apilb-" + std::to_string(++starts_) + ".log"));
    }

    /// The nodes the router's kernel sends the VIP to (its ECMP next hops).
    std::set<std::string> next_hops() const {
        auto r = run_command({ip_bin_, "-n", segment_->ns("r"), "route", "show", std::string(vip) + "/32"}, 10s);
        std::set<std::string> out;
        std::istringstream words(r.output);
        for (std::string w, prev; words >> w; prev = w) {
            if (prev == "via") out.insert(w);
        }
        return out;
    }
    std::set<std::string> all_but(int skip) const {
        std::set<std::string> s;
        for (int i = 0; i < node_count; ++i) {
            if (i != skip) s.insert(node_ip(i));
        }
        return s;
    }

    /// One new connection from the client namespace (the calling thread
    /// must be in it): the node's name, or "" if it failed.
    static std::string connect_once(std::chrono::milliseconds timeout) {
        client c;
        if (c.connect(vip, port_of_test, timeout) != 0) return {};
        c.set_timeout(timeout);
        std::string name;
        char ch = 0;
        while (name.size() < 8 && c.recv_some(&ch, 1) == 1 && ch != '\n') name += ch;
        return ch == '\n' ? name : std::string{};
    }

    /// Connects every `period` from a thread in the client namespace until
    /// `stop`; records each attempt.
    class load {
    public:
        load(const std::string& ns, clock_type::time_point t0, std::chrono::milliseconds period) {
            thread_ = std::thread([this, ns, t0, period] {
                enter_netns(ns);
                // Bounded: at most 60 s of attempts whatever the test does.
                for (int k = 0; k < 12'000 && !stop_; ++k) {
                    const double at = ms_since(t0);
                    std::string node = connect_once(1s);
                    {
                        std::lock_guard lock(mu_);
                        attempts_.push_back({at, std::move(node)});
                    }
                    std::this_thread::sleep_for(period);
                }
            });
        }
        ~load() { finish(); }
        std::vector<attempt> finish() {
            stop_ = true;
            if (thread_.joinable()) thread_.join();
            std::lock_guard lock(mu_);
            return attempts_;
        }

    private:
        std::atomic<bool> stop_{false};
        std::mutex mu_;
        std::vector<attempt> attempts_;
        std::thread thread_;
    };

    /// Connections the client keeps open; each knows its node.
    struct held {
        client c;
        std::string node;
    };
    std::vector<held> open_held(int count) {
        std::vector<held> out;
        in_netns(segment_->ns("c"), [&] {
            for (int k = 0; k < count; ++k) {
                held h;
                if (h.c.connect(vip, port_, 2s) != 0) continue;
                h.c.set_timeout(2s);
                char ch = 0;
                while (h.node.size() < 8 && h.c.recv_some(&ch, 1) == 1 && ch != '\n') h.node += ch;
                if (ch == '\n') out.push_back(std::move(h));
            }
        });
        return out;
    }
    /// How many of `hs` (on nodes other than `except`) no longer echo.
    static int broken(std::vector<held>& hs, const std::string& except, int& checked) {
        int n = 0;
        checked = 0;
        for (auto& h : hs) {
            if (h.node == except) continue;
            ++checked;
            char ch = 0;
            if (!h.c.send_all("x") || h.c.recv_some(&ch, 1) != 1 || ch != 'x') ++n;
        }
        return n;
    }

    /// How many of `hs` (on nodes other than `except`) no longer echo; with
    /// `busy`, each is asked every 200 ms for 3 s (a flow that stays active,
    /// which a resilient group's idle timer keeps where it is), else once.
    static int broken_while(std::vector<held>& hs, const std::string& except, bool busy, int& checked) {
        std::vector<held*> alive;
        for (auto& h : hs) {
            if (h.node != except) alive.push_back(&h);
        }
        checked = static_cast<int>(alive.size());
        int n = 0;
        const auto end = clock_type::now() + (busy ? 3s : 0s);
        do {
            for (auto*& h : alive) {
                if (h == nullptr) continue;
                char ch = 0;
                if (!h->c.send_all("x") || h->c.recv_some(&ch, 1) != 1 || ch != 'x') {
                    ++n;
                    h = nullptr;
                }
            }
            if (busy) std::this_thread::sleep_for(200ms);
        } while (clock_type::now() < end);
        return n;
    }

    std::string diagnose() const {
        std::string out = "router: " + router_->show("show bgp summary") + router_->show("show bfd peers brief") +
                          run_command({ip_bin_, "-n", segment_->ns("r"), "route"}).output + router_->exited();
        for (int i = 0; i < node_count; ++i) {
            if (apilb_[i]) out += node_name(i) + " apilb:\n" + apilb_[i]->log();
        }
        return out;
    }

    static inline std::uint16_t port_of_test = 0;
    temp_dir dir_;
    std::string ip_bin_;
    std::unique_ptr<netns_segment> segment_;
    std::unique_ptr<frr_host> router_;
    std::vector<std::unique_ptr<frr_host>> frr_;
    std::vector<std::unique_ptr<tcp_server>> backends_;
    std::vector<std::unique_ptr<process>> apilb_;
    std::uint16_t port_ = 0;
    int starts_ = 0;
};

std::map<std::string, int> by_node(const std::vector<attempt>& as) {
    std::map<std::string, int> m;
    for (const auto& a : as) ++m[a.node.empty() ? "failed" : a.node];
    return m;
}
std::string show(const std::map<std::string, int>& m) {
    std::string s;
    for (const auto& [k, v] : m) s += fmt::format("{}={} ", k, v);
    return s;
}

TEST_F(BgpEcmp, SpreadsFailsOverAndLeavesWithoutFailedConnects) {
    port_of_test = port_;
    const auto t0 = clock_type::now();
    ASSERT_NO_FATAL_FAILURE(start_all());
    std::cout << "[ MEASURED ] three next hops in the router " << ms_since(t0) << " ms after the start\n";
    const std::string groups = run_command({ip_bin_, "-n", segment_->ns("r"), "nexthop", "show"}).output;
    std::cout << "[ INFO ] the router's nexthop objects (zebra's):\n" << groups;

    // 0. The example's filters: the router sends the nodes nothing (not the
    // VIP it learned from the others), and takes nothing but the VIPs from
    // them, even from a node whose FRR announces more (here n1 also
    // announces its backend's address, by a change to its rendered config).
    for (int i = 0; i < node_count; ++i) {
        const std::string sent = router_->show(
            fmt::format("show bgp ipv4 unicast neighbors {} advertised-routes", node_ip(i)));
        EXPECT_EQ(sent.find(vip), std::string::npos) << "the router re-advertised the VIP to " << node_ip(i) << ":\n"
                                                     << sent;
    }
    auto updates_from_n1 = [&] {
        const std::string json = router_->show(fmt::format("show bgp neighbors {} json", node_ip(0)));
        const auto at = json.find("\"updatesRecv\":");
        return at == std::string::npos ? -1 : std::atoi(json.c_str() + at + 14);
    };
    const int updates_before = updates_from_n1();
    ASSERT_NO_FATAL_FAILURE(frr_[0]->apply(fmt::format(R"(ip prefix-list APILB-VIPS seq 100 permit {0}/32
router bgp 64512
 address-family ipv4 unicast
  network {0}/32
 exit-address-family
exit
)",
                                                       backend_ip(0))));
    EXPECT_TRUE(wait_until([&] { return updates_from_n1() > updates_before; }, 20s))
        << "n1 sent no update for " << backend_ip(0) << ":\n"
        << frr_[0]->show(fmt::format("show bgp ipv4 unicast neighbors {} advertised-routes", router_ip));
    const std::string refused = router_->show(fmt::format("show ip bgp {}/32", backend_ip(0)));
    EXPECT_NE(refused.find("Network not in table"), std::string::npos) << refused;
    const std::string bgp_routes =
        run_command({ip_bin_, "-n", segment_->ns("r"), "route", "show", "proto", "bgp"}, 10s).output;
    EXPECT_EQ(bgp_routes.find(backend_ip(0)), std::string::npos) << bgp_routes;

    // 1. New connections spread over the three nodes.
    std::map<std::string, int> spread;
    in_netns(segment_->ns("c"), [&] {
        for (int k = 0; k < 300; ++k) ++spread[connect_once(2s)];
    });
    std::cout << "[ MEASURED ] 300 new connections: " << show(spread) << "\n";
    for (int i = 0; i < node_count; ++i) EXPECT_GE(spread[node_name(i)], 30) << show(spread);
    EXPECT_EQ(spread[""], 0);

    // 2. n2's backend fails its probes: n2 withdraws, nothing fails after.
    {
        load l(segment_->ns("c"), t0, 5ms);
        const double t = ms_since(t0);
        segment_->ip("n2", {"addr", "del", backend_ip(1) + "/32", "dev", "lo"});
        ASSERT_TRUE(wait_until([&] { return next_hops() == all_but(1); }, 20s, 5ms)) << diagnose();
        const double gone = ms_since(t0);
        std::this_thread::sleep_for(1500ms);
        auto as = l.finish();
        int failed_before = 0, failed_after = 0, on_n2_after = 0;
        for (const auto& a : as) {
            if (a.at_ms < t) continue;
            if (a.node.empty()) (a.at_ms < gone + 200 ? failed_before : failed_after)++;
            if (a.at_ms > gone + 200 && a.node == "n2") ++on_n2_after;
        }
        std::cout << "[ MEASURED ] n2's backend unreachable: route withdrawn after " << gone - t
                  << " ms; failed connects while it was going " << failed_before << ", after " << failed_after
                  << "; n2 served after: " << on_n2_after << "\n";
        EXPECT_EQ(failed_after, 0);
        EXPECT_EQ(on_n2_after, 0);
        segment_->ip("n2", {"addr", "add", backend_ip(1) + "/32", "dev", "lo"});
        ASSERT_TRUE(wait_until([&] { return next_hops() == all_but(-1); }, 20s, 20ms)) << diagnose();
    }

    // 3. A graceful stop of n1 under a steady connect rate: no new
    // connection fails; how many of n2's and n3's established ones break.
    auto held_leave = open_held(60);
    {
        load l(segment_->ns("c"), t0, 5ms);
        std::this_thread::sleep_for(300ms);
        const double t = ms_since(t0);
        apilb_[0]->signal(SIGTERM);
        ASSERT_TRUE(wait_until([&] { return next_hops() == all_but(0); }, 20s, 5ms)) << diagnose();
        const double gone = ms_since(t0);
        ASSERT_EQ(apilb_[0]->wait(30s), 0) << apilb_[0]->log();
        const double ended = ms_since(t0);
        auto as = l.finish();
        std::vector<attempt> during;
        std::copy_if(as.begin(), as.end(), std::back_inserter(during), [&](const attempt& a) { return a.at_ms >= t; });
        auto m = by_node(during);
        std::cout << "[ MEASURED ] n1 SIGTERM: route withdrawn after " << gone - t << " ms, apilb ended after "
                  << ended - t << " ms; " << during.size() << " new connections meanwhile: " << show(m) << "\n";
        EXPECT_EQ(m["failed"], 0) << show(m);
        int checked = 0;
        const int b = broken(held_leave, "n1", checked);
        std::cout << "[ MEASURED ] n1 left: " << b << " of " << checked
                  << " established connections on n2 and n3 broke\n";
    }

    // 4. n1 rejoins: how many established connections of n2 and n3 move (break).
    auto held_join = open_held(60);
    {
        const double t = ms_since(t0);
        start_apilb(0);
        ASSERT_TRUE(wait_until([&] { return next_hops() == all_but(-1); }, 60s, 20ms)) << diagnose();
        std::cout << "[ MEASURED ] n1 rejoined: route back after " << ms_since(t0) - t << " ms\n";
        int checked = 0;
        const int b = broken(held_join, "n1", checked);
        std::cout << "[ MEASURED ] n1 joined: " << b << " of " << checked
                  << " established connections on n2 and n3 broke (moved to n1)\n";
    }

    // A node lost under a steady connect rate: `lose` takes it away, the
    // router must be left with `left`; connects in flight to it may fail,
    // none after the route is gone.
    auto lose_node = [&](const std::string& what, const std::function<void()>& lose, std::set<std::string> left) {
        load l(segment_->ns("c"), t0, 5ms);
        std::this_thread::sleep_for(300ms);
        const double t = ms_since(t0);
        lose();
        ASSERT_TRUE(wait_until([&] { return next_hops() == left; }, 20s, 2ms)) << diagnose();
        const double gone = ms_since(t0);
        std::this_thread::sleep_for(1500ms);
        int failed_before = 0, failed_after = 0;
        for (const auto& a : l.finish()) {
            if (a.at_ms < t || !a.node.empty()) continue;
            (a.at_ms < gone + 50 ? failed_before : failed_after)++;
        }
        std::cout << "[ MEASURED ] " << what << ": route gone after " << gone - t << " ms; failed connects before that "
                  << failed_before << ", after " << failed_after << "\n";
        EXPECT_LE(gone - t, 5000) << what << ": far beyond BFD's 300 ms";
        EXPECT_EQ(failed_after, 0) << what;
    };
    // 5. A dead node: n3's apilb and FRR SIGKILLed. Its closed BGP session
    // (or BFD) takes the route away.
    lose_node(
        "n3 dead (apilb + FRR SIGKILLed)",
        [&] {
            apilb_[2]->signal(SIGKILL);
            frr_[2]->kill_all();
        },
        all_but(2));
    // 6. A node that vanishes (its link cut, as a power loss would): only
    // BFD (100 ms x 3) can tell the router; every new connect after goes to n1.
    // The kernel's own timestamps of the cut (the bridge port going down)
    // and of the router's route change, and FRR's log lines between: the
    // figure without the test's process start and polling, and where it goes.
    {
        process links({ip_bin_, "-n", segment_->bridge_ns(), "-ts", "monitor", "link"}, dir_.file("cut-link.log"));
        process routes({ip_bin_, "-n", segment_->ns("r"), "-ts", "monitor", "route", "nexthop"},
                       dir_.file("cut-route.log"));
        std::this_thread::sleep_for(300ms);  // both monitors subscribed (nothing is timed by this)
        lose_node("n2 cut off (bridge port down)",
                  [&] {
                      segment_->ip("br", {"link", "set", segment_->bridge_port("n2"), "down"});
                  },
                  {node_ip(0)});
        std::this_thread::sleep_for(200ms);
        links.signal(SIGTERM);
        routes.signal(SIGTERM);
        links.wait(5s);
        routes.wait(5s);
        const double cut = first_stamp(links.log(), segment_->bridge_port("n2"));
        const double gone = first_stamp(routes.log(), node_ip(0), cut);
        std::cout << "[ MEASURED ] n2 cut off, kernel timestamps: the router's route changed " << (gone - cut) * 1000
                  << " ms after the bridge port went down\n";
        std::cout << "[ INFO ] the router's FRR meanwhile:\n" << frr_lines_after(dir_.path() + "/r/frr.log", cut);
    }
    EXPECT_EQ(router_->exited(), "");
    EXPECT_TRUE(apilb_[0]->running()) << apilb_[0]->log();
    // Every apilb that ran, the stopped and the killed included.
    for (int k = 1; k <= starts_; ++k) {
        for (int i = 0; i < node_count; ++i) {
            const std::string log = dir_.file(node_name(i) + "-apilb-" + std::to_string(k) + ".log");
            if (std::filesystem::exists(log)) expect_no_sanitizer_report(read_file(log), log);
        }
    }
}

// What FRR 8.4 cannot do (its zebra installs BGP multipath routes as
// hash-threshold groups only), measured on the router's own kernel: the
// VIP's route put in by hand over the three nodes, as (a) a hash-threshold
// group, (b) a resilient one whose buckets move at once (idle_timer 0) and
// (c) a resilient one that moves only buckets idle for 2 s, its flows kept
// busy. Each time n1 leaves the group (its next hop taken out) and then
// joins it again; counted: the established connections on n2 and n3 that
// break (their packets now reach a node that has no socket for them). FRR's
// BGP runs on; the route here (metric 1) is above zebra's (metric 20).
TEST_F(BgpEcmp, ResilientNextHopGroupsMoveOnlyTheFlowsAChangeNeeds) {
    port_of_test = port_;
    ASSERT_NO_FATAL_FAILURE(start_all());
    auto router_ip_cmd = [&](std::vector<std::string> args, bool must = true) {
        args.insert(args.begin(), {ip_bin_, "-n", segment_->ns("r")});
        auto r = run_command(args, 10s);
        if (must) {
            std::string line;
            for (const auto& a : args) line += a + " ";
            EXPECT_EQ(r.exit_code, 0) << line << ": " << r.output;
        }
        return r;
    };
    for (int i = 0; i < node_count; ++i) {
        router_ip_cmd({"nexthop", "add", "id", std::to_string(901 + i), "via", node_ip(i), "dev", "eth0"});
    }
    // The traps of an earlier attempt here. (1) A group's type cannot
    // change under its id: the kernel refuses and keeps the old group.
    router_ip_cmd({"nexthop", "add", "id", "990", "group", "901/902/903"});
    const auto retype = router_ip_cmd(
        {"nexthop", "replace", "id", "990", "group", "901/902/903", "type", "resilient", "buckets", "128"}, false);
    EXPECT_NE(retype.exit_code, 0) << "the kernel changed a group's type under its id";
    std::cout << "[ INFO ] replacing a hash-threshold group by a resilient one under its id: " << retype.output;
    // (2) zebra adopts a hash-threshold group that a route uses and puts
    // its own copy back when the group changes: n1 taken out comes back.
    router_ip_cmd({"route", "replace", std::string(vip) + "/32", "nhid", "990", "metric", "1"});
    std::this_thread::sleep_for(500ms);  // zebra reads the route and the group (not timed: only shown)
    router_ip_cmd({"nexthop", "replace", "id", "990", "group", "902/903"});
    const bool undone = wait_until(
        [&] {
            return router_ip_cmd({"nexthop", "show", "id", "990"}).output.find("901") != std::string::npos;
        },
        3s, 20ms);
    std::cout << "[ INFO ] a hash-threshold group changed by hand: "
              << (undone ? "zebra put n1 back: " : "left as changed: ")
              << router_ip_cmd({"nexthop", "show", "id", "990"}).output;
    router_ip_cmd({"route", "del", std::string(vip) + "/32", "metric", "1"});
    router_ip_cmd({"nexthop", "del", "id", "990"});

    struct group_kind {
        const char* name;
        std::vector<std::string> type;  // empty: a multipath route without a nexthop object (zebra leaves it)
        bool busy;                      // the held connections send every 200 ms while the change settles
    };
    const std::vector<group_kind> kinds = {
        {"hash-threshold (multipath route)", {}, false},
        {"resilient, 128 buckets, idle_timer 0", {"type", "resilient", "buckets", "128", "idle_timer", "0"}, false},
        {"resilient, 128 buckets, idle_timer 2, flows busy",
         {"type", "resilient", "buckets", "128", "idle_timer", "2"},
         true},
    };
    std::map<std::string, std::pair<int, int>> result;  // kind -> broken on leave, on join
    int id = 910;
    for (const auto& k : kinds) {
        const std::string gid = std::to_string(id);
        id += 10;
        auto set_group = [&](const char* verb, const std::string& members) {
            if (k.type.empty()) {
                std::vector<std::string> args{"route", "replace", std::string(vip) + "/32", "metric", "1"};
                for (std::size_t at = 0; at < members.size(); at += 4) {
                    const int i = members[at + 2] - '1';
                    args.insert(args.end(), {"nexthop", "via", node_ip(i), "dev", "eth0"});
                }
                router_ip_cmd(args);
                return;
            }
            std::vector<std::string> args{"nexthop", verb, "id", gid, "group", members};
            args.insert(args.end(), k.type.begin(), k.type.end());
            router_ip_cmd(args);
        };
        set_group("add", "901/902/903");
        if (!k.type.empty()) router_ip_cmd({"route", "replace", std::string(vip) + "/32", "nhid", gid, "metric", "1"});
        int leave_checked = 0, join_checked = 0, leave_broken = 0, join_broken = 0;
        {
            // 90: about 60 land on n2 and n3, and the check wants 30 of
            // them even when the hash favours n1 or some connects time out
            // on a loaded machine (60 gave 28 once in a clean-clone run).
            auto held = open_held(90);
            set_group("replace", "902/903");  // n1 leaves
            leave_broken = broken_while(held, "n1", k.busy, leave_checked);
        }
        {
            auto held = open_held(60);            // none on n1
            set_group("replace", "901/902/903");  // n1 joins
            join_broken = broken_while(held, "n1", k.busy, join_checked);
        }
        // n1 is back for new flows: with an idle timer it took the idle buckets only.
        int new_on_n1 = 0;
        in_netns(segment_->ns("c"), [&] {
            for (int c = 0; c < 30; ++c) new_on_n1 += connect_once(2s) == "n1";
        });
        std::string buckets;
        if (!k.type.empty()) {
            const std::string all = router_ip_cmd({"nexthop", "bucket", "show", "id", gid}).output;
            int mine = 0;
            for (std::size_t at = all.find("nhid 901"); at != std::string::npos; at = all.find("nhid 901", at + 1))
                ++mine;
            buckets = fmt::format(" ({} of 128 buckets)", mine);
        }
        std::cout << "[ MEASURED ] " << k.name << ": n1 left: " << leave_broken << " of " << leave_checked
                  << " established connections on n2 and n3 broke; n1 joined: " << join_broken << " of " << join_checked
                  << "; then " << new_on_n1 << " of 30 new connections on n1" << buckets << "\n";
        EXPECT_GT(new_on_n1, 0) << k.name;
        EXPECT_GE(leave_checked, 30);
        EXPECT_GE(join_checked, 30);
        result[k.name] = {leave_broken, join_broken};
        router_ip_cmd({"route", "del", std::string(vip) + "/32", "metric", "1"});
        if (!k.type.empty()) router_ip_cmd({"nexthop", "del", "id", gid});
    }
    // A resilient group moves only the leaving node's buckets; with busy
    // flows and an idle timer, a joining node takes only idle buckets.
    // (Loose where the timing of a loaded machine plays a part.)
    EXPECT_EQ(result[kinds[1].name].first, 0);
    EXPECT_EQ(result[kinds[2].name].first, 0);
    EXPECT_LE(result[kinds[2].name].second, 3);
    EXPECT_GT(result[kinds[0].name].first + result[kinds[0].name].second, 0) << "no flow moved with hash-threshold";
}

}  // namespace
}  // namespace apilb::test
