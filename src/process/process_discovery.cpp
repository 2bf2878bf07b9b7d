// Discovery's place in the process: one client per pool with a discovery
// section, reaching the API through that pool's backends (healthy first),
// starting from the state file when the file is usable, and keeping the
// state file current. Control thread only.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "apilb/control/discovery_client.hpp"
#include "apilb/control/discovery_state.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/process/process.hpp"

namespace apilb {

namespace {

std::string describe_set(const std::vector<discovered_endpoint>& set) {
    std::string text;
    for (const auto& e : set) {
        if (!text.empty()) text += ", ";
        text += e.ip.find(':') != std::string::npos ? fmt::format("[{}]:{}", e.ip, e.port)
                                                    : fmt::format("{}:{}", e.ip, e.port);
        if (e.terminating) text += " (terminating)";
    }
    return text;
}

}  // namespace

void process::make_discovery() {
    APILB_ASSERT_ROLE(control);
    for (const auto& pool : snap_->cfg->pools) {
        if (!pool.discovery) continue;
        const std::string name = pool.name;
        // The API is reached through the backends of the running snapshot
        // (a reload may change them), healthy ones first; never through
        // apilb's own listener.
        auto targets = [this, name] {
            std::vector<boost::asio::ip::tcp::endpoint> good, rest;
            for (const auto& p : snap_->pools) {
                if (p.cfg->name != name) continue;
                for (const auto& b : p.backends) (b.takes_sessions() ? good : rest).push_back(b.endpoint);
            }
            good.insert(good.end(), rest.begin(), rest.end());
            return good;
        };
        auto client = std::make_unique<discovery_client>(control_, pool, std::move(targets),
                                                         [this, name](const std::vector<discovered_endpoint>& set) {
                                                             for (const auto& p : snap_->cfg->pools) {
                                                                 if (p.name == name) on_discovered(p, set);
                                                             }
                                                         });
        const discovery_config& d = *pool.discovery;
        if (!d.state_file.empty()) {
            std::string why;
            auto state = load_discovery_state(d.state_file, pool.name, d.state_max_age,
                                              std::chrono::system_clock::now(), why);
            if (state) {
                spdlog::info("discovery: pool {}: last-known-good from {}: {}", pool.name, d.state_file,
                             describe_set(state->endpoints));
                client->assume(std::move(state->endpoints));
            } else if (!why.empty()) {
                spdlog::warn("discovery: pool {}: not using the state file: {}; starting from the seed", pool.name,
                             why);
            }
        }
        discovery_.push_back(std::move(client));
    }
}

void process::on_discovered(const pool_config& pool, const std::vector<discovered_endpoint>& set) {
    APILB_ASSERT_ROLE(control);
    spdlog::info("discovery: pool {}: the API lists {} apiserver(s): {}", pool.name, set.size(), describe_set(set));
    const discovery_config& d = *pool.discovery;
    if (d.state_file.empty()) return;
    // On the control thread: a write and two fsyncs, a few ms, only when the
    // set changes. The workers never wait for it.
    const discovery_state state{.pool = pool.name, .written_at = std::chrono::system_clock::now(), .endpoints = set};
    if (auto err = save_discovery_state(d.state_file, state); !err.empty()) {
        spdlog::warn("discovery: pool {}: cannot write the state file {}: {}", pool.name, d.state_file, err);
    }
}

}  // namespace apilb
