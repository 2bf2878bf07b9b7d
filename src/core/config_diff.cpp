#include "apilb/core/config_diff.hpp"

#include <algorithm>
#include <tuple>

namespace apilb {

namespace {

std::string join(const std::vector<std::string>& items) {
    std::string s;
    for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
    return s;
}

std::string listener_text(const listener_config& l) { return l.name + "@" + l.address.to_string(); }

std::string backend_text(const pool_config& p, const backend_config& b) {
    return p.name + "/" + b.name + "@" + b.address.to_string();
}

/// Pool settings other than its backends.
std::string pool_settings_changed(const pool_config& a, const pool_config& b) {
    std::vector<std::string> what;
    if (a.balance != b.balance)
        what.push_back(std::string("balance ") + to_string(a.balance) + "->" + to_string(b.balance));
    if (a.connect_attempts != b.connect_attempts) what.push_back("connect_attempts");
    if (!(a.health == b.health)) what.push_back("health");
    if (a.maglev_table_size != b.maglev_table_size || a.maglev_key != b.maglev_key) what.push_back("maglev");
    if (!(a.storm_control == b.storm_control)) what.push_back("storm_control");
    if (!(a.rebalance == b.rebalance)) what.push_back("rebalance");
    if (a.discovery != b.discovery) what.push_back("discovery");
    return join(what);
}

void restart_only_change(std::vector<std::string>& out, const std::string& what, bool changed) {
    if (changed) out.push_back(what);
}

}  // namespace

bool same_backend(const pool_config& old_pool, const backend_config& old_backend, const pool_config& new_pool,
                  const backend_config& new_backend) {
    return old_pool.name == new_pool.name && old_backend.name == new_backend.name &&
           old_backend.address == new_backend.address;
}

bool same_listener(const listener_config& old_listener, const listener_config& new_listener) {
    return old_listener.address == new_listener.address;
}

bool config_diff::empty() const {
    return listeners_added.empty() && listeners_removed.empty() && listeners_changed.empty() &&
           backends_added.empty() && backends_removed.empty() && backends_changed.empty() && pools_changed.empty() &&
           settings_changed.empty();
}

std::string config_diff::summary() const {
    std::string s;
    auto start_part = [&](const char* label) { s += (s.empty() ? "" : "; ") + std::string(label); };
    auto part = [&](const char* label, const std::vector<std::string>& added, const std::vector<std::string>& removed,
                    const std::vector<std::string>& changed) {
        if (added.empty() && removed.empty() && changed.empty()) return;
        start_part(label);
        if (!added.empty()) s += " added [" + join(added) + "]";
        if (!removed.empty()) s += " removed [" + join(removed) + "]";
        if (!changed.empty()) s += " changed [" + join(changed) + "]";
    };
    auto list = [&](const char* label, const std::vector<std::string>& items) {
        if (items.empty()) return;
        start_part(label);
        s += " [" + join(items) + "]";
    };
    part("listeners", listeners_added, listeners_removed, listeners_changed);
    part("backends", backends_added, backends_removed, backends_changed);
    list("pools changed", pools_changed);
    list("settings changed", settings_changed);
    list("not applied until restart", restart_only);
    return s.empty() ? "no changes" : s;
}

config_diff diff_configs(const config& running, const config& next) {
    config_diff d;
    for (const auto& l : next.listeners) {
        auto it = std::find_if(running.listeners.begin(), running.listeners.end(),
                               [&](const listener_config& o) { return same_listener(o, l); });
        if (it == running.listeners.end()) {
            d.listeners_added.push_back(listener_text(l));
            continue;
        }
        std::string what;
        if (it->name != l.name) what += " name " + it->name + "->" + l.name;
        if (it->pool != l.pool) what += " pool " + it->pool + "->" + l.pool;
        if (it->backlog != l.backlog)
            what += " backlog " + std::to_string(it->backlog) + "->" + std::to_string(l.backlog);
        if (!what.empty()) d.listeners_changed.push_back(listener_text(l) + what);
    }
    for (const auto& o : running.listeners) {
        if (std::none_of(next.listeners.begin(), next.listeners.end(),
                         [&](const listener_config& l) { return same_listener(o, l); })) {
            d.listeners_removed.push_back(listener_text(o));
        }
    }
    for (const auto& p : next.pools) {
        const pool_config* op = running.find_pool(p.name);
        if (op) {
            if (auto what = pool_settings_changed(*op, p); !what.empty())
                d.pools_changed.push_back(p.name + " (" + what + ")");
        }
        for (const auto& b : p.backends) {
            const backend_config* ob = nullptr;
            if (op) {
                for (const auto& c : op->backends) {
                    if (same_backend(*op, c, p, b)) ob = &c;
                }
            }
            if (!ob) {
                d.backends_added.push_back(backend_text(p, b));
                continue;
            }
            std::string what;
            if (ob->weight != b.weight)
                what += " weight " + std::to_string(ob->weight) + "->" + std::to_string(b.weight);
            if (ob->drain != b.drain) what += b.drain ? " drain on" : " drain off";
            if (!what.empty()) d.backends_changed.push_back(p.name + "/" + b.name + what);
        }
    }
    for (const auto& op : running.pools) {
        const pool_config* p = next.find_pool(op.name);
        for (const auto& ob : op.backends) {
            const bool kept = p && std::any_of(p->backends.begin(), p->backends.end(),
                                               [&](const backend_config& b) { return same_backend(op, ob, *p, b); });
            if (!kept) d.backends_removed.push_back(backend_text(op, ob));
        }
    }
    const auto& rt = running.timeouts;
    const auto& nt = next.timeouts;
    if (std::tie(rt.connect, rt.drain, rt.reload_drain, rt.upgrade_quiesce) !=
        std::tie(nt.connect, nt.drain, nt.reload_drain, nt.upgrade_quiesce)) {
        d.settings_changed.push_back("timeouts");
    }
    if (!(running.tcp == next.tcp)) d.settings_changed.push_back("tcp");
    if (running.limits.per_backend != next.limits.per_backend) d.settings_changed.push_back("limits.per_backend");

    auto& r = d.restart_only;
    // With `workers: 0` the count follows the CPUs apilb may use (an
    // affinity or a cgroup limit changed since the start): say so.
    restart_only_change(r,
                        "workers " + std::to_string(running.workers) + "->" + std::to_string(next.workers) +
                            (next.workers_auto.empty() ? "" : " (auto: " + next.workers_auto + ")"),
                        running.workers != next.workers);
    restart_only_change(r, "relay", !(running.relay == next.relay));
    restart_only_change(r, "log", !(running.log == next.log));
    restart_only_change(r,
                        "limits.max_connections " + std::to_string(running.limits.max_connections) + "->" +
                            std::to_string(next.limits.max_connections),
                        running.limits.max_connections != next.limits.max_connections);
    restart_only_change(r, "timeouts.idle", rt.idle != nt.idle);
    restart_only_change(r, "timeouts.write_stall", rt.write_stall != nt.write_stall);
    // The admin endpoint keeps its socket, token and TLS settings until a
    // restart; a reload only re-reads the TLS files it already names
    // (certificate rotation, admin_server::reload_tls_files).
    const bool admin_changed = running.admin.has_value() != next.admin.has_value() ||
                               (running.admin && (running.admin->address != next.admin->address ||
                                                  running.admin->token_file != next.admin->token_file ||
                                                  running.admin->tls != next.admin->tls ||
                                                  running.admin->host_names != next.admin->host_names));
    restart_only_change(r, "admin", admin_changed);
    return d;
}

config keep_restart_only(const config& running, config next) {
    next.workers = running.workers;
    next.workers_auto = running.workers_auto;
    next.relay = running.relay;
    next.log = running.log;
    next.limits.max_connections = running.limits.max_connections;
    next.timeouts.idle = running.timeouts.idle;
    next.timeouts.write_stall = running.timeouts.write_stall;
    next.admin = running.admin;
    return next;
}

}  // namespace apilb
