#include "apilb/vip/bgp_neighbors.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <iterator>

#include "apilb/core/bgp_report.hpp"

namespace apilb {

namespace json = boost::json;

std::optional<std::map<std::string, std::string>> parse_bgp_neighbors(std::string_view text) {
    boost::system::error_code ec;
    // A bounded parse: the caller bounded the text, this bounds the nesting.
    json::parse_options options;
    options.max_depth = 32;
    const json::value v = json::parse(text, ec, {}, options);
    if (ec || !v.is_object()) return std::nullopt;
    std::map<std::string, std::string> out;
    for (const auto& [key, neighbour] : v.as_object()) {
        if (!neighbour.is_object()) continue;
        const auto* state = neighbour.as_object().if_contains("bgpState");
        if (state == nullptr || !state->is_string()) continue;
        // Only FRR's own names: the agent logs a change of state and the
        // metrics label it, so no other text from the answer may get there.
        const auto known = std::find(std::begin(bgp_states), std::end(bgp_states), state->as_string());
        if (known != std::end(bgp_states)) out[std::string(key)] = *known;
    }
    return out;
}

}  // namespace apilb
