// process::reload(): the hitless reload on SIGHUP. Everything that can fail
// (reading and validating the file, loading the probes' TLS files, binding
// new listeners) happens here on the control thread before anything is
// changed; then the new snapshot goes to the workers by message.
#include "apilb/process/process.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <iterator>
#include <memory>
#include <system_error>

#ifdef APILB_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "apilb/admin/admin_server.hpp"
#include "apilb/control/discovery_client.hpp"
#include "apilb/control/health_checker.hpp"
#include "apilb/control/listener_check.hpp"
#include "apilb/control/rebalancer.hpp"
#include "apilb/control/yaml_guard.hpp"
#include "apilb/core/config_diff.hpp"
#include "apilb/core/maglev.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/worker.hpp"
#include "apilb/logging/logging.hpp"
#include "apilb/vip/bgp_agent.hpp"
#include "apilb/vip/vrrp_agent.hpp"

namespace apilb {

namespace {

/// For tests only (APILB_RELOAD_TEST_APPLY_DELAY_MS, 1..30000): how long a
/// reload's commit waits before the workers take the new snapshot, so that
/// a test can ask for an upgrade while a reload's apply runs. 0: none.
std::chrono::milliseconds test_apply_delay() {
    const int ms = handover::test_hook("APILB_RELOAD_TEST_APPLY_DELAY_MS").value_or(0);
    return std::chrono::milliseconds(ms <= 30'000 ? ms : 0);
}

}  // namespace

namespace asio = boost::asio;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

namespace {

/// systemd's Type=notify-reload wants RELOADING=1 with the CLOCK_MONOTONIC time.
std::string reloading_state() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    const auto usec = static_cast<std::uint64_t>(ts.tv_sec) * 1000000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
    return fmt::format("RELOADING=1\nMONOTONIC_USEC={}", usec);
}

/// Reads and validates `path` (guarded: at most yaml_guard_deadline on the
/// control thread, whatever the bytes); nullptr (every error logged and
/// added to `errors`) if it is not good. `hash` is a short hash of the bytes
/// that were loaded.
std::shared_ptr<const config> read_config(const std::string& path, std::string& hash,
                                          std::vector<std::string>& errors) {
    try {
        std::string bytes;
        auto cfg = load_config_guarded(path, &bytes);
        hash = fmt::format("{:016x}", stable_hash(bytes));
        return cfg;
    } catch (const config_load_error& e) {
        // The same lines check-config prints.
        for (const auto& err : e.errors()) {
            spdlog::error("reload: error: {}", err.to_string());
            errors.push_back(err.to_string());
        }
        spdlog::error("reload failed: {} error(s) in the configuration; keeping the running configuration",
                      e.errors().size());
    } catch (const std::exception& e) {
        spdlog::error("reload failed: {}: {}; keeping the running configuration", path, e.what());
        errors.push_back(path + ": " + e.what());
    }
    return nullptr;
}

}  // namespace

std::vector<std::string> process::reload() {
    APILB_ASSERT_ROLE(control);
    const std::string path = file_cfg_->source;
    const log_scope fields({.event = "reload", .pool = {}, .backend = {}, .client = {}, .reason = {}});
    notify_systemd(reloading_state());
    spdlog::info("reload: reading {}", path);
    std::vector<std::string> errors;
    auto fail = [&](std::vector<std::string> why) {
        stats_.reload_failures_total.fetch_add(1, std::memory_order_relaxed);
        notify_systemd("READY=1");
        errors.insert(errors.end(), why.begin(), why.end());
        if (errors.empty()) errors.push_back("rejected (see the log)");
        return errors;
    };

    std::string hash;
    const std::shared_ptr<const config> loaded = read_config(path, hash, errors);
    if (!loaded) return fail({});
    for (const auto& w : loaded->warnings) spdlog::warn("reload: {}", w.to_string());
    // Against the file as it was: discovery's backends are not the file's.
    const config_diff diff = diff_configs(*file_cfg_, *loaded);
    for (const auto& r : diff.restart_only) {
        spdlog::warn("reload: {} changed: applies only when apilb is restarted; the running value stays", r);
    }
    auto file = std::make_shared<const config>(keep_restart_only(*file_cfg_, *loaded));
    // A new or changed discovery section: its client now, so that
    // credentials that cannot be loaded fail the reload before anything changed.
    std::vector<std::unique_ptr<discovery_client>> clients;
    std::vector<std::unique_ptr<discovery_pool>> pools;
    try {
        for (const auto& p : file->pools) {
            const pool_config* running = file_cfg_->find_pool(p.name);
            if (!p.discovery || (running != nullptr && running->discovery == p.discovery)) continue;
            auto [client, dp] = make_discovery_for(p);
            clients.push_back(std::move(client));
            pools.push_back(std::move(dp));
        }
    } catch (const std::exception& e) {
        spdlog::error("reload failed: {}; keeping the running configuration", e.what());
        return fail({e.what()});
    }
    // A pool that follows the API keeps the set it follows: the file's
    // backends are only its seed.
    if (auto why = commit(with_discovered(*file), "reload", true); !why.empty()) return fail(std::move(why));
    std::shared_ptr<const config> before = std::exchange(file_cfg_, std::move(file));
    restart_discovery(*before, *file_cfg_, std::move(clients), std::move(pools));
    stats_.reloads_total.fetch_add(1, std::memory_order_relaxed);
    config_hash_ = hash;
    spdlog::info("reload: config {} from {}: {}", hash, path, diff.summary());
    // Certificate rotation: the loader has just read the same files (or the
    // admin section changed, which waits for a restart, and the running
    // files are read again). A failure here is logged and keeps the old ones.
    if (admin_) admin_->reload_tls_files();
    return {};
}

std::vector<std::string> process::commit(std::shared_ptr<const config> cfg, const std::string& what, bool file_reload) {
    APILB_ASSERT_ROLE(control);
    const auto started = clock_type::now();
    drop_retired_checkers();
    std::shared_ptr<const snapshot> next = snapshot::build(std::move(cfg), snap_.get());

    std::unique_ptr<health_checker> checker;
    try {
        checker = std::make_unique<health_checker>(control_, next, close_sessions_fn());
    } catch (const std::exception& e) {
        spdlog::error("{} failed: {}; keeping the running configuration", what, e.what());
        return {e.what()};
    }

    // Every worker gets its own SO_REUSEPORT socket for each new listener,
    // bound now: if one cannot be bound, nothing has changed yet.
    std::vector<std::vector<worker::new_listener>> added(workers_.size());
    auto close_added = [&] {
        for (auto& list : added) {
            for (const auto& a : list) ::close(a.fd);
        }
    };
    try {
        for (std::size_t i = 0; i < next->listeners.size(); ++i) {
            const listener_runtime& l = next->listeners[i];
            const bool kept = std::any_of(snap_->listeners.begin(), snap_->listeners.end(),
                                          [&](const listener_runtime& o) { return same_listener(*o.cfg, *l.cfg); });
            if (kept) continue;
            refuse_foreign_listener(l.cfg->name, l.endpoint);  // see process::process
            for (auto& list : added)
                list.push_back({.listener_index = i, .fd = worker::open_listener(l, next->cfg->tcp)});
        }
        for (const auto& a : added.front()) {
            const listener_runtime& l = next->listeners[a.listener_index];
            refuse_foreign_listener(l.cfg->name, l.endpoint);
        }
    } catch (const std::system_error& e) {
        close_added();
        // what() already ends with the code's message ("...: Address already in use").
        spdlog::error("{} failed: {}; keeping the running configuration", what, e.what());
        return {e.what()};
    }

    // Commit. From here nothing fails.
    checker->adopt(*health_);
    health_->stop();
    retired_checkers_.push_back(std::move(health_));
    health_ = std::move(checker);
    health_->start(false);
    std::shared_ptr<const snapshot> previous = std::exchange(snap_, next);
    // The track file follows the new pools; a managed keepalived gets the
    // new rendering (SIGHUP).
    rebalancer_->start();  // a pool may have enabled rebalancing
    if (bgp_) {
        bgp_->update(next);
    } else if (next->cfg->bgp && file_reload) {
        spdlog::warn("reload: the bgp section takes effect on restart");
    }
    if (vrrp_) {
        vrrp_->update(next);
    } else if (next->cfg->vrrp && file_reload) {
        spdlog::warn("reload: the vrrp section takes effect on restart");
    }

    auto pending = std::make_shared<std::size_t>(workers_.size());
    ++reloads_applying_;
    auto apply_all = [this, next, added = std::move(added), pending, started, what, file_reload]() mutable {
        for (std::size_t w = 0; w < workers_.size(); ++w) {
            workers_[w]->apply(next, std::move(added[w]), [this, pending, started, what, file_reload] {
                // On the worker thread: count down on the control thread.
                asio::post(control_, [this, pending, started, what, file_reload] {
                    if (--*pending != 0) return;
                    --reloads_applying_;
                    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - started);
                    spdlog::info("{} done in {:.1f}ms: every worker serves the new configuration", what,
                                 static_cast<double>(us.count()) / 1000.0);
                    if (file_reload) notify_systemd("READY=1");
                    if (reloads_applying_ == 0) on_reloads_applied();
                });
            });
        }
    };
    if (const auto delay = test_apply_delay(); delay.count() > 0) {
        spdlog::warn("{}: the workers' apply starts in {}ms (APILB_RELOAD_TEST_APPLY_DELAY_MS, for tests only)", what,
                     delay.count());
        auto timer = std::make_shared<asio::steady_timer>(control_, delay);
        timer->async_wait([timer, apply_all = std::move(apply_all)](error_code) mutable { apply_all(); });
    } else {
        apply_all();
    }
    drain_removed_backends(std::move(previous), what);
    return {};
}

void process::drain_removed_backends(std::shared_ptr<const snapshot> previous, const std::string& what) {
    APILB_ASSERT_ROLE(control);
    std::vector<const backend_health*> removed;
    std::uint32_t open = 0;
    for (const auto& p : previous->pools) {
        for (const auto& b : p.backends) {
            if (snap_->find_same(p, b) != nullptr) continue;
            // Its health block is the session's identity for the backend.
            removed.push_back(b.health.get());
            b.health->removed.store(true, std::memory_order_relaxed);
            open += b.stats->active.load(std::memory_order_relaxed);
        }
    }
    if (removed.empty()) return;
    const duration grace = snap_->cfg->timeouts.reload_drain;
    spdlog::info(
        "{}: {} removed backend(s) with {} open session(s): they get no new sessions; open ones are "
        "closed in {}ms (timeouts.reload_drain)",
        what, removed.size(), open, grace.count());
    auto& timer = reload_timers_.emplace_back(control_);
    timer.expires_after(grace);
    timer.async_wait([this, it = std::prev(reload_timers_.end()), previous = std::move(previous),
                      removed = std::move(removed), what](error_code ec) {
        // ec first: after the drain started, a cancelled wait touches nothing.
        if (ec) return;
        std::uint32_t still = 0;
        for (const auto* h : removed) {
            for (const auto& p : previous->pools) {
                for (const auto& b : p.backends) {
                    if (b.health.get() == h) still += b.stats->active.load(std::memory_order_relaxed);
                }
            }
        }
        if (still > 0) {
            spdlog::warn("{}: closing {} session(s) still open on removed backend(s)", what, still);
        }
        for (auto& w : workers_) w->close_sessions(sessions_on_any(previous, removed), close_reason::reload);
        reload_timers_.erase(it);
    });
}

void process::drop_retired_checkers() {
    APILB_ASSERT_ROLE(control);
    std::erase_if(retired_checkers_, [](const auto& c) { return c->running() == 0; });
}

}  // namespace apilb
