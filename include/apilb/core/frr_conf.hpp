// FRR's configuration (bgpd + bfdd) from apilb's `bgp` section: one YAML for
// both programs, as keepalived_conf.hpp does for VRRP. Pure core: text in,
// text out (docs/bgp.md).
#pragma once

#include <map>
#include <string>

#include "apilb/core/config.hpp"

namespace apilb {

/// Largest password file read (a TCP MD5 key is at most 80 bytes).
constexpr std::size_t max_bgp_password_file_bytes = 4096;

/// The password held by a password file's bytes (one trailing line break
/// dropped), or "" with `problem` set to why it cannot be one: empty, longer
/// than 80 characters (the kernel's TCP_MD5SIG_MAXKEYLEN), or holding a blank,
/// a control character or a non-ASCII byte (it is one word of frr.conf).
std::string bgp_password_from_file(std::string bytes, std::string& problem);

/// What render_frr_conf needs besides the config: the secrets, read by the
/// caller from each peer's password_file, so that rendering reads no file.
struct frr_render_options {
    std::map<std::string, std::string> passwords;  ///< password_file path -> its password
};

/// Reads every peer's password_file for render_frr_conf (regular files of
/// at most max_bgp_password_file_bytes). On failure `error` names the file and
/// why ("" on success), and the options are incomplete.
frr_render_options read_frr_passwords(const bgp_config& b, std::string& error);

/// A complete frr.conf for `cfg.bgp` (which must be set): bgpd announces
/// exactly the VIPs to every peer and accepts nothing from them; bfdd runs a
/// profile per distinct interval/multiplier. Throws std::invalid_argument if
/// a value could change the file's meaning (a line break, a missing password).
std::string render_frr_conf(const config& cfg, const frr_render_options& options);

}  // namespace apilb
