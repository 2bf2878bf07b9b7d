// Fuzz target: keepalived.conf from a vrrp section. A finding here is a
// security defect: keepalived runs as root and would run any `notify` or
// `script` that a value smuggled into the file.
//
// Input: lines "key=value" for the vrrp keys (interface, virtual_router_id,
// priority, router_id, unicast_src_ip, peer and vip (repeatable),
// advert_interval, preempt, preempt_delay, state_dir, track_process,
// manage) and config_path / apilb_path (the command line's); in a value
// "\n", "\r", "\\" and "\xHH" stand for those bytes. The values go into a
// YAML file through yaml-cpp's emitter, every one double-quoted, so the
// YAML itself is always well-formed (no guard needed: the YAML's syntax is
// not what is fuzzed here) and the loader sees exactly the asked text. Then
// either the loader rejects it, or the rendered file, read back the way
// keepalived reads it (words, double quotes, "#"/"!" comments, braces),
// must be exactly the expected blocks and directives with the asked values:
// no extra line, word, brace, quote or comment.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "apilb/core/config.hpp"
#include "apilb/core/keepalived_conf.hpp"
#include "key_value_input.hpp"

namespace {

using namespace apilb;
using fuzz::read_fields;
using statement = std::vector<std::string>;

[[noreturn]] void fail(const char* what, const std::string& detail) {
    std::fprintf(stderr, "keepalived_conf_fuzz: %s\n%s\n", what, detail.c_str());
    std::abort();
}

std::string emit_yaml(const std::multimap<std::string, std::string>& fields) {
    YAML::Emitter out;
    out.SetOutputCharset(YAML::EscapeNonAscii);
    out << YAML::BeginMap;
    out << YAML::Key << "listeners" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key << "name"
        << YAML::Value << "api" << YAML::Key << "address" << YAML::Value << "127.0.0.1:6443" << YAML::Key << "pool"
        << YAML::Value << "cp" << YAML::EndMap << YAML::EndSeq;
    out << YAML::Key << "pools" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key << "name" << YAML::Value
        << "cp" << YAML::Key << "backends" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key << "name"
        << YAML::Value << "cp-1" << YAML::Key << "address" << YAML::Value << "127.0.0.2:6443" << YAML::EndMap
        << YAML::EndSeq << YAML::EndMap << YAML::EndSeq;
    out << YAML::Key << "vrrp" << YAML::Value << YAML::BeginMap;
    for (const char* key : {"interface", "virtual_router_id", "priority", "router_id", "unicast_src_ip",
                            "advert_interval", "preempt", "preempt_delay", "state_dir", "track_process", "manage"}) {
        const auto it = fields.find(key);
        if (it == fields.end()) continue;
        out << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << it->second;
    }
    for (const auto& [list, key] : {std::pair{"peers", "peer"}, std::pair{"vips", "vip"}}) {
        const auto [first, last] = fields.equal_range(key);
        if (first == last) continue;
        out << YAML::Key << list << YAML::Value << YAML::BeginSeq;
        for (auto it = first; it != last; ++it) out << YAML::DoubleQuoted << it->second;
        out << YAML::EndSeq;
    }
    out << YAML::EndMap << YAML::EndMap;
    if (!out.good()) return {};
    return out.c_str();
}

/// keepalived.conf as keepalived reads it: per line, the words ("{" and "}"
/// on their own, a double-quoted string as one word with its quotes), up to
/// a "#" or "!" outside quotes. Comment-only and blank lines are counted in
/// `comments` / dropped.
std::vector<statement> read_back(const std::string& text, std::size_t& comments) {
    std::vector<statement> out;
    comments = 0;
    std::size_t start = 0;
    while (start < text.size()) {
        auto eol = text.find('\n', start);
        if (eol == std::string::npos) eol = text.size();
        const std::string_view line(text.data() + start, eol - start);
        start = eol + 1;
        statement words;
        std::string word;
        bool quoted = false, comment = false;
        auto flush = [&] {
            if (!word.empty()) words.push_back(std::move(word));
            word.clear();
        };
        for (const char c : line) {
            if (quoted) {
                word += c;
                if (c == '"') {
                    quoted = false;
                    flush();
                }
            } else if (c == '"') {
                flush();
                word += c;
                quoted = true;
            } else if (c == '#' || c == '!') {
                comment = true;
                break;
            } else if (c == '{' || c == '}') {
                flush();
                words.emplace_back(1, c);
            } else if (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
                flush();
            } else {
                word += c;
            }
        }
        if (quoted) fail("an unterminated quote", std::string(line));
        flush();
        if (comment && !words.empty()) fail("a comment after a directive", std::string(line));
        if (comment) ++comments;
        if (!words.empty()) out.push_back(std::move(words));
    }
    return out;
}

std::string seconds_text(duration d) {
    char buf[32];
    if (d.count() % 1000 == 0)
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(d.count() / 1000));
    else {
        std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(d.count()) / 1000.0);
        std::string s(buf);
        while (s.back() == '0') s.pop_back();
        return s;
    }
    return buf;
}

/// What the file must say, built from the asked values (the loader may only
/// have canonicalised addresses and dropped a state_dir's trailing "/").
std::vector<statement> expected(const vrrp_config& v, const std::multimap<std::string, std::string>& asked,
                                const keepalived_render_options& options) {
    auto asked_value = [&](const char* key) -> std::optional<std::string> {
        const auto it = asked.find(key);
        if (it == asked.end()) return std::nullopt;
        return it->second;
    };
    const std::string router_id = asked_value("router_id")
                                      .value_or("apilb-" + std::to_string(v.virtual_router_id) + "-" +
                                                std::to_string(v.priority));
    std::string state_dir = asked_value("state_dir").value_or("/run/apilb");
    if (state_dir.size() > 1 && state_dir.back() == '/') state_dir.pop_back();
    const std::string interface = asked_value("interface").value_or("");
    const bool v6 = !v.peers.empty() ? v.peers.front().find(':') != std::string::npos : v.vips.front().is_v6;

    std::vector<statement> s = {{"global_defs", "{"},
                                {"router_id", router_id},
                                {"vrrp_version", "3"},
                                {"script_user", "root"},
                                {"enable_script_security"},
                                {"vrrp_notify_fifo", "\"" + state_dir + "/vrrp-notify.fifo\""},
                                {"}"}};
    if (v.track_process) {
        s.insert(s.end(),
                 {{"vrrp_track_process", "apilb_process", "{"},
                  {"process", "\"" + options.apilb_path + "\"", "run", "--config", "\"" + options.config_path + "\""},
                  {"quorum", "1"},
                  {"weight", "0"},
                  {"}"}});
    }
    s.insert(s.end(), {{"track_file", "apilb_fault", "{"},
                       {"file", "\"" + state_dir + "/vrrp-fault\""},
                       {"weight", "0"},
                       {"init_file", "1"},
                       {"}"},
                       {"vrrp_instance", "VI_APILB", "{"},
                       {"state", "BACKUP"},
                       {"interface", interface},
                       {"virtual_router_id", std::to_string(v.virtual_router_id)},
                       {"priority", std::to_string(v.priority)},
                       {"advert_int", seconds_text(v.advert_interval)}});
    if (!v.preempt)
        s.push_back({"nopreempt"});
    else if (v.preempt_delay.count() > 0)
        s.push_back({"preempt_delay", seconds_text(v.preempt_delay)});
    s.push_back({"higher_prio_send_advert"});
    if (!v.peers.empty()) {
        if (v.unicast_src_ip) s.push_back({"unicast_src_ip", *v.unicast_src_ip});
        s.push_back({"unicast_peer", "{"});
        for (const auto& p : v.peers) s.push_back({p});
        s.push_back({"}"});
    }
    auto vip_block = [&](const char* name, bool family) {
        s.push_back({name, "{"});
        for (const auto& vip : v.vips) {
            if (vip.is_v6 == family) s.push_back({vip.ip + "/" + std::to_string(vip.prefix), "dev", interface});
        }
        s.push_back({"}"});
    };
    vip_block("virtual_ipaddress", v6);
    if (std::any_of(v.vips.begin(), v.vips.end(), [&](const auto& vip) { return vip.is_v6 != v6; })) {
        vip_block("virtual_ipaddress_excluded", !v6);
    }
    s.insert(s.end(), {{"track_file", "{"}, {"apilb_fault"}, {"}"}});
    if (v.track_process) s.insert(s.end(), {{"track_process", "{"}, {"apilb_process"}, {"}"}});
    s.push_back({"}"});
    return s;
}

std::string show(const std::vector<statement>& s) {
    std::string out;
    for (const auto& st : s) {
        for (const auto& w : st) out += "[" + w + "] ";
        out += "\n";
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto fields = read_fields(std::string_view(reinterpret_cast<const char*>(data), size));
    const std::string yaml = emit_yaml(fields);
    if (yaml.empty()) return 0;
    keepalived_render_options options;
    if (auto it = fields.find("config_path"); it != fields.end())
        options.config_path = it->second;
    else
        options.config_path = "/etc/apilb/apilb.yaml";
    if (auto it = fields.find("apilb_path"); it != fields.end()) options.apilb_path = it->second;
    std::shared_ptr<const config> cfg;
    try {
        // The source name is the --config path, as `apilb keepalived-config` loads it.
        cfg = parse_config(yaml, options.config_path);
    } catch (const config_load_error&) {
        return 0;
    }
    if (!cfg->vrrp) fail("the vrrp section did not load", yaml);
    std::string text;
    try {
        text = render_keepalived_conf(*cfg, options);
    } catch (const std::invalid_argument& e) {
        // The renderer's own refusal, for the command line's values only: a
        // quote, a line break or another control character.
        const std::string args = options.config_path + options.apilb_path;
        const bool bad_arg = std::any_of(args.begin(), args.end(), [](char c) {
            const auto u = static_cast<unsigned char>(c);
            return c == '"' || u < 0x20 || u == 0x7f;
        });
        if (!bad_arg) fail("render refused a config the loader accepted", e.what());
        return 0;
    }
    std::size_t comments = 0;
    const auto got = read_back(text, comments);
    const auto want = expected(*cfg->vrrp, fields, options);
    if (comments != 2 || !text.starts_with("# ")) fail("the header comments changed", text);
    if (got != want) fail("the rendered file is not what was asked", text + "\n--- expected:\n" + show(want));
    return 0;
}
