// Fuzz target: FRR's `show bgp neighbors json` as apilb reads it every 2 s
// (vtysh's answer, at most 4 MiB; parse_bgp_neighbors). The bytes are the
// answer. Asserted: nothing crashes or nests past the bound; every state
// parsed is one of FRR's six session states (the agent logs a change and
// the metrics label it, so no other text may come through); and the result
// written back as FRR's JSON parses to the same result.
#include <boost/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <string_view>

#include "apilb/core/bgp_report.hpp"
#include "apilb/vip/bgp_neighbors.hpp"

namespace {

void check(bool ok, const char* what, std::string_view detail) {
    if (ok) return;
    std::fprintf(stderr, "bgp_neighbors_fuzz: %s: %.*s\n", what,
                 static_cast<int>(std::min<std::size_t>(detail.size(), 200)), detail.data());
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const auto states = apilb::parse_bgp_neighbors(text);
    if (!states) return 0;
    check(states->size() <= size / 2, "more neighbours than the text can hold", text);
    boost::json::object again;
    for (const auto& [address, state] : *states) {
        check(
            std::find(std::begin(apilb::bgp_states), std::end(apilb::bgp_states), state) != std::end(apilb::bgp_states),
            "a state that is not one of FRR's", state);
        again[address] = boost::json::object{{"bgpState", state}};
    }
    const auto round_trip = apilb::parse_bgp_neighbors(boost::json::serialize(again));
    check(round_trip && *round_trip == *states, "the result written back parses differently", text);
    return 0;
}
