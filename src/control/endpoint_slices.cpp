// Parsing the apiserver's EndpointSlice (and v1 Endpoints) JSON. Every
// field is checked for its type: a value of the wrong type is an error for
// the whole object, never a default, so a damaged answer cannot shrink the
// set of apiservers by looking like an empty one.
#include "apilb/control/endpoint_slices.hpp"

#include <boost/json/value.hpp>

#include <algorithm>
#include <set>
#include <tuple>
#include <utility>

#include <arpa/inet.h>

#include "apilb/core/config.hpp"

namespace apilb {
namespace json = boost::json;

namespace {

/// What one object's parse found wrong; the first problem wins.
struct reader {
    std::string error;

    bool fail(std::string why) {
        if (error.empty()) error = std::move(why);
        return false;
    }

    const json::object* object(const json::value* v, std::string_view what) {
        if (v == nullptr || !v->is_object()) {
            fail(std::string(what) + " is not an object");
            return nullptr;
        }
        return &v->get_object();
    }

    /// A string member; nullopt (and an error) if present with another type,
    /// `absent` if missing or null.
    std::optional<std::string> string(const json::object& o, std::string_view key, std::string_view what,
                                      std::optional<std::string> absent = std::string()) {
        const json::value* v = o.if_contains(key);
        if (v == nullptr || v->is_null()) {
            if (!absent) fail(std::string(what) + "." + std::string(key) + " is missing");
            return absent;
        }
        if (!v->is_string()) {
            fail(std::string(what) + "." + std::string(key) + " is not a string");
            return std::nullopt;
        }
        return std::string(v->get_string());
    }

    /// A boolean condition; nullopt when absent or null (the API's "unknown").
    std::optional<bool> condition(const json::object& o, std::string_view key) {
        const json::value* v = o.if_contains(key);
        if (v == nullptr || v->is_null()) return std::nullopt;
        if (!v->is_bool()) {
            fail("conditions." + std::string(key) + " is not a boolean");
            return std::nullopt;
        }
        return v->get_bool();
    }
};

/// The canonical text of a numeric IP, or "" if `text` is not one.
std::string canonical_ip(const std::string& text) {
    unsigned char buf[16];
    char out[INET6_ADDRSTRLEN];
    if (::inet_pton(AF_INET, text.c_str(), buf) == 1) return ::inet_ntop(AF_INET, buf, out, sizeof out);
    if (::inet_pton(AF_INET6, text.c_str(), buf) == 1) return ::inet_ntop(AF_INET6, buf, out, sizeof out);
    return {};
}

/// The port the apiserver serves on: the one named "https", else the only
/// one. 0 with an error when neither exists.
std::uint16_t pick_port(reader& r, const json::value* ports) {
    if (ports == nullptr || !ports->is_array() || ports->get_array().empty()) {
        r.fail("ports is missing or empty");
        return 0;
    }
    const json::array& list = ports->get_array();
    const json::object* chosen = nullptr;
    for (const auto& p : list) {
        const json::object* po = r.object(&p, "ports[]");
        if (po == nullptr) return 0;
        auto name = r.string(*po, "name", "ports[]");
        if (!name) return 0;
        if (*name == "https" || list.size() == 1) chosen = po;
    }
    if (chosen == nullptr) {
        r.fail("no port named \"https\" among several");
        return 0;
    }
    const json::value* port = chosen->if_contains("port");
    if (port == nullptr || !port->is_int64() || port->get_int64() < 1 || port->get_int64() > 65535) {
        r.fail("ports[].port is not a number in 1..65535");
        return 0;
    }
    return static_cast<std::uint16_t>(port->get_int64());
}

/// Adds one address to `out` if it is a numeric IP; an FQDN endpoint or a
/// bad address is an error (the `kubernetes` service lists IPs only).
bool add_address(reader& r, const json::value& a, std::uint16_t port, discovered_endpoint conditions,
                 std::vector<discovered_endpoint>& out) {
    if (!a.is_string()) return r.fail("an address is not a string");
    const std::string ip = canonical_ip(std::string(a.get_string()));
    if (ip.empty()) return r.fail("an address is not a numeric IP");
    if (out.size() >= max_discovered_endpoints) {
        return r.fail("more than " + std::to_string(max_discovered_endpoints) + " endpoints");
    }
    conditions.ip = ip;
    conditions.port = port;
    out.push_back(std::move(conditions));
    return true;
}

/// metadata.name and metadata.resourceVersion.
bool read_metadata(reader& r, const json::object& o, slice_state& s, bool name_required) {
    const json::object* meta = r.object(o.if_contains("metadata"), "metadata");
    if (meta == nullptr) return false;
    auto name = r.string(*meta, "name", "metadata", name_required ? std::nullopt : std::optional<std::string>(""));
    auto rv = r.string(*meta, "resourceVersion", "metadata");
    if (!name || !rv) return false;
    s.name = std::move(*name);
    s.resource_version = std::move(*rv);
    return true;
}

/// One discovery.k8s.io/v1 EndpointSlice.
bool read_endpoint_slice(reader& r, const json::object& o, slice_state& s) {
    if (!read_metadata(r, o, s, true)) return false;
    auto type = r.string(o, "addressType", "EndpointSlice", std::nullopt);
    if (!type) return false;
    // The `kubernetes` service has one IPv4 or IPv6 slice; an FQDN slice
    // names no address apilb could connect to without resolving it.
    if (*type != "IPv4" && *type != "IPv6") return true;
    const json::value* eps = o.if_contains("endpoints");
    if (eps == nullptr || eps->is_null()) return true;  // the API omits an empty list
    if (!eps->is_array()) return r.fail("endpoints is not an array");
    if (eps->get_array().empty()) return true;
    const std::uint16_t port = pick_port(r, o.if_contains("ports"));
    if (port == 0) return false;
    for (const auto& e : eps->get_array()) {
        const json::object* eo = r.object(&e, "endpoints[]");
        if (eo == nullptr) return false;
        discovered_endpoint c;
        if (const json::value* cond = eo->if_contains("conditions"); cond != nullptr && !cond->is_null()) {
            const json::object* co = r.object(cond, "conditions");
            if (co == nullptr) return false;
            const auto ready = r.condition(*co, "ready");
            const auto serving = r.condition(*co, "serving");
            const auto terminating = r.condition(*co, "terminating");
            if (!r.error.empty()) return false;
            c.ready = ready.value_or(true);
            c.serving = serving.value_or(c.ready);
            c.terminating = terminating.value_or(false);
        }
        const json::value* addrs = eo->if_contains("addresses");
        if (addrs == nullptr || !addrs->is_array()) return r.fail("endpoints[].addresses is not an array");
        // The API allows several but consumers use the first (EndpointSlice API doc).
        if (addrs->get_array().empty()) return r.fail("endpoints[].addresses is empty");
        if (!add_address(r, addrs->get_array().front(), port, c, s.endpoints)) return false;
    }
    return true;
}

/// One v1 Endpoints object (older clusters): subsets of ready and not-ready addresses.
bool read_endpoints(reader& r, const json::object& o, slice_state& s) {
    if (!read_metadata(r, o, s, true)) return false;
    const json::value* subsets = o.if_contains("subsets");
    if (subsets == nullptr || subsets->is_null()) return true;
    if (!subsets->is_array()) return r.fail("subsets is not an array");
    for (const auto& sub : subsets->get_array()) {
        const json::object* so = r.object(&sub, "subsets[]");
        if (so == nullptr) return false;
        const std::uint16_t port = pick_port(r, so->if_contains("ports"));
        if (port == 0) return false;
        for (const auto& [key, ready] : {std::pair{"addresses", true}, std::pair{"notReadyAddresses", false}}) {
            const json::value* list = so->if_contains(key);
            if (list == nullptr || list->is_null()) continue;
            if (!list->is_array()) return r.fail(std::string("subsets[].") + key + " is not an array");
            for (const auto& a : list->get_array()) {
                const json::object* ao = r.object(&a, "subsets[].addresses[]");
                if (ao == nullptr) return false;
                const json::value* ip = ao->if_contains("ip");
                if (ip == nullptr) return r.fail("subsets[].addresses[].ip is missing");
                const discovered_endpoint c{
                    .ip = {}, .port = 0, .ready = ready, .serving = ready, .terminating = false};
                if (!add_address(r, *ip, port, c, s.endpoints)) return false;
            }
        }
    }
    return true;
}

bool read_object(reader& r, const json::object& o, discovery_api api, slice_state& s) {
    return api == discovery_api::endpoint_slices ? read_endpoint_slice(r, o, s) : read_endpoints(r, o, s);
}

/// Text from the API cut to one short line, safe for a log.
std::string one_line(std::string_view in) {
    std::string text = single_line(std::string(in.substr(0, 200)));
    return in.size() > 200 ? text + "..." : text;
}

/// A Status object's message.
std::string status_message(const json::object& o) {
    const json::value* m = o.if_contains("message");
    return m != nullptr && m->is_string() ? one_line(m->get_string()) : std::string();
}

/// One parsed watch event object into `out`; "" or the problem.
std::string read_event(const json::value& v, discovery_api api, watch_event& out) {
    reader r;
    const json::object* o = r.object(&v, "the event");
    if (o == nullptr) return r.error;
    auto type = r.string(*o, "type", "event", std::nullopt);
    if (!type) return r.error;
    const json::object* obj = r.object(o->if_contains("object"), "event.object");
    if (obj == nullptr) return r.error;
    if (*type == "ERROR") {
        out.type = watch_event_type::error;
        const json::value* code = obj->if_contains("code");
        if (code != nullptr && code->is_int64() && code->get_int64() > 0 && code->get_int64() < 1000) {
            out.status_code = static_cast<std::uint32_t>(code->get_int64());
        }
        out.message = status_message(*obj);
        return {};
    }
    if (*type == "BOOKMARK") {
        // A bookmark carries only metadata.resourceVersion (the object is
        // otherwise empty), so the name is not required.
        out.type = watch_event_type::bookmark;
        read_metadata(r, *obj, out.object, false);
        return r.error;
    }
    if (*type == "ADDED") {
        out.type = watch_event_type::added;
    } else if (*type == "MODIFIED") {
        out.type = watch_event_type::modified;
    } else if (*type == "DELETED") {
        out.type = watch_event_type::deleted;
    } else {
        return "unknown event type \"" + one_line(*type) + "\"";
    }
    read_object(r, *obj, api, out.object);
    return r.error;
}

}  // namespace

parsed<slice_list> parse_slice_list(std::string_view body, discovery_api api) {
    if (body.size() > max_list_bytes) return {std::nullopt, "the list is larger than the bound"};
    json::stream_parser p;
    json::error_code ec;
    p.write(body.data(), body.size(), ec);
    if (!ec) p.finish(ec);
    if (ec) return {std::nullopt, "the list is not JSON: " + ec.message()};
    const json::value v = p.release();
    reader r;
    const json::object* o = r.object(&v, "the list");
    if (o == nullptr) return {std::nullopt, r.error};
    slice_list list;
    const json::object* meta = r.object(o->if_contains("metadata"), "the list's metadata");
    if (meta == nullptr) return {std::nullopt, r.error};
    auto rv = r.string(*meta, "resourceVersion", "metadata", std::nullopt);
    auto cont = r.string(*meta, "continue", "metadata");
    if (!rv || !cont) return {std::nullopt, r.error};
    list.resource_version = std::move(*rv);
    list.continue_token = std::move(*cont);
    const json::value* items = o->if_contains("items");
    if (items != nullptr && !items->is_null()) {
        if (!items->is_array()) return {std::nullopt, "items is not an array"};
        std::size_t total = 0;
        for (const auto& item : items->get_array()) {
            const json::object* io = r.object(&item, "items[]");
            slice_state s;
            if (io == nullptr || !read_object(r, *io, api, s)) return {std::nullopt, r.error};
            total += s.endpoints.size();
            if (total > max_discovered_endpoints) {
                return {std::nullopt, "more than " + std::to_string(max_discovered_endpoints) + " endpoints"};
            }
            list.items.push_back(std::move(s));
        }
    }
    return {std::move(list), {}};
}

watch_stream_parser::watch_stream_parser(discovery_api api) : api_(api) {}

std::string watch_stream_parser::feed(std::string_view bytes, std::vector<watch_event>& out) {
    while (!bytes.empty()) {
        if (!in_event_) {
            // Between events: the apiserver's newline, or keep-alive blanks.
            const auto start = bytes.find_first_not_of(" \t\r\n");
            if (start == std::string_view::npos) return {};
            bytes.remove_prefix(start);
            parser_.reset();
            event_bytes_ = 0;
            in_event_ = true;
        }
        // Never hand the parser more than the event may still grow by, so a
        // huge event fails at the bound instead of after it was buffered.
        const std::size_t room = max_event_bytes - event_bytes_;
        if (room == 0) return "a watch event is larger than " + std::to_string(max_event_bytes) + " bytes";
        const std::size_t offer = std::min(bytes.size(), room);
        json::error_code ec;
        const std::size_t used = parser_.write_some(bytes.data(), offer, ec);
        if (ec) return "a watch event is not JSON: " + ec.message();
        event_bytes_ += used;
        bytes.remove_prefix(used);
        if (!parser_.done()) continue;
        in_event_ = false;
        watch_event e;
        if (auto why = read_event(parser_.release(), api_, e); !why.empty()) return "a watch event: " + why;
        out.push_back(std::move(e));
    }
    return {};
}

std::vector<discovered_endpoint> merge_slices(const std::map<std::string, slice_state>& slices) {
    std::vector<discovered_endpoint> out;
    std::set<std::pair<std::string, std::uint16_t>> seen;
    for (const auto& [name, s] : slices) {
        for (const auto& e : s.endpoints) {
            if (out.size() >= max_discovered_endpoints) break;
            if (seen.emplace(e.ip, e.port).second) out.push_back(e);
        }
    }
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return std::tie(a.ip, a.port) < std::tie(b.ip, b.port); });
    return out;
}

}  // namespace apilb
