// The apiserver's answers that discovery reads, reduced to what apilb uses:
// `discovery.k8s.io/v1` EndpointSlice lists and watch events (and the
// `v1` Endpoints of old clusters), parsed with Boost.JSON under hard size
// bounds. Pure functions over bytes from the network: no I/O, fuzzable.
// Control thread (or a test); never the data path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/stream_parser.hpp>

namespace apilb {

/// The largest list response accepted (a real `kubernetes` list is ~1 KiB).
constexpr std::size_t max_list_bytes = std::size_t{4} << 20;
/// The largest single watch event accepted.
constexpr std::size_t max_event_bytes = std::size_t{1} << 20;
/// The most endpoints apilb takes from the API, over all slices: an
/// apiserver that lists more is wrong, and each one costs a probe.
constexpr std::size_t max_discovered_endpoints = 64;

/// Which API discovery reads: EndpointSlices, or v1 Endpoints where the
/// cluster has no discovery.k8s.io/v1 (older than 1.21).
enum class discovery_api { endpoint_slices, endpoints };

/// One apiserver address as the API lists it, with its conditions
/// (EndpointConditions: a missing `ready` or `serving` means true, a
/// missing `terminating` false).
struct discovered_endpoint {
    std::string ip;  ///< numeric, as validated
    std::uint16_t port = 0;
    bool ready = true;
    bool serving = true;
    bool terminating = false;
    friend bool operator==(const discovered_endpoint&, const discovered_endpoint&) = default;
};

/// Whether the API lets new sessions go to `e`: ready, serving and not
/// terminating (EndpointConditions; kube-apiserver's endpoint reconciler
/// lists only ready apiservers, so anything else is on its way out).
inline bool takes_new_sessions(const discovered_endpoint& e) { return e.ready && e.serving && !e.terminating; }

/// One EndpointSlice (or Endpoints object): its name and its endpoints.
struct slice_state {
    std::string name;
    std::string resource_version;
    std::vector<discovered_endpoint> endpoints;
};

/// A list response: the slices and the resourceVersion to watch from.
struct slice_list {
    std::string resource_version;
    std::string continue_token;  ///< non-empty: the list was cut into pages
    std::vector<slice_state> items;
};

enum class watch_event_type { added, modified, deleted, bookmark, error };

/// One line of a watch stream.
struct watch_event {
    watch_event_type type = watch_event_type::bookmark;
    slice_state object;             ///< added/modified/deleted; bookmark: only resource_version
    std::uint32_t status_code = 0;  ///< error: the Status's code (410 = resourceVersion too old)
    std::string message;            ///< error: the Status's message, cut short
};

/// A parse's result: the value, or what is wrong with the bytes.
template <class T>
struct parsed {
    std::optional<T> value;
    std::string error;  ///< "" when value is set
};

/// Parses a whole list response body (at most max_list_bytes).
parsed<slice_list> parse_slice_list(std::string_view body, discovery_api api);

/// Parses a watch stream fed in pieces as they arrive: one JSON object per
/// event, events one after another (the apiserver writes a newline after
/// each, and a chunk may hold part of one or several). Bounded: an event
/// larger than max_event_bytes is an error.
class watch_stream_parser {
public:
    explicit watch_stream_parser(discovery_api api);

    /// Parses `bytes`, appending every event completed by them to `out`.
    /// Returns "" or what is wrong; after an error the stream is unusable.
    std::string feed(std::string_view bytes, std::vector<watch_event>& out);

private:
    discovery_api api_;
    boost::json::stream_parser parser_;
    std::size_t event_bytes_ = 0;  ///< bytes of the event being parsed so far
    bool in_event_ = false;
};

/// The endpoints of every slice, each address once (the first listing
/// wins), in a stable order (by ip, port); at most max_discovered_endpoints.
std::vector<discovered_endpoint> merge_slices(const std::map<std::string, slice_state>& slices);

}  // namespace apilb
