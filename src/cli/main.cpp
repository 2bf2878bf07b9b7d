// apilb's command line: run, check-config, version, the renderers and
// bgp-withdraw, and status, drain, enable, reload, upgrade for a running apilb
// (through its admin endpoint).
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <system_error>

#include "apilb/cli/admin_client.hpp"
#include "apilb/control/yaml_guard.hpp"
#include "apilb/core/config.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb/core/frr_conf.hpp"
#include "apilb/core/keepalived_conf.hpp"
#include "apilb/dataplane/uring.hpp"
#include "apilb/logging/logging.hpp"
#include "apilb/process/process.hpp"
#include "apilb/vip/vip_address.hpp"
#include "apilb_build_config.h"

namespace {

constexpr const char* default_config = "/etc/apilb/apilb.yaml";

/// Exit codes a script can rely on.
enum exit_code : int {
    exit_ok = 0,
    exit_runtime_error = 1,   ///< e.g. a listener could not be bound
    exit_config_invalid = 2,  ///< the config file has errors (all printed)
    exit_usage = 64,          ///< bad command line (EX_USAGE)
};

int print_config_errors(const apilb::config_load_error& e) {
    for (const auto& err : e.errors()) std::cerr << "error: " << err.to_string() << '\n';
    std::cerr << e.errors().size() << " error(s) in the configuration\n";
    return exit_config_invalid;
}

int check_config(const std::string& path) {
    try {
        auto cfg = apilb::load_config_guarded(path);
        for (const auto& w : cfg->warnings) std::cerr << "warning: " << w.to_string() << '\n';
        std::size_t backends = 0;
        for (const auto& p : cfg->pools) backends += p.backends.size();
        std::cout << path << ": ok (" << cfg->listeners.size() << " listener(s), " << cfg->pools.size() << " pool(s), "
                  << backends << " backend(s)";
        if (cfg->bgp)
            std::cout << "; bgp: " << cfg->bgp->peers.size() << " peer(s), " << cfg->bgp->vips.size() << " VIP(s)";
        // relay.io resolved against this host as `run` resolves it at start:
        // io_uring asked for by name and refused here is the same config
        // error. A service's sandbox (its seccomp profile) may refuse what
        // this shell allows: the start line says what the service chose.
        const apilb::relay_io_choice io = apilb::choose_relay_io(*cfg);
        std::cout << "; relay.io " << apilb::to_string(cfg->relay.io) << ": " << (io.io_uring ? "io_uring" : "epoll");
        if (!io.reason.empty()) std::cout << ", io_uring unavailable here: " << io.reason;
        std::cout << ")\n";
        return exit_ok;
    } catch (const apilb::config_load_error& e) {
        return print_config_errors(e);
    }
}

/// Writes a rendered file to stdout ("" or "-") or to `output`.
int print_rendered(const std::string& text, const std::string& output) {
    if (output.empty() || output == "-") {
        std::cout << text;
        return exit_ok;
    }
    std::FILE* f = std::fopen(output.c_str(), "wb");
    const bool ok = f != nullptr && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (f != nullptr && std::fclose(f) != 0) return exit_runtime_error;
    if (!ok) {
        std::cerr << "error: cannot write " << output << '\n';
        return exit_runtime_error;
    }
    return exit_ok;
}

/// The config at `path` for a command that renders `file` from its `section`
/// ("vrrp" or "bgp"); null with the errors printed and `rc` set if it does
/// not load or lacks the section.
std::shared_ptr<const apilb::config> load_to_render(const std::string& path, std::string_view section,
                                                    std::string_view file, int& rc) {
    std::shared_ptr<const apilb::config> cfg;
    try {
        cfg = apilb::load_config_guarded(path);
    } catch (const apilb::config_load_error& e) {
        rc = print_config_errors(e);
        return nullptr;
    }
    if (section == "vrrp" ? !cfg->vrrp : !cfg->bgp) {
        std::cerr << "error: " << path << ": there is no " << section << " section to render " << file << " from\n";
        rc = exit_config_invalid;
        return nullptr;
    }
    return cfg;
}

/// Prints the keepalived.conf for the config's vrrp section (docs/vip.md).
int keepalived_config(const std::string& path, const std::string& output, std::string apilb_path) {
    int rc = exit_ok;
    auto cfg = load_to_render(path, "vrrp", "keepalived.conf", rc);
    if (!cfg) return rc;
    std::string text;
    try {
        // track_process matches `apilb run --config <path>` exactly: the path as written here.
        if (apilb_path.empty()) {
            // The binary rendering the file is the one keepalived should track.
            std::error_code ec;
            apilb_path = std::filesystem::read_symlink("/proc/self/exe", ec).string();
            if (ec) apilb_path = "/usr/sbin/apilb";
        }
        text = apilb::render_keepalived_conf(*cfg, {.config_path = path, .apilb_path = apilb_path});
    } catch (const std::invalid_argument& e) {
        std::cerr << "error: " << e.what() << '\n';
        return exit_usage;
    }
    return print_rendered(text, output);
}

/// Prints the frr.conf for the config's bgp section (docs/bgp.md).
int frr_config(const std::string& path, const std::string& output) {
    int rc = exit_ok;
    auto cfg = load_to_render(path, "bgp", "frr.conf", rc);
    if (!cfg) return rc;
    std::string error;
    const apilb::frr_render_options options = apilb::read_frr_passwords(*cfg->bgp, error);
    if (!error.empty()) {
        std::cerr << "error: " << error << '\n';
        return exit_runtime_error;
    }
    try {
        return print_rendered(apilb::render_frr_conf(*cfg, options), output);
    } catch (const std::invalid_argument& e) {
        std::cerr << "error: " << e.what() << '\n';
        return exit_config_invalid;
    }
}

/// Takes every VIP of the bgp section off bgp.interface, so FRR stops
/// announcing them: systemd's ExecStopPost after apilb died (docs/bgp.md).
/// Also every address apilb marked as a VIP with its local route, from
/// whichever interface holds it: the file may have changed since the dead
/// apilb read it (a VIP edited away, the file broken or gone), and a VIP
/// left on the interface would be announced with nothing listening until an
/// apilb with a good file starts, maybe never. Exits 2 after that when the
/// file is bad, so the unit's status says so.
/// apilb's local route stays: while the routers converge, a connect that still
/// arrives is refused at once (no listener) instead of being routed back out,
/// and a live apilb run by mistake keeps receiving on its VIP listeners.
int bgp_withdraw(const std::string& path) {
    int rc = exit_ok;
    std::size_t taken_off = 0;
    std::shared_ptr<const apilb::config> cfg;
    try {
        cfg = apilb::load_config_guarded(path);
    } catch (const apilb::config_load_error& e) {
        rc = print_config_errors(e);
        std::cerr << "bgp-withdraw: taking off the VIPs apilb marked (its local routes, proto "
                  << int{apilb::apilb_route_protocol} << ") without the file\n";
    }
    if (cfg && cfg->bgp) {
        for (const auto& v : cfg->bgp->vips) {
            if (auto ec = apilb::set_host_address(cfg->bgp->interface, v.ip, v.is_v6, false)) {
                std::cerr << "error: cannot take VIP " << v.ip << " off " << cfg->bgp->interface << ": " << ec.message()
                          << '\n';
                rc = exit_runtime_error;
            } else {
                ++taken_off;
            }
        }
    }
    std::error_code ec;
    const auto marked = apilb::marked_vips(ec);
    if (ec) {
        std::cerr << "error: cannot read apilb's local routes: " << ec.message() << '\n';
        if (rc == exit_ok) rc = exit_runtime_error;
    }
    for (const auto& m : marked) {
        const bool in_config = cfg && cfg->bgp &&
                               std::any_of(cfg->bgp->vips.begin(), cfg->bgp->vips.end(),
                                           [&](const auto& v) { return v.ip == m.ip; });
        if (in_config) continue;
        if (auto e = apilb::remove_host_address_everywhere(m.ip, m.is_v6)) {
            std::cerr << "error: cannot take marked VIP " << m.ip << " off: " << e.message() << '\n';
            if (rc == exit_ok) rc = exit_runtime_error;
        } else {
            std::cout << "marked VIP " << m.ip << " off every interface\n";
            ++taken_off;
        }
    }
    if (cfg && !cfg->bgp && marked.empty()) std::cout << path << ": no bgp section, nothing to withdraw\n";
    if (rc != exit_runtime_error)
        std::cout << taken_off << " VIP(s) off " << (cfg && cfg->bgp ? cfg->bgp->interface : "the interfaces") << '\n';
    return rc;
}

int run(const std::string& path, const std::string& log_level) {
    std::shared_ptr<const apilb::config> cfg;
    try {
        cfg = apilb::load_config_guarded(path);
    } catch (const apilb::config_load_error& e) {
        return print_config_errors(e);
    }
    try {
        apilb::init_logging(cfg->log, log_level);
    } catch (const std::invalid_argument& e) {
        std::cerr << "error: --log-level: " << e.what() << '\n';
        return exit_usage;
    }
    // Declared before the process, so it runs after the process's own last
    // lines: they reach stderr if it takes them within the budget, and a
    // stalled stderr cannot hold the exit (SIGTERM) longer than that.
    struct flush_logs_at_exit {
        ~flush_logs_at_exit() { apilb::shutdown_logging(std::chrono::seconds(1)); }
    } flush_logs;
    for (const auto& w : cfg->warnings) spdlog::warn("{}", w.to_string());
    // Writes to a socket whose peer has gone return EPIPE; never die of SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    // A write past RLIMIT_FSIZE (the token file, the track file, a log file
    // as stderr) fails with EFBIG and is said; it must not kill the process.
    std::signal(SIGXFSZ, SIG_IGN);
    // SIGUSR2 asks for an upgrade once serving; one that comes earlier must
    // not end the process (its default action).
    std::signal(SIGUSR2, SIG_IGN);
    try {
        apilb::inherited_sockets inherited;
        // Started by an upgrade: the old process lends its listening sockets.
        if (const char* channel = std::getenv(apilb::handover::channel_env)) {
            const int fd = apilb::handover::parse_number(channel, apilb::handover::channel_env);
            ::unsetenv(apilb::handover::channel_env);
            inherited = apilb::receive_inherited(fd, APILB_VERSION,
                                                 std::chrono::steady_clock::now() + std::chrono::seconds(30));
        }
        apilb::process srv(cfg, std::move(inherited));
        return srv.run();
    } catch (const apilb::config_load_error& e) {
        // What only the host could tell (relay.io: io_uring refused here).
        for (const auto& err : e.errors()) spdlog::critical("{}", err.to_string());
        return exit_config_invalid;
    } catch (const std::exception& e) {
        // A std::system_error's what() already ends with its code's message
        // ("...: Address already in use"): not repeated.
        spdlog::critical("{}", e.what());
        return exit_runtime_error;
    }
}

/// The command line's say on how to reach the admin endpoint.
struct admin_options {
    std::string address;  ///< --admin: IP:PORT, http://IP:PORT or https://IP:PORT
    std::string token_file;
    std::string ca_file;
    std::string cert_file;
    std::string key_file;
    std::string server_name;
};

/// The admin endpoint from --admin, else from the config file's admin
/// section. HTTPS when --admin says https://, when a bare --admin comes with
/// --cacert or --cert, or when the config's admin section has tls; never a
/// silent fallback to plain HTTP.
std::optional<apilb::cli::admin_target> admin_target(const admin_options& o, const std::string& config_path) {
    const bool tls_options = !o.ca_file.empty() || !o.cert_file.empty() || !o.server_name.empty();
    apilb::cli::admin_target t{.address = {},
                               .token_file = o.token_file,
                               .tls = false,
                               .ca_file = o.ca_file,
                               .ca_is_server_chain = false,
                               .cert_file = o.cert_file,
                               .key_file = o.key_file,
                               .server_name = o.server_name};
    if (!o.address.empty()) {
        std::string address = o.address;
        if (address.starts_with("https://")) {
            t.tls = true;
            address.erase(0, 8);
        } else if (address.starts_with("http://")) {
            if (tls_options) {
                std::cerr << "error: --cacert, --cert and --server-name are for HTTPS, but --admin says http://\n";
                return std::nullopt;
            }
            address.erase(0, 7);
        } else {
            t.tls = tls_options;
        }
        if (!address.empty() && address.back() == '/') address.pop_back();
        t.address = address;
        return t;
    }
    try {
        auto cfg = apilb::load_config_guarded(config_path);
        if (!cfg->admin) {
            std::cerr << "error: " << config_path << " has no admin section; give --admin ADDRESS\n";
            return std::nullopt;
        }
        t.address = cfg->admin->address.to_string();
        if (t.token_file.empty()) t.token_file = cfg->admin->token_file;
        if (cfg->admin->tls) {
            t.tls = true;
            // On the node itself, the server's own certificate is the anchor
            // to check it against: no CA file needed.
            if (t.ca_file.empty()) {
                t.ca_file = cfg->admin->tls->cert_file;
                t.ca_is_server_chain = true;
            }
        } else if (tls_options) {
            std::cerr << "error: the admin endpoint in " << config_path
                      << " speaks plain HTTP (no admin.tls); --cacert, --cert and --server-name are for HTTPS\n";
            return std::nullopt;
        }
        return t;
    } catch (const apilb::config_load_error& e) {
        print_config_errors(e);
        std::cerr << "error: cannot find the admin endpoint in " << config_path << "; give --admin ADDRESS\n";
        return std::nullopt;
    }
}

}  // namespace

int main(int argc, char** argv) {
    // The config loader's child (apilb/yaml_guard.hpp), before anything else.
    if (argc == 2 && argv[1] == apilb::yaml_guard_mode) return apilb::yaml_guard_child_main();
    CLI::App app{"apilb: a TCP-passthrough load balancer for Kubernetes API servers"};
    app.require_subcommand(1);
    std::string config_path = default_config;
    std::string log_level;

    auto* run_cmd = app.add_subcommand("run", "serve in the foreground, logging to stderr");
    run_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();
    run_cmd->add_option("--log-level", log_level, "override log.level: trace|debug|info|warn|error|critical|off");

    auto* check_cmd = app.add_subcommand("check-config", "validate the configuration file and exit");
    check_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();

    std::string keepalived_output;
    std::string apilb_path;
    auto* keepalived_cmd = app.add_subcommand(
        "keepalived-config",
        "print the keepalived.conf for the vrrp section (run apilb as `apilb run --config` "
        "with the same path: keepalived tracks that command line)");
    keepalived_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();
    keepalived_cmd->add_option("-o,--output", keepalived_output, "write to this file instead of stdout");
    keepalived_cmd->add_option("--apilb-path", apilb_path,
                               "apilb's path as it is started (argv[0]), for track_process; default: this binary");

    std::string frr_output;
    auto* frr_cmd = app.add_subcommand(
        "frr-config", "print FRR's frr.conf (bgpd, bfdd) for the bgp section: the VIPs announced, nothing accepted");
    frr_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();
    frr_cmd->add_option("-o,--output", frr_output, "write to this file instead of stdout");

    auto* withdraw_cmd = app.add_subcommand(
        "bgp-withdraw",
        "take the bgp VIPs (the file's and those apilb marked) off so FRR stops announcing them (after apilb died)");
    withdraw_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();

    auto* version_cmd = app.add_subcommand("version", "print the version");

    // Commands for a running apilb, through its admin endpoint.
    admin_options admin;
    std::string pool_name;
    std::string backend_name;
    auto add_admin_options = [&](CLI::App* cmd) {
        cmd->add_option("--admin", admin.address,
                        "admin endpoint IP:PORT, http://IP:PORT or https://IP:PORT (default: from the config's "
                        "admin section)");
        cmd->add_option("-c,--config", config_path, "configuration file to read the admin section from")
            ->capture_default_str();
        cmd->add_option("--token-file", admin.token_file,
                        "file with the admin bearer token (default: admin.token_file)");
        cmd->add_option("--cacert", admin.ca_file,
                        "PEM CA certificate(s) to verify the admin endpoint's certificate (HTTPS; default with "
                        "--config: its admin.tls.cert_file, else the system's CAs)");
        auto* cert = cmd->add_option("--cert", admin.cert_file,
                                     "PEM client certificate for the admin endpoint (HTTPS)");
        auto* key = cmd->add_option("--key", admin.key_file, "PEM private key of --cert");
        cert->needs(key);
        key->needs(cert);
        cmd->add_option("--server-name", admin.server_name,
                        "name the admin endpoint's certificate must carry (default: the address's IP)");
    };
    auto* status_cmd = app.add_subcommand("status", "show pools and backends of a running apilb");
    add_admin_options(status_cmd);
    auto* drain_cmd = app.add_subcommand("drain", "stop sending new sessions to a backend (open ones go on)");
    auto* enable_cmd = app.add_subcommand("enable", "undo drain: the backend takes new sessions again");
    for (auto* cmd : {drain_cmd, enable_cmd}) {
        add_admin_options(cmd);
        cmd->add_option("pool", pool_name, "pool name")->required();
        cmd->add_option("backend", backend_name, "backend name")->required();
    }
    auto* reload_cmd = app.add_subcommand("reload", "make a running apilb re-read its configuration file");
    add_admin_options(reload_cmd);
    unsigned upgrade_timeout_s = 90;
    auto* upgrade_cmd = app.add_subcommand(
        "upgrade",
        "make a running apilb start the binary now on disk and hand it its listeners and sessions; "
        "waits for the outcome");
    add_admin_options(upgrade_cmd);
    upgrade_cmd->add_option("--timeout", upgrade_timeout_s, "seconds to wait for the outcome")
        ->capture_default_str()
        ->check(CLI::Range(1u, 600u));

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? exit_ok : exit_usage;
    }

    if (*version_cmd) {
        std::cout << "apilb " << APILB_VERSION << '\n';
        return exit_ok;
    }
    if (*check_cmd) return check_config(config_path);
    if (*status_cmd || *drain_cmd || *enable_cmd || *reload_cmd || *upgrade_cmd) {
        const auto target = admin_target(admin, config_path);
        if (!target) return exit_usage;
        if (*status_cmd) return apilb::cli::admin_status(*target);
        if (*reload_cmd) return apilb::cli::admin_reload(*target);
        if (*upgrade_cmd) return apilb::cli::admin_upgrade(*target, std::chrono::seconds(upgrade_timeout_s));
        return apilb::cli::admin_backend(*target, pool_name, backend_name, drain_cmd->parsed());
    }
    if (*keepalived_cmd) return keepalived_config(config_path, keepalived_output, apilb_path);
    if (*frr_cmd) return frr_config(config_path, frr_output);
    if (*withdraw_cmd) return bgp_withdraw(config_path);
    return run(config_path, log_level);
}
