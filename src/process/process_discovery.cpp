// Discovery's place in the process: one client per pool with a discovery
// section, reaching the API through that pool's backends (healthy first),
// starting from the state file when the file is usable, keeping the state
// file current, and turning each set into the pool's backends through the
// reload's commit (process::commit), at most once per change_interval.
// Control thread only.
#include <spdlog/spdlog.h>

#include <algorithm>

#include <boost/asio/post.hpp>

#include "apilb/control/discovery_client.hpp"
#include "apilb/control/discovery_state.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/process/process.hpp"

namespace apilb {

namespace {

/// A commit of a discovered set that failed is tried again after 1 s,
/// doubling to 1 min: what failed may be a file being replaced.
constexpr auto discovery_retry_initial = std::chrono::seconds(1);
constexpr auto discovery_retry_max = std::chrono::minutes(1);

std::string describe_set(const std::vector<discovered_endpoint>& set) {
    std::string text;
    for (const auto& e : set) {
        if (!text.empty()) text += ", ";
        text += address_of(e).to_string();
        if (e.terminating) text += " (terminating)";
    }
    return text;
}

}  // namespace

void process::make_discovery() {
    APILB_ASSERT_ROLE(control);
    for (const auto& pool : file_cfg_->pools) {
        if (!pool.discovery) continue;
        auto [client, dp] = make_discovery_for(pool);
        discovery_.push_back(std::move(client));
        discovery_pools_.push_back(std::move(dp));
        start_from_state(*discovery_.back(), *discovery_pools_.back());
    }
}

std::pair<std::unique_ptr<discovery_client>, std::unique_ptr<process::discovery_pool>> process::make_discovery_for(
    const pool_config& pool) {
    APILB_ASSERT_ROLE(control);
    const std::string name = pool.name;
    // The API is reached through the backends of the running snapshot
    // (discovery and reloads change them), healthy ones first; never
    // through apilb's own listener.
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
                                                         if (const pool_config* p = file_cfg_->find_pool(name))
                                                             on_discovered(*p, set);
                                                     });
    const discovery_config& d = *pool.discovery;
    if (!d.state_file.empty()) {
        std::string why;
        auto state = load_discovery_state(d.state_file, pool.name, d.state_max_age, std::chrono::system_clock::now(),
                                          why);
        if (state) {
            spdlog::info("discovery: pool {}: last-known-good from {}: {}", pool.name, d.state_file,
                         describe_set(state->endpoints));
            client->assume(std::move(state->endpoints));
        } else if (!why.empty()) {
            spdlog::warn("discovery: pool {}: not using the state file: {}; starting from the seed", pool.name, why);
        }
    }
    auto dp = std::make_unique<discovery_pool>(control_);
    dp->pool = pool.name;
    dp->members = seed_members(pool);
    return {std::move(client), std::move(dp)};
}

void process::start_from_state(const discovery_client& client, discovery_pool& dp) {
    APILB_ASSERT_ROLE(control);
    if (client.current().empty()) return;
    // The state file's set becomes the backends as soon as the control
    // thread runs, through the same commit as any later set.
    dp.listed = client.current();
    dp.fresh = true;
    arm_discovery(dp, std::chrono::steady_clock::now());
}

void process::restart_discovery(const config& before, const config& after,
                                std::vector<std::unique_ptr<discovery_client>> clients,
                                std::vector<std::unique_ptr<discovery_pool>> pools) {
    APILB_ASSERT_ROLE(control);
    // Pools whose section went away or changed stop following the API; the
    // new clients (made before the commit, so that bad credentials failed
    // the reload) start like at process start, but from the members the
    // pool has: a new section is no reason to drop a working set.
    std::vector<std::unique_ptr<discovery_pool>> old;
    for (std::size_t i = 0; i < discovery_.size();) {
        const std::string& name = discovery_[i]->pool();
        const pool_config* now = after.find_pool(name);
        const pool_config* was = before.find_pool(name);
        if (now != nullptr && was != nullptr && now->discovery == was->discovery) {
            ++i;
            continue;
        }
        spdlog::info(
            "discovery: pool {}: the discovery section changed: {}", name,
            now != nullptr && now->discovery ? "its watch starts again" : "stopped; the file's backends serve");
        discovery_[i]->stop();
        discovery_.erase(discovery_.begin() + static_cast<std::ptrdiff_t>(i));
        old.push_back(std::move(discovery_pools_[i]));
        discovery_pools_.erase(discovery_pools_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    for (std::size_t i = 0; i < clients.size(); ++i) {
        for (const auto& o : old) {
            if (o->pool != pools[i]->pool) continue;
            pools[i]->members = o->members;
            pools[i]->applied = o->applied;
        }
        discovery_.push_back(std::move(clients[i]));
        discovery_pools_.push_back(std::move(pools[i]));
        start_from_state(*discovery_.back(), *discovery_pools_.back());
        discovery_.back()->start();
    }
    // A timer of an old pool may have fired already, its handler (which
    // holds the pool by reference) queued on this context: the old pools
    // go only after whatever is queued now has run. Cancelled first, so
    // that nothing of theirs is pending when they go.
    for (auto& o : old) o->timer.cancel();
    boost::asio::post(control_, [old = std::move(old)] {});
}

void process::on_discovered(const pool_config& pool, const std::vector<discovered_endpoint>& set) {
    APILB_ASSERT_ROLE(control);
    spdlog::info("discovery: pool {}: the API lists {} apiserver(s): {}", pool.name, set.size(), describe_set(set));
    for (auto& dp : discovery_pools_) {
        if (dp->pool != pool.name) continue;
        dp->listed = set;
        dp->fresh = true;
        arm_discovery(*dp, std::chrono::steady_clock::now());
    }
    const discovery_config& d = *pool.discovery;
    if (d.state_file.empty()) return;
    // On the control thread: a write and two fsyncs, a few ms, only when the
    // set changes. The workers never wait for it.
    const discovery_state state{.pool = pool.name, .written_at = std::chrono::system_clock::now(), .endpoints = set};
    if (auto err = save_discovery_state(d.state_file, state); !err.empty()) {
        spdlog::warn("discovery: pool {}: cannot write the state file {}: {}", pool.name, d.state_file, err);
    }
}

void process::arm_discovery(discovery_pool& dp, std::chrono::steady_clock::time_point at) {
    APILB_ASSERT_ROLE(control);
    const pool_config* pool = file_cfg_->find_pool(dp.pool);
    if (pool == nullptr || !pool->discovery) return;
    // A burst of events is one change: whatever comes within change_interval
    // of the last applied one waits for it, and the latest set wins.
    at = std::max(at, dp.last_applied + pool->discovery->change_interval);
    if (dp.armed <= at) return;
    dp.armed = at;
    dp.timer.expires_at(at);  // cancels a later wait
    dp.timer.async_wait([this, &dp](boost::system::error_code ec) {
        // A wait replaced by an earlier one ends with an error; one that
        // completed just as it was replaced finds `armed` in the future.
        if (ec || std::chrono::steady_clock::now() < dp.armed) return;
        dp.armed = std::chrono::steady_clock::time_point::max();
        apply_discovery(dp);
    });
}

void process::apply_discovery(discovery_pool& dp) {
    APILB_ASSERT_ROLE(control);
    if (draining_) return;
    const pool_config* pool = file_cfg_->find_pool(dp.pool);
    if (pool == nullptr || !pool->discovery) return;
    const auto now = std::chrono::steady_clock::now();
    const duration grace = pool->discovery->grace_period;
    std::vector<discovered_member> members = dp.fresh ? merge_listing(dp.members, dp.listed, now) : dp.members;
    dp.fresh = false;
    dp.last_applied = now;
    // "Passing its probes": healthy and not suspect in the running snapshot.
    auto passing = [&](const socket_address& a) {
        for (const auto& p : snap_->pools) {
            if (p.cfg->name != dp.pool) continue;
            for (const auto& b : p.backends) {
                if (b.cfg->address == a) {
                    return b.health->healthy.load(std::memory_order_relaxed) &&
                           !b.health->suspect.load(std::memory_order_relaxed);
                }
            }
        }
        return false;
    };
    for (const auto& m : members) {
        const bool was_leaving = std::any_of(dp.members.begin(), dp.members.end(),
                                             [&](const auto& o) { return o.address == m.address && o.left_at; });
        if (m.left_at && !was_leaving && grace.count() > 0 && passing(m.address)) {
            spdlog::info(
                "discovery: pool {}: {} left the API's list but passes its probes: it stays for {}ms "
                "(grace_period)",
                dp.pool, m.address.to_string(), grace.count());
        }
    }
    members = drop_departed(std::move(members), grace, now, passing);
    if (members == dp.members) {
        dp.applied = true;  // the pool's backends already are this set
    } else {
        const bool was_applied = std::exchange(dp.applied, true);
        std::vector<discovered_member> before = std::exchange(dp.members, std::move(members));
        if (const auto errors = commit(with_discovered(*file_cfg_), "discovery: pool " + dp.pool, false);
            !errors.empty()) {
            // Nothing changed. What failed (a probe's TLS file being
            // replaced, say) may pass soon: the same set is tried again on
            // a backoff, and at once when a newer set comes.
            dp.members = std::move(before);
            dp.applied = was_applied;
            dp.fresh = true;
            dp.retry = std::clamp(dp.retry * 2, std::chrono::milliseconds(discovery_retry_initial),
                                  std::chrono::milliseconds(discovery_retry_max));
            spdlog::error("discovery: pool {}: the new backends were not applied: {}; trying again in {}ms", dp.pool,
                          errors.front(), dp.retry.count());
            arm_discovery(dp, now + dp.retry);
            return;
        }
    }
    dp.retry = std::chrono::milliseconds(0);
    // A leaving member is looked at again at the end of its grace, and once
    // per probe interval to see whether it still passes its probes.
    if (auto end = next_grace_end(dp.members, grace)) {
        arm_discovery(dp, std::min(*end, now + std::max(pool->health.interval, duration(std::chrono::seconds(1)))));
    }
}

std::shared_ptr<const config> process::with_discovered(const config& file) const {
    auto cfg = std::make_shared<config>(file);
    for (auto& p : cfg->pools) {
        // A pool whose discovery section a reload changes keeps its members
        // until its new client's first set (restart_discovery carries them over).
        if (!p.discovery) continue;
        for (const auto& dp : discovery_pools_) {
            if (dp->pool == p.name && dp->applied) p = discovered_pool(p, dp->members);
        }
    }
    return cfg;
}

}  // namespace apilb
