// The VIPs on this host's interfaces, through rtnetlink: removing a VRRP VIP
// keepalived left behind when it died (a crash leaves the address configured
// while the peer takes it too), and putting a BGP VIP on the local interface
// FRR announces it from, with the local route that keeps the node answering
// for it while the announcement is withdrawn. Each call is one request and
// its acknowledgement, bounded by a 1 s wait.
#pragma once

#include <string>
#include <system_error>
#include <vector>

#include "apilb/core/config.hpp"

namespace apilb {

/// The routing protocol number apilb's own routes carry (`ip route show proto 249`).
constexpr unsigned char apilb_route_protocol = 249;

/// Deletes `vip` from `interface`. An address that is not there is success.
std::error_code remove_vip(const std::string& interface, const vrrp_vip& vip);

/// Adds (`add`) or deletes `ip` as a host address (/32 or /128) on
/// `interface`. Adding one that is there, or deleting one that is not, is success.
std::error_code set_host_address(const std::string& interface, const std::string& ip, bool is_v6, bool add);

/// Adds (`add`) or deletes apilb's route `local <ip> dev lo table local proto
/// 249`: the kernel takes packets to `ip` as its own whether or not the
/// address is on an interface (AnyIP), so that taking the address away to
/// withdraw it does not drop the sessions and connects that still arrive.
/// Adding replaces the kernel's own route for an address already there;
/// deleting removes only apilb's. Either is success when already done.
std::error_code set_local_route(const std::string& ip, bool is_v6, bool add);

/// A host address (/32 or /128) found in the kernel.
struct host_address {
    std::string ip;
    bool is_v6 = false;
};

/// The addresses apilb marked as its BGP VIPs: the destinations of its
/// local routes (table local, proto 249), which a killed apilb leaves behind.
/// What `apilb bgp-withdraw` takes off when the config no longer says them
/// (edited, broken or gone since). One dump per family, each read bounded
/// by 1 s waits and a count; `ec` says why it could not be read.
std::vector<host_address> marked_vips(std::error_code& ec);

/// Deletes host address `ip` from every interface that has it; success
/// when none has it.
std::error_code remove_host_address_everywhere(const std::string& ip, bool is_v6);

}  // namespace apilb
