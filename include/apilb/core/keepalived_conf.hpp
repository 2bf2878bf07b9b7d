// keepalived.conf from apilb's `vrrp` section: one YAML for both programs.
// Pure core: text in, text out.
#pragma once

#include <string>

#include "apilb/core/config.hpp"

namespace apilb {

/// How the apilb that keepalived tracks is started, so that track_process
/// matches this node's apilb and no other on the host.
struct keepalived_render_options {
    std::string config_path;  ///< as passed to `apilb run --config`
    /// apilb's argv[0] as started (e.g. /usr/sbin/apilb): with arguments,
    /// keepalived matches the first word of /proc/PID/cmdline, not the name.
    std::string apilb_path = "/usr/sbin/apilb";
};

/// A complete keepalived.conf for `cfg.vrrp` (which must be set): VRRPv3,
/// a track_file apilb writes (non-zero = FAULT), a track_process on
/// `apilb run --config <config_path>`, and a notify FIFO apilb reads.
std::string render_keepalived_conf(const config& cfg, const keepalived_render_options& options);

}  // namespace apilb
