// What an upgrade carries from the old process to the new one besides
// sockets (docs/upgrade.md, "What carries over"): every backend's health
// view and the counters that /metrics shows, as handover_state lines.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "apilb/dataplane/snapshot.hpp"
#include "apilb/process/handover.hpp"
#include "apilb/process/handover_state.hpp"

namespace apilb {

class health_checker;
struct carried_health;

/// The old side's lines: the counters of every listener, backend and the
/// process (atomics, any thread), and with `health` (control thread only)
/// every backend's health and its probe counters.
std::vector<handover::state_line> state_lines(const snapshot& snap, const process_stats& stats,
                                              const health_checker* health);

/// The new side: counters go on from the old process's values. Each value
/// is added once: a later frame of the same series adds only what it grew
/// by, so the series never goes back and no count is doubled. Control thread.
class carried_counters {
public:
    /// Adds what `lines` say beyond what came before to the counters of
    /// `snap` (series this config has: listener by name, backend by pool,
    /// name and address, as a reload keeps them) and `stats`. Returns the
    /// number of series it moved; lines it cannot read are skipped and counted in `bad`.
    std::size_t apply(const std::vector<handover::state_line>& lines, const snapshot& snap, process_stats& stats,
                      std::size_t& bad);

private:
    /// How much of it to add now: `value` less what this series had.
    std::uint64_t grow(const std::string& key, std::uint64_t value);

    std::map<std::string, std::uint64_t> applied_;
};

/// The old side, once the new process took the sessions: the counters'
/// values now (no health: the new process judges by itself from here) as
/// `state` frames. A failure is logged, not thrown: the upgrade has
/// succeeded, and the new process's series go on from the first values.
/// `extra` lines go with them (the VIP's release, upgrade_vip.cpp).
void send_final_state(int channel, const snapshot& snap, const process_stats& stats,
                      const std::vector<handover::state_line>& extra = {});

/// The health lines of `lines`, as the health checker takes them; lines it
/// cannot read are skipped and counted in `bad`.
std::vector<carried_health> carried_health_of(const std::vector<handover::state_line>& lines, std::size_t& bad);

}  // namespace apilb

namespace apilb::handover {

/// Sends `payloads` (encode_state()) as `state` frames and a `state_end`
/// with their count. Throws handover_error.
void send_state(int channel, const std::vector<std::string>& payloads, std::chrono::steady_clock::time_point deadline);

/// Receives `state` frames until `state_end` (whose count must match) and
/// returns their lines; at most max_state_frames frames and max_state_lines
/// lines. A frame whose lines cannot be read is skipped, counted in `bad`
/// (the state is a help, not a condition of the upgrade). Throws
/// handover_error for anything else than those two frame types.
std::vector<state_line> receive_state(int channel, std::chrono::steady_clock::time_point deadline, std::size_t& bad);

/// Takes one `state` frame `f` into `lines` (counted against the limits);
/// a frame it cannot read counts in `bad`. For a receiver that meets state
/// frames among others (receive_inherited).
void take_state_frame(const frame& f, std::vector<state_line>& lines, std::size_t& bad);

}  // namespace apilb::handover
