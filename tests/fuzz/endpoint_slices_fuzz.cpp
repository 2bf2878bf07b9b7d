// Fuzz target: discovery's parsers of the apiserver's answers, from bytes.
// The same bytes are read as a list response, as a watch stream fed in
// pieces of the size byte 0 picks, and as a state file. Asserted: nothing
// crashes or grows past the bounds; a watch stream gives the same events
// whole and in pieces; no endpoint is ever an address apilb could not dial.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "apilb/control/discovery_state.hpp"
#include "apilb/control/endpoint_slices.hpp"
#include "apilb/core/config.hpp"

namespace {

using namespace apilb;

void check(bool ok, const char* what) {
    if (ok) return;
    std::fprintf(stderr, "endpoint_slices_fuzz: %s\n", what);
    std::abort();
}

void check_endpoints(const std::vector<discovered_endpoint>& eps) {
    check(eps.size() <= max_discovered_endpoints, "more endpoints than the bound");
    for (const auto& e : eps) {
        const bool v6 = e.ip.find(':') != std::string::npos;
        check(e.port != 0, "port 0");
        check(parse_socket_address((v6 ? "[" + e.ip + "]" : e.ip) + ":" + std::to_string(e.port)).has_value(),
              "an endpoint that is not a numeric address");
    }
}

/// The events of `text` fed in pieces of `piece` bytes; false on an error.
bool events_of(std::string_view text, std::size_t piece, std::vector<watch_event>& out) {
    watch_stream_parser p(discovery_api::endpoint_slices);
    for (std::size_t at = 0; at < text.size(); at += piece) {
        if (!p.feed(text.substr(at, piece), out).empty()) return false;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const std::size_t piece = data[0] % 64 + 1;
    const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);

    for (auto api : {discovery_api::endpoint_slices, discovery_api::endpoints}) {
        auto list = parse_slice_list(text, api);
        check(list.value.has_value() == list.error.empty(), "a list is both parsed and failed, or neither");
        if (list.value) {
            for (const auto& s : list.value->items) check_endpoints(s.endpoints);
        }
    }

    std::vector<watch_event> whole, pieces;
    const bool ok_whole = events_of(text, text.size() + 1, whole);
    const bool ok_pieces = events_of(text, piece, pieces);
    check(ok_whole == ok_pieces, "whole and in pieces disagree on an error");
    check(whole.size() == pieces.size(), "whole and in pieces give different events");
    for (const auto& e : whole) check_endpoints(e.object.endpoints);

    auto state = parse_discovery_state(text);
    if (state.value) check_endpoints(state.value->endpoints);
    return 0;
}
