// The top-level `vrrp` section: this node's part in keepalived's VRRPv3
// election for the VIPs. Part of the loader (see loader.hpp); its values end
// up in a keepalived.conf (keepalived_conf.cpp), so anything that could break
// that file's syntax (spaces, quotes, braces) is rejected here.
#include <algorithm>
#include <map>

#include "apilb/core/loader.hpp"

namespace apilb::config_detail {
namespace {

constexpr std::array<std::string_view, 16> vrrp_keys{
    "interface",       "virtual_router_id", "priority",      "router_id", "unicast_src_ip", "peers",           "vips",
    "advert_interval", "preempt",           "preempt_delay", "state_dir", "track_process",  "handoff_timeout", "manage",
    "keepalived_path", "realtime_priority"};

/// Why `name` cannot be the VRRP interface, or "".
std::string interface_problem(const std::string& name) {
    if (name == "lo") return "keepalived cannot run VRRP on the loopback interface; name the interface the peers share";
    return interface_name_problem(name);
}

/// Text that goes into keepalived.conf as one word: no blanks, quotes, braces or comments.
bool is_plain_word(const std::string& text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u < 0x7f && c != '"' && c != '{' && c != '}' && c != '#' && c != '!' && c != '\\';
    });
}

}  // namespace

std::string interface_name_problem(const std::string& name) {
    // IFNAMSIZ is 16 with the terminating NUL.
    if (name.empty()) return "the name is empty";
    if (name.size() > 15) return "longer than 15 characters (the kernel's IFNAMSIZ)";
    if (name == "." || name == "..") return "\".\" and \"..\" are not interface names";
    for (char c : name) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f || c == '/' || c == ':' || c == '"' || c == '{' || c == '}' || c == '#' ||
            c == '!') {
            return "holds " + quote(std::string(1, c)) +
                   "; interface names are visible ASCII without \"/\", \":\", quotes or braces (an alias "
                   "label like eth0:1 is not an interface)";
        }
    }
    return {};
}

std::optional<socket_address> parse_ip(const std::string& text) {
    if (text.find(':') != std::string::npos) return parse_socket_address("[" + text + "]:1");
    return parse_socket_address(text + ":1");
}

void loader::read_vrrp(const field& f, vrrp_config& v) {
    auto m = open_mapping(f, vrrp_keys, false);
    if (!m) return;
    require(*m, "interface");
    require(*m, "virtual_router_id");
    require(*m, "vips");

    if (const field* i = m->find("interface")) {
        if (auto text = scalar(*i, "a network interface name such as \"eth0\"")) {
            if (auto problem = interface_problem(*text); !problem.empty()) {
                error(i->mark, i->path, "invalid interface name " + quote(*text) + ": " + problem);
            } else {
                v.interface = *text;
            }
        }
    }
    read_integer(*m, "virtual_router_id", {.min = 1, .max = 255}, v.virtual_router_id);
    // 255 is reserved for the owner of the address, which no apilb node is.
    read_integer(*m, "priority", {.min = 1, .max = 254}, v.priority);
    if (const field* r = m->find("router_id")) {
        if (auto text = scalar(*r, "a name for this node in keepalived's logs")) {
            if (!is_plain_word(*text) || text->size() > 63) {
                error(r->mark, r->path,
                      "invalid router_id " + quote(*text) +
                          "; expected 1 to 63 visible characters without "
                          "blanks, quotes, braces, \"#\" or \"!\"");
            } else {
                v.router_id = *text;
            }
        }
    }

    std::optional<socket_address> src;
    const field* src_field = m->find("unicast_src_ip");
    if (src_field != nullptr) {
        if (auto text = scalar(*src_field, "this node's IP address")) {
            src = parse_ip(*text);
            if (!src) {
                error(src_field->mark, src_field->path, quote(*text) + " is not a numeric IPv4 or IPv6 address");
            } else {
                v.unicast_src_ip = src->ip;
            }
        }
    }

    std::vector<std::pair<socket_address, field>> peers;
    const field* peers_field = m->find("peers");
    if (peers_field != nullptr) {
        if (auto items = open_sequence(*peers_field, "peers")) {
            for (const auto& item : *items) {
                auto text = scalar(item, "a peer's IP address");
                if (!text) continue;
                auto ip = parse_ip(*text);
                if (!ip) {
                    error(item.mark, item.path,
                          quote(*text) + " is not a numeric IPv4 or IPv6 address (peers are addresses, no port)");
                    continue;
                }
                const auto same = std::find_if(peers.begin(), peers.end(),
                                               [&](const auto& p) { return p.first.ip == ip->ip; });
                if (same != peers.end()) {
                    error(item.mark, item.path, "duplicate peer " + quote(ip->ip) + "; already " + same->second.path);
                    continue;
                }
                if (src && src->ip == ip->ip) {
                    error(item.mark, item.path, "peer " + quote(ip->ip) + " is this node's own unicast_src_ip");
                    continue;
                }
                if (src && src->is_v6 != ip->is_v6) {
                    error(item.mark, item.path,
                          "peer " + quote(ip->ip) + " is " + (ip->is_v6 ? "IPv6" : "IPv4") +
                              " but unicast_src_ip is not; VRRP talks to its peers over one family");
                    continue;
                }
                if (!peers.empty() && peers.front().first.is_v6 != ip->is_v6) {
                    error(item.mark, item.path, "peers mix IPv4 and IPv6; VRRP talks to its peers over one family");
                    continue;
                }
                peers.emplace_back(*ip, item);
                v.peers.push_back(ip->ip);
            }
        }
    }
    if (src_field != nullptr && peers_field == nullptr) {
        error(src_field->mark, src_field->path,
              "unicast_src_ip is set but there are no peers; list the other nodes under peers, or remove it "
              "to use multicast");
    }

    std::vector<std::pair<std::string, std::string>> vip_paths;  // ip -> path of its first use
    if (const field* vf = m->find("vips")) {
        if (auto items = open_sequence(*vf, "vips")) {
            for (const auto& item : *items) {
                auto text = scalar(item, "an address with an optional prefix, e.g. \"192.0.2.100/24\"");
                if (!text) continue;
                std::string address = *text;
                std::optional<std::uint32_t> prefix;
                if (const auto slash = text->find('/'); slash != std::string::npos) {
                    address = text->substr(0, slash);
                    const std::string bits = text->substr(slash + 1);
                    if (bits.empty() || bits.size() > 3 || bits.find_first_not_of("0123456789") != std::string::npos) {
                        error(item.mark, item.path, "invalid prefix length in " + quote(*text));
                        continue;
                    }
                    prefix = static_cast<std::uint32_t>(std::stoul(bits));
                }
                auto ip = parse_ip(address);
                if (!ip) {
                    error(item.mark, item.path,
                          quote(*text) + " is not a numeric IPv4 or IPv6 address with an optional /prefix");
                    continue;
                }
                const std::uint32_t max_prefix = ip->is_v6 ? 128 : 32;
                if (prefix && (*prefix == 0 || *prefix > max_prefix)) {
                    error(item.mark, item.path,
                          "prefix /" + std::to_string(*prefix) + " is out of range 1.." + std::to_string(max_prefix));
                    continue;
                }
                if (ip->is_unspecified()) {
                    error(item.mark, item.path, "a VIP cannot be the unspecified address");
                    continue;
                }
                const auto same = std::find_if(vip_paths.begin(), vip_paths.end(),
                                               [&](const auto& p) { return p.first == ip->ip; });
                if (same != vip_paths.end()) {
                    error(item.mark, item.path,
                          "VIP " + quote(ip->ip) + " overlaps " + same->second + "; each address once");
                    continue;
                }
                const bool is_peer = std::any_of(peers.begin(), peers.end(),
                                                 [&](const auto& p) { return p.first.ip == ip->ip; });
                if (is_peer || (src && src->ip == ip->ip)) {
                    error(item.mark, item.path,
                          "VIP " + quote(ip->ip) + " is also a node's own address (" +
                              (is_peer ? "in peers" : "unicast_src_ip") + "); a VIP must be an address no node owns");
                    continue;
                }
                vip_paths.emplace_back(ip->ip, item.path);
                v.vips.push_back(vrrp_vip{.ip = ip->ip, .prefix = prefix.value_or(max_prefix), .is_v6 = ip->is_v6});
            }
        }
    }

    const field* advert = m->find("advert_interval");
    if (read_duration(*m, "advert_interval", {.min = 10ms, .max = 40s, .range = "10ms..40s"}, v.advert_interval) &&
        advert != nullptr && v.advert_interval % 10ms != 0ms) {
        error(advert->mark, advert->path,
              "VRRPv3 counts the advertisement interval in centiseconds; expected a multiple of 10ms");
    }
    read_bool(*m, "preempt", v.preempt);
    const field* delay = m->find("preempt_delay");
    read_duration(*m, "preempt_delay", {.min = 0ms, .max = 1000s, .zero_allowed = true, .range = "0..1000s"},
                  v.preempt_delay);
    if (delay != nullptr && !v.preempt && v.preempt_delay != 0ms) {
        error(delay->mark, delay->path,
              "preempt_delay needs preempt: true; with preempt false a node never takes "
              "the VIPs back, so there is nothing to delay");
    }
    if (const field* s = m->find("state_dir")) {
        if (auto text = scalar(*s, "an absolute directory path")) {
            if (text->empty() || text->front() != '/' || !is_plain_word(*text) || text->size() > 200) {
                error(s->mark, s->path,
                      "invalid state_dir " + quote(*text) +
                          "; expected an absolute path of at most 200 characters "
                          "without blanks, quotes, braces, \"#\" or \"!\" (it is written into keepalived.conf)");
            } else {
                v.state_dir = text->size() > 1 && text->back() == '/' ? text->substr(0, text->size() - 1) : *text;
            }
        }
    }
    read_bool(*m, "track_process", v.track_process);
    read_bool(*m, "manage", v.manage);
    if (const field* k = m->find("keepalived_path")) {
        if (auto text = scalar(*k, "the absolute path of the keepalived binary")) {
            if (text->empty() || text->front() != '/') {
                error(k->mark, k->path,
                      "expected an absolute path such as \"/usr/sbin/keepalived\"; found " + quote(*text));
            } else {
                v.keepalived_path = *text;
            }
        }
        if (!v.manage) warning(k->mark, k->path, "ignored: apilb starts keepalived only with manage: true");
    }
    if (v.manage && v.track_process) {
        // keepalived is apilb's child and gets SIGTERM from the kernel when
        // apilb dies (PR_SET_PDEATHSIG), which gives the VIPs up at once with
        // a priority-0 advert. track_process would add nothing, and it cannot
        // work where keepalived shares a non-initial network namespace with
        // apilb (the kernel's process connector exists only in the first one).
        v.track_process = false;
        if (const field* t = m->find("track_process")) {
            warning(t->mark, t->path, "ignored with manage: true: keepalived stops with apilb instead");
        }
    }
    // SCHED_RR priorities are 1..99 (sched_get_priority_max); 0 leaves
    // keepalived's VRRP process at the normal scheduling class.
    read_integer(*m, "realtime_priority", {.min = 0, .max = 99}, v.realtime_priority);
    read_duration(*m, "handoff_timeout", {.min = 0ms, .max = 1min, .zero_allowed = true, .range = "0..1m"},
                  v.handoff_timeout);

    if (v.router_id.empty()) {
        v.router_id = "apilb-" + std::to_string(v.virtual_router_id) + "-" + std::to_string(v.priority);
    }
}

}  // namespace apilb::config_detail
