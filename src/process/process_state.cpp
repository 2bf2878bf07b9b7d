#include "apilb/process/process_state.hpp"

#include <boost/asio/post.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <utility>

#include "apilb/control/health_checker.hpp"
#include "apilb/control/probe_record.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/process/handover.hpp"
#include "apilb/process/process.hpp"
#include "apilb/process/upgrade_bgp.hpp"

namespace apilb {

namespace {

/// `seconds` in whole nanoseconds, rounded up so that the receiver's
/// n / 1e9 is never below `seconds` (ceil of seconds * 1e9 alone can be one
/// bit short after the multiplication's rounding).
std::uint64_t ns_at_least(double seconds) {
    auto ns = static_cast<std::uint64_t>(std::ceil(seconds * 1e9));
    for (int i = 0; i < 4 && static_cast<double>(ns) / 1e9 < seconds; ++i) ++ns;
    return ns;
}

using counter = std::atomic<std::uint64_t>;

/// Every counter of a backend that /metrics shows (gauges are measured, not carried).
constexpr std::array<std::pair<const char*, counter backend_stats::*>, 13> backend_counters{{
    {"sessions_total", &backend_stats::sessions_total},
    {"connect_failures_total", &backend_stats::connect_failures_total},
    {"connect_refused_total", &backend_stats::connect_refused_total},
    {"connect_timeout_total", &backend_stats::connect_timeout_total},
    {"connect_error_total", &backend_stats::connect_error_total},
    {"bytes_to_backend", &backend_stats::bytes_to_backend},
    {"bytes_from_backend", &backend_stats::bytes_from_backend},
    {"closed_by_health_total", &backend_stats::closed_by_health_total},
    {"passive_failures_total", &backend_stats::passive_failures_total},
    {"checks_failed_total", &backend_stats::checks_failed_total},
    {"storm_delayed_total", &backend_stats::storm_delayed_total},
    {"storm_refused_total", &backend_stats::storm_refused_total},
    {"closed_by_rebalance_total", &backend_stats::closed_by_rebalance_total},
}};

constexpr std::array<std::pair<const char*, counter listener_stats::*>, 2> listener_counters{{
    {"accepted_total", &listener_stats::accepted_total},
    {"refused_total", &listener_stats::refused_total},
}};

/// Every process-wide counter (active_sessions is a gauge).
constexpr std::array<std::pair<const char*, counter process_stats::*>, 26> process_counters{{
    {"accepted_total", &process_stats::accepted_total},
    {"refused_limit_total", &process_stats::refused_limit_total},
    {"no_backend_total", &process_stats::no_backend_total},
    {"accept_errors_total", &process_stats::accept_errors_total},
    {"resource_errors_total", &process_stats::resource_errors_total},
    {"relay_buffers_empty_total", &process_stats::relay_buffers_empty_total},
    {"reset_no_fds_total", &process_stats::reset_no_fds_total},
    {"reset_no_memory_total", &process_stats::reset_no_memory_total},
    {"closed_by_idle_total", &process_stats::closed_by_idle_total},
    {"closed_by_drain_total", &process_stats::closed_by_drain_total},
    {"closed_by_health_total", &process_stats::closed_by_health_total},
    {"closed_by_rebalance_total", &process_stats::closed_by_rebalance_total},
    {"closed_by_stall_total", &process_stats::closed_by_stall_total},
    {"client_timeout_total", &process_stats::client_timeout_total},
    {"client_reset_total", &process_stats::client_reset_total},
    {"backend_timeout_total", &process_stats::backend_timeout_total},
    {"backend_reset_total", &process_stats::backend_reset_total},
    {"reloads_total", &process_stats::reloads_total},
    {"reload_failures_total", &process_stats::reload_failures_total},
    {"upgrades_total", &process_stats::upgrades_total},
    {"upgrade_failures_total", &process_stats::upgrade_failures_total},
    {"closed_by_reload_total", &process_stats::closed_by_reload_total},
    {"sessions_handed_over_total", &process_stats::sessions_handed_over_total},
    {"sessions_kept_total", &process_stats::sessions_kept_total},
    {"sessions_adopted_total", &process_stats::sessions_adopted_total},
    {"sessions_refused_total", &process_stats::sessions_refused_total},
}};

std::uint64_t load(const counter& c) { return c.load(std::memory_order_relaxed); }

/// The identity of a backend on a line: pool, name and address (same_backend()).
handover::state_line backend_line(const char* kind, const pool_runtime& p, const backend_runtime& b) {
    handover::state_line l{.kind = kind, .fields = {}};
    l.add("pool", p.cfg->name).add("backend", b.cfg->name).add("address", b.cfg->address.to_string());
    return l;
}

/// The backend of `snap` a line names, or nullptr (gone from this config).
const backend_runtime* find_backend(const snapshot& snap, const handover::state_line& l) {
    const std::string& pool = l.text("pool");
    const std::string& name = l.text("backend");
    const std::string& address = l.text("address");
    for (const auto& p : snap.pools) {
        if (p.cfg->name != pool) continue;
        for (const auto& b : p.backends) {
            if (b.cfg->name == name && b.cfg->address.to_string() == address) return &b;
        }
    }
    return nullptr;
}

}  // namespace

std::vector<handover::state_line> state_lines(const snapshot& snap, const process_stats& stats,
                                              const health_checker* health) {
    std::vector<handover::state_line> out;
    handover::state_line ps{.kind = "process", .fields = {}};
    for (const auto& [name, member] : process_counters) ps.add(name, load(stats.*member));
    out.push_back(std::move(ps));
    for (const auto& l : snap.listeners) {
        handover::state_line line{.kind = "listener", .fields = {}};
        line.add("name", l.cfg->name);
        for (const auto& [name, member] : listener_counters) line.add(name, load(*l.stats.*member));
        out.push_back(std::move(line));
    }
    for (const auto& p : snap.pools) {
        for (const auto& b : p.backends) {
            handover::state_line line = backend_line("backend", p, b);
            for (const auto& [name, member] : backend_counters) line.add(name, load(*b.stats.*member));
            out.push_back(std::move(line));
            if (health == nullptr) continue;
            // The probe record is the control thread's: only with `health`.
            const probe_record& r = probe_record_or_empty(*b.health);
            handover::state_line probes = backend_line("probes", p, b);
            std::string buckets;
            for (std::size_t i = 0; i < r.bucket_counts.size(); ++i)
                buckets += fmt::format("{}{}", i ? "," : "", r.bucket_counts[i]);
            probes.add("transitions_total", r.transitions_total)
                .add("count", r.count)
                .add("sum_ns", ns_at_least(r.sum_s))
                .add("buckets", buckets);
            out.push_back(std::move(probes));
        }
    }
    if (health == nullptr) return out;
    out.push_back(bgp_section_line(snap.cfg->bgp));
    for (const carried_health& h : health->carried()) {
        handover::state_line line{.kind = "health", .fields = {}};
        line.add("pool", h.pool)
            .add("backend", h.backend)
            .add("address", h.address)
            .add("probes", h.probe_key)
            .add("settled", h.settled ? "1" : "0")
            .add("healthy", h.healthy ? "1" : "0")
            .add("streak", h.streak)
            .add("suspect", h.suspect ? "1" : "0")
            .add("admin_drain", h.admin_drain ? "1" : "0")
            .add("pending", h.pending ? "1" : "0")
            .add("ramp_ms", h.ramp_ms < 0 ? std::string("none") : std::to_string(h.ramp_ms));
        out.push_back(std::move(line));
    }
    return out;
}

std::uint64_t carried_counters::grow(const std::string& key, std::uint64_t value) {
    std::uint64_t& had = applied_[key];
    // A value below what came before (it cannot shrink in the old process)
    // adds nothing: the series never goes back.
    const std::uint64_t add = value > had ? value - had : 0;
    had = std::max(had, value);
    return add;
}

std::size_t carried_counters::apply(const std::vector<handover::state_line>& lines, const snapshot& snap,
                                    process_stats& stats, std::size_t& bad) {
    APILB_ASSERT_ROLE(control);
    std::size_t moved = 0;
    // Fields a line lacks or this release does not know are left alone.
    auto add_all = [&](const std::string& prefix, const handover::state_line& l, const auto& table, auto& target) {
        for (const auto& [name, member] : table) {
            if (l.find(name) == nullptr) continue;
            const std::uint64_t n = grow(prefix + name, l.number(name));
            if (n > 0) (target.*member).fetch_add(n, std::memory_order_relaxed);
            ++moved;
        }
    };
    for (const auto& l : lines) {
        try {
            if (l.kind == "process") {
                add_all("process/", l, process_counters, stats);
            } else if (l.kind == "listener") {
                const std::string& name = l.text("name");
                for (const auto& mine : snap.listeners) {
                    if (mine.cfg->name == name) add_all("listener/" + name + "/", l, listener_counters, *mine.stats);
                }
            } else if (l.kind == "backend" || l.kind == "probes") {
                const backend_runtime* b = find_backend(snap, l);
                if (b == nullptr) continue;  // gone from this config: dropped, as on a reload
                const std::string key = fmt::format("{}/{}/{}/{}/", l.kind, l.text("pool"), l.text("backend"),
                                                    l.text("address"));
                if (l.kind == "backend") {
                    add_all(key, l, backend_counters, *b->stats);
                    continue;
                }
                probe_record& r = probe_record_of(*b->health);
                r.transitions_total += grow(key + "transitions_total", l.number("transitions_total"));
                r.count += grow(key + "count", l.number("count"));
                // Never below the old process's sum, not even by the last
                // bit of a double: to Prometheus a counter that goes back
                // at all is a reset, and rate() then counts it all again.
                const std::string sum_key = key + "sum_ns";
                r.sum_s += static_cast<double>(grow(sum_key, l.number("sum_ns"))) / 1e9;
                r.sum_s = std::max(r.sum_s, static_cast<double>(applied_[sum_key]) / 1e9);
                const std::string& buckets = l.text("buckets");
                std::size_t i = 0, at = 0;
                while (at <= buckets.size() && i < r.bucket_counts.size()) {
                    const std::size_t comma = std::min(buckets.find(',', at), buckets.size());
                    handover::state_line one{.kind = "probes", .fields = {{"b", buckets.substr(at, comma - at)}}};
                    r.bucket_counts[i] += grow(key + "bucket" + std::to_string(i), one.number("b"));
                    ++i;
                    at = comma + 1;
                }
                moved += 3 + i;
            }
        } catch (const handover::handover_error&) {
            ++bad;
        }
    }
    return moved;
}

void send_final_state(int channel, const snapshot& snap, const process_stats& stats,
                      const std::vector<handover::state_line>& extra) {
    std::vector<handover::state_line> lines = state_lines(snap, stats, nullptr);
    lines.insert(lines.end(), extra.begin(), extra.end());
    try {
        handover::send_state(channel, handover::encode_state(lines),
                             std::chrono::steady_clock::now() + std::chrono::seconds(2));
    } catch (const handover::handover_error& e) {
        spdlog::warn("upgrade: the counters' final values did not reach the new process: {}", e.what());
    }
}

void process::take_carried_state(const std::vector<handover::state_line>& lines, std::size_t bad, bool first) {
    APILB_ASSERT_ROLE(control);
    std::size_t seeded = 0, offered = 0;
    if (first) {
        const std::vector<carried_health> health = carried_health_of(lines, bad);
        offered = health.size();
        seeded = health_->seed(health);
    }
    const std::size_t moved = carried_.apply(lines, *snap_, stats_, bad);
    if (first) {
        spdlog::info("upgrade: took over the old process's view of {} of {} backend(s) and {} counter(s){}", seeded,
                     offered, moved,
                     bad == 0 ? std::string() : fmt::format("; {} unreadable state line(s) or frame(s) skipped", bad));
    } else {
        spdlog::info("upgrade: counters go on from the old process's final values ({} series{})", moved,
                     bad == 0 ? std::string() : fmt::format("; {} unreadable skipped", bad));
    }
}

void process::receive_final_state(int channel) {
    std::size_t bad = 0;
    try {
        std::vector<handover::state_line> lines = handover::receive_state(
            channel, std::chrono::steady_clock::now() + std::chrono::seconds(5), bad);
        boost::asio::post(control_, [this, lines = std::move(lines), bad] {
            take_carried_state(lines, bad, false);
            take_over_vip(lines);
        });
    } catch (const handover::handover_error& e) {
        spdlog::warn("upgrade: no final counters from the old process ({}); they go on from its values at the start",
                     e.what());
        // The old process let go before it sent them, or is gone.
        boost::asio::post(control_, [this] { take_over_vip({}); });
    }
}

std::vector<carried_health> carried_health_of(const std::vector<handover::state_line>& lines, std::size_t& bad) {
    std::vector<carried_health> out;
    for (const auto& l : lines) {
        if (l.kind != "health") continue;
        try {
            const std::string& ramp = l.text("ramp_ms");
            const std::uint64_t streak = l.number("streak");
            out.push_back({.pool = l.text("pool"),
                           .backend = l.text("backend"),
                           .address = l.text("address"),
                           .probe_key = l.text("probes"),
                           .settled = l.flag("settled"),
                           .healthy = l.flag("healthy"),
                           .streak = static_cast<std::uint32_t>(std::min<std::uint64_t>(streak, 1'000'000)),
                           .suspect = l.flag("suspect"),
                           .admin_drain = l.flag("admin_drain"),
                           .pending = l.flag("pending"),
                           .ramp_ms = ramp == "none" ? -1
                                                     : static_cast<std::int64_t>(std::min<std::uint64_t>(
                                                           l.number("ramp_ms"), 1'000'000'000'000ULL))});
        } catch (const handover::handover_error&) {
            ++bad;
        }
    }
    return out;
}

}  // namespace apilb

namespace apilb::handover {

void send_state(int channel, const std::vector<std::string>& payloads, std::chrono::steady_clock::time_point deadline) {
    for (const auto& p : payloads) send_frame(channel, frame_type::state, p, {}, deadline);
    send_frame(channel, frame_type::state_end, std::to_string(payloads.size()), {}, deadline);
}

void take_state_frame(const frame& f, std::vector<state_line>& lines, std::size_t& bad) {
    try {
        std::vector<state_line> got = parse_state(f.payload);
        if (lines.size() + got.size() > max_state_lines) {
            throw handover_error(fmt::format("more than {} state lines", max_state_lines));
        }
        for (auto& l : got) lines.push_back(std::move(l));
    } catch (const handover_error&) {
        ++bad;
    }
}

std::vector<state_line> receive_state(int channel, std::chrono::steady_clock::time_point deadline, std::size_t& bad) {
    std::vector<state_line> lines;
    int frames = 0;
    while (true) {
        const frame f = receive_frame(channel, deadline);
        if (f.type == frame_type::abort) throw handover_error("the old process aborted: " + f.payload);
        if (f.type == frame_type::state_end) {
            const int said = parse_number(f.payload, "state_end count");
            if (said != frames)
                throw handover_error(fmt::format("the old process said {} state frame(s), {} came", said, frames));
            return lines;
        }
        if (f.type != frame_type::state) throw handover_error("expected a state frame");
        if (++frames > max_state_frames)
            throw handover_error(fmt::format("more than {} state frames", max_state_frames));
        take_state_frame(f, lines, bad);
    }
}

}  // namespace apilb::handover
