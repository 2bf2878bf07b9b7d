// One host's FRR (zebra, bgpd, bfdd) in a network namespace, for the BGP
// tests: started as the frr user with their sockets, pid files and logs in a
// scratch directory, configured through vtysh, ended by PID.
#pragma once

#include <pwd.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "harness.hpp"
#include "netns.hpp"

namespace apilb::test {

inline constexpr const char* frr_dir = "/usr/lib/frr";  // Debian keeps the daemons out of $PATH

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

    /// Whether this host has `sessions` BFD sessions, each bound to its
    /// interface and up. FRR 8.4's bgpd registers a peer's BFD session before
    /// the BGP session is established (no local address, no interface) and
    /// replaces it once it is; the peer's bfdd sees the old one go down and
    /// its bgpd resets the young BGP session (Cease/BFD Down), which comes
    /// back about 2 s later. Every new peering does this once; after it
    /// the sessions stay as they are.
    bool bfd_settled(std::size_t sessions) const {
        std::string json = show("show bfd peers json");
        std::erase_if(json, [](char c) { return c == ' ' || c == '\n'; });
        std::size_t settled = 0, seen = 0;
        for (std::size_t at = json.find("{\"multihop\""); at != std::string::npos;
             at = json.find("{\"multihop\"", at + 1)) {
            const std::string session = json.substr(at, json.find('}', at) - at);
            ++seen;
            if (session.find("\"interface\":\"") != std::string::npos &&
                session.find("\"status\":\"up\"") != std::string::npos)
                ++settled;
        }
        return seen == sessions && settled == sessions;
    }

    /// SIGKILL to every daemon, by PID: the node's routing dies with no goodbye.
    void kill_all() const {
        for (const auto& d : daemons_) d->signal(SIGKILL);
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

/// What varies between the BGP tests' apilb.yaml files.
struct bgp_node_spec {
    std::string vip;
    std::uint16_t port = 0;      ///< the listener's, on the VIP
    std::string backend;         ///< "ip:port", probed over TCP every 100 ms
    std::string router_id;       ///< also the node's address
    std::string peer;            ///< the router, AS 64500 (the node is 64512)
    std::string peer_options;    ///< appended to the peer's map: ", bfd: true"
    std::string vty_socket_dir;  ///< the node's FRR (or an empty directory: no FRR)
    std::string head;            ///< sections before the listeners (admin, timeouts)
    std::string bgp_tail;        ///< lines appended to the bgp section, indented
};

/// An apilb.yaml for a BGP node: one listener on the VIP, one backend, and
/// a bgp section announcing the VIP to the one peer.
inline std::string bgp_node_yaml(const bgp_node_spec& n) {
    return n.head +
           fmt::format(R"(listeners:
  - {{name: api, address: "{0}:{1}", pool: cp}}
pools:
  - name: cp
    backends: [{{name: cp-1, address: "{2}"}}]
    health: {{type: tcp, interval: 100ms, timeout: 500ms, rise: 1, fall: 2}}
bgp:
  local_as: 64512
  router_id: {3}
  peers: [{{address: {4}, remote_as: 64500{5}}}]
  vips: [{0}]
  vty_socket_dir: {6}
)",
                       n.vip, n.port, n.backend, n.router_id, n.peer, n.peer_options, n.vty_socket_dir) +
           n.bgp_tail;
}

/// A router (AS 64500) for one apilb node (AS 64512): ECMP, BFD (FRR's
/// default 300 ms), a connect retry of 1 s, and neighbour changes and
/// notifications in its bgpd.log.
inline std::string one_node_router_conf(const std::string& router_ip, const std::string& node_ip) {
    return fmt::format(R"(frr defaults traditional
router bgp 64500
 bgp router-id {0}
 bgp log-neighbor-changes
 no bgp ebgp-requires-policy
 neighbor {1} remote-as 64512
 neighbor {1} bfd
 neighbor {1} timers connect 1
 address-family ipv4 unicast
  maximum-paths 8
 exit-address-family
exit
)",
                       router_ip, node_ip);
}

/// Why FRR cannot run here ("" when it can): the daemons, vtysh and the frr user.
inline std::string frr_unavailable_reason() {
    for (const char* daemon : {"zebra", "bgpd", "bfdd"}) {
        if (!std::filesystem::exists(std::string(frr_dir) + "/" + daemon)) {
            return std::string("FRR is not installed (") + frr_dir + "/" + daemon +
                   " is missing; scripts/install-deps.sh installs frr)";
        }
    }
    if (::getpwnam("frr") == nullptr) return "FRR's frr user is missing";
    return {};
}

/// Why a test with FRR in network namespaces cannot run here ("" when it
/// can): namespaces (root, iproute2, veth, bridge), FRR, its user and vtysh.
inline std::string frr_netns_unavailable_reason() {
    if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
        return "needs network namespaces (root, iproute2, veth and bridge): " + why;
    }
    if (auto why = frr_unavailable_reason(); !why.empty()) return why;
    if (find_program("vtysh").empty()) return "FRR's vtysh is missing";
    return {};
}

}  // namespace apilb::test
