// An upgrade asked for while a reload's workers apply the new snapshot
// (docs/upgrade.md, "An upgrade during a reload"): it waits for the apply
// to end, bounded, instead of being refused; the new process then reads the
// same file as the snapshot every worker serves.
#include <boost/asio/steady_timer.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apilb/admin/admin_server.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/process/process.hpp"

namespace apilb {

namespace {

/// How long an upgrade waits for a reload's apply (the workers take a
/// snapshot in milliseconds; one that takes this long is stuck, and the
/// watchdog says so): past it, refused as before (409).
constexpr std::chrono::seconds upgrade_reload_wait{10};

}  // namespace

upgrade_start process::wait_for_reload(std::function<void(const upgrade_outcome&)> done) {
    APILB_ASSERT_ROLE(control);
    waiting_upgrade_ = std::make_unique<waiting_upgrade>(control_);
    waiting_upgrade_->done = std::move(done);
    spdlog::info("upgrade: waits for the reload being applied to end (at most {}s)", upgrade_reload_wait.count());
    waiting_upgrade_->timer.expires_after(upgrade_reload_wait);
    waiting_upgrade_->timer.async_wait([this](boost::system::error_code ec) {
        if (ec || !waiting_upgrade_) return;
        cancel_waiting_upgrade(fmt::format("a reload was still being applied after {}s", upgrade_reload_wait.count()));
    });
    return upgrade_start{.refused = {}, .conflict = false, .new_pid = 0};
}

void process::on_reloads_applied() {
    APILB_ASSERT_ROLE(control);
    if (!waiting_upgrade_) return;
    std::unique_ptr<waiting_upgrade> w = std::move(waiting_upgrade_);
    w->timer.cancel();
    spdlog::info("upgrade: the reload is applied; the upgrade starts");
    auto done = w->done;
    const upgrade_start started = start_upgrade(std::move(w->done));
    // Refused now (apilb began to stop, the config gained a vrrp section):
    // the caller that waited hears it as the outcome.
    if (!started.refused.empty() && done)
        done(upgrade_outcome{.failure = started.refused, .conflict = started.conflict});
}

void process::cancel_waiting_upgrade(const std::string& why) {
    APILB_ASSERT_ROLE(control);
    if (!waiting_upgrade_) return;
    std::unique_ptr<waiting_upgrade> w = std::move(waiting_upgrade_);
    w->timer.cancel();
    spdlog::error("upgrade refused: {}; still serving", why);
    stats_.upgrade_failures_total.fetch_add(1, std::memory_order_relaxed);
    if (w->done) w->done(upgrade_outcome{.failure = why, .conflict = true});
}

}  // namespace apilb
