// Discovery's last-known-good: the set of apiservers a pool last learned
// from the API, kept in a small JSON file so that a restart while the API
// cannot be reached starts from it instead of the seed. Written atomically
// and durably; a file that is corrupt, unreadable or too old is reported
// and ignored, never fatal. Control thread (and start-up) only.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "apilb/control/endpoint_slices.hpp"

namespace apilb {

/// What a state file holds.
struct discovery_state {
    std::string pool;
    std::chrono::system_clock::time_point written_at;
    std::vector<discovered_endpoint> endpoints;
};

/// The file's text for `state` (one JSON object, versioned).
std::string render_discovery_state(const discovery_state& state);

/// Parses a state file's bytes; an error for anything apilb would not have written.
parsed<discovery_state> parse_discovery_state(std::string_view text);

/// Writes `state` to `path` (write_file_atomically, durable); "" or why not.
std::string save_discovery_state(const std::string& path, const discovery_state& state);

/// The state for `pool` from `path` if it can be used now: readable
/// (bounded, max_state_file_bytes), valid, written for this pool, not older
/// than `max_age` and not empty. Otherwise nullopt and `why` says what was
/// wrong, for one warning ("" when the file does not exist: a first start).
std::optional<discovery_state> load_discovery_state(const std::string& path, const std::string& pool,
                                                    std::chrono::milliseconds max_age,
                                                    std::chrono::system_clock::time_point now, std::string& why);

}  // namespace apilb
