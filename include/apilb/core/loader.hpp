// The config loader's internals, shared by config_loader.cpp (the file, its
// sections and cross-item checks) and config_health.cpp (a pool's health
// section). Internal to the core layer: only src/core includes it.
#pragma once

#include <yaml-cpp/yaml.h>

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apilb/core/config.hpp"

namespace apilb::config_detail {

using namespace std::chrono_literals;
using key_list = std::span<const std::string_view>;

// ---------------------------------------------------------------- text helpers

std::string child_path(const std::string& parent, std::string_view key);
std::string index_path(const std::string& parent, std::size_t index);
/// The value as the user wrote it, quoted and cut short, safe for one line.
std::string quote(std::string_view text);
std::string join(key_list items);
/// Why `name` cannot be a Linux interface name (IFNAMSIZ, visible ASCII, no
/// "/", ":", quotes, braces, "#", "!"), or "" (config_vrrp.cpp).
std::string interface_name_problem(const std::string& name);
/// `did you mean "x"? ` for the closest candidate within two edits, or "".
std::string did_you_mean(std::string_view found, key_list candidates);
/// "a mapping", "a sequence", the quoted scalar, "no value".
std::string describe(const YAML::Node& node);
/// A bare IP address ("192.0.2.1", "2001:db8::1") in canonical form, or nullopt (config_vrrp.cpp).
std::optional<socket_address> parse_ip(const std::string& text);

// ---------------------------------------------------------------- value rules

struct integer_rule {
    std::uint64_t min;
    std::uint64_t max;
    bool zero_allowed = false;  ///< 0 is a special value below min ("disabled", "auto")

    std::string range() const {
        if (zero_allowed && min == 1) return "0.." + std::to_string(max);
        std::string r = std::to_string(min) + ".." + std::to_string(max);
        return zero_allowed ? "0 or " + r : r;
    }
    bool accepts(std::uint64_t v) const { return (v == 0 && zero_allowed) || (v >= min && v <= max); }
};

struct duration_rule {
    duration min;
    duration max;
    bool zero_allowed = false;
    /// The kernel takes this value in whole seconds (TCP_KEEPIDLE, TCP_KEEPINTVL).
    bool whole_seconds = false;
    std::string_view range;  ///< as shown in messages, e.g. "1s..2h"

    bool accepts(duration v) const { return (v == 0ms && zero_allowed) || (v >= min && v <= max); }
};

constexpr std::uint64_t u32_max = std::numeric_limits<std::uint32_t>::max();

template <class T>
struct choice {
    std::string_view name;
    T value;
};

// ---------------------------------------------------------------- the loader

/// A value in the file and where to point when it is wrong.
struct field {
    YAML::Node node;
    YAML::Mark mark;
    std::string path;
};

/// The known keys of one mapping, after unknown and repeated keys were reported.
struct mapping {
    YAML::Mark mark;
    std::string path;
    std::vector<std::pair<std::string, field>> entries;

    const field* find(std::string_view key) const {
        for (const auto& [k, f] : entries) {
            if (k == key) return &f;
        }
        return nullptr;
    }
};

/// A named item with where its name and address were written, for the
/// checks that look across items (duplicates, references).
struct site {
    bool ok = false;
    YAML::Mark mark;
    std::string path;
    std::string text;  ///< as written, even when invalid
};

struct backend_entry {
    backend_config cfg;
    site name;
    site address;
};

struct pool_entry {
    pool_config cfg;
    site name;
    std::vector<backend_entry> backends;
};

struct listener_entry {
    listener_config cfg;
    site name;
    site address;
    site pool;
};

class loader {
public:
    explicit loader(std::string source) : source_(std::move(source)) {}

    std::shared_ptr<const config> load(const std::string& text);

private:
    void error(const YAML::Mark& mark, std::string path, std::string message);
    /// Something that loads but that the operator should hear about.
    void warning(const YAML::Mark& mark, std::string path, std::string message);
    void syntax_error(const YAML::Exception& e);

    std::optional<mapping> open_mapping(const field& f, key_list allowed, bool null_is_empty);
    std::optional<std::vector<field>> open_sequence(const field& f, std::string_view what);
    bool require(const mapping& m, std::string_view key);

    std::optional<std::string> scalar(const field& f, std::string_view expected);
    bool read_integer(const mapping& m, std::string_view key, const integer_rule& rule, std::uint32_t& out);
    bool read_bool(const mapping& m, std::string_view key, bool& out);
    bool read_duration(const mapping& m, std::string_view key, const duration_rule& rule, duration& out);
    template <class T, std::size_t N>
    bool read_choice(const mapping& m, std::string_view key, const std::array<choice<T>, N>& choices, T& out);
    site read_name(const mapping& m, std::string_view key, std::string& out);
    site read_address(const mapping& m, std::string_view key, bool is_backend, socket_address& out);
    /// A path to a regular file of at most `max_bytes` that can be read now
    /// (apilb/file_read.hpp); its bytes go to `*bytes` if given (config_health.cpp).
    bool read_file_path(const mapping& m, std::string_view key, std::size_t max_bytes, std::string& out,
                        std::string* bytes = nullptr);
    bool read_text(const mapping& m, std::string_view key, std::string_view expected, std::string& out);
    /// An absolute path without control characters, e.g. `example` (config_bgp.cpp).
    void read_absolute_path(const mapping& m, std::string_view key, std::string_view example, std::string& out);

    void read_listeners(const field& f);
    void read_pools(const field& f);
    std::optional<pool_entry> read_pool(const field& f);
    /// A pool's `health` section (config_health.cpp).
    void read_health(const field& f, health_config& out);
    /// A pool's `discovery` section (config_discovery.cpp).
    void read_discovery(const field& f, discovery_config& out);
    /// The top-level `vrrp` section (config_vrrp.cpp).
    void read_vrrp(const field& f, vrrp_config& out);
    /// The top-level `bgp` section (config_bgp.cpp).
    void read_bgp(const field& f, bgp_config& out);
    /// `bgp.manage: true`: FRR's private directory and what it overrides (config_bgp.cpp).
    void read_managed_frr(const mapping& m, bgp_config& b);
    /// One item of `bgp.peers` (config_bgp.cpp).
    std::optional<bgp_peer> read_bgp_peer(const field& f);
    /// The top-level `admin` section (config_admin.cpp).
    void read_admin(const field& f, admin_config& out);
    /// `admin.tls`: reads and checks the PEM files (config_admin.cpp).
    void read_admin_tls(const field& f, admin_tls_config& out);
    /// `admin.token_file`: may be missing (apilb creates it) but not a directory (config_admin.cpp).
    void read_admin_token_file(const mapping& m, std::string& out);
    /// `admin.host_names`: a list of DNS names, "*." allowed in front (config_admin.cpp).
    void read_admin_host_names(const field& f, std::vector<std::string>& out);
    void read_sections(const mapping& top);
    void check_references();

    /// Reports every item whose key was already seen; `what` names the key.
    void check_unique(const std::vector<std::pair<std::string, const site*>>& keys, std::string_view what);

    std::string source_;
    config config_;
    std::vector<listener_entry> listeners_;
    std::vector<pool_entry> pools_;
    std::vector<config_error> errors_;
    std::vector<config_error> warnings_;
};

template <class T, std::size_t N>
bool loader::read_choice(const mapping& m, std::string_view key, const std::array<choice<T>, N>& choices, T& out) {
    const field* f = m.find(key);
    if (f == nullptr) return true;
    std::array<std::string_view, N> names;
    for (std::size_t i = 0; i < N; ++i) names[i] = choices[i].name;
    auto text = scalar(*f, "one of: " + join(names));
    if (!text) return false;
    for (const auto& c : choices) {
        if (c.name == *text) {
            out = c.value;
            return true;
        }
    }
    error(f->mark, f->path,
          "unknown value " + quote(*text) + "; " + did_you_mean(*text, names) + "expected one of: " + join(names));
    return false;
}

}  // namespace apilb::config_detail
