#include "apilb/admin/admin_report.hpp"

#include <boost/json.hpp>

#include <fmt/format.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iterator>

#include "apilb/control/discovery_client.hpp"
#include "apilb/control/probe_record.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/fd_table.hpp"
#include "apilb/logging/logging.hpp"

namespace apilb {

namespace json = boost::json;

namespace {

std::uint64_t load(const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); }
std::uint64_t load(const std::atomic<std::uint32_t>& a) { return a.load(std::memory_order_relaxed); }

/// Open descriptors, resident bytes, CPU seconds (user + system).
struct process_usage {
    std::uint64_t open_fds = 0;
    std::uint64_t rss_bytes = 0;
    double cpu_seconds = 0;
    std::uint64_t max_fds = 0;
};

process_usage read_process_usage() {
    process_usage u;
    u.open_fds = count_open_fds();
    if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
        unsigned long long size = 0, resident = 0;
        if (std::fscanf(f, "%llu %llu", &size, &resident) == 2) {
            u.rss_bytes = resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
        }
        std::fclose(f);
    }
    rusage ru{};
    if (::getrusage(RUSAGE_SELF, &ru) == 0) {
        u.cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                        static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    }
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) u.max_fds = rl.rlim_cur;
    return u;
}

/// Writes one metric family: HELP and TYPE once, then its samples.
class exposition {
public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }
    void sample(std::string_view name, const std::string& labels, double value) {
        out_ += labels.empty() ? fmt::format("{} {}\n", name, value)
                               : fmt::format("{}{{{}}} {}\n", name, labels, value);
    }
    void sample(std::string_view name, const std::string& labels, std::uint64_t value) {
        out_ += labels.empty() ? fmt::format("{} {}\n", name, value)
                               : fmt::format("{}{{{}}} {}\n", name, labels, value);
    }
    std::string take() { return std::move(out_); }

private:
    std::string out_;
};

std::string label(std::string_view key, const std::string& value) {
    return fmt::format("{}=\"{}\"", key, escape_label_value(value));
}

std::string backend_labels(const pool_runtime& p, const backend_runtime& b) {
    return label("pool", p.cfg->name) + "," + label("backend", b.cfg->name);
}

/// Calls `fn(pool, backend)` for every backend.
void each_backend(const snapshot& snap, const std::function<void(const pool_runtime&, const backend_runtime&)>& fn) {
    for (const auto& p : snap.pools) {
        for (const auto& b : p.backends) fn(p, b);
    }
}

/// Where a backend came from: the file ("static"; "seed" in a pool that
/// follows the API) or the API ("discovered").
const char* origin_of(const pool_runtime& p, const backend_runtime& b) {
    if (b.cfg->discovered) return "discovered";
    return p.cfg->discovery ? "seed" : "static";
}

/// What discovery makes of a backend of a pool that follows the API: "" elsewhere.
const char* discovery_state_of(const pool_runtime& p, const backend_runtime& b) {
    if (!p.cfg->discovery) return "";
    if (b.cfg->leaving) return "leaving";
    if (b.cfg->terminating) return "terminating";
    if (b.health->pending.load(std::memory_order_relaxed)) return "pending_probe";
    return "admitted";
}

const char* drain_source(const backend_runtime& b) {
    if (b.cfg->drain) return "config";
    if (b.health->admin_drain.load(std::memory_order_relaxed)) return "admin";
    return "";
}

/// apilb_bgp_*: per VIP whether apilb lets FRR announce it, per peer FRR's
/// session state (docs/bgp.md).
template <class Exposition>
void render_bgp_metrics(Exposition& e, const bgp_report& b) {
    if (!b.enabled) return;
    e.family("apilb_bgp_vip_announced", "gauge",
             "1 while the VIP is on the local interface, so FRR announces it (this node is ready), else 0.");
    for (const auto& v : b.vips) e.sample("apilb_bgp_vip_announced", label("vip", v.ip), std::uint64_t{v.announced});
    e.family("apilb_bgp_vip_withdrawals_total", "counter",
             "Times apilb withdrew the VIP (not ready, draining) after announcing it.");
    for (const auto& v : b.vips) e.sample("apilb_bgp_vip_withdrawals_total", label("vip", v.ip), v.withdrawals);
    e.family("apilb_bgp_vip_errors_total", "counter",
             "Changes of a VIP on the interface, or of its local route, that the kernel refused (tried again).");
    e.sample("apilb_bgp_vip_errors_total", "", b.address_errors);
    // A state set, as apilb_vrrp_role: alerts match state="Established".
    e.family("apilb_bgp_peer_state", "gauge",
             "1 for the BGP session state FRR reports for the peer (unknown while FRR does not answer), 0 for the "
             "others.");
    for (const auto& p : b.peers) {
        for (const char* state : bgp_states) {
            e.sample("apilb_bgp_peer_state", label("peer", p.address) + "," + label("state", state),
                     std::uint64_t{p.state == state});
        }
        e.sample(
            "apilb_bgp_peer_state", label("peer", p.address) + "," + label("state", "unknown"),
            std::uint64_t{std::find(std::begin(bgp_states), std::end(bgp_states), p.state) == std::end(bgp_states)});
    }
    e.family("apilb_bgp_frr_up", "gauge", "1 if FRR answered apilb's last question (vtysh, every 2 s), else 0.");
    e.sample("apilb_bgp_frr_up", "", std::uint64_t{b.frr_up});
    e.family("apilb_bgp_frr_query_failures_total", "counter",
             "Questions to FRR that failed: vtysh missing, bgpd not running, timed out, or an answer that does not "
             "parse.");
    e.sample("apilb_bgp_frr_query_failures_total", "", b.frr_query_failures);
    e.family("apilb_bgp_frr_restarts_total", "counter",
             "With bgp.manage: true, times apilb restarted its zebra, bgpd and bfdd after one of them ended or failed "
             "to start; 0 otherwise.");
    e.sample("apilb_bgp_frr_restarts_total", "", b.frr_restarts);
}

/// apilb_discovery_*: one set of samples per pool with discovery.
template <class Exposition>
void render_discovery_metrics(Exposition& e, const std::vector<const discovery_client*>& clients) {
    if (clients.empty()) return;
    e.family("apilb_discovery_watch_state", "gauge",
             "1 for what the pool's discovery watch is doing now (starting, listing, watching, backoff, stopped), 0 "
             "for the others.");
    for (const auto* c : clients) {
        const int now = c->stats().state.load(std::memory_order_relaxed);
        for (int s = 0; s <= static_cast<int>(watch_state::stopped); ++s) {
            e.sample("apilb_discovery_watch_state",
                     label("pool", c->pool()) + "," + label("state", to_string(static_cast<watch_state>(s))),
                     std::uint64_t{now == s});
        }
    }
    e.family("apilb_discovery_last_sync_timestamp_seconds", "gauge",
             "When the pool's discovery last applied a list or a watch event (Unix seconds); 0 = never.");
    for (const auto* c : clients) {
        e.sample("apilb_discovery_last_sync_timestamp_seconds", label("pool", c->pool()),
                 static_cast<std::uint64_t>(c->stats().last_sync_unix.load(std::memory_order_relaxed)));
    }
    e.family("apilb_discovery_endpoints", "gauge", "Apiserver addresses in the pool's last set from the API.");
    for (const auto* c : clients) {
        e.sample("apilb_discovery_endpoints", label("pool", c->pool()), std::uint64_t{c->current().size()});
    }
    const auto counter = [&](std::string_view name, const char* help,
                             const std::atomic<std::uint64_t> discovery_stats::*field) {
        e.family(name, "counter", help);
        for (const auto* c : clients) {
            e.sample(name, label("pool", c->pool()), (c->stats().*field).load(std::memory_order_relaxed));
        }
    };
    counter("apilb_discovery_lists_total", "Successful lists of the pool's EndpointSlices.",
            &discovery_stats::lists_total);
    counter("apilb_discovery_relists_total", "Lists after the first: a 410 Gone, or a watch that could not be resumed.",
            &discovery_stats::relists_total);
    counter("apilb_discovery_events_total", "Watch events applied, bookmarks included.",
            &discovery_stats::events_total);
    counter("apilb_discovery_errors_total",
            "Failed list or watch attempts: connect, TLS, HTTP status, credentials, malformed or oversized answers, "
            "a silent watch.",
            &discovery_stats::errors_total);
    counter("apilb_discovery_empty_lists_total",
            "Answers that named no serving apiserver and were not applied (the running set is kept).",
            &discovery_stats::empty_lists_total);
    counter("apilb_discovery_credential_reloads_total",
            "Changed credential files (kubeconfig, its certificate, key or CA) read again and taken into use.",
            &discovery_stats::credential_reloads_total);
    counter("apilb_discovery_credential_errors_total",
            "Changed credential files that could not be used: the previous credentials stay in use.",
            &discovery_stats::credential_errors_total);
}

}  // namespace

std::string escape_label_value(const std::string& value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string render_metrics(const snapshot& snap, const admin_facts& facts) {
    APILB_ASSERT_ROLE(control);
    exposition e;
    const process_stats& ps = *facts.stats;

    e.family("apilb_listener_connections_accepted_total", "counter", "Client connections accepted by a listener.");
    for (const auto& l : snap.listeners)
        e.sample("apilb_listener_connections_accepted_total", label("listener", l.cfg->name),
                 load(l.stats->accepted_total));
    e.family("apilb_listener_connections_refused_total", "counter",
             "Client connections accepted and closed at once because limits.max_connections was reached.");
    for (const auto& l : snap.listeners)
        e.sample("apilb_listener_connections_refused_total", label("listener", l.cfg->name),
                 load(l.stats->refused_total));

    e.family("apilb_sessions_active", "gauge", "Client sessions open now.");
    e.sample("apilb_sessions_active", "", load(ps.active_sessions));
    e.family("apilb_sessions_no_backend_total", "counter",
             "Client sessions closed because every connect attempt failed.");
    e.sample("apilb_sessions_no_backend_total", "", load(ps.no_backend_total));
    e.family("apilb_accept_errors_total", "counter", "accept() calls that failed.");
    e.sample("apilb_accept_errors_total", "", load(ps.accept_errors_total));
    e.family("apilb_resource_errors_total", "counter",
             "Times the data path found the process out of descriptors or memory (accept, a session's sockets, "
             "an allocation for a session).");
    e.sample("apilb_resource_errors_total", "", load(ps.resource_errors_total));
    e.family("apilb_relay_buffers_empty_total", "counter",
             "relay.io: io_uring: reads that found every buffer of their worker's ring in use, and read after "
             "readiness instead.");
    e.sample("apilb_relay_buffers_empty_total", "", load(ps.relay_buffers_empty_total));
    e.family("apilb_clients_reset_total", "counter",
             "Clients reset at once because the process was out of resources, by reason: no_descriptors (out of "
             "file descriptors for longer than a client waits in the backlog), no_memory (an allocation for the "
             "session failed).");
    e.sample("apilb_clients_reset_total", label("reason", "no_descriptors"), load(ps.reset_no_fds_total));
    e.sample("apilb_clients_reset_total", label("reason", "no_memory"), load(ps.reset_no_memory_total));
    e.family("apilb_sessions_closed_total", "counter",
             "Sessions apilb closed itself, by reason: health (their backend became unhealthy), drain (shutdown), "
             "reload (their backend was removed), idle (timeouts.idle), rebalance (moved to spread a pool), "
             "write_stall (a peer took no byte for timeouts.write_stall).");
    e.sample("apilb_sessions_closed_total", label("reason", "health"), load(ps.closed_by_health_total));
    e.sample("apilb_sessions_closed_total", label("reason", "drain"), load(ps.closed_by_drain_total));
    e.sample("apilb_sessions_closed_total", label("reason", "reload"), load(ps.closed_by_reload_total));
    e.sample("apilb_sessions_closed_total", label("reason", "idle"), load(ps.closed_by_idle_total));
    e.sample("apilb_sessions_closed_total", label("reason", "rebalance"), load(ps.closed_by_rebalance_total));
    e.sample("apilb_sessions_closed_total", label("reason", "write_stall"), load(ps.closed_by_stall_total));
    e.family("apilb_sessions_failed_total", "counter",
             "Sessions that ended because one leg failed, by side (client or backend) and error: timeout (the "
             "kernel gave up on the peer: tcp.user_timeout or keepalive) or reset (the peer reset it); apilb then "
             "reset the other leg.");
    e.sample("apilb_sessions_failed_total", label("side", "client") + "," + label("error", "timeout"),
             load(ps.client_timeout_total));
    e.sample("apilb_sessions_failed_total", label("side", "client") + "," + label("error", "reset"),
             load(ps.client_reset_total));
    e.sample("apilb_sessions_failed_total", label("side", "backend") + "," + label("error", "timeout"),
             load(ps.backend_timeout_total));
    e.sample("apilb_sessions_failed_total", label("side", "backend") + "," + label("error", "reset"),
             load(ps.backend_reset_total));

    e.family("apilb_backend_active_sessions", "gauge", "Sessions relaying to a backend now.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_active_sessions", backend_labels(p, b), load(b.stats->active));
    });
    e.family("apilb_backend_sessions_total", "counter", "Sessions a backend was chosen for and connected.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_sessions_total", backend_labels(p, b), load(b.stats->sessions_total));
    });
    e.family("apilb_backend_sent_bytes_total", "counter", "Bytes relayed from clients to a backend.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_sent_bytes_total", backend_labels(p, b), load(b.stats->bytes_to_backend));
    });
    e.family("apilb_backend_received_bytes_total", "counter", "Bytes relayed from a backend to clients.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_received_bytes_total", backend_labels(p, b), load(b.stats->bytes_from_backend));
    });
    e.family("apilb_backend_connect_failures_total", "counter",
             "Client connects to a backend that failed, by reason: refused, timeout, error.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        const std::string l = backend_labels(p, b);
        e.sample("apilb_backend_connect_failures_total", l + "," + label("reason", "refused"),
                 load(b.stats->connect_refused_total));
        e.sample("apilb_backend_connect_failures_total", l + "," + label("reason", "timeout"),
                 load(b.stats->connect_timeout_total));
        e.sample("apilb_backend_connect_failures_total", l + "," + label("reason", "error"),
                 load(b.stats->connect_error_total));
    });
    e.family("apilb_backend_rebalanced_sessions_total", "counter",
             "Sessions closed on a backend to spread its pool (rebalance).");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_rebalanced_sessions_total", backend_labels(p, b),
                 load(b.stats->closed_by_rebalance_total));
    });
    e.family("apilb_backend_storm_waiting_clients", "gauge",
             "Clients waiting for their turn to connect to a backend (storm_control).");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_storm_waiting_clients", backend_labels(p, b), load(b.stats->storm_waiting));
    });
    e.family("apilb_backend_connecting", "gauge",
             "Connections to a backend being established now: connecting, or waiting for its first byte "
             "(storm_control.max_connecting only).");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_connecting", backend_labels(p, b), load(b.stats->connecting));
    });
    e.family("apilb_backend_storm_delayed_total", "counter",
             "Clients that waited for a turn to connect to a backend (storm_control).");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_storm_delayed_total", backend_labels(p, b), load(b.stats->storm_delayed_total));
    });
    e.family("apilb_backend_storm_refused_total", "counter",
             "Clients closed because their turn to connect to a backend was too far away or its queue was full "
             "(storm_control).");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_storm_refused_total", backend_labels(p, b), load(b.stats->storm_refused_total));
    });
    e.family("apilb_backend_healthy", "gauge", "1 if the backend is healthy, else 0.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_healthy", backend_labels(p, b),
                 std::uint64_t{b.health->healthy.load(std::memory_order_relaxed)});
    });
    e.family("apilb_backend_drained", "gauge",
             "1 if the backend gets no new sessions because it is drained (config or admin).");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_drained", backend_labels(p, b), std::uint64_t{*drain_source(b) != '\0'});
    });
    e.family("apilb_backend_weight", "gauge", "The backend's configured weight.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_weight", backend_labels(p, b), std::uint64_t{b.cfg->weight});
    });
    e.family("apilb_backend_health_transitions_total", "counter", "Changes between healthy and unhealthy.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_health_transitions_total", backend_labels(p, b),
                 probe_record_or_empty(*b.health).transitions_total);
    });
    e.family("apilb_backend_probe_failures_total", "counter", "Active health checks that failed.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_probe_failures_total", backend_labels(p, b), load(b.stats->checks_failed_total));
    });
    e.family("apilb_backend_passive_failures_total", "counter",
             "Client connects that counted against the backend's health.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        e.sample("apilb_backend_passive_failures_total", backend_labels(p, b), load(b.stats->passive_failures_total));
    });
    e.family("apilb_backend_last_probe_success", "gauge",
             "1 if the last health check passed, 0 if it failed (absent before the first).");
    each_backend(snap, [&](const auto& p, const auto& b) {
        const probe_record& r = probe_record_or_empty(*b.health);
        if (r.probed) e.sample("apilb_backend_last_probe_success", backend_labels(p, b), std::uint64_t{r.passed});
    });
    e.family("apilb_backend_last_probe_timestamp_seconds", "gauge", "Unix time the last health check completed.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        const probe_record& r = probe_record_or_empty(*b.health);
        if (r.probed)
            e.sample("apilb_backend_last_probe_timestamp_seconds", backend_labels(p, b),
                     static_cast<double>(r.last_probe_unix_ms) / 1000.0);
    });
    e.family("apilb_backend_probe_duration_seconds", "histogram", "How long health checks took.");
    each_backend(snap, [&](const auto& p, const auto& b) {
        const probe_record& r = probe_record_or_empty(*b.health);
        const std::string l = backend_labels(p, b);
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < probe_duration_buckets.size(); ++i) {
            cumulative += r.bucket_counts[i];
            e.sample("apilb_backend_probe_duration_seconds_bucket",
                     l + "," + label("le", fmt::format("{}", probe_duration_buckets[i])), cumulative);
        }
        e.sample("apilb_backend_probe_duration_seconds_bucket", l + "," + label("le", "+Inf"), r.count);
        e.sample("apilb_backend_probe_duration_seconds_sum", l, r.sum_s);
        e.sample("apilb_backend_probe_duration_seconds_count", l, r.count);
    });

    e.family("apilb_reloads_total", "counter",
             "Configuration reloads, by result: success (applied) or failure (old config kept).");
    e.sample("apilb_reloads_total", label("result", "success"), load(ps.reloads_total));
    e.sample("apilb_reloads_total", label("result", "failure"), load(ps.reload_failures_total));
    e.family("apilb_upgrades_total", "counter",
             "Upgrades (SIGUSR2) by result: success = the listeners went to the new binary, failure = rolled "
             "back, this process serves on.");
    e.sample("apilb_upgrades_total", label("result", "success"), load(ps.upgrades_total));
    e.sample("apilb_upgrades_total", label("result", "failure"), load(ps.upgrade_failures_total));
    e.family("apilb_session_handover_total", "counter",
             "Established sessions in upgrades, by result: handed_over (to the new binary), kept (bytes in flight not "
             "written out in time, drained here), adopted (from the old binary, or back after a failed upgrade), "
             "refused (both sides reset).");
    e.sample("apilb_session_handover_total", label("result", "handed_over"), load(ps.sessions_handed_over_total));
    e.sample("apilb_session_handover_total", label("result", "kept"), load(ps.sessions_kept_total));
    e.sample("apilb_session_handover_total", label("result", "adopted"), load(ps.sessions_adopted_total));
    e.sample("apilb_session_handover_total", label("result", "refused"), load(ps.sessions_refused_total));
    if (facts.admin != nullptr) {
        e.family("apilb_admin_auth_failures_total", "counter",
                 "State-changing admin requests refused for want of a credential (token, client certificate, or none "
                 "configured).");
        e.sample("apilb_admin_auth_failures_total", "", facts.admin->auth_failures_total);
        e.family("apilb_admin_connections_evicted_total", "counter",
                 "Idle admin connections closed to make room for new ones (per-peer or total cap reached).");
        e.sample("apilb_admin_connections_evicted_total", "", facts.admin->connections_evicted_total);
    }
    if (facts.admin != nullptr && facts.admin->tls) {
        e.family("apilb_admin_tls_handshake_failures_total", "counter",
                 "Admin connections cut off because the TLS handshake failed (no or untrusted client certificate, "
                 "plain HTTP, timeout).");
        e.sample("apilb_admin_tls_handshake_failures_total", "", facts.admin->tls_handshake_failures_total);
    }
    e.family("apilb_log_lines_dropped_total", "counter",
             "Log lines dropped because stderr did not take them as fast as they came (a stalled log reader).");
    e.sample("apilb_log_lines_dropped_total", "", log_lines_dropped());
    e.family("apilb_config_info", "gauge", "Always 1; hash is a short hash of the running configuration file.");
    e.sample("apilb_config_info", label("hash", facts.config_hash), std::uint64_t{1});
    e.family("apilb_relay_io_uring", "gauge",
             "1 if the workers drive their sockets through io_uring (relay.io), 0 if through epoll.");
    e.sample("apilb_relay_io_uring", "", std::uint64_t{facts.relay_io_uring});
    e.family("apilb_ready", "gauge", "1 if apilb is ready (what /readyz says), else 0.");
    e.sample("apilb_ready", "", std::uint64_t{check_readiness(snap, facts).ready});
    if (!facts.vrrp_role.empty()) {
        e.family("apilb_vrrp_master", "gauge", "1 if keepalived reports this node MASTER for the VIPs, else 0.");
        e.sample("apilb_vrrp_master", "", std::uint64_t{facts.vrrp_role == "MASTER"});
        // The role as a state set (one sample per role, 1 for the current
        // one), the name issue 7 asks for: alerts can match role="FAULT".
        e.family("apilb_vrrp_role", "gauge", "1 for the VRRP role keepalived reports for this node, 0 for the others.");
        for (const char* role : {"MASTER", "BACKUP", "FAULT", "STOP", "unknown"}) {
            e.sample("apilb_vrrp_role", label("role", role), std::uint64_t{facts.vrrp_role == role});
        }
    }

    render_bgp_metrics(e, facts.bgp);
    render_discovery_metrics(e, facts.discovery);

    const process_usage u = read_process_usage();
    e.family("apilb_process_open_fds", "gauge", "Open file descriptors.");
    e.sample("apilb_process_open_fds", "", u.open_fds);
    e.family("apilb_process_max_fds", "gauge", "The soft limit on open file descriptors.");
    e.sample("apilb_process_max_fds", "", u.max_fds);
    e.family("apilb_process_resident_memory_bytes", "gauge", "Resident memory.");
    e.sample("apilb_process_resident_memory_bytes", "", u.rss_bytes);
    e.family("apilb_process_cpu_seconds_total", "counter", "User and system CPU time used.");
    e.sample("apilb_process_cpu_seconds_total", "", u.cpu_seconds);
    return e.take();
}

readiness check_readiness(const snapshot& snap, const admin_facts& facts) {
    APILB_ASSERT_ROLE(control);
    readiness r;
    for (const auto& p : snap.pools) {
        std::size_t healthy = 0;
        for (const auto& b : p.backends) healthy += b.health->healthy.load(std::memory_order_relaxed) ? 1 : 0;
        r.body += fmt::format("[{}] pool {}: {} of {} backend(s) healthy\n", healthy > 0 ? "+" : "-", p.cfg->name,
                              healthy, p.backends.size());
    }
    r.body += fmt::format("[+] config loaded ({})\n[+] {} listener(s) bound\n",
                          facts.config_hash.empty() ? "unknown hash" : facts.config_hash, snap.listeners.size());
    std::string why = facts.draining ? "draining" : unready_reason(snap);
    r.ready = why.empty();
    r.body += r.ready ? "ready\n" : "not ready: " + why + "\n";
    return r;
}

std::string render_status_json(const snapshot& snap, const admin_facts& facts) {
    APILB_ASSERT_ROLE(control);
    const readiness ready = check_readiness(snap, facts);
    json::object root;
    root["ready"] = ready.ready;
    root["ready_reason"] = facts.draining ? std::string("draining") : unready_reason(snap);
    root["draining"] = facts.draining;
    root["config_hash"] = facts.config_hash;
    root["vrrp_role"] = facts.vrrp_role;
    root["workers"] = facts.workers;
    root["workers_auto"] = snap.cfg->workers_auto;
    root["relay_io"] = facts.relay_io_uring ? "io_uring" : "epoll";
    json::array discovery;
    for (const auto* c : facts.discovery) {
        json::array endpoints;
        for (const auto& ep : c->current()) {
            endpoints.push_back(json::object{
                {"ip", ep.ip}, {"port", ep.port}, {"serving", ep.serving}, {"terminating", ep.terminating}});
        }
        // The seed (the file's static backends) and the state file, so that
        // `apilb status` and the page can set them beside the discovered set.
        json::array seed;
        std::string state_file;
        // The file's backends: the snapshot's are the discovered set by now.
        const config& file = facts.file_config ? *facts.file_config : *snap.cfg;
        if (const pool_config* p = file.find_pool(c->pool())) {
            for (const auto& b : p->backends) {
                seed.push_back(json::object{{"name", b.name}, {"address", b.address.to_string()}});
            }
            if (p->discovery) state_file = p->discovery->state_file;
        }
        const discovery_stats& ds = c->stats();
        discovery.push_back(
            json::object{{"pool", c->pool()},
                         {"watch_state", to_string(static_cast<watch_state>(ds.state.load(std::memory_order_relaxed)))},
                         {"source", to_string(c->source())},
                         {"api_server", c->api_server()},
                         {"last_error", c->last_error()},
                         {"last_error_unix", c->last_error_unix()},
                         {"last_sync_unix", ds.last_sync_unix.load(std::memory_order_relaxed)},
                         {"lists", load(ds.lists_total)},
                         {"relists", load(ds.relists_total)},
                         {"events", load(ds.events_total)},
                         {"errors", load(ds.errors_total)},
                         {"empty_lists", load(ds.empty_lists_total)},
                         {"state_file", state_file},
                         {"seed", std::move(seed)},
                         {"discovered", std::move(endpoints)}});
    }
    root["discovery"] = std::move(discovery);
    root["sessions_active"] = load(facts.stats->active_sessions);
    // The same counts as apilb_sessions_closed_total, by reason.
    const process_stats& ps = *facts.stats;
    root["sessions_closed"] = json::object{
        {"health", load(ps.closed_by_health_total)},       {"drain", load(ps.closed_by_drain_total)},
        {"reload", load(ps.closed_by_reload_total)},       {"idle", load(ps.closed_by_idle_total)},
        {"rebalance", load(ps.closed_by_rebalance_total)}, {"write_stall", load(ps.closed_by_stall_total)}};
    root["reloads"] = load(facts.stats->reloads_total);
    root["reload_failures"] = load(facts.stats->reload_failures_total);
    json::array listeners;
    for (const auto& l : snap.listeners) {
        listeners.push_back(json::object{{"name", l.cfg->name},
                                         {"address", l.cfg->address.to_string()},
                                         {"pool", l.cfg->pool},
                                         {"accepted", load(l.stats->accepted_total)},
                                         {"refused", load(l.stats->refused_total)}});
    }
    root["listeners"] = std::move(listeners);
    json::array pools;
    for (const auto& p : snap.pools) {
        json::array backends;
        std::size_t healthy_count = 0;
        for (const auto& b : p.backends) {
            const probe_record& r = probe_record_or_empty(*b.health);
            const bool healthy = b.health->healthy.load(std::memory_order_relaxed);
            healthy_count += healthy ? 1 : 0;
            json::array changes;
            for (const auto& c : r.recent_changes) {
                changes.push_back(json::object{{"unix_ms", c.unix_ms}, {"healthy", c.healthy}, {"reason", c.reason}});
            }
            json::object last;
            if (r.probed) {
                last = json::object{{"passed", r.passed},
                                    {"reason", r.reason},
                                    {"detail", r.detail},
                                    {"duration_ms", r.duration_s * 1000.0},
                                    {"unix_ms", r.last_probe_unix_ms}};
            }
            const std::string source = drain_source(b);
            backends.push_back(
                json::object{{"name", b.cfg->name},
                             {"address", b.cfg->address.to_string()},
                             {"origin", origin_of(p, b)},
                             {"discovery", discovery_state_of(p, b)},
                             {"weight", b.cfg->weight},
                             {"healthy", healthy},
                             {"suspect", b.health->suspect.load(std::memory_order_relaxed)},
                             {"state", !source.empty() ? "drained"
                                       : healthy       ? "up"
                                                       : "down"},
                             {"drain", !source.empty()},
                             {"drain_source", source},
                             {"active_sessions", load(b.stats->active)},
                             {"sessions_total", load(b.stats->sessions_total)},
                             {"bytes_to_backend", load(b.stats->bytes_to_backend)},
                             {"bytes_from_backend", load(b.stats->bytes_from_backend)},
                             {"connect_failures", load(b.stats->connect_failures_total)},
                             {"transitions", r.transitions_total},
                             {"last_probe", r.probed ? json::value(std::move(last)) : json::value(nullptr)},
                             {"recent_changes", std::move(changes)}});
        }
        pools.push_back(json::object{{"name", p.cfg->name},
                                     {"balance", to_string(p.cfg->balance)},
                                     {"health_check", to_string(p.cfg->health.type)},
                                     {"healthy", healthy_count},
                                     {"backends", std::move(backends)}});
    }
    root["pools"] = std::move(pools);
    return json::serialize(root) + "\n";
}

}  // namespace apilb
