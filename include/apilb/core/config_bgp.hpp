// The `bgp` section of the configuration model (docs/bgp.md), in a file of
// its own to keep config.hpp short; config.hpp includes it. Pure core.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace apilb {

/// One BGP neighbour (a top-of-rack router) this node announces the VIPs to.
struct bgp_peer {
    std::string address;  ///< canonical numeric address of the neighbour
    bool is_v6 = false;
    std::uint32_t remote_as = 0;  ///< 1..4294967295
    /// A file holding the TCP MD5 password (RFC 2385); "" = none. The secret
    /// never sits in the YAML, which is readable by more people than the file.
    std::string password_file;
    bool bfd = false;                             ///< BFD on this session (bfdd)
    std::chrono::milliseconds bfd_interval{100};  ///< transmit and receive interval
    std::uint32_t bfd_multiplier = 3;             ///< missed packets before the peer is down
    friend bool operator==(const bgp_peer&, const bgp_peer&) = default;
};

/// One VIP announced as a host route (/32 or /128).
struct bgp_vip {
    std::string ip;  ///< canonical numeric address
    bool is_v6 = false;
    friend bool operator==(const bgp_vip&, const bgp_vip&) = default;
};

/// The `bgp` section: this node announces the VIPs to its peers through FRR
/// (bgpd, bfdd), so every apilb node takes traffic (ECMP). An alternative to
/// `vrrp`; absent = no BGP.
struct bgp_config {
    std::uint32_t local_as = 0;  ///< this node's AS, 1..4294967295
    std::string router_id;       ///< IPv4, unique among the peers' neighbours
    std::vector<bgp_peer> peers;
    std::vector<bgp_vip> vips;
    /// Standard communities ("64512:100") and well-known names ("no-export")
    /// set on the announced VIPs.
    std::vector<std::string> communities;
    std::optional<std::uint32_t> med;  ///< MULTI_EXIT_DISC on the VIP routes
    /// apilb runs zebra, bgpd and bfdd as its children (frr_supervisor).
    bool manage = false;
    std::string frr_config = "/etc/frr/frr.conf";  ///< where the rendered configuration belongs
    /// Where apilb puts the VIPs while it is ready ("lo" or a dummy that is
    /// up): FRR announces a VIP only while it is on a local interface.
    std::string interface = "lo";
    /// SIGTERM: how long apilb keeps serving after withdrawing the VIPs,
    /// for the routers to stop sending new connections, before it drains.
    std::chrono::milliseconds withdraw_wait{2000};
    std::string vtysh_path = "/usr/bin/vtysh";  ///< asked for the peers' session state
    std::string vty_socket_dir;                 ///< vtysh --vty_socket; "" = FRR's; manage: apilb's own FRR
    friend bool operator==(const bgp_config&, const bgp_config&) = default;
};

}  // namespace apilb
