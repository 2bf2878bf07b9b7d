#include "apilb/control/discovery_state.hpp"

#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <sys/stat.h>

#include <cerrno>

#include "apilb/core/config.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb/core/file_write.hpp"

namespace apilb {
namespace json = boost::json;

namespace {
constexpr std::int64_t state_version = 1;
}

std::string render_discovery_state(const discovery_state& state) {
    json::array endpoints;
    for (const auto& e : state.endpoints) {
        endpoints.push_back(json::object{{"ip", e.ip}, {"port", e.port}, {"terminating", e.terminating}});
    }
    const auto secs = std::chrono::duration_cast<std::chrono::seconds>(state.written_at.time_since_epoch()).count();
    json::object o{
        {"version", state_version}, {"pool", state.pool}, {"written_at", secs}, {"endpoints", std::move(endpoints)}};
    return json::serialize(o) + "\n";
}

parsed<discovery_state> parse_discovery_state(std::string_view text) {
    json::error_code ec;
    const json::value v = json::parse(text, ec);
    if (ec) return {std::nullopt, "not JSON: " + ec.message()};
    const json::object* o = v.if_object();
    if (o == nullptr) return {std::nullopt, "not a JSON object"};
    const json::value* version = o->if_contains("version");
    if (version == nullptr || !version->is_int64() || version->get_int64() != state_version) {
        return {std::nullopt, "not version 1 of apilb's discovery state"};
    }
    const json::value* pool = o->if_contains("pool");
    const json::value* written = o->if_contains("written_at");
    const json::value* endpoints = o->if_contains("endpoints");
    if (pool == nullptr || !pool->is_string() || written == nullptr || !written->is_int64() || endpoints == nullptr ||
        !endpoints->is_array()) {
        return {std::nullopt, "pool, written_at or endpoints is missing or of the wrong type"};
    }
    // system_clock counts nanoseconds in 64 bits: seconds past 2262 would
    // overflow the conversion (undefined behaviour), so the range is checked
    // first; a file of apilb's own says when it was written, after 1970.
    constexpr std::int64_t latest_written_at = std::int64_t{1} << 33;  // the year 2242
    if (written->get_int64() < 0 || written->get_int64() > latest_written_at) {
        return {std::nullopt, "written_at is not a time between 1970 and 2242"};
    }
    discovery_state s;
    s.pool = std::string(pool->get_string());
    s.written_at = std::chrono::system_clock::time_point(std::chrono::seconds(written->get_int64()));
    if (endpoints->get_array().size() > max_discovered_endpoints) {
        return {std::nullopt, "more than " + std::to_string(max_discovered_endpoints) + " endpoints"};
    }
    for (const auto& e : endpoints->get_array()) {
        const json::object* eo = e.if_object();
        const json::value* ip = eo != nullptr ? eo->if_contains("ip") : nullptr;
        const json::value* port = eo != nullptr ? eo->if_contains("port") : nullptr;
        const json::value* term = eo != nullptr ? eo->if_contains("terminating") : nullptr;
        if (ip == nullptr || !ip->is_string() || port == nullptr || !port->is_int64() || term == nullptr ||
            !term->is_bool()) {
            return {std::nullopt, "an endpoint is not {ip, port, terminating}"};
        }
        const std::string text_ip(ip->get_string());
        // The same check as a config address, so the set can become backends.
        const bool v6 = text_ip.find(':') != std::string::npos;
        if (port->get_int64() < 1 || port->get_int64() > 65535 ||
            !parse_socket_address((v6 ? "[" + text_ip + "]" : text_ip) + ":" + std::to_string(port->get_int64()))) {
            return {std::nullopt, "an endpoint's address is not a numeric IP and port"};
        }
        s.endpoints.push_back({.ip = text_ip,
                               .port = static_cast<std::uint16_t>(port->get_int64()),
                               .ready = true,
                               .serving = true,
                               .terminating = term->get_bool()});
    }
    return {std::move(s), {}};
}

std::string save_discovery_state(const std::string& path, const discovery_state& state) {
    if (auto ec = write_file_atomically(path, render_discovery_state(state), true)) return ec.message();
    return {};
}

std::optional<discovery_state> load_discovery_state(const std::string& path, const std::string& pool,
                                                    std::chrono::milliseconds max_age,
                                                    std::chrono::system_clock::time_point now, std::string& why) {
    why.clear();
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) return std::nullopt;
    file_contents file = read_regular_file(path, max_state_file_bytes);
    if (!file) {
        why = path + " " + file.error;
        return std::nullopt;
    }
    auto state = parse_discovery_state(file.bytes);
    if (!state.value) {
        why = path + " is not a valid state file: " + state.error;
        return std::nullopt;
    }
    if (state.value->pool != pool) {
        why = path + " was written for pool \"" + state.value->pool + "\", not \"" + pool + "\"";
        return std::nullopt;
    }
    const auto age = now - state.value->written_at;
    if (age < -max_age) {
        // Written further ahead than it may be old: the clock or the file is
        // wrong, and neither says how old the set really is.
        why = path + " says it was written " +
              std::to_string(std::chrono::duration_cast<std::chrono::minutes>(-age).count()) +
              " minutes in the future, further than state_max_age";
        return std::nullopt;
    }
    if (age > max_age) {
        why = path + " is " + std::to_string(std::chrono::duration_cast<std::chrono::minutes>(age).count()) +
              " minutes old, older than state_max_age";
        return std::nullopt;
    }
    if (state.value->endpoints.empty()) {
        why = path + " lists no apiserver";
        return std::nullopt;
    }
    return std::move(state.value);
}

}  // namespace apilb
