#include "apilb/control/health_checker.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "apilb/control/probe_record.hpp"
#include "apilb/control/prober.hpp"
#include "apilb/core/config_diff.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/logging/logging.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

namespace {

std::int64_t unix_ms_now() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// Feeds the admin endpoint: the last probe and the duration histogram.
void record_probe(probe_record& r, const check_result& result, std::chrono::steady_clock::duration took) {
    const double s = std::chrono::duration<double>(took).count();
    r.probed = true;
    r.passed = result.passed();
    r.reason = to_string(result.failure);
    r.detail = result.describe();
    r.duration_s = s;
    r.last_probe_unix_ms = unix_ms_now();
    for (std::size_t i = 0; i < probe_duration_buckets.size(); ++i) {
        if (s <= probe_duration_buckets[i]) {
            ++r.bucket_counts[i];
            break;
        }
    }
    ++r.count;
    r.sum_s += s;
}

void record_change(probe_record& r, bool healthy, const check_result& result) {
    ++r.transitions_total;
    if (r.recent_changes.size() >= 16) r.recent_changes.erase(r.recent_changes.begin());
    r.recent_changes.push_back(
        {.unix_ms = unix_ms_now(), .healthy = healthy, .reason = healthy ? std::string("passed") : result.describe()});
}

/// A check that took this much longer than its timeout did not end at its
/// deadline because the process was not running then, not because of the
/// backend (a timer in a running process fires within milliseconds).
bool probe_came_late(std::chrono::steady_clock::duration took, std::chrono::milliseconds timeout) {
    return took > timeout + std::max<std::chrono::milliseconds>(timeout / 2, std::chrono::milliseconds(500));
}

}  // namespace

/// One backend as the checker sees it. Control thread only.
struct health_checker::target {
    target(asio::io_context& io, const pool_runtime& p, const backend_runtime& b, probe_setup& s, std::size_t pi,
           std::size_t gi)
        : pool_index(pi),
          global_index(gi),
          pool(&p),
          backend(&b),
          setup(&s),
          tracker(p.cfg->health.rise, p.cfg->health.fall, p.cfg->health.initial_healthy),
          wake(io),
          close_timer(io) {}

    std::size_t pool_index;    ///< in this checker's snapshot, which never changes
    std::size_t global_index;  ///< among every backend of every pool, for spreading probes
    const pool_runtime* pool;
    const backend_runtime* backend;
    probe_setup* setup;
    health_tracker tracker;
    asio::steady_timer wake;         ///< until the next probe; cancelled to probe at once
    asio::steady_timer close_timer;  ///< the grace before an unhealthy backend's sessions are closed
    std::shared_ptr<probe_cancel> cancel = std::make_shared<probe_cancel>();
    bool probe_now = false;  ///< a passive report asked for a probe as soon as possible
    bool in_flight = false;
    bool close_pending = false;          ///< grace is over but no healthy backend could take the sessions
    bool adopted = false;                ///< state taken over from the checker of the previous config
    clock_type::time_point close_due{};  ///< when the pending grace (close_timer) ends; {} = none
    check_result last;
};

namespace {

std::string label(const pool_runtime& p, const backend_runtime& b) {
    return fmt::format("pool {} backend {} ({})", p.cfg->name, b.cfg->name, b.cfg->address.to_string());
}

std::string ms(duration d) { return fmt::format("{}ms", d.count()); }

std::string describe_checks(const health_config& h) {
    std::string s;
    switch (h.type) {
    case health_check_type::https:
        s = fmt::format("https GET {} every {} (timeout {}, rise {}, fall {}), expecting {}{}; server name {}, {}{}{}",
                        h.path, ms(h.interval), ms(h.timeout), h.rise, h.fall, h.expect_status,
                        h.expect_body ? " and a body containing \"" + *h.expect_body + "\"" : std::string(),
                        h.tls.server_name,
                        h.tls.insecure_skip_verify ? "certificate NOT verified (insecure_skip_verify)"
                                                   : "verified against " + h.tls.ca_file,
                        h.tls.cert_file.empty() ? "" : ", client certificate " + h.tls.cert_file,
                        h.bearer_token_file.empty() ? "" : ", bearer token from " + h.bearer_token_file);
        break;
    case health_check_type::tcp:
        s = fmt::format("tcp connect every {} (timeout {}, rise {}, fall {})", ms(h.interval), ms(h.timeout), h.rise,
                        h.fall);
        break;
    case health_check_type::none: s = "no active checks (type none)"; break;
    }
    s += fmt::format("; passive detection {}", h.passive ? "on" : "off");
    if (h.type != health_check_type::none) {
        s += fmt::format(
            "; sessions of an unhealthy backend {}; slow start {}; when none is healthy: {}; "
            "until its first check a backend is {}",
            h.close_sessions_after ? "closed after " + ms(*h.close_sessions_after) : "kept", ms(h.slow_start),
            to_string(h.all_unhealthy), h.initial_healthy ? "healthy" : "unhealthy");
    }
    return s;
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

}  // namespace

health_checker::health_checker(asio::io_context& control, std::shared_ptr<const snapshot> snap,
                               close_sessions_fn close_sessions)
    : control_(control),
      snap_(std::move(snap)),
      close_sessions_(std::move(close_sessions)),
      rng_(std::random_device{}()) {
    std::size_t global = 0;
    for (std::size_t p = 0; p < snap_->pools.size(); ++p) {
        const pool_runtime& pool = snap_->pools[p];
        setups_.push_back(std::make_unique<probe_setup>(*pool.cfg));
        by_pool_.emplace_back();
        for (std::size_t b = 0; b < pool.backends.size(); ++b) {
            targets_.push_back(
                std::make_unique<target>(control_, pool, pool.backends[b], *setups_.back(), p, global++));
            by_pool_.back().push_back(targets_.back().get());
        }
    }
}

health_checker::~health_checker() = default;

void health_checker::adopt(const health_checker& previous) {
    APILB_ASSERT_ROLE(control);
    for (auto& t : targets_) {
        const health_config& cfg = t->pool->cfg->health;
        for (const auto& old : previous.targets_) {
            if (!same_backend(*old->pool->cfg, *old->backend->cfg, *t->pool->cfg, *t->backend->cfg)) continue;
            t->adopted = true;
            t->tracker = old->tracker.with_thresholds(cfg.rise, cfg.fall);
            t->last = old->last;
            t->close_pending = old->close_pending;
            t->close_due = old->close_due;
            break;
        }
        if (!t->adopted) continue;
        backend_health& h = *t->backend->health;
        if (cfg.type == health_check_type::none && !h.healthy.load(std::memory_order_relaxed)) {
            // Nothing will ever check it again: without checks a backend is healthy.
            h.healthy.store(true, std::memory_order_relaxed);
            t->close_pending = false;
            t->close_due = {};
            spdlog::info("health: {} is healthy: its pool no longer has active checks", label(*t->pool, *t->backend));
        }
        t->probe_now = h.suspect.load(std::memory_order_relaxed);
    }
}

std::vector<carried_health> health_checker::carried() const {
    APILB_ASSERT_ROLE(control);
    std::vector<carried_health> out;
    const std::int64_t now = now_ns();
    for (const auto& t : targets_) {
        const backend_health& h = *t->backend->health;
        const std::int64_t ramp = h.ramp_start_ns.load(std::memory_order_relaxed);
        out.push_back({.pool = t->pool->cfg->name,
                       .backend = t->backend->cfg->name,
                       .address = t->backend->cfg->address.to_string(),
                       .probe_key = probe_settings_key(t->pool->cfg->health),
                       .settled = t->tracker.settled(),
                       .healthy = h.healthy.load(std::memory_order_relaxed),
                       .streak = t->tracker.streak(),
                       .suspect = h.suspect.load(std::memory_order_relaxed),
                       .admin_drain = h.admin_drain.load(std::memory_order_relaxed),
                       .pending = h.pending.load(std::memory_order_relaxed),
                       .ramp_ms = ramp == 0 ? -1 : std::max<std::int64_t>(0, (now - ramp) / 1'000'000)});
    }
    return out;
}

std::size_t health_checker::seed(const std::vector<carried_health>& carried) {
    APILB_ASSERT_ROLE(control);
    std::size_t taken = 0;
    for (auto& t : targets_) {
        const health_config& cfg = t->pool->cfg->health;
        const std::string address = t->backend->cfg->address.to_string();
        const auto it = std::find_if(carried.begin(), carried.end(), [&](const carried_health& c) {
            return c.pool == t->pool->cfg->name && c.backend == t->backend->cfg->name && c.address == address;
        });
        if (it == carried.end()) continue;
        backend_health& h = *t->backend->health;
        // Drained through the admin endpoint is an operator's decision, not a
        // probe's: it holds whatever the probes are.
        h.admin_drain.store(it->admin_drain, std::memory_order_relaxed);
        if (it->probe_key != probe_settings_key(cfg) || !it->settled || cfg.type == health_check_type::none) {
            spdlog::info("health: {}: not taking over the old process's view ({}); judged from its own probes",
                         label(*t->pool, *t->backend),
                         !it->settled                          ? "it had not been checked yet"
                         : cfg.type == health_check_type::none ? "no active checks"
                                                               : "its probe settings changed");
            continue;
        }
        ++taken;
        t->adopted = true;
        t->tracker = health_tracker::restored(cfg.rise, cfg.fall, it->healthy, it->streak);
        h.healthy.store(it->healthy, std::memory_order_relaxed);
        h.suspect.store(it->suspect, std::memory_order_relaxed);
        h.pending.store(it->pending, std::memory_order_relaxed);
        h.ramp_start_ns.store(it->healthy && it->ramp_ms >= 0 ? now_ns() - it->ramp_ms * 1'000'000 : 0,
                              std::memory_order_relaxed);
        // An unhealthy backend's sessions came over with the handover and are
        // closed as their grace says; a suspect one is probed at once.
        t->probe_now = it->suspect;
        t->last = {it->healthy ? check_failure::none : check_failure::tcp_error, "carried over from the old process"};
        spdlog::info("health: {} is {} as the old process judged it{}", label(*t->pool, *t->backend),
                     it->healthy ? "healthy" : "unhealthy",
                     it->healthy ? std::string() : fmt::format("; {} passing check(s) bring it back", cfg.rise));
    }
    return taken;
}

void health_checker::start(bool announce, std::function<void()> first_round_done) {
    APILB_ASSERT_ROLE(control);
    if (announce) {
        for (const auto& p : snap_->pools)
            spdlog::info("health: pool {}: {}", p.cfg->name, describe_checks(p.cfg->health));
    }
    first_round_left_ = static_cast<std::size_t>(std::count_if(targets_.begin(), targets_.end(), [](const auto& t) {
        return !(t->adopted && !t->probe_now) && t->pool->cfg->health.type != health_check_type::none;
    }));
    first_round_done_ = std::move(first_round_done);
    if (first_round_left_ == 0 && first_round_done_) std::exchange(first_round_done_, {})();
    for (auto& t : targets_) {
        // A kept backend's grace before its sessions are closed goes on where it was.
        if (t->adopted && t->close_due != clock_type::time_point{} && !t->close_pending &&
            t->pool->cfg->health.close_sessions_after) {
            schedule_close(*t, t->close_due);
        }
        ++running_;
        asio::co_spawn(control_, probe_loop(*t), log_if_failed{.what = "health: probe loop", .critical = true});
    }
}

void health_checker::stop() {
    APILB_ASSERT_ROLE(control);
    stopping_ = true;
    for (auto& t : targets_) {
        t->wake.cancel();
        t->close_timer.cancel();
        t->cancel->cancel();
    }
}

double health_checker::random_unit() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }

asio::awaitable<void> health_checker::probe_loop(target& t) {
    const health_config& cfg = t.pool->cfg->health;
    const bool active = cfg.type != health_check_type::none;
    bool first = true;
    int late_retries = 0;  // checks in a row not judged because apilb ran too late
    if (t.adopted && !t.probe_now) {
        // Kept across a reload: its state is known, so no first round at once
        // for every backend; spread the next probes over one interval.
        first = false;
        if (active) {
            t.wake.expires_after(first_round_offset(cfg.interval, t.global_index, targets_.size(), random_unit()));
            co_await t.wake.async_wait(asio::as_tuple(asio::use_awaitable));
        } else {
            t.wake.expires_at(clock_type::time_point::max());
            co_await t.wake.async_wait(asio::as_tuple(asio::use_awaitable));
        }
    }
    while (!stopping_) {
        auto next = clock_type::time_point::max();
        if (active || t.probe_now) {
            t.probe_now = false;
            t.in_flight = true;
            const auto started = clock_type::now();
            check_result result;
            try {
                // type none probes only to clear a suspect backend, by TCP.
                result = co_await run_probe(*t.setup, active ? cfg.type : health_check_type::tcp, t.backend->endpoint,
                                            t.cancel);
            } catch (const std::exception& e) {
                result = {check_failure::tcp_error, e.what()};
            }
            t.in_flight = false;
            if (stopping_) break;
            const auto took = clock_type::now() - started;
            if (result.failure != check_failure::none && probe_came_late(took, cfg.timeout) && late_retries < 2) {
                // Its deadline fired long after it was due: apilb itself did
                // not run (SIGSTOP, a frozen cgroup, a VM paused), so the
                // backend's answer may be waiting in the socket. Counted, every
                // backend probed in flight would fail at once on resuming.
                ++late_retries;
                spdlog::info(
                    "health: {}: the check came too late to judge ({}ms for a {}ms timeout: apilb was not "
                    "running); checking again",
                    label(*t.pool, *t.backend), std::chrono::duration_cast<std::chrono::milliseconds>(took).count(),
                    cfg.timeout.count());
                continue;
            }
            late_retries = 0;
            record_probe(probe_record_of(*t.backend->health), result, took);
            apply(t, result);
            if (first && active && first_round_left_ > 0 && --first_round_left_ == 0 && first_round_done_) {
                std::exchange(first_round_done_, {})();
            }
            // Probes start a fixed delay apart, whatever a probe took, so that
            // a dead backend is found within fall x interval + timeout.
            const duration delay = first && active ? first_round_offset(cfg.interval, t.global_index, targets_.size(),
                                                                        random_unit())
                                                   : next_probe_delay(cfg.interval, random_unit());
            first = false;
            if (t.probe_now) continue;  // a client's connect failed while this probe ran
            if (active || t.backend->health->suspect.load(std::memory_order_relaxed)) next = started + delay;
        }
        t.wake.expires_at(next);
        co_await t.wake.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    --running_;
}

void health_checker::report_passive_failure(std::shared_ptr<const backend_health> backend, std::string what) {
    asio::post(control_, [this, backend = std::move(backend), what = std::move(what)] {
        const auto it = std::find_if(targets_.begin(), targets_.end(),
                                     [&](const auto& t) { return t->backend->health == backend; });
        if (it != targets_.end()) {
            on_passive_failure(**it, what);
            return;
        }
        // A reload removed it after the session chose it: it takes no new
        // sessions and its open ones are drained; nothing to check.
        spdlog::debug("health: a client's connect failed ({}) on a backend no longer configured", what);
    });
}

void health_checker::on_passive_failure(target& t, const std::string& what) {
    APILB_ASSERT_ROLE(control);
    if (stopping_) return;
    const health_config& cfg = t.pool->cfg->health;
    backend_health& h = *t.backend->health;
    t.backend->stats->passive_failures_total.fetch_add(1, std::memory_order_relaxed);
    // The worker set it already; a probe that passed in between may have
    // cleared it, and this failure is newer than that probe.
    h.suspect.store(true, std::memory_order_relaxed);
    if (h.healthy.load(std::memory_order_relaxed)) {
        spdlog::info(
            "health: {} is suspect: {} (a client's connect); new clients avoid it until a check passes; "
            "probing now",
            label(*t.pool, *t.backend), what);
    } else {
        spdlog::debug("health: {} (unhealthy): {} (a client's connect)", label(*t.pool, *t.backend), what);
    }
    if (cfg.type != health_check_type::none) {
        const check_result result{check_failure::passive, what};
        const health_change change = t.tracker.record_passive_failure();
        if (change.changed) on_change(t, change, result);
        t.last = result;
    }
    t.probe_now = true;
    if (!t.in_flight) t.wake.cancel();
}

void health_checker::apply(target& t, const check_result& result) {
    APILB_ASSERT_ROLE(control);
    const health_config& cfg = t.pool->cfg->health;
    backend_health& h = *t.backend->health;
    const std::string name = label(*t.pool, *t.backend);
    if (!result.passed()) t.backend->stats->checks_failed_total.fetch_add(1, std::memory_order_relaxed);
    if (result.passed() && h.suspect.load(std::memory_order_relaxed)) {
        h.suspect.store(false, std::memory_order_relaxed);
        spdlog::info("health: {} is no longer suspect: a check passed", name);
    }
    if (result.passed() && h.pending.exchange(false, std::memory_order_relaxed)) {
        spdlog::info("discovery: {} admitted: its first probe passed", name);
    }
    if (cfg.type == health_check_type::none) {
        if (!result.passed()) spdlog::debug("health: {}: re-check failed: {}", name, result.describe());
        return;
    }
    const health_change change = t.tracker.record(result.passed());
    if (change.changed) {
        on_change(t, change, result);
    } else if (!result.passed()) {
        if (change.healthy) {
            spdlog::debug("health: {}: check failed ({} of {} before unhealthy): {}", name, change.streak, cfg.fall,
                          result.describe());
        } else if (result.failure != t.last.failure) {
            // Still unhealthy, for another reason (a hang that became a refusal...): worth one line.
            spdlog::info("health: {} is still unhealthy: {}", name, result.describe());
        } else {
            spdlog::debug("health: {}: still unhealthy: {}", name, result.describe());
        }
    } else if (!change.healthy) {
        spdlog::debug("health: {}: check passed ({} of {} before healthy)", name, change.streak, cfg.rise);
    } else if (change.first) {
        spdlog::debug("health: {}: first check passed: {}", name, result.detail);
    }
    t.last = result;
}

void health_checker::on_change(target& t, const health_change& change, const check_result& result) {
    const health_config& cfg = t.pool->cfg->health;
    backend_health& h = *t.backend->health;
    const std::string name = label(*t.pool, *t.backend);
    h.healthy.store(change.healthy, std::memory_order_relaxed);
    record_change(probe_record_of(h), change.healthy, result);
    const log_scope fields({.event = change.healthy ? "backend_healthy" : "backend_unhealthy",
                            .pool = t.pool->cfg->name,
                            .backend = t.backend->cfg->name,
                            .client = {},
                            .reason = to_string(result.failure)});
    const std::size_t healthy_now = healthy_in_pool(t.pool_index);
    if (change.healthy) {
        // Slow start only for a comeback, not for the first round at start.
        const bool ramp = !change.first && cfg.slow_start.count() > 0;
        h.ramp_start_ns.store(ramp ? now_ns() : 0, std::memory_order_relaxed);
        t.close_timer.cancel();
        t.close_pending = false;
        t.close_due = {};
        spdlog::info(
            "health: {} is healthy{}{}", name,
            change.first ? " (first check passed)" : fmt::format(" again after {} passed check(s)", change.streak),
            ramp ? fmt::format("; its share of new sessions ramps up over {}", ms(cfg.slow_start)) : "");
        if (healthy_now == 1 && by_pool_[t.pool_index].size() > 1) {
            spdlog::info("health: pool {} has a healthy backend again", t.pool->cfg->name);
        }
        // Sessions kept on unhealthy backends for want of a healthy one can move now.
        for (target* other : by_pool_[t.pool_index]) {
            if (other->close_pending) close_sessions(*other);
        }
        return;
    }
    h.ramp_start_ns.store(0, std::memory_order_relaxed);
    const std::string how = change.first ? "its first check failed"
                                         : fmt::format("{} consecutive failure(s)", change.streak);
    std::string sessions;
    if (!cfg.close_sessions_after) {
        sessions = "its sessions are kept (close_sessions_after: never)";
    } else if (cfg.close_sessions_after->count() == 0) {
        sessions = "closing its sessions now";
    } else {
        sessions = "its sessions are closed in " + ms(*cfg.close_sessions_after);
    }
    spdlog::warn("health: {} is unhealthy after {}: {}; new clients go to other backends, {}", name, how,
                 result.describe(), sessions);
    if (healthy_now == 0) {
        spdlog::warn("health: pool {}: no backend is healthy; {}", t.pool->cfg->name,
                     cfg.all_unhealthy == all_unhealthy_policy::try_all
                         ? "new clients try every backend (all_unhealthy: try-all)"
                         : "new clients are refused (all_unhealthy: reject)");
    }
    if (!cfg.close_sessions_after) return;
    if (cfg.close_sessions_after->count() == 0) {
        close_sessions(t);
        return;
    }
    schedule_close(t, clock_type::now() + *cfg.close_sessions_after);
}

void health_checker::schedule_close(target& t, clock_type::time_point due) {
    t.close_due = due;
    t.close_timer.expires_at(due);
    t.close_timer.async_wait([this, &t](error_code ec) {
        // ec first: a cancelled wait may run after stop() and must touch nothing.
        if (ec || stopping_) return;
        t.close_due = {};
        if (!t.backend->health->healthy.load(std::memory_order_relaxed)) close_sessions(t);
    });
}

void health_checker::close_sessions(target& t) {
    APILB_ASSERT_ROLE(control);
    const std::string name = label(*t.pool, *t.backend);
    const auto open = t.backend->stats->active.load(std::memory_order_relaxed);
    if (healthy_in_pool(t.pool_index) == 0) {
        // Closing them would only send the clients back to unhealthy backends.
        if (!t.close_pending && open > 0) {
            spdlog::info(
                "health: {}: keeping its {} session(s): no backend of the pool is healthy to take "
                "them; they are closed once one is",
                name, open);
        }
        t.close_pending = true;
        return;
    }
    t.close_pending = false;
    if (open == 0) {
        spdlog::debug("health: {}: no session to close", name);
        return;
    }
    spdlog::warn("health: {}: closing its {} session(s) so that their clients reconnect to a healthy backend", name,
                 open);
    close_sessions_(t.backend->health);
}

std::size_t health_checker::healthy_in_pool(std::size_t pool) const {
    std::size_t n = 0;
    for (const target* t : by_pool_[pool]) n += t->backend->health->healthy.load(std::memory_order_relaxed) ? 1 : 0;
    return n;
}

}  // namespace apilb
