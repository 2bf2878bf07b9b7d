// The payload of an upgrade's `state` frames (docs/upgrade.md, "What carries
// over"): the old process's health view and counters, as lines of words
// "<kind> <key>=<value> ...". Pure: no process, no sockets; fuzzed with the
// rest of the channel. What the kinds and keys mean is process_state.cpp's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace apilb::handover {

/// The version of the lines inside a `state` frame ("v1" first). Within a
/// version, a reader skips kinds and keys it does not know, so that a later
/// release can add some without a new channel version.
inline constexpr unsigned state_record_version = 1;
/// Hard limit of one line.
inline constexpr std::size_t max_state_line_bytes = 2048;
/// Hard limit of the lines of one upgrade (all its state frames).
inline constexpr std::size_t max_state_lines = 200'000;
/// Hard limit of the state frames of one phase.
inline constexpr int max_state_frames = 4096;

/// One line: a kind ("health", "backend", "listener", "process", "probes")
/// and its fields in order; keys and values are single words.
struct state_line {
    std::string kind;
    std::vector<std::pair<std::string, std::string>> fields;

    /// Adds a field (value without spaces or newlines, as the caller makes it).
    state_line& add(std::string key, std::string value);
    state_line& add(std::string key, std::uint64_t value);
    /// The value of `key`, or nullptr.
    const std::string* find(std::string_view key) const;
    /// The value of `key`; throws handover_error naming kind and key if it is missing.
    const std::string& text(std::string_view key) const;
    /// `key` as a decimal u64; throws handover_error if missing or malformed.
    std::uint64_t number(std::string_view key) const;
    /// `key` as 0 or 1; throws handover_error if missing or malformed.
    bool flag(std::string_view key) const;
};

/// The payloads of the `state` frames that carry `lines`, each within
/// max_frame_bytes. A line over max_state_line_bytes is left out (and
/// counted in `dropped` if given): a name that long cannot be in a config.
std::vector<std::string> encode_state(const std::vector<state_line>& lines, std::size_t* dropped = nullptr);

/// Parses one `state` payload; throws handover_error naming the line and
/// what is wrong (another record version, a line over the limit, a word
/// that is not key=value, an empty kind). Pure: fuzzed.
std::vector<state_line> parse_state(std::string_view payload);

}  // namespace apilb::handover
