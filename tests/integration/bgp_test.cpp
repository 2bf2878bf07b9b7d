// One apilb node announcing its VIP over BGP to a router, both running real
// FRR (zebra, bgpd, bfdd) in network namespaces this test creates on a
// private bridge (198.18.20.0/24) and removes afterwards. The node's FRR runs
// exactly the frr.conf that the real `apilb frr-config` renders from the
// node's apilb.yaml; the router's is written here (maximum-paths for ECMP,
// BFD, and two routes of its own offered to the node).
//
// Shown: the router learns the VIP (and only the VIP) into its kernel table
// within a bounded time, the BFD session comes up, a client behind the
// router reaches a listener on the VIP, the node installs nothing the router
// offers, and removing the VIP from the node's loopback withdraws the route
// (what the readiness coupling of docs/bgp.md will drive). Needs root; skips
// with the reason without it or without FRR.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "harness.hpp"
#include "netns.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* frr_dir = "/usr/lib/frr";  // Debian keeps the daemons out of $PATH
constexpr const char* router_ip = "198.18.20.1";
constexpr const char* node_ip = "198.18.20.11";
constexpr const char* vip = "198.18.21.100";
/// Also on the node's loopback, but not a VIP: it must never be announced.
constexpr const char* other_local = "198.18.21.200";

/// One host's FRR: its daemons, started in `ns`, their sockets, pid files
/// and logs in `dir`; each ended by its PID (SIGTERM, then SIGKILL).
class frr_host {
public:
    frr_host(std::string ns, std::string dir, std::string ip_bin)
        : ns_(std::move(ns)), dir_(std::move(dir)), ip_bin_(std::move(ip_bin)) {}
    ~frr_host() {
        for (auto& d : daemons_) {
            d->signal(SIGTERM);
            if (!d->wait(10s)) d->signal(SIGKILL);  // the process object reaps it
        }
    }

    /// Starts zebra, then bgpd and bfdd, with an empty config; fails the test if one opens no vty socket.
    void start() {
        write_file(dir_ + "/empty.conf", "");
        for (const char* daemon : {"zebra", "bgpd", "bfdd"}) {
            std::vector<std::string> argv{ip_bin_, "netns", "exec", ns_, std::string(frr_dir) + "/" + daemon,
                                          // The frr user is in the frrvty group that owns the vty sockets.
                                          "-u", "frr", "-g", "frr", "-i", dir_ + "/" + daemon + ".pid", "-z",
                                          dir_ + "/zserv.api", "--vty_socket", dir_, "-f", dir_ + "/empty.conf",
                                          // No vty on TCP: the sockets in dir_ are enough.
                                          "-P", "0", "--log", "file:" + dir_ + "/" + daemon + ".log"};
            if (std::string(daemon) == "bfdd") {
                argv.push_back("--bfdctl");
                argv.push_back(dir_ + "/bfdd.sock");
            }
            daemons_.push_back(std::make_unique<process>(argv, dir_ + "/" + daemon + ".out"));
            // bgpd and bfdd connect to zebra's socket; vtysh needs every vty socket.
            const std::string sock = dir_ + "/" + daemon + ".vty";
            ASSERT_TRUE(wait_until([&] { return std::filesystem::exists(sock); }, 30s))
                << daemon << " did not open " << sock << ":\n"
                << daemons_.back()->log();
        }
    }

    /// Applies `conf` to the running daemons, as `vtysh -b` does with frr.conf at boot.
    void apply(const std::string& conf) const {
        write_file(dir_ + "/frr.conf", conf);
        auto r = run_command({ip_bin_, "netns", "exec", ns_, "vtysh", "--vty_socket", dir_, "-f", dir_ + "/frr.conf"});
        ASSERT_EQ(r.exit_code, 0) << r.output << "\nfor:\n" << conf;
    }

    /// One vtysh command's output ("" if it failed).
    std::string show(const std::string& command) const {
        auto r = run_command({ip_bin_, "netns", "exec", ns_, "vtysh", "--vty_socket", dir_, "-c", command}, 20s);
        return r.exit_code == 0 ? r.output : "";
    }

    /// Every daemon still runs (a crash would explain a missing route).
    std::string exited() const {
        std::string out;
        for (const auto& d : daemons_) {
            if (!d->running()) out += d->log_path() + ":\n" + d->log() + "\n";
        }
        return out;
    }

private:
    static void write_file(const std::string& path, const std::string& text) {
        std::ofstream(path) << text;
        if (const passwd* pw = ::getpwnam("frr")) (void)::chown(path.c_str(), pw->pw_uid, pw->pw_gid);
    }

    std::string ns_;
    std::string dir_;
    std::string ip_bin_;
    std::vector<std::unique_ptr<process>> daemons_;
};

class BgpPeering : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
            GTEST_SKIP() << "needs network namespaces (root, iproute2, veth and bridge): " << why;
        }
        for (const char* daemon : {"zebra", "bgpd", "bfdd"}) {
            if (!std::filesystem::exists(std::string(frr_dir) + "/" + daemon)) {
                GTEST_SKIP() << "FRR is not installed (" << frr_dir << "/" << daemon
                             << " is missing; scripts/install-deps.sh installs frr)";
            }
        }
        const passwd* pw = ::getpwnam("frr");
        if (pw == nullptr || find_program("vtysh").empty()) GTEST_SKIP() << "FRR's frr user or vtysh is missing";
        ip_bin_ = find_program("ip");

        netns_segment::remove_orphans("apilb-bgp-");
        segment_ = std::make_unique<netns_segment>("apilb-bgp-" + std::to_string(::getpid()));
        segment_->add_host("r", {std::string(router_ip) + "/24"});
        segment_->add_host("n1", {std::string(node_ip) + "/24"});
        // The VIP lives on the node's loopback, so the node answers for it.
        segment_->ip("n1", {"addr", "add", std::string(vip) + "/32", "dev", "lo"});
        segment_->ip("n1", {"addr", "add", std::string(other_local) + "/32", "dev", "lo"});
        // A route of the router's own, offered to the node with a default route.
        segment_->ip("r", {"addr", "add", "198.18.22.1/24", "dev", "lo"});

        for (const char* host : {"r", "n1"}) {
            const std::string d = dir_.path() + "/" + host;
            std::filesystem::create_directories(d);
            // The daemons drop to the frr user: their sockets and logs go here.
            ASSERT_EQ(::chown(d.c_str(), pw->pw_uid, pw->pw_gid), 0);
        }
        ::chmod(dir_.path().c_str(), 0755);
        router_ = std::make_unique<frr_host>(segment_->ns("r"), dir_.path() + "/r", ip_bin_);
        node_ = std::make_unique<frr_host>(segment_->ns("n1"), dir_.path() + "/n1", ip_bin_);
    }

    /// The destinations of the routes bgpd installed in `host`'s kernel table.
    std::set<std::string> bgp_routes(const std::string& host) const {
        auto r = run_command({ip_bin_, "-n", segment_->ns(host), "route", "show", "proto", "bgp"});
        std::set<std::string> out;
        std::istringstream lines(r.output);
        for (std::string line; std::getline(lines, line);) {
            if (!line.empty()) out.insert(line.substr(0, line.find(' ')));
        }
        return out;
    }

    temp_dir dir_;
    std::string ip_bin_;
    std::unique_ptr<netns_segment> segment_;
    std::unique_ptr<frr_host> router_;
    std::unique_ptr<frr_host> node_;
};

/// The router: ECMP over up to 8 paths (the scale-out of docs/bgp.md), BFD,
/// and a default route and 198.18.22.0/24 offered to the node.
std::string router_conf() {
    return fmt::format(R"(frr defaults traditional
router bgp 64500
 bgp router-id {0}
 no bgp ebgp-requires-policy
 bgp bestpath as-path multipath-relax
 neighbor {1} remote-as 64512
 neighbor {1} bfd
 neighbor {1} timers connect 1
 address-family ipv4 unicast
  network 198.18.22.0/24
  maximum-paths 8
  neighbor {1} default-originate
 exit-address-family
exit
)",
                       router_ip, node_ip);
}

TEST_F(BgpPeering, RouterLearnsOnlyTheVipAndLosesItWhenTheVipLeavesTheNode) {
    // The node's frr.conf, rendered by the real binary from its apilb.yaml.
    dir_.write("apilb.yaml", fmt::format(R"(listeners:
  - {{name: api, address: "{0}:6443", pool: cp}}
pools:
  - name: cp
    backends: [{{name: cp-1, address: "198.18.22.1:6443"}}]
bgp:
  local_as: 64512
  router_id: {1}
  # 300 ms x 3 rather than the default 100 ms: a neighbour on this loaded
  # machine may hold a core long enough to drop a session of 100 ms x 3,
  # which would withdraw the route while this test looks at it.
  peers: [{{address: {2}, remote_as: 64500, bfd: true, bfd_interval: 300ms}}]
  vips: [{0}]
)",
                                         vip, node_ip, router_ip));
    auto rendered = run_command(
        {required_env("APILB_BIN"), "frr-config", "-c", dir_.file("apilb.yaml"), "-o", dir_.file("node.conf")});
    ASSERT_EQ(rendered.exit_code, 0) << rendered.output;
    const std::string node_conf = read_file(dir_.file("node.conf"));
    ASSERT_NE(node_conf.find("network 198.18.21.100/32"), std::string::npos) << node_conf;

    ASSERT_NO_FATAL_FAILURE(router_->start());
    ASSERT_NO_FATAL_FAILURE(node_->start());
    ASSERT_NO_FATAL_FAILURE(router_->apply(router_conf()));
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_NO_FATAL_FAILURE(node_->apply(node_conf));

    // Connect retries every 1 s (router) and 5 s (node); 60 s is a starved machine.
    const std::set<std::string> only_vip{vip};
    ASSERT_TRUE(wait_until([&] { return bgp_routes("r") == only_vip; }, 60s))
        << "router's BGP routes: " << fmt::format("{}", fmt::join(bgp_routes("r"), ", ")) << "\n"
        << router_->show("show bgp summary") << node_->show("show bgp summary") << router_->exited() << node_->exited();
    std::cout << "[ MEASURED ] VIP route in the router's kernel " << ms_since(t0) << " ms after the node's config\n";
    const std::string bfd_peers = router_->show("show bfd peers brief");
    EXPECT_TRUE(wait_until([&] { return router_->show("show bfd peers brief").find(" up") != std::string::npos; }, 30s))
        << bfd_peers;

    // The router offered two routes; the node took neither into its kernel.
    const std::string offered = router_->show(
        fmt::format("show bgp ipv4 unicast neighbors {} advertised-routes", node_ip));
    EXPECT_NE(offered.find("0.0.0.0/0"), std::string::npos) << offered;
    EXPECT_NE(offered.find("198.18.22.0/24"), std::string::npos) << offered;
    EXPECT_TRUE(bgp_routes("n1").empty()) << fmt::format("{}", fmt::join(bgp_routes("n1"), ", "));
    // Exactly the VIP, not the node's other loopback address.
    EXPECT_EQ(bgp_routes("r"), only_vip);

    // A client behind the router reaches a listener on the VIP over the learned route.
    std::uint16_t port = 0;
    const int listener = listen_in_netns(segment_->ns("n1"), vip, 4, port);
    ASSERT_GE(listener, 0);
    in_netns(segment_->ns("r"), [&] {
        client c;
        EXPECT_EQ(c.connect(vip, port), 0) << "connect to the VIP from the router";
    });
    ::close(listener);

    // The VIP leaves the node: `network` with import-check withdraws it.
    const auto t1 = std::chrono::steady_clock::now();
    segment_->ip("n1", {"addr", "del", std::string(vip) + "/32", "dev", "lo"});
    EXPECT_TRUE(wait_until([&] { return bgp_routes("r").empty(); }, 30s))
        << fmt::format("{}", fmt::join(bgp_routes("r"), ", "));
    std::cout << "[ MEASURED ] VIP route gone from the router " << ms_since(t1)
              << " ms after the VIP left the node's loopback\n";
    EXPECT_EQ(router_->exited(), "");
    EXPECT_EQ(node_->exited(), "");
}

}  // namespace
}  // namespace apilb::test
