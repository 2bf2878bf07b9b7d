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
// offers, and removing the VIP from the node's loopback withdraws the route.
//
// Then the coupling (docs/bgp.md): the real apilb on the node puts the VIP on
// its loopback only while it is ready, so the router has the route only then;
// a node whose backend fails its probes withdraws; SIGTERM withdraws first and
// keeps answering for withdraw_wait before it drains; the apilb_bgp_* metrics
// say all of it, with the peer's session state read from FRR. An apilb
// killed alone leaves the route announced until `apilb bgp-withdraw` (the
// unit's ExecStopPost) takes the VIP off, even when the file has been broken
// since (the VIP found by apilb's local route). Needs root;
// skips with the reason without it or without FRR.
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

#include "frr_host.hpp"
#include "harness.hpp"
#include "netns.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* router_ip = "198.18.20.1";
constexpr const char* node_ip = "198.18.20.11";
constexpr const char* vip = "198.18.21.100";
/// Also on the node's loopback, but not a VIP: it must never be announced.
constexpr const char* other_local = "198.18.21.200";

std::string router_conf();

class BgpPeering : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
            GTEST_SKIP() << "needs network namespaces (root, iproute2, veth and bridge): " << why;
        }
        if (auto why = frr_unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
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

    /// A failed run says what the daemons saw: the end of every log in the
    /// scratch directory (FRR's on both hosts, apilb's), before it is removed.
    void TearDown() override {
        if (!HasFailure()) return;
        std::vector<std::filesystem::path> logs;
        for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.path())) {
            if (e.path().extension() == ".log") logs.push_back(e.path());
        }
        std::sort(logs.begin(), logs.end());
        for (const auto& path : logs) {
            const std::string text = read_file(path.string());
            std::size_t from = text.size();
            for (int lines = 0; from > 0 && lines <= 60; --from) {
                if (text[from - 1] == '\n') ++lines;
            }
            std::cout << "---- the end of " << path.string() << ":\n" << text.substr(from) << "\n";
        }
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

    /// Starts both FRRs: the router's router_conf(), the node's what the real
    /// `apilb frr-config` renders from dir_'s apilb.yaml.
    void start_frr_for_apilb_yaml() {
        auto rendered = run_command(
            {required_env("APILB_BIN"), "frr-config", "-c", dir_.file("apilb.yaml"), "-o", dir_.file("node.conf")});
        ASSERT_EQ(rendered.exit_code, 0) << rendered.output;
        ASSERT_NO_FATAL_FAILURE(router_->start());
        ASSERT_NO_FATAL_FAILURE(node_->start());
        ASSERT_NO_FATAL_FAILURE(router_->apply(router_conf()));
        ASSERT_NO_FATAL_FAILURE(node_->apply(read_file(dir_.file("node.conf"))));
    }

    /// The router has exactly the VIP from a peering that has settled: both
    /// BFD sessions bound to their interface and up, past the one reset
    /// every new FRR 8.4 peering goes through (frr_host::bfd_settled). A
    /// route seen before that may vanish for about 2 s.
    bool settled_on_only_vip() const {
        return bgp_routes("r") == std::set<std::string>{vip} && router_->bfd_settled(1) && node_->bfd_settled(1);
    }

    /// The command line running apilb with `args` in the node's namespace.
    std::vector<std::string> in_node(std::vector<std::string> args) const {
        args.insert(args.begin(), {ip_bin_, "netns", "exec", segment_->ns("n1"), required_env("APILB_BIN")});
        return args;
    }

    /// What a failed wait prints: the router's routes, both sessions, the daemons' and apilb's ends.
    std::string diagnosis(const process& apilb) const {
        return "router's BGP routes: " + fmt::format("{}", fmt::join(bgp_routes("r"), ", ")) + "\n" +
               router_->show("show bgp summary") + node_->show("show bgp summary") + router_->exited() +
               node_->exited() + "apilb:\n" + apilb.log();
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
    // The logging only says, in a failed run's logs, when a session or BFD went down and why.
    return fmt::format(R"(frr defaults traditional
log timestamp precision 3
debug bfd peer
router bgp 64500
 bgp router-id {0}
 bgp log-neighbor-changes
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
    // Both BFD sessions up: what the rest of this test relies on not to change.
    ASSERT_TRUE(wait_until([&] { return settled_on_only_vip(); }, 60s))
        << router_->show("show bfd peers") << node_->show("show bfd peers") << router_->show("show bgp summary");

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

/// The address apilb's backend answers on, on the node's loopback: taking it
/// away makes the backend fail its probes at once (no route to it).
constexpr const char* backend_ip = "198.18.23.5";

/// The node's apilb.yaml in dir_: a listener on the VIP at `port`, one
/// backend on backend_ip probed every 100 ms, the bgp section with the VIP;
/// `head` goes before it (say, an admin section), `bgp_tail` into bgp.
void write_node_yaml(const temp_dir& dir, std::uint16_t port, std::uint16_t backend_port, const std::string& head,
                     const std::string& bgp_tail) {
    dir.write("apilb.yaml", bgp_node_yaml({.vip = vip,
                                           .port = port,
                                           .backend = fmt::format("{}:{}", backend_ip, backend_port),
                                           .router_id = node_ip,
                                           .peer = router_ip,
                                           .peer_options = ", bfd: true, bfd_interval: 300ms",
                                           .vty_socket_dir = dir.path() + "/n1",
                                           .head = head,
                                           .bgp_tail = bgp_tail}));
}

TEST_F(BgpPeering, ApilbAnnouncesOnlyWhileReadyAndWithdrawsBeforeItDrains) {
    // The backend's address comes only once apilb runs: until then its probes fail.
    std::unique_ptr<tcp_server> backend;
    in_netns(segment_->ns("n1"), [&] { backend = std::make_unique<tcp_server>("0.0.0.0", echo_handler()); });
    const std::uint16_t port = free_port();
    const std::uint16_t admin = free_port();
    // The listener is on the VIP itself: apilb's local route lets it bind
    // although the VIP is on no interface until apilb is ready.
    write_node_yaml(dir_, port, backend->port(), fmt::format("admin: {{address: \"127.0.0.1:{}\"}}\n", admin),
                    "  withdraw_wait: 3s\n");
    ASSERT_NO_FATAL_FAILURE(start_frr_for_apilb_yaml());
    process apilb(in_node({"run", "--config", dir_.file("apilb.yaml")}), dir_.file("apilb.log"));
    const std::set<std::string> only_vip{vip};
    auto diagnose = [&] { return diagnosis(apilb); };
    auto metrics = [&] {
        return run_command({ip_bin_, "netns", "exec", segment_->ns("n1"), "/usr/bin/curl", "-s", "--max-time", "5",
                            fmt::format("http://127.0.0.1:{}/metrics", admin)})
            .output;
    };
    auto has_metric = [&](const std::string& line) { return metrics().find(line + "\n") != std::string::npos; };
    const std::string vip_label = fmt::format("{{vip=\"{}\"}}", vip);

    // Not ready at start (the backend is unreachable): never announced, not
    // even before the first health round, which the config's assumed health
    // would allow. A node that flapped here would count a withdrawal.
    ASSERT_TRUE(wait_until(
        [&] { return apilb.log().find("withdrawn: pool cp has no healthy backend") != std::string::npos; }, 20s))
        << apilb.log();
    EXPECT_TRUE(has_metric("apilb_bgp_vip_announced" + vip_label + " 0")) << metrics();
    EXPECT_TRUE(has_metric("apilb_bgp_vip_withdrawals_total" + vip_label + " 0")) << metrics();
    EXPECT_EQ(apilb.log().find("FRR announces it"), std::string::npos) << apilb.log();
    segment_->ip("n1", {"addr", "add", std::string(backend_ip) + "/32", "dev", "lo"});

    // Ready: apilb put the VIP on the loopback, FRR announced it.
    ASSERT_TRUE(wait_until([&] { return settled_on_only_vip(); }, 60s)) << diagnose();
    in_netns(segment_->ns("r"), [&] {
        client c;
        ASSERT_EQ(c.connect(vip, port), 0) << "connect to the VIP from the router";
        ASSERT_TRUE(c.send_all("ping"));
        EXPECT_EQ(c.recv_exact(4), "ping") << "through apilb to the backend";
    });
    EXPECT_TRUE(has_metric("apilb_bgp_vip_announced" + vip_label + " 1")) << metrics();
    // The peer's state comes from the node's FRR (vtysh every 2 s).
    EXPECT_TRUE(wait_until(
        [&] {
            return has_metric(fmt::format("apilb_bgp_peer_state{{peer=\"{}\",state=\"Established\"}} 1", router_ip));
        },
        20s, 200ms))
        << metrics();
    EXPECT_TRUE(has_metric("apilb_bgp_frr_up 1")) << metrics();

    // The backend fails its probes: the node withdraws, the router loses the route.
    const auto t_fail = std::chrono::steady_clock::now();
    segment_->ip("n1", {"addr", "del", std::string(backend_ip) + "/32", "dev", "lo"});
    ASSERT_TRUE(wait_until([&] { return bgp_routes("r").empty(); }, 30s)) << diagnose();
    std::cout << "[ MEASURED ] route gone from the router " << ms_since(t_fail)
              << " ms after the node's only backend became unreachable (probes every 100 ms, fall 2)\n";
    EXPECT_TRUE(has_metric("apilb_bgp_vip_announced" + vip_label + " 0")) << metrics();
    EXPECT_TRUE(has_metric("apilb_bgp_vip_withdrawals_total" + vip_label + " 1")) << metrics();

    // It comes back: announced again.
    segment_->ip("n1", {"addr", "add", std::string(backend_ip) + "/32", "dev", "lo"});
    ASSERT_TRUE(wait_until([&] { return bgp_routes("r") == only_vip; }, 60s)) << diagnose();

    // SIGTERM: the route goes first, while apilb still answers on the VIP
    // (its local route) for withdraw_wait; only then does it drain and exit.
    const auto t_term = std::chrono::steady_clock::now();
    apilb.signal(SIGTERM);
    ASSERT_TRUE(wait_until([&] { return bgp_routes("r").empty(); }, 30s)) << diagnose();
    const double withdrawn_ms = ms_since(t_term);
    std::cout << "[ MEASURED ] route gone from the router " << withdrawn_ms << " ms after SIGTERM\n";
    in_netns(segment_->ns("n1"), [&] {
        client c;
        EXPECT_EQ(c.connect(vip, port), 0) << "apilb stopped accepting before withdraw_wait ended";
        EXPECT_TRUE(c.send_all("late"));
        EXPECT_EQ(c.recv_exact(4), "late");
    });
    EXPECT_TRUE(apilb.running()) << "apilb ended " << ms_since(t_term) << " ms after SIGTERM:\n" << apilb.log();
    ASSERT_EQ(apilb.wait(30s), 0) << apilb.log();
    const std::string log = apilb.log();
    const auto withdrawn = log.find("bgp: VIP " + std::string(vip) + " withdrawn: draining");
    const auto drained = log.find("SIGTERM: stopped accepting");
    ASSERT_NE(withdrawn, std::string::npos) << log;
    ASSERT_NE(drained, std::string::npos) << log;
    EXPECT_LT(withdrawn, drained) << log;
    // apilb took its VIP and local route away as it ended.
    auto local = run_command({ip_bin_, "-n", segment_->ns("n1"), "route", "show", "table", "local", "proto", "249"});
    EXPECT_EQ(local.output, "");
    auto addresses = run_command({ip_bin_, "-n", segment_->ns("n1"), "addr", "show", "dev", "lo"});
    EXPECT_EQ(addresses.output.find(std::string(vip) + "/32"), std::string::npos) << addresses.output;
    expect_no_sanitizer_report(log, "apilb");
    EXPECT_EQ(router_->exited(), "");
    EXPECT_EQ(node_->exited(), "");
}

/// issue 20: SIGKILL leaves the VIP on the node's loopback, so FRR goes on
/// announcing it to a node where nothing listens; `apilb bgp-withdraw`, which
/// the unit runs as ExecStopPost, takes it off and the route goes.
TEST_F(BgpPeering, KilledApilbLeavesTheRouteUntilBgpWithdrawTakesItAway) {
    std::unique_ptr<tcp_server> backend;
    in_netns(segment_->ns("n1"), [&] { backend = std::make_unique<tcp_server>("0.0.0.0", echo_handler()); });
    segment_->ip("n1", {"addr", "add", std::string(backend_ip) + "/32", "dev", "lo"});
    const std::uint16_t port = free_port();
    write_node_yaml(dir_, port, backend->port(), "", "");
    ASSERT_NO_FATAL_FAILURE(start_frr_for_apilb_yaml());
    process apilb(in_node({"run", "--config", dir_.file("apilb.yaml")}), dir_.file("apilb.log"));
    const std::set<std::string> only_vip{vip};
    auto diagnose = [&] { return diagnosis(apilb); };
    ASSERT_TRUE(wait_until([&] { return settled_on_only_vip(); }, 60s)) << diagnose();

    // apilb alone dies: nothing takes the VIP off, the router keeps the route.
    apilb.signal(SIGKILL);
    ASSERT_TRUE(apilb.wait(10s).has_value()) << "apilb outlived SIGKILL";
    EXPECT_FALSE(wait_until([&] { return bgp_routes("r").empty(); }, 3s))
        << "the route went without bgp-withdraw; the gap this test shows is gone";

    const auto t_withdraw = std::chrono::steady_clock::now();
    auto withdrawn = run_command(in_node({"bgp-withdraw", "--config", dir_.file("apilb.yaml")}));
    ASSERT_EQ(withdrawn.exit_code, 0) << withdrawn.output;
    ASSERT_TRUE(wait_until([&] { return bgp_routes("r").empty(); }, 30s)) << diagnose();
    std::cout << "[ MEASURED ] route gone from the router " << ms_since(t_withdraw)
              << " ms after `apilb bgp-withdraw` started (apilb SIGKILLed, FRR alive)\n";
    auto addresses = run_command({ip_bin_, "-n", segment_->ns("n1"), "addr", "show", "dev", "lo"});
    EXPECT_EQ(addresses.output.find(std::string(vip) + "/32"), std::string::npos) << addresses.output;
    // The local route stays (docs/bgp.md): a connect still in flight is refused, not routed back out.
    auto local = run_command({ip_bin_, "-n", segment_->ns("n1"), "route", "show", "table", "local", "proto", "249"});
    EXPECT_NE(local.output.find(vip), std::string::npos) << local.output;
    // Already off: success again (ExecStopPost after a clean stop).
    auto again = run_command(in_node({"bgp-withdraw", "--config", dir_.file("apilb.yaml")}));
    EXPECT_EQ(again.exit_code, 0) << again.output;
    EXPECT_EQ(router_->exited(), "");
    EXPECT_EQ(node_->exited(), "");
}

/// issue 20: the file changed after apilb read it (here broken by an edit),
/// then apilb was killed: `bgp-withdraw` cannot read its VIPs from the file,
/// yet must take the VIP off (found by apilb's local route), or the node is
/// announced with nothing listening until an apilb with a good file starts.
TEST_F(BgpPeering, BgpWithdrawTakesTheVipOffEvenWhenTheFileIsBroken) {
    std::unique_ptr<tcp_server> backend;
    in_netns(segment_->ns("n1"), [&] { backend = std::make_unique<tcp_server>("0.0.0.0", echo_handler()); });
    segment_->ip("n1", {"addr", "add", std::string(backend_ip) + "/32", "dev", "lo"});
    const std::uint16_t port = free_port();
    write_node_yaml(dir_, port, backend->port(), "", "");
    ASSERT_NO_FATAL_FAILURE(start_frr_for_apilb_yaml());
    process apilb(in_node({"run", "--config", dir_.file("apilb.yaml")}), dir_.file("apilb.log"));
    auto diagnose = [&] { return diagnosis(apilb); };
    ASSERT_TRUE(wait_until([&] { return settled_on_only_vip(); }, 60s)) << diagnose();

    apilb.signal(SIGKILL);
    ASSERT_TRUE(apilb.wait(10s).has_value()) << "apilb outlived SIGKILL";
    dir_.write("apilb.yaml", "listeners: [\n");
    auto withdrawn = run_command(in_node({"bgp-withdraw", "--config", dir_.file("apilb.yaml")}));
    // 2: the file is bad, and the unit's status should say so; the VIP goes all the same.
    EXPECT_EQ(withdrawn.exit_code, 2) << withdrawn.output;
    EXPECT_NE(withdrawn.output.find("apilb.yaml"), std::string::npos) << withdrawn.output;
    EXPECT_NE(withdrawn.output.find(std::string("marked VIP ") + vip + " off"), std::string::npos) << withdrawn.output;
    ASSERT_TRUE(wait_until([&] { return bgp_routes("r").empty(); }, 30s)) << withdrawn.output << diagnose();
    auto addresses = run_command({ip_bin_, "-n", segment_->ns("n1"), "addr", "show", "dev", "lo"});
    EXPECT_EQ(addresses.output.find(std::string(vip) + "/32"), std::string::npos) << addresses.output;
    // Not a VIP (no local route of apilb's): left alone.
    EXPECT_NE(addresses.output.find(std::string(other_local) + "/32"), std::string::npos) << addresses.output;
    EXPECT_EQ(router_->exited(), "");
    EXPECT_EQ(node_->exited(), "");
}

}  // namespace
}  // namespace apilb::test
