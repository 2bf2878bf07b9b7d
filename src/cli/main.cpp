// apilb's command line: run, check-config, version.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <system_error>

#include "apilb/config.hpp"
#include "apilb/keepalived_conf.hpp"
#include "apilb/logging.hpp"
#include "apilb/server.hpp"
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
        auto cfg = apilb::load_config(path);
        for (const auto& w : cfg->warnings) std::cerr << "warning: " << w.to_string() << '\n';
        std::size_t backends = 0;
        for (const auto& p : cfg->pools) backends += p.backends.size();
        std::cout << path << ": ok (" << cfg->listeners.size() << " listener(s), " << cfg->pools.size()
                  << " pool(s), " << backends << " backend(s))\n";
        return exit_ok;
    } catch (const apilb::config_load_error& e) {
        return print_config_errors(e);
    }
}

/// Prints the keepalived.conf for the config's vrrp section (docs/vip.md).
int keepalived_config(const std::string& path, const std::string& output, std::string apilb_path) {
    std::shared_ptr<const apilb::config> cfg;
    try {
        cfg = apilb::load_config(path);
    } catch (const apilb::config_load_error& e) {
        return print_config_errors(e);
    }
    if (!cfg->vrrp) {
        std::cerr << "error: " << path << ": there is no vrrp section to render keepalived.conf from\n";
        return exit_config_invalid;
    }
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

int run(const std::string& path, const std::string& log_level) {
    std::shared_ptr<const apilb::config> cfg;
    try {
        cfg = apilb::load_config(path);
    } catch (const apilb::config_load_error& e) {
        return print_config_errors(e);
    }
    try {
        apilb::init_logging(cfg->log, log_level);
    } catch (const std::invalid_argument& e) {
        std::cerr << "error: --log-level: " << e.what() << '\n';
        return exit_usage;
    }
    for (const auto& w : cfg->warnings) spdlog::warn("{}", w.to_string());
    // Writes to a socket whose peer has gone return EPIPE; never die of SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    try {
        apilb::server srv(cfg);
        return srv.run();
    } catch (const std::system_error& e) {
        spdlog::critical("{}: {}", e.what(), e.code().message());
        return exit_runtime_error;
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return exit_runtime_error;
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"apilb: a TCP-passthrough load balancer for Kubernetes API servers"};
    app.require_subcommand(1);
    std::string config_path = default_config;
    std::string log_level;

    auto* run_cmd = app.add_subcommand("run", "serve in the foreground, logging to stderr");
    run_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();
    run_cmd->add_option("--log-level", log_level,
                        "override log.level: trace|debug|info|warn|error|critical|off");

    auto* check_cmd = app.add_subcommand("check-config", "validate the configuration file and exit");
    check_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();

    std::string keepalived_output;
    std::string apilb_path;
    auto* keepalived_cmd = app.add_subcommand(
        "keepalived-config", "print the keepalived.conf for the vrrp section (run apilb as `apilb run --config` "
                             "with the same path: keepalived tracks that command line)");
    keepalived_cmd->add_option("-c,--config", config_path, "configuration file")->capture_default_str();
    keepalived_cmd->add_option("-o,--output", keepalived_output, "write to this file instead of stdout");
    keepalived_cmd->add_option("--apilb-path", apilb_path,
                               "apilb's path as it is started (argv[0]), for track_process; default: this binary");

    auto* version_cmd = app.add_subcommand("version", "print the version");

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
    if (*keepalived_cmd) return keepalived_config(config_path, keepalived_output, apilb_path);
    return run(config_path, log_level);
}
