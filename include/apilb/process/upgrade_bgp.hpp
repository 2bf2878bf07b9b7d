// An upgrade with a bgp section (docs/upgrade.md, "With a bgp section"): the
// lines and frames that move the VIPs' announcement and apilb's own FRR from
// the old process to the new one. The process's side is in process.hpp
// (hand_over_bgp, end_bgp_handover, check_upgrade_bgp); this is the data.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "apilb/core/config.hpp"
#include "apilb/process/handover.hpp"
#include "apilb/process/handover_state.hpp"
#include "apilb/vip/bgp_agent.hpp"

namespace apilb {

/// The first state frames' `bgp_section section=<fingerprint|none>` line: the
/// new process takes the announcement and FRR over only if its bgp section
/// is the old one's (withdraw_wait and vtysh_path may differ).
handover::state_line bgp_section_line(const std::optional<bgp_config>& bgp);

/// "" when `lines` (the first state frames) name the same bgp section as
/// `bgp`, else why the upgrade cannot keep the announcement.
std::string bgp_section_mismatch(const std::vector<handover::state_line>& lines, const std::optional<bgp_config>& bgp);

/// The old side's lines for `h` (`bgp`, one `bgp_vip` per VIP).
std::vector<handover::state_line> bgp_handover_lines(const bgp_handover& h);

/// What the new process received of the bgp handover during the session phase.
struct bgp_receipt {
    std::vector<handover::state_line> lines;
    std::size_t bad = 0;
    int state_frames = 0;
    std::vector<handed_children> groups;
};

/// The new side: takes a frame of the bgp handover (`state`, `state_end`,
/// `child`) into `r`; false for any other frame. Throws handover_error for
/// a malformed one.
bool take_bgp_frame(handover::frame& f, bgp_receipt& r);

/// What `r` hands over; nullopt when no `bgp` line came (a process without
/// a bgp section sends none). Takes the descriptors out of `r`.
std::optional<bgp_handover> bgp_handover_of(bgp_receipt& r);

}  // namespace apilb
