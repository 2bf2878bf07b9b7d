// The top-level `bgp` section: the VIPs this node announces to its routers
// through FRR (docs/bgp.md). Part of the loader (see loader.hpp); its values
// end up in frr.conf (frr_conf.cpp), so each is checked to be exactly one
// word of the kind FRR expects.
#include <algorithm>
#include <charconv>

#include "apilb/core/file_read.hpp"
#include "apilb/core/frr_conf.hpp"
#include "apilb/core/loader.hpp"

namespace apilb::config_detail {
namespace {

constexpr std::array<std::string_view, 12> bgp_keys{"local_as",    "router_id",     "peers",      "vips",
                                                    "communities", "med",           "manage",     "frr_config",
                                                    "interface",   "withdraw_wait", "vtysh_path", "vty_socket_dir"};
constexpr std::array<std::string_view, 6> peer_keys{"address", "remote_as",    "password_file",
                                                    "bfd",     "bfd_interval", "bfd_multiplier"};
/// Well-known communities FRR's `set community` takes by name (RFC 1997, 3765).
constexpr std::array<std::string_view, 5> community_names{"no-export", "no-advertise", "local-AS", "no-peer",
                                                          "blackhole"};
/// Most communities on the VIP routes: a handful is what routers' policies use.
constexpr std::size_t max_communities = 32;
/// Most peers and VIPs: a node has a few top-of-rack routers and a few VIPs.
constexpr std::size_t max_peers = 64;
constexpr std::size_t max_vips = 64;

/// With manage: true, where apilb runs FRR unless vty_socket_dir says otherwise.
constexpr std::string_view default_managed_frr_dir = "/run/apilb/frr";
/// Its longest path: "<dir>/zserv.api" must fit a socket's 108-byte sun_path.
constexpr std::size_t max_managed_frr_dir = 90;

/// Visible ASCII without a blank or a quote: the directory goes on the
/// daemons' command lines and into messages.
bool is_path_word(std::string_view text) {
    return !text.empty() && std::none_of(text.begin(), text.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u <= 0x20 || u >= 0x7f || c == '"' || c == '\'';
    });
}

/// A number 0..65535 written with digits only.
bool is_u16(std::string_view text) {
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    // from_chars into an unsigned type takes digits only: no sign, no blank.
    return ec == std::errc{} && end == text.data() + text.size() && value <= 65535;
}

}  // namespace

std::optional<bgp_peer> loader::read_bgp_peer(const field& f) {
    auto m = open_mapping(f, peer_keys, false);
    if (!m) return std::nullopt;
    bool ok = require(*m, "address");
    ok = require(*m, "remote_as") && ok;
    bgp_peer p;
    if (const field* a = m->find("address")) {
        if (auto text = scalar(*a, "the neighbour's IP address, e.g. \"198.18.1.1\"")) {
            auto ip = parse_ip(*text);
            if (!ip) {
                error(a->mark, a->path,
                      quote(*text) + " is not a numeric IPv4 or IPv6 address (a BGP peer is an address, no port)");
                ok = false;
            } else if (ip->is_unspecified()) {
                error(a->mark, a->path, "a peer cannot be the unspecified address");
                ok = false;
            } else {
                p.address = ip->ip;
                p.is_v6 = ip->is_v6;
            }
        } else {
            ok = false;
        }
    }
    ok = read_integer(*m, "remote_as", {.min = 1, .max = u32_max}, p.remote_as) && ok;
    std::string password_bytes;
    if (!read_file_path(*m, "password_file", max_bgp_password_file_bytes, p.password_file, &password_bytes)) {
        ok = false;
    } else if (!p.password_file.empty()) {
        std::string problem;
        bgp_password_from_file(std::move(password_bytes), problem);
        if (!problem.empty()) {
            const field* pf = m->find("password_file");
            // Never the content: it is a secret, and the message goes to logs.
            error(pf->mark, pf->path, quote(p.password_file) + " does not hold a usable password: " + problem);
            ok = false;
        }
    }
    ok = read_bool(*m, "bfd", p.bfd) && ok;
    // The ranges bfdd takes: receive/transmit-interval 10..60000 ms, detect-multiplier 2..255.
    ok = read_duration(*m, "bfd_interval", {.min = 10ms, .max = 60s, .range = "10ms..60s"}, p.bfd_interval) && ok;
    ok = read_integer(*m, "bfd_multiplier", {.min = 2, .max = 255}, p.bfd_multiplier) && ok;
    if (!p.bfd) {
        for (std::string_view key : {"bfd_interval", "bfd_multiplier"}) {
            if (const field* b = m->find(key)) warning(b->mark, b->path, "ignored: BFD is on only with bfd: true");
        }
    }
    if (!ok) return std::nullopt;
    return p;
}

void loader::read_bgp(const field& f, bgp_config& b) {
    auto m = open_mapping(f, bgp_keys, false);
    if (!m) return;
    require(*m, "local_as");
    require(*m, "router_id");
    require(*m, "peers");
    require(*m, "vips");
    read_integer(*m, "local_as", {.min = 1, .max = u32_max}, b.local_as);

    if (const field* r = m->find("router_id")) {
        if (auto text = scalar(*r, "an IPv4 address naming this node to its peers, e.g. \"198.18.0.11\"")) {
            auto ip = parse_ip(*text);
            if (!ip || ip->is_v6 || ip->is_unspecified()) {
                error(r->mark, r->path,
                      "invalid router_id " + quote(*text) +
                          "; expected a non-zero IPv4 address such as \"198.18.0.11\" (BGP's router id is 32 bits, "
                          "also with IPv6 peers)");
            } else {
                b.router_id = ip->ip;
            }
        }
    }

    std::vector<std::pair<std::string, std::string>> seen;  // address -> path of its first use
    auto first_use = [&seen](const std::string& ip) {
        auto it = std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == ip; });
        return it == seen.end() ? std::string{} : it->second;
    };
    if (const field* pf = m->find("peers")) {
        if (auto items = open_sequence(*pf, "peers")) {
            if (items->size() > max_peers) {
                error(pf->mark, pf->path,
                      std::to_string(items->size()) + " peers; expected at most " + std::to_string(max_peers));
            }
            for (const auto& item : *items) {
                auto p = read_bgp_peer(item);
                if (!p) continue;
                if (auto before = first_use(p->address); !before.empty()) {
                    error(item.mark, item.path, "duplicate peer " + quote(p->address) + "; already " + before);
                    continue;
                }
                seen.emplace_back(p->address, item.path);
                b.peers.push_back(std::move(*p));
            }
        }
    }

    if (const field* vf = m->find("vips")) {
        if (auto items = open_sequence(*vf, "vips")) {
            if (items->size() > max_vips) {
                error(vf->mark, vf->path,
                      std::to_string(items->size()) + " VIPs; expected at most " + std::to_string(max_vips));
            }
            for (const auto& item : *items) {
                auto text = scalar(item, "an address, optionally /32 (IPv4) or /128 (IPv6), e.g. \"198.18.0.100\"");
                if (!text) continue;
                std::string address = *text;
                std::string bits;
                if (const auto slash = text->find('/'); slash != std::string::npos) {
                    address = text->substr(0, slash);
                    bits = text->substr(slash + 1);
                }
                auto ip = parse_ip(address);
                if (!ip) {
                    error(item.mark, item.path,
                          quote(*text) + " is not a numeric IPv4 or IPv6 address with an optional /32 or /128");
                    continue;
                }
                const std::string host_bits = ip->is_v6 ? "128" : "32";
                if (!bits.empty() || text->back() == '/') {
                    if (bits != host_bits) {
                        error(item.mark, item.path,
                              "a VIP is announced as a host route; expected /" + host_bits + " or no prefix, found " +
                                  quote(*text));
                        continue;
                    }
                }
                if (ip->is_unspecified()) {
                    error(item.mark, item.path, "a VIP cannot be the unspecified address");
                    continue;
                }
                if (auto before = first_use(ip->ip); !before.empty()) {
                    error(item.mark, item.path,
                          "VIP " + quote(ip->ip) + " is also " + before + "; a VIP is an address no router owns");
                    continue;
                }
                const bool has_peer = std::any_of(b.peers.begin(), b.peers.end(),
                                                  [&](const auto& p) { return p.is_v6 == ip->is_v6; });
                if (!b.peers.empty() && !has_peer) {
                    error(item.mark, item.path,
                          std::string("VIP ") + quote(ip->ip) + " is " + (ip->is_v6 ? "IPv6" : "IPv4") +
                              " but no peer is: apilb announces each family over sessions of that family");
                    continue;
                }
                seen.emplace_back(ip->ip, item.path);
                b.vips.push_back(bgp_vip{.ip = ip->ip, .is_v6 = ip->is_v6});
            }
        }
    }

    if (const field* cf = m->find("communities")) {
        if (auto items = open_sequence(*cf, "communities")) {
            if (items->size() > max_communities) {
                error(cf->mark, cf->path,
                      std::to_string(items->size()) + " communities; expected at most " +
                          std::to_string(max_communities));
            }
            for (const auto& item : *items) {
                auto text = scalar(item, "a community \"AS:VALUE\" or a well-known name such as \"no-export\"");
                if (!text) continue;
                const auto colon = text->find(':');
                const bool numeric = colon != std::string::npos && is_u16(std::string_view(*text).substr(0, colon)) &&
                                     is_u16(std::string_view(*text).substr(colon + 1));
                const bool named = std::find(community_names.begin(), community_names.end(), *text) !=
                                   community_names.end();
                if (!numeric && !named) {
                    error(item.mark, item.path,
                          "invalid community " + quote(*text) +
                              "; expected \"AS:VALUE\" with both parts 0..65535, or one of: " + join(community_names));
                    continue;
                }
                b.communities.push_back(*text);
            }
        }
    }
    if (m->find("med") != nullptr) {
        std::uint32_t med = 0;
        if (read_integer(*m, "med", {.min = 0, .max = u32_max}, med)) b.med = med;
    }
    read_bool(*m, "manage", b.manage);
    read_absolute_path(*m, "frr_config", "/etc/frr/frr.conf", b.frr_config);
    read_absolute_path(*m, "vtysh_path", "/usr/bin/vtysh", b.vtysh_path);
    read_absolute_path(*m, "vty_socket_dir", "/var/run/frr", b.vty_socket_dir);
    if (b.manage) read_managed_frr(*m, b);
    if (const field* i = m->find("interface")) {
        if (auto text = scalar(*i, "a local interface name such as \"lo\" or a dummy interface")) {
            if (auto problem = interface_name_problem(*text); !problem.empty()) {
                error(i->mark, i->path, "invalid interface name " + quote(*text) + ": " + problem);
            } else {
                b.interface = *text;
            }
        }
    }
    // Longer than a minute would hold a rolling upgrade of many nodes for
    // nothing: routers converge in well under a second once they hear it.
    read_duration(*m, "withdraw_wait", {.min = 0ms, .max = 1min, .zero_allowed = true, .range = "0..1m"},
                  b.withdraw_wait);
}

void loader::read_managed_frr(const mapping& m, bgp_config& b) {
    // apilb's FRR lives in a directory of its own: sockets, pid files, logs
    // and the applied frr.conf. FRR's own directory would have vtysh talk to
    // the host's FRR, and two zebras fight over the kernel's routes.
    if (b.vty_socket_dir.empty()) b.vty_socket_dir = std::string(default_managed_frr_dir);
    std::string dir = b.vty_socket_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (const field* v = m.find("vty_socket_dir")) {
        if (dir == "/run/frr" || dir == "/var/run/frr") {
            error(v->mark, v->path,
                  quote(b.vty_socket_dir) +
                      " is the host's FRR directory; with manage: true apilb runs FRR in a directory of its own, "
                      "such as " +
                      quote(default_managed_frr_dir));
        } else if (dir.size() > max_managed_frr_dir || !is_path_word(dir) || dir == "/") {
            error(v->mark, v->path,
                  "invalid vty_socket_dir " + quote(b.vty_socket_dir) + " for manage: true; expected a directory " +
                      "of its own, at most " + std::to_string(max_managed_frr_dir) +
                      " characters without blanks or quotes (FRR's sockets go in it, and a socket's path is "
                      "at most 107 bytes)");
        }
    }
    b.vty_socket_dir = dir;
    if (const field* f = m.find("frr_config")) {
        warning(f->mark, f->path, "ignored with manage: true: apilb applies frr.conf from " + dir);
    }
}

void loader::read_absolute_path(const mapping& m, std::string_view key, std::string_view example, std::string& out) {
    const field* c = m.find(key);
    if (c == nullptr) return;
    const std::string expected = "an absolute path such as " + quote(example);
    if (auto text = scalar(*c, expected)) {
        if (text->empty() || text->front() != '/' ||
            std::any_of(text->begin(), text->end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20; })) {
            error(c->mark, c->path, "expected " + expected + "; found " + quote(*text));
        } else {
            out = *text;
        }
    }
}

}  // namespace apilb::config_detail
