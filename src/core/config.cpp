// The config value types and the small text parsers they share with the
// loader. No YAML here: config_loader.cpp is the only reader of YAML.
#include "apilb/core/config.hpp"

#include <arpa/inet.h>  // inet_pton/inet_ntop: text conversion only, no sockets

#include <array>
#include <charconv>
#include <limits>
#include <string_view>

#include "apilb/core/maglev.hpp"

namespace apilb {

std::string socket_address::to_string() const {
    std::string port_text = std::to_string(port);
    return is_v6 ? "[" + ip + "]:" + port_text : ip + ":" + port_text;
}

void resolve_backend_defaults(pool_config& pool) {
    if (pool.connect_attempts_each) pool.connect_attempts = static_cast<std::uint32_t>(pool.backends.size());
    if (pool.balance == balance_policy::maglev && pool.maglev_table_size < pool.backends.size()) {
        pool.maglev_table_size = static_cast<std::uint32_t>(pool.backends.size());
        while (!is_prime(pool.maglev_table_size)) ++pool.maglev_table_size;
    }
}

const pool_config* config::find_pool(const std::string& name) const {
    for (const auto& p : pools) {
        if (p.name == name) return &p;
    }
    return nullptr;
}

const pool_config& config::pool(const std::string& name) const {
    if (const pool_config* p = find_pool(name)) return *p;
    // Unreachable for names taken from listeners (the loader checks them);
    // a caller asking for anything else gets an exception, not UB.
    throw std::out_of_range("no pool named \"" + name + "\" in " + source);
}

std::string single_line(std::string text) {
    for (char& c : text) {
        if (static_cast<unsigned char>(c) < 0x20 || c == '\x7f') c = '?';
    }
    return text;
}

std::string config_error::to_string() const {
    std::string out = file;
    if (line > 0) {
        out += ":" + std::to_string(line);
        if (column > 0) out += ":" + std::to_string(column);
    }
    out += ": ";
    if (!key_path.empty()) out += key_path + ": ";
    out += message;
    return out;
}

namespace {

std::string describe_all(const std::vector<config_error>& errors) {
    if (errors.empty()) return "invalid configuration";
    std::string out;
    for (const auto& e : errors) {
        if (!out.empty()) out += '\n';
        out += e.to_string();
    }
    return out;
}

}  // namespace

config_load_error::config_load_error(std::vector<config_error> errors)
    : std::runtime_error(describe_all(errors)), errors_(std::move(errors)) {}

const char* to_string(balance_policy p) {
    switch (p) {
    case balance_policy::round_robin: return "round-robin";
    case balance_policy::least_connections: return "least-connections";
    case balance_policy::maglev: return "maglev";
    }
    return "unknown";
}

const char* to_string(hash_key k) {
    switch (k) {
    case hash_key::source_address: return "source-address";
    case hash_key::source_address_port: return "source-address-port";
    }
    return "?";
}

const char* to_string(relay_mode m) {
    switch (m) {
    case relay_mode::splice: return "splice";
    case relay_mode::copy: return "copy";
    }
    return "unknown";
}

const char* to_string(relay_io m) {
    switch (m) {
    case relay_io::automatic: return "auto";
    case relay_io::epoll: return "epoll";
    case relay_io::io_uring: return "io_uring";
    }
    return "unknown";
}

const char* to_string(health_check_type t) {
    switch (t) {
    case health_check_type::https: return "https";
    case health_check_type::tcp: return "tcp";
    case health_check_type::none: return "none";
    }
    return "unknown";
}

const char* to_string(all_unhealthy_policy p) {
    switch (p) {
    case all_unhealthy_policy::try_all: return "try-all";
    case all_unhealthy_policy::reject: return "reject";
    }
    return "unknown";
}

std::optional<duration> parse_duration(const std::string& text) {
    // Only a bare 0 may omit the unit: "5" could mean seconds or milliseconds,
    // and guessing wrong by 1000x is worse than an error.
    if (text == "0") return duration::zero();
    if (text.empty()) return std::nullopt;

    struct unit {
        std::string_view suffix;
        std::int64_t millis;
    };
    // Longest suffix first so "ms" is not read as "m" followed by "s".
    // Units must appear largest first and at most once ("1h30m", not "30m1h").
    static constexpr std::array<unit, 4> units{{{"ms", 1}, {"h", 3'600'000}, {"m", 60'000}, {"s", 1'000}}};

    constexpr auto max = std::numeric_limits<std::int64_t>::max();
    std::int64_t total = 0;
    std::int64_t previous_unit = max;
    const char* p = text.data();
    const char* const end = text.data() + text.size();
    while (p != end) {
        std::uint64_t value = 0;
        auto [next, ec] = std::from_chars(p, end, value);
        if (ec != std::errc{} || next == p) return std::nullopt;
        p = next;
        std::string_view rest(p, static_cast<std::size_t>(end - p));
        const unit* found = nullptr;
        for (const auto& u : units) {
            if (rest.starts_with(u.suffix)) {
                found = &u;
                break;
            }
        }
        if (found == nullptr || found->millis >= previous_unit) return std::nullopt;
        previous_unit = found->millis;
        p += found->suffix.size();
        const auto limit = static_cast<std::uint64_t>((max - total) / found->millis);
        if (value > limit) return std::nullopt;
        total += static_cast<std::int64_t>(value) * found->millis;
    }
    return duration{total};
}

std::optional<socket_address> parse_socket_address(const std::string& text) {
    std::string host;
    std::string_view port_text;
    socket_address out;
    if (text.starts_with('[')) {
        const auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            return std::nullopt;
        }
        host = text.substr(1, close - 1);
        port_text = std::string_view(text).substr(close + 2);
        out.is_v6 = true;
    } else {
        const auto colon = text.find(':');
        if (colon == std::string::npos || text.find(':', colon + 1) != std::string::npos) {
            return std::nullopt;
        }
        host = text.substr(0, colon);
        port_text = std::string_view(text).substr(colon + 1);
    }

    if (port_text.empty() || port_text.size() > 5) return std::nullopt;
    unsigned port = 0;
    auto [next, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc{} || next != port_text.data() + port_text.size() || port > 65535) {
        return std::nullopt;
    }
    out.port = static_cast<std::uint16_t>(port);

    // inet_pton is strict where it matters: IPv4 must be four decimal parts
    // (no "10.1", no octal-looking "010"), IPv6 takes no zone id.
    const int family = out.is_v6 ? AF_INET6 : AF_INET;
    std::array<unsigned char, 16> binary{};
    if (inet_pton(family, host.c_str(), binary.data()) != 1) return std::nullopt;
    // Canonical text, so "[2001:DB8:0::1]" and "[2001:db8::1]" compare equal
    // when the loader looks for duplicates.
    std::array<char, INET6_ADDRSTRLEN> canonical{};
    if (inet_ntop(family, binary.data(), canonical.data(), canonical.size()) == nullptr) {
        return std::nullopt;
    }
    out.ip = canonical.data();
    return out;
}

}  // namespace apilb
