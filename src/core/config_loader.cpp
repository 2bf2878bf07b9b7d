// Reads one YAML file into a validated, immutable config. The only code in
// apilb that sees YAML. Every problem is collected with its line, column and
// key path; nothing is reported until the whole file has been read, so one
// attempt shows everything there is to fix.
#include "apilb/core/config.hpp"
#include "apilb/core/config_file.hpp"
#include "apilb/core/cpu_budget.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb/core/maglev.hpp"

#include <yaml-cpp/yaml.h>

#include "apilb/core/loader.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <limits>
#include <map>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

namespace apilb::config_detail {

constexpr std::uint32_t max_workers = 256;
constexpr std::size_t max_name_length = 63;

// ---------------------------------------------------------------- text helpers

std::string child_path(const std::string& parent, std::string_view key) {
    return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

std::string index_path(const std::string& parent, std::size_t index) {
    return parent + "[" + std::to_string(index) + "]";
}

std::string quote(std::string_view text) {
    constexpr std::size_t max_shown = 60;
    std::string out = "\"";
    for (std::size_t i = 0; i < text.size() && i < max_shown; ++i) {
        const char c = text[i];
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += '?';
        } else {
            out += c;
        }
    }
    if (text.size() > max_shown) out += "...";
    return out + "\"";
}

std::string join(key_list items) {
    std::string out;
    for (auto item : items) {
        if (!out.empty()) out += ", ";
        out += item;
    }
    return out;
}

namespace {

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

/// Levenshtein distance, case-insensitive: "Workers" is one edit from "workers".
std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            const std::size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + cost});
            diagonal = above;
        }
    }
    return row[b.size()];
}

}  // namespace

std::string did_you_mean(std::string_view found, key_list candidates) {
    std::string_view best;
    std::size_t best_distance = 3;
    for (auto c : candidates) {
        const std::size_t d = edit_distance(found, c);
        if (d < best_distance && d < c.size()) {
            best = c;
            best_distance = d;
        }
    }
    return best.empty() ? std::string() : "did you mean \"" + std::string(best) + "\"? ";
}

std::string describe(const YAML::Node& node) {
    switch (node.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Scalar: return quote(node.Scalar());
    case YAML::NodeType::Null: return "no value";
    case YAML::NodeType::Undefined: break;
    }
    return "nothing";
}


constexpr std::array<std::string_view, 11> top_keys{"workers", "listeners", "pools", "timeouts", "tcp",  "limits",
                                                    "relay",   "log",       "vrrp",  "bgp",      "admin"};
constexpr std::array<std::string_view, 4> listener_keys{"name", "address", "pool", "backlog"};
constexpr std::array<std::string_view, 9> pool_keys{"name",   "balance",       "connect_attempts", "backends", "health",
                                                    "maglev", "storm_control", "rebalance",        "discovery"};
constexpr std::array<std::string_view, 5> storm_control_keys{"new_per_second", "burst", "max_connecting", "queue",
                                                             "queue_timeout"};
constexpr std::array<std::string_view, 3> rebalance_keys{"enabled", "max_closes_per_second", "tolerance"};
constexpr std::array<std::string_view, 2> maglev_keys{"table_size", "key"};
constexpr std::array<std::string_view, 4> backend_keys{"name", "address", "weight", "drain"};
constexpr std::array<std::string_view, 6> timeout_keys{"connect",      "idle",        "drain",
                                                       "reload_drain", "write_stall", "upgrade_quiesce"};
constexpr std::array<std::string_view, 7> tcp_keys{
    "nodelay", "keepalive", "keepalive_idle", "keepalive_interval", "keepalive_count", "user_timeout", "socket_buffer"};
constexpr std::array<std::string_view, 2> limit_keys{"max_connections", "per_backend"};
constexpr std::array<std::string_view, 4> relay_keys{"mode", "buffer_size", "pipe_size", "io"};
constexpr std::array<std::string_view, 2> log_keys{"level", "format"};


constexpr std::array<choice<balance_policy>, 3> balance_choices{
    {{"round-robin", balance_policy::round_robin},
     {"least-connections", balance_policy::least_connections},
     {"maglev", balance_policy::maglev}}};
constexpr std::array<choice<hash_key>, 2> hash_key_choices{
    {{"source-address", hash_key::source_address}, {"source-address-port", hash_key::source_address_port}}};
constexpr std::array<choice<relay_mode>, 2> relay_choices{{{"splice", relay_mode::splice}, {"copy", relay_mode::copy}}};
constexpr std::array<choice<relay_io>, 3> relay_io_choices{
    {{"auto", relay_io::automatic}, {"epoll", relay_io::epoll}, {"io_uring", relay_io::io_uring}}};
constexpr std::array<choice<std::string_view>, 7> level_choices{{{"trace", "trace"},
                                                                 {"debug", "debug"},
                                                                 {"info", "info"},
                                                                 {"warn", "warn"},
                                                                 {"error", "error"},
                                                                 {"critical", "critical"},
                                                                 {"off", "off"}}};
constexpr std::array<choice<log_format>, 2> format_choices{{{"text", log_format::text}, {"json", log_format::json}}};

// ---------------------------------------------------------------- addresses

namespace {

/// Why `text` is not a usable address, in words; empty if it is fine.
/// Done apart from parse_socket_address so that the common mistakes (a host
/// name, a missing port, IPv6 without brackets) get a message of their own.
std::string address_problem(const std::string& text) {
    if (text.empty()) return "the address is empty";
    std::string host;
    std::string port;
    bool v6 = false;
    if (text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string::npos) return "\"]\" is missing after the IPv6 address";
        host = text.substr(1, close - 1);
        if (close + 1 == text.size()) return "the port is missing";
        if (text[close + 1] != ':') return "expected \":\" and a port after \"]\"";
        port = text.substr(close + 2);
        v6 = true;
    } else {
        const auto colons = std::count(text.begin(), text.end(), ':');
        if (colons > 1) return "an IPv6 address needs brackets around it";
        if (colons == 0) {
            const bool numeric = text.find_first_not_of("0123456789.") == std::string::npos;
            return numeric ? "the port is missing" : "the port is missing, and host names are not resolved";
        }
        const auto colon = text.find(':');
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    if (port.empty()) return "the port is missing";
    if (port.find_first_not_of("0123456789") != std::string::npos) {
        return "port " + quote(port) + " is not a number";
    }
    if (port.size() > 5 || std::stoul(port) > 65535 || std::stoul(port) == 0) {
        return "port " + port + " is out of range 1..65535";
    }
    if (!v6 && host.find_first_not_of("0123456789.") != std::string::npos) {
        return quote(host) + " is not an IP address, and host names are not resolved";
    }
    if (!parse_socket_address(text)) {
        return quote(host) + (v6 ? " is not a valid IPv6 address" : " is not a valid IPv4 address");
    }
    return {};
}

}  // namespace

void loader::error(const YAML::Mark& mark, std::string path, std::string message) {
    config_error e;
    e.file = source_;
    if (!mark.is_null()) {
        // yaml-cpp counts from 0; editors and compilers count from 1.
        e.line = mark.line + 1;
        e.column = mark.column + 1;
    }
    e.key_path = single_line(std::move(path));
    // A key path is built from the file's own keys, so it can hold any byte,
    // and yaml-cpp's syntax errors carry the offending byte raw. Every error
    // becomes one line of a log or a 422 answer, where a line break or a
    // terminal escape would forge or hide lines.
    e.message = single_line(std::move(message));
    errors_.push_back(std::move(e));
}

void loader::warning(const YAML::Mark& mark, std::string path, std::string message) {
    config_error w;
    w.file = source_;
    if (!mark.is_null()) {
        w.line = mark.line + 1;
        w.column = mark.column + 1;
    }
    w.key_path = single_line(std::move(path));
    w.message = single_line(std::move(message));
    warnings_.push_back(std::move(w));
}

void loader::syntax_error(const YAML::Exception& e) { error(e.mark, {}, "YAML syntax error: " + e.msg); }

std::optional<mapping> loader::open_mapping(const field& f, key_list allowed, bool null_is_empty) {
    mapping m{f.mark, f.path, {}};
    if (f.node.IsNull() && null_is_empty) return m;
    if (!f.node.IsMap()) {
        error(f.mark, f.path, "expected a mapping with keys " + join(allowed) + "; found " + describe(f.node));
        return std::nullopt;
    }
    std::map<std::string, int, std::less<>> seen;  // key -> line of its first use
    // Range-for keeps each pair alive for the whole iteration; yaml-cpp's
    // `it->first` would refer into a temporary that dies with the expression.
    for (const auto& pair : f.node) {
        const YAML::Node& key = pair.first;
        const YAML::Node& value = pair.second;
        if (!key.IsScalar()) {
            error(key.Mark(), f.path, "a key must be a plain word; found " + describe(key));
            continue;
        }
        const std::string& name = key.Scalar();
        const std::string path = child_path(f.path, name);
        if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
            error(key.Mark(), path,
                  "unknown key " + quote(name) + "; " + did_you_mean(name, allowed) +
                      "expected one of: " + join(allowed));
            continue;
        }
        // yaml-cpp keeps both copies of a repeated key; YAML forbids it and
        // silently taking either one would hide an edit that did not apply.
        if (auto [first, inserted] = seen.emplace(name, key.Mark().line + 1); !inserted) {
            error(key.Mark(), path,
                  "key " + quote(name) + " is repeated; first set at line " + std::to_string(first->second));
            continue;
        }
        // An empty value's mark points at the next token, often on the next
        // line; the key is where the reader should look.
        const YAML::Mark mark = value.IsNull() ? key.Mark() : value.Mark();
        m.entries.emplace_back(name, field{value, mark, path});
    }
    return m;
}

std::optional<std::vector<field>> loader::open_sequence(const field& f, std::string_view what) {
    std::vector<field> items;
    if (f.node.IsNull()) {
        error(f.mark, f.path, "no " + std::string(what) + " are defined; at least one is required");
        return std::nullopt;
    }
    if (!f.node.IsSequence()) {
        error(
            f.mark, f.path,
            "expected a sequence of " + std::string(what) + " (items starting with \"- \"); found " + describe(f.node));
        return std::nullopt;
    }
    if (f.node.size() == 0) {
        error(f.mark, f.path, "no " + std::string(what) + " are defined; at least one is required");
        return std::nullopt;
    }
    std::size_t i = 0;
    for (const auto& item : f.node) {
        items.push_back(field{item, item.Mark(), index_path(f.path, i++)});
    }
    return items;
}

bool loader::require(const mapping& m, std::string_view key) {
    if (m.find(key) != nullptr) return true;
    error(m.mark, m.path, "the required key " + quote(key) + " is missing");
    return false;
}

std::optional<std::string> loader::scalar(const field& f, std::string_view expected) {
    if (f.node.IsScalar()) return f.node.Scalar();
    error(f.mark, f.path, "expected " + std::string(expected) + "; found " + describe(f.node));
    return std::nullopt;
}

bool loader::read_integer(const mapping& m, std::string_view key, const integer_rule& rule, std::uint32_t& out) {
    const field* f = m.find(key);
    if (f == nullptr) return true;
    const std::string expected = "an integer in " + rule.range();
    auto text = scalar(*f, expected);
    if (!text) return false;

    std::string_view digits = *text;
    const bool negative = digits.starts_with('-');
    if (negative) digits.remove_prefix(1);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string_view::npos) {
        error(f->mark, f->path, "expected " + expected + "; found " + quote(*text));
        return false;
    }
    std::uint64_t value = 0;
    auto [next, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (negative || ec != std::errc{} || !rule.accepts(value)) {
        error(f->mark, f->path, *text + " is out of range; expected " + rule.range());
        return false;
    }
    out = static_cast<std::uint32_t>(value);
    return true;
}

bool loader::read_bool(const mapping& m, std::string_view key, bool& out) {
    const field* f = m.find(key);
    if (f == nullptr) return true;
    auto text = scalar(*f, "true or false");
    if (!text) return false;
    if (*text == "true" || *text == "false") {
        out = *text == "true";
        return true;
    }
    std::string message = "expected true or false; found " + quote(*text);
    static constexpr std::array<std::string_view, 8> yaml11{"yes", "no", "on", "off", "y", "n", "1", "0"};
    std::string folded;
    for (char c : *text) folded += lower(c);
    if (std::find(yaml11.begin(), yaml11.end(), folded) != yaml11.end()) {
        message += " (the YAML 1.1 spellings yes/no/on/off are not accepted)";
    }
    error(f->mark, f->path, std::move(message));
    return false;
}

bool loader::read_duration(const mapping& m, std::string_view key, const duration_rule& rule, duration& out) {
    const field* f = m.find(key);
    if (f == nullptr) return true;
    auto text = scalar(*f, "a duration such as \"2s\"");
    if (!text) return false;
    auto value = parse_duration(*text);
    if (!value) {
        const bool bare_number = !text->empty() && text->find_first_not_of("0123456789") == std::string::npos;
        if (bare_number) {
            error(f->mark, f->path,
                  "duration " + quote(*text) + " needs a unit, e.g. \"" + *text + "s\" or \"" + *text +
                      "ms\" (units: ms, s, m, h); only 0 may be written without one");
        } else {
            error(f->mark, f->path,
                  "invalid duration " + quote(*text) +
                      "; expected whole numbers with units ms, s, m or h, largest first, "
                      "e.g. \"250ms\", \"2s\", \"1m30s\", or 0");
        }
        return false;
    }
    if (rule.whole_seconds && *value % 1s != 0ms) {
        error(f->mark, f->path,
              quote(*text) +
                  " is not a whole number of seconds; the kernel takes this value in "
                  "seconds, so expected " +
                  std::string(rule.range));
        return false;
    }
    if (!rule.accepts(*value)) {
        error(f->mark, f->path, quote(*text) + " is out of range; expected " + std::string(rule.range));
        return false;
    }
    out = *value;
    return true;
}


site loader::read_name(const mapping& m, std::string_view key, std::string& out) {
    const field* f = m.find(key);
    if (f == nullptr) return {};
    site s{false, f->mark, f->path, {}};
    auto text = scalar(*f, "a name");
    if (!text) return s;
    s.text = *text;
    const auto is_alnum = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    };
    const bool valid = !text->empty() && text->size() <= max_name_length && is_alnum(text->front()) &&
                       std::all_of(text->begin(), text->end(),
                                   [&](char c) { return is_alnum(c) || c == '.' || c == '_' || c == '-'; });
    if (!valid) {
        error(f->mark, f->path,
              "invalid name " + quote(*text) +
                  "; expected 1 to 63 characters of A-Z a-z 0-9 . _ - starting with a letter or digit");
        return s;
    }
    out = *text;
    s.ok = true;
    return s;
}

site loader::read_address(const mapping& m, std::string_view key, bool is_backend, socket_address& out) {
    const field* f = m.find(key);
    if (f == nullptr) return {};
    site s{false, f->mark, f->path, {}};
    const std::string form =
        "a numeric IPv4 \"a.b.c.d:port\" or IPv6 \"[addr]:port\" address, e.g. "
        "\"192.0.2.11:6443\" or \"[2001:db8::11]:6443\"";
    auto text = scalar(*f, form);
    if (!text) return s;
    s.text = *text;
    if (auto problem = address_problem(*text); !problem.empty()) {
        error(f->mark, f->path, "invalid address " + quote(*text) + ": " + problem + "; expected " + form);
        return s;
    }
    auto address = parse_socket_address(*text);
    // Connecting to 0.0.0.0 or :: reaches this host on Linux: never the intent.
    if (is_backend && address->is_unspecified()) {
        error(f->mark, f->path,
              "invalid address " + quote(*text) +
                  ": a backend cannot be the unspecified address; give the apiserver's own IP");
        return s;
    }
    out = *address;
    s.ok = true;
    return s;
}

void loader::read_listeners(const field& f) {
    auto items = open_sequence(f, "listeners");
    if (!items) return;
    for (const auto& item : *items) {
        auto m = open_mapping(item, listener_keys, false);
        if (!m) continue;
        listener_entry l;
        require(*m, "name");
        require(*m, "address");
        require(*m, "pool");
        l.name = read_name(*m, "name", l.cfg.name);
        l.address = read_address(*m, "address", false, l.cfg.address);
        if (const field* p = m->find("pool")) {
            l.pool = site{false, p->mark, p->path, {}};
            if (auto text = scalar(*p, "the name of a pool")) {
                l.cfg.pool = *text;
                l.pool.text = *text;
                l.pool.ok = true;
            }
        }
        read_integer(*m, "backlog", {.min = 1, .max = 65535}, l.cfg.backlog);
        listeners_.push_back(std::move(l));
    }
}

std::optional<pool_entry> loader::read_pool(const field& f) {
    auto m = open_mapping(f, pool_keys, false);
    if (!m) return std::nullopt;
    pool_entry p;
    require(*m, "name");
    require(*m, "backends");
    p.name = read_name(*m, "name", p.cfg.name);
    read_choice(*m, "balance", balance_choices, p.cfg.balance);
    read_integer(*m, "connect_attempts", {.min = 1, .max = 16, .zero_allowed = true}, p.cfg.connect_attempts);
    if (const field* b = m->find("backends")) {
        if (auto items = open_sequence(*b, "backends")) {
            for (const auto& item : *items) {
                auto bm = open_mapping(item, backend_keys, false);
                if (!bm) continue;
                backend_entry be;
                require(*bm, "name");
                require(*bm, "address");
                be.name = read_name(*bm, "name", be.cfg.name);
                be.address = read_address(*bm, "address", true, be.cfg.address);
                read_integer(*bm, "weight", {.min = 1, .max = 256}, be.cfg.weight);
                read_bool(*bm, "drain", be.cfg.drain);
                p.backends.push_back(std::move(be));
            }
        }
    }
    if (const field* h = m->find("health")) read_health(*h, p.cfg.health);
    if (const field* g = m->find("maglev")) {
        if (p.cfg.balance != balance_policy::maglev) {
            warning(g->mark, g->path, "ignored: the pool's balance is not maglev");
        }
        if (auto mm = open_mapping(*g, maglev_keys, true)) {
            if (read_integer(*mm, "table_size", {.min = 7, .max = 16777213}, p.cfg.maglev_table_size) &&
                !is_prime(p.cfg.maglev_table_size)) {
                const field* ts = mm->find("table_size");
                error(ts->mark, ts->path,
                      std::to_string(p.cfg.maglev_table_size) +
                          " is not a prime; Maglev needs a prime table size (e.g. 65537, 131071)");
            }
            read_choice(*mm, "key", hash_key_choices, p.cfg.maglev_key);
        }
    }
    if (const field* g = m->find("storm_control")) {
        if (auto sm = open_mapping(*g, storm_control_keys, true)) {
            storm_control_config& sc = p.cfg.storm_control;
            read_integer(*sm, "new_per_second", {.min = 0, .max = 1000000}, sc.new_per_second);
            read_integer(*sm, "burst", {.min = 0, .max = 1000000}, sc.burst);
            read_integer(*sm, "max_connecting", {.min = 0, .max = 1000000}, sc.max_connecting);
            read_integer(*sm, "queue", {.min = 0, .max = 1000000}, sc.queue);
            read_duration(*sm, "queue_timeout", {.min = 1ms, .max = 10min, .range = "1ms..10m"}, sc.queue_timeout);
        }
    }
    if (const field* g = m->find("rebalance")) {
        if (auto rm = open_mapping(*g, rebalance_keys, true)) {
            rebalance_config& rb = p.cfg.rebalance;
            read_bool(*rm, "enabled", rb.enabled);
            read_integer(*rm, "max_closes_per_second", {.min = 1, .max = 100000}, rb.max_closes_per_second);
            if (const field* t = rm->find("tolerance")) {
                const std::string expected = "a fraction in 0.01..1 (e.g. 0.2 for 20%)";
                if (auto text = scalar(*t, expected)) {
                    double v = 0;
                    const auto* end = text->data() + text->size();
                    const auto [ptr, ec] = std::from_chars(text->data(), end, v);
                    if (ec != std::errc{} || ptr != end || !(v >= 0.01 && v <= 1.0)) {
                        error(t->mark, t->path, "expected " + expected + "; found '" + *text + "'");
                    } else {
                        rb.tolerance = v;
                    }
                }
            }
        }
    }
    if (const field* d = m->find("discovery")) read_discovery(*d, p.cfg.discovery.emplace());
    return p;
}

void loader::read_pools(const field& f) {
    auto items = open_sequence(f, "pools");
    if (!items) return;
    for (const auto& item : *items) {
        if (auto p = read_pool(item)) pools_.push_back(std::move(*p));
    }
}

void loader::read_sections(const mapping& top) {
    config& c = config_;
    if (const field* f = top.find("timeouts")) {
        if (auto m = open_mapping(*f, timeout_keys, true)) {
            read_duration(*m, "connect", {.min = 1ms, .max = 5min, .range = "1ms..5m"}, c.timeouts.connect);
            // Upper bound keeps deadline arithmetic (now + idle, in ns) far from overflow.
            read_duration(*m, "idle",
                          {.min = 1s, .max = 8760h, .zero_allowed = true, .range = "0 (disabled) or 1s..8760h"},
                          c.timeouts.idle);
            read_duration(*m, "drain", {.min = 0ms, .max = 1h, .zero_allowed = true, .range = "0..1h"},
                          c.timeouts.drain);
            read_duration(*m, "reload_drain", {.min = 0ms, .max = 1h, .zero_allowed = true, .range = "0..1h"},
                          c.timeouts.reload_drain);
            read_duration(*m, "write_stall",
                          {.min = 1s, .max = 24h, .zero_allowed = true, .range = "0 (disabled) or 1s..24h"},
                          c.timeouts.write_stall);
            // Below the session phase's 5 s, so that a quiesce given up on
            // ends (its session reads again) while the phase still runs; a
            // quiesce stops the session's reads, so a watch's events wait
            // that long at most. At least 10ms: a few of the phase's 5ms
            // passes.
            read_duration(*m, "upgrade_quiesce", {.min = 10ms, .max = 4s, .range = "10ms..4s"},
                          c.timeouts.upgrade_quiesce);
        }
    }
    if (const field* f = top.find("tcp")) {
        if (auto m = open_mapping(*f, tcp_keys, true)) {
            read_bool(*m, "nodelay", c.tcp.nodelay);
            read_bool(*m, "keepalive", c.tcp.keepalive);
            const duration_rule keepalive_time{
                .min = 1s, .max = 2h, .whole_seconds = true, .range = "1s..2h in whole seconds"};
            read_duration(*m, "keepalive_idle", keepalive_time, c.tcp.keepalive_idle);
            read_duration(*m, "keepalive_interval", keepalive_time, c.tcp.keepalive_interval);
            // 127 is the kernel's MAX_TCP_KEEPCNT.
            read_integer(*m, "keepalive_count", {.min = 1, .max = 127}, c.tcp.keepalive_count);
            read_duration(*m, "user_timeout", {.min = 1s, .max = 1h, .zero_allowed = true, .range = "0 or 1s..1h"},
                          c.tcp.user_timeout);
            // 16 KiB: below that the kernel's own minimum and a TLS record
            // do not fit; 64 MiB is far above any autotuned buffer.
            read_integer(*m, "socket_buffer", {.min = 16 * 1024, .max = 64 * 1024 * 1024, .zero_allowed = true},
                         c.tcp.socket_buffer);
        }
    }
    if (const field* f = top.find("limits")) {
        if (auto m = open_mapping(*f, limit_keys, true)) {
            read_integer(*m, "max_connections", {.min = 1, .max = u32_max, .zero_allowed = true},
                         c.limits.max_connections);
            read_integer(*m, "per_backend", {.min = 1, .max = u32_max, .zero_allowed = true}, c.limits.per_backend);
        }
    }
    if (const field* f = top.find("relay")) {
        if (auto m = open_mapping(*f, relay_keys, true)) {
            read_choice(*m, "mode", relay_choices, c.relay.mode);
            read_integer(*m, "buffer_size", {.min = 4096, .max = 16 * 1024 * 1024}, c.relay.buffer_size);
            read_integer(*m, "pipe_size", {.min = 4096, .max = 1024 * 1024, .zero_allowed = true}, c.relay.pipe_size);
            const field* io = m->find("io");
            if (read_choice(*m, "io", relay_io_choices, c.relay.io) && io != nullptr) {
                c.relay.io_line = io->mark.line + 1;
                c.relay.io_column = io->mark.column + 1;
            }
        }
    }
    if (const field* f = top.find("log")) {
        if (auto m = open_mapping(*f, log_keys, true)) {
            std::string_view level;
            if (read_choice(*m, "level", level_choices, level) && !level.empty()) c.log.level = level;
            read_choice(*m, "format", format_choices, c.log.format);
        }
    }
}

void loader::check_unique(const std::vector<std::pair<std::string, const site*>>& keys, std::string_view what) {
    std::map<std::string, const site*, std::less<>> first;
    for (const auto& [key, s] : keys) {
        auto [it, inserted] = first.emplace(key, s);
        if (inserted) continue;
        error(s->mark, s->path,
              "duplicate " + std::string(what) + " " + quote(key) + "; already used by " + it->second->path +
                  " at line " + std::to_string(it->second->mark.line + 1));
    }
}

void loader::check_references() {
    std::vector<std::pair<std::string, const site*>> names;
    std::vector<std::pair<std::string, const site*>> addresses;
    for (const auto& l : listeners_) {
        if (l.name.ok) names.emplace_back(l.cfg.name, &l.name);
        if (l.address.ok) addresses.emplace_back(l.cfg.address.to_string(), &l.address);
    }
    check_unique(names, "listener name");
    check_unique(addresses, "listener address");

    names.clear();
    std::vector<std::string_view> pool_names;
    for (const auto& p : pools_) {
        if (!p.name.ok) continue;
        names.emplace_back(p.cfg.name, &p.name);
        pool_names.push_back(p.cfg.name);
    }
    check_unique(names, "pool name");

    for (const auto& p : pools_) {
        names.clear();
        addresses.clear();
        for (const auto& b : p.backends) {
            if (b.name.ok) names.emplace_back(b.cfg.name, &b.name);
            if (b.address.ok) addresses.emplace_back(b.cfg.address.to_string(), &b.address);
        }
        check_unique(names, "backend name");
        check_unique(addresses, "backend address");
    }

    for (const auto& l : listeners_) {
        if (!l.pool.ok) continue;
        if (std::find(pool_names.begin(), pool_names.end(), l.cfg.pool) != pool_names.end()) continue;
        // A pool whose own name was invalid has been reported already;
        // saying the listener's reference is undefined too would be noise.
        const bool named_by_broken_pool = std::any_of(
            pools_.begin(), pools_.end(), [&](const auto& p) { return !p.name.ok && p.name.text == l.cfg.pool; });
        if (named_by_broken_pool) continue;
        std::string message = "pool " + quote(l.cfg.pool) + " is not defined; ";
        if (pool_names.empty()) {
            message += "no valid pools are defined";
        } else {
            message += did_you_mean(l.cfg.pool, pool_names) + "defined pools: " + join(pool_names);
        }
        error(l.pool.mark, l.pool.path, std::move(message));
    }
}

std::shared_ptr<const config> loader::load(const std::string& text) {
    config_.source = source_;
    std::vector<YAML::Node> documents;
    try {
        documents = YAML::LoadAll(text);
    } catch (const YAML::Exception& e) {
        syntax_error(e);
        throw config_load_error(std::move(errors_));
    }

    if (documents.empty()) {
        error(YAML::Mark{}, {},  // line 1, column 1
              "the file is empty or holds only comments; expected a mapping with at least "
              "\"listeners\" and \"pools\"");
        throw config_load_error(std::move(errors_));
    }
    if (documents.size() > 1) {
        error(documents[1].Mark(), {},
              "the file holds " + std::to_string(documents.size()) +
                  " YAML documents (separated by \"---\"); expected exactly one");
    }

    const field root{documents.front(), documents.front().Mark(), {}};
    YAML::Mark workers_mark = YAML::Mark::null_mark();
    if (auto top = open_mapping(root, top_keys, false)) {
        require(*top, "listeners");
        require(*top, "pools");
        read_integer(*top, "workers", {.min = 1, .max = max_workers, .zero_allowed = true}, config_.workers);
        if (const field* f = top->find("workers")) workers_mark = f->mark;
        if (const field* f = top->find("listeners")) read_listeners(*f);
        if (const field* f = top->find("pools")) read_pools(*f);
        read_sections(*top);
        if (const field* f = top->find("vrrp")) read_vrrp(*f, config_.vrrp.emplace());
        if (const field* f = top->find("bgp")) {
            read_bgp(*f, config_.bgp.emplace());
            if (const field* v = top->find("vrrp")) {
                // Both would put the VIPs on this node by two different means.
                error(f->mark, f->path,
                      "bgp and vrrp (line " + std::to_string(v->mark.line + 1) +
                          ") are both set; choose one: vrrp moves the VIPs between two nodes, bgp announces them "
                          "from every node");
            }
        }
        if (const field* f = top->find("admin")) read_admin(*f, config_.admin.emplace());
        check_references();
    }

    if (!errors_.empty()) {
        // Cross-item checks run last; show everything in the order of the file.
        std::stable_sort(errors_.begin(), errors_.end(), [](const auto& a, const auto& b) {
            return std::pair(a.line, a.column) < std::pair(b.line, b.column);
        });
        throw config_load_error(std::move(errors_));
    }

    // Post-pass: defaults that depend on the machine or on other fields.
    if (config_.workers == 0) {
        // The CPUs this process may use, not the machine's (a pinned or
        // CPU-limited apilb would run more workers than CPUs).
        const cpu_budget budget = probe_cpu_budget();
        config_.workers = budget.workers(max_workers);
        config_.workers_auto = budget.describe();
        for (const auto& w : budget.warnings) warning(workers_mark, "workers", "counting the CPUs for 0: " + w);
    }
    config_.warnings = std::move(warnings_);
    for (const auto& l : listeners_) config_.listeners.push_back(l.cfg);
    for (const auto& p : pools_) {
        pool_config pool = p.cfg;
        for (const auto& b : p.backends) pool.backends.push_back(b.cfg);
        if (pool.connect_attempts == 0) pool.connect_attempts_each = true;
        if (auto& sc = pool.storm_control; sc.new_per_second != 0 && sc.burst == 0) {
            sc.burst = std::max<std::uint32_t>(1, sc.new_per_second / 10);
        }
        resolve_backend_defaults(pool);
        config_.pools.push_back(std::move(pool));
    }
    return std::make_shared<const config>(std::move(config_));
}

}  // namespace apilb::config_detail

namespace apilb {

using config_detail::loader;

std::string read_config_file(const std::string& path) {
    file_contents file = read_regular_file(path, max_config_bytes);
    if (!file) {
        throw config_load_error(
            {config_error{.file = path, .line = 0, .column = 0, .key_path = {}, .message = "the file " + file.error}});
    }
    return std::move(file.bytes);
}

void parse_yaml_unguarded(const std::string& text) {
    try {
        YAML::LoadAll(text);
    } catch (const YAML::Exception&) {
        // A syntax error ends the parse too; parse_config reports it.
    }
}

std::shared_ptr<const config> parse_config(const std::string& yaml_text, const std::string& source_name) {
    return loader(source_name).load(yaml_text);
}

std::shared_ptr<const config> load_config(const std::string& path) {
    return parse_config(read_config_file(path), path);
}

}  // namespace apilb
