// The parse of FRR's `show bgp neighbors json`, apart from the bounded child
// that asks for it (frr_query.hpp), so that its fuzz target
// (tests/fuzz/bgp_neighbors_fuzz.cpp) builds without Asio's I/O.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace apilb {

/// FRR's `show bgp neighbors json`: each neighbour's address -> its
/// bgpState, always one of bgp_states (bgp_report.hpp); a neighbour whose
/// state is anything else is left out (its state is unknown). nullopt if
/// `json` is not that (vtysh's error text, a truncated answer, nesting
/// deeper than 32). The caller bounds the size (4 MiB).
std::optional<std::map<std::string, std::string>> parse_bgp_neighbors(std::string_view json);

}  // namespace apilb
