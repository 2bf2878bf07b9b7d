// Supervised children that move with an upgrade (docs/upgrade.md, "Children
// across an upgrade"): a supervisor's lifeline (both ends of its pipe) and
// each of its keeper processes (a pidfd), as `child` frames on the handover
// channel. Each frame's payload is one state line (handover_state.hpp):
//   lifeline group=<g>                                 two descriptors: read, write
//   child group=<g> name=<n> pid=<keeper> daemon=<pid> one descriptor: the keeper's pidfd
// Every supervisor uses it: FRR's keepers (group frr, right before
// sessions_end) and keepalived's (group keepalived, right after hello); the
// receiver groups by `group`.
#pragma once

#include <chrono>
#include <vector>

#include "apilb/process/handover.hpp"
#include "apilb/vip/child_lifeline.hpp"

namespace apilb::handover {

/// Sends `children`'s lifeline, then one frame per child; the descriptors
/// are sent as they are (the caller keeps and closes its copies). Throws
/// handover_error.
void send_children(int channel, const handed_children& children, std::chrono::steady_clock::time_point deadline);

/// Takes a `child` frame into the group of `groups` it names (made on
/// first sight), owning its descriptors from here. Throws handover_error
/// (the frame's descriptors closed) for a payload that is not one such line
/// or the wrong number of descriptors.
void take_child_frame(frame& f, std::vector<handed_children>& groups);

}  // namespace apilb::handover
