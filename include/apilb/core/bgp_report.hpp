// What the BGP agent (src/vip/bgp_agent.cpp) knows, as plain data for the
// admin endpoint's metrics (docs/metrics.md, apilb_bgp_*). Pure core.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace apilb {

/// The BGP side of a running apilb; `enabled` is false without a bgp section.
struct bgp_report {
    /// One VIP: whether apilb has it on the interface (FRR announces it).
    struct vip {
        std::string ip;
        bool announced = false;
        std::uint64_t withdrawals = 0;  ///< times apilb took it off
    };
    /// One configured peer and its session state as FRR last said it.
    struct peer {
        std::string address;
        std::string state;  ///< FRR's bgpState ("Established", "Active", ...); "" = unknown
    };
    bool enabled = false;
    std::vector<vip> vips;
    std::vector<peer> peers;
    bool frr_up = false;                   ///< the last `vtysh` query answered
    std::uint64_t frr_query_failures = 0;  ///< queries that failed, timed out or did not parse
    std::uint64_t address_errors = 0;      ///< netlink changes of a VIP that failed
    std::uint64_t frr_restarts = 0;        ///< manage: true: times apilb started its FRR again
};

/// FRR's BGP finite-state-machine states, in order (RFC 4271 §8.2.2).
inline constexpr const char* bgp_states[] = {"Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"};

}  // namespace apilb
