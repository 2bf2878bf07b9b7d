// Fuzz target: frr.conf from a bgp section. A finding here is a security
// defect: FRR's daemons run every command of the file, and one smuggled in
// (a `neighbor` of someone else's, a `redistribute`, a route-map that lets
// more out or in) changes what the node announces or installs.
//
// Input: lines "key=value": local_as, router_id, med, config_path, and the
// repeatable vip, community and peer ("address,remote_as,bfd,interval,
// multiplier", the last three optional); in a value "\n", "\r", "\\" and
// "\xHH" stand for those bytes. The values go into a YAML file through
// yaml-cpp's emitter, double-quoted, so the loader sees exactly the asked
// text. Then either the loader rejects it, or every line of the rendered
// file is one of the forms render_frr_conf writes, the announced networks
// are exactly the loaded VIPs, and every activated peer has the inbound
// deny and the outbound VIP-only route-map.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>

#include "apilb/core/config.hpp"
#include "apilb/core/frr_conf.hpp"
#include "key_value_input.hpp"

namespace {

using namespace apilb;
using fuzz::read_fields;

[[noreturn]] void fail(const char* what, const std::string& detail) {
    std::fprintf(stderr, "frr_conf_fuzz: %s\n%s\n", what, detail.c_str());
    std::abort();
}

std::string emit_yaml(const std::multimap<std::string, std::string>& fields) {
    YAML::Emitter out;
    out.SetOutputCharset(YAML::EscapeNonAscii);
    out << YAML::BeginMap;
    out << YAML::Key << "listeners" << YAML::Value << YAML::Flow << YAML::BeginSeq << YAML::BeginMap << YAML::Key
        << "name" << YAML::Value << "api" << YAML::Key << "address" << YAML::Value << "127.0.0.1:6443" << YAML::Key
        << "pool" << YAML::Value << "cp" << YAML::EndMap << YAML::EndSeq;
    out << YAML::Key << "pools" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key << "name" << YAML::Value
        << "cp" << YAML::Key << "backends" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key << "name"
        << YAML::Value << "cp-1" << YAML::Key << "address" << YAML::Value << "127.0.0.2:6443" << YAML::EndMap
        << YAML::EndSeq << YAML::EndMap << YAML::EndSeq;
    out << YAML::Key << "bgp" << YAML::Value << YAML::BeginMap;
    for (const char* key : {"local_as", "router_id", "med"}) {
        if (const auto it = fields.find(key); it != fields.end()) {
            out << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << it->second;
        }
    }
    for (const auto& [list, key] : {std::pair{"vips", "vip"}, std::pair{"communities", "community"}}) {
        const auto [first, last] = fields.equal_range(key);
        if (first == last) continue;
        out << YAML::Key << list << YAML::Value << YAML::BeginSeq;
        for (auto it = first; it != last; ++it) out << YAML::DoubleQuoted << it->second;
        out << YAML::EndSeq;
    }
    const auto [first, last] = fields.equal_range("peer");
    if (first != last) {
        out << YAML::Key << "peers" << YAML::Value << YAML::BeginSeq;
        for (auto it = first; it != last; ++it) {
            std::vector<std::string> parts;
            std::string part;
            for (char c : it->second + ",") {
                if (c != ',') {
                    part += c;
                    continue;
                }
                parts.push_back(part);
                part.clear();
            }
            out << YAML::BeginMap;
            const char* keys[] = {"address", "remote_as", "bfd", "bfd_interval", "bfd_multiplier"};
            for (std::size_t i = 0; i < parts.size() && i < 5; ++i) {
                out << YAML::Key << keys[i] << YAML::Value << YAML::DoubleQuoted << parts[i];
            }
            out << YAML::EndMap;
        }
        out << YAML::EndSeq;
    }
    out << YAML::EndMap << YAML::EndMap;
    return out.good() ? out.c_str() : "";
}

/// Every line render_frr_conf may write after the two header comments.
const std::regex& line_forms() {
    static const std::string addr = "[0-9a-f.:]+";
    static const std::regex forms(
        "!|frr defaults traditional|exit| exit|bfd|router bgp [0-9]+| bgp router-id [0-9.]+"
        "| no bgp default ipv4-unicast| bgp network import-check| exit-address-family"
        "|ip prefix-list APILB-VIPS seq [0-9]+ permit [0-9.]+/32"
        "|ipv6 prefix-list APILB-VIPS6 seq [0-9]+ permit [0-9a-f:.]+/128"
        "|route-map APILB-OUT6? permit 10|route-map APILB-IN deny 10"
        "| match ip address prefix-list APILB-VIPS| match ipv6 address prefix-list APILB-VIPS6"
        "| set community( ([0-9]+:[0-9]+|no-export|no-advertise|local-AS|no-peer|blackhole))+| set metric [0-9]+"
        "| profile apilb-[0-9]+ms-x[0-9]+|  (receive|transmit)-interval [0-9]+|  detect-multiplier [0-9]+"
        "| neighbor " +
        addr + " (remote-as [0-9]+|bfd profile apilb-[0-9]+ms-x[0-9]+|timers connect 5)" +
        "| address-family ipv[46] unicast|  network " + addr + "/(32|128)|  neighbor " + addr +
        " (activate|route-map APILB-IN in|route-map APILB-OUT6? out)");
    return forms;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto fields = read_fields(std::string_view(reinterpret_cast<const char*>(data), size));
    const std::string yaml = emit_yaml(fields);
    if (yaml.empty()) return 0;
    std::string source = "/etc/apilb/apilb.yaml";
    if (const auto it = fields.find("config_path"); it != fields.end()) source = it->second;
    std::shared_ptr<const config> cfg;
    try {
        cfg = parse_config(yaml, source);
    } catch (const config_load_error&) {
        return 0;
    }
    if (!cfg->bgp) fail("the bgp section did not load", yaml);
    std::string text;
    try {
        text = render_frr_conf(*cfg, {});
    } catch (const std::invalid_argument& e) {
        // Only the source path (a command-line value) may be refused.
        if (std::none_of(source.begin(), source.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; })) {
            fail("render refused a config the loader accepted", e.what());
        }
        return 0;
    }
    std::set<std::string> networks;
    std::size_t activated = 0, denied_in = 0, vips_out = 0, lines = 0;
    std::size_t start = 0;
    while (start < text.size()) {
        const auto eol = text.find('\n', start);
        if (eol == std::string::npos) fail("the file does not end with a line break", text);
        const std::string line = text.substr(start, eol - start);
        start = eol + 1;
        ++lines;
        if (lines == 1) {
            if (!line.starts_with("! Generated by `apilb frr-config` from ")) fail("the header changed", text);
            continue;
        }
        if (lines == 2) continue;  // fixed text, compared in frr_conf_test
        if (!std::regex_match(line, line_forms())) fail("a line render_frr_conf does not write", line + "\n" + text);
        if (line.starts_with("  network ")) networks.insert(line.substr(10, line.find('/') - 10));
        if (line.ends_with(" activate")) ++activated;
        if (line.ends_with(" route-map APILB-IN in")) ++denied_in;
        if (line.ends_with(" out") && line.find(" route-map APILB-OUT") != std::string::npos) ++vips_out;
    }
    std::set<std::string> vips;
    for (const auto& v : cfg->bgp->vips) vips.insert(v.ip);
    if (networks != vips) fail("the announced networks are not the VIPs", text);
    if (activated != denied_in || activated != vips_out) fail("a peer without both route-maps", text);
    return 0;
}
