// The watchdog and the process's side of the admin endpoint: what it reports (the running
// snapshot, the facts beyond it), worker pings for /livez, and the systemd
// watchdog, which is fed only while every worker answers.
#include "apilb/process/process.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>


#ifdef APILB_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "apilb/admin/admin_server.hpp"
#include "apilb/control/discovery_client.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb/core/maglev.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/worker.hpp"
#include "apilb/vip/bgp_agent.hpp"
#include "apilb/vip/vrrp_agent.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;

void process::ping_workers(std::chrono::milliseconds deadline, std::function<void(std::size_t, std::size_t)> done) {
    APILB_ASSERT_ROLE(control);
    struct state {
        explicit state(asio::io_context& io) : timer(io) {}
        asio::steady_timer timer;
        std::size_t answered = 0;
        std::size_t total = 0;
        bool finished = false;
        std::function<void(std::size_t, std::size_t)> done;
    };
    auto st = std::make_shared<state>(control_);
    st->total = workers_.size();
    st->done = std::move(done);
    st->timer.expires_after(deadline);
    st->timer.async_wait([st](error_code) {
        if (st->finished) return;
        st->finished = true;
        st->done(st->answered, st->total);
    });
    for (auto& w : workers_) {
        w->ping([this, st] {
            // On the worker thread: count on the control thread.
            asio::post(control_, [st] {
                if (st->finished) return;
                if (++st->answered == st->total) {
                    st->finished = true;
                    st->timer.cancel();
                    st->done(st->answered, st->total);
                }
            });
        });
    }
}

void process::make_admin(int inherited) {
    APILB_ASSERT_ROLE(control);
    if (file_contents file = read_regular_file(snap_->cfg->source, max_config_bytes)) {
        config_hash_ = fmt::format("{:016x}", stable_hash(file.bytes));
    }
    if (!snap_->cfg->admin) return;
    admin_hooks hooks{
        .current = [this] { return snap_; },
        .facts =
            [this] {
                std::vector<const discovery_client*> discovery;
                for (const auto& d : discovery_) discovery.push_back(d.get());
                return admin_facts{.stats = &stats_,
                                   .config_hash = config_hash_,
                                   .vrrp_role = vrrp_ ? to_string(vrrp_->role()) : "",
                                   .bgp = bgp_ ? bgp_->report() : bgp_report{},
                                   .draining = draining_,
                                   .workers = workers_.size(),
                                   .relay_io_uring = relay_io_.io_uring,
                                   .discovery = std::move(discovery),
                                   .file_config = file_cfg_};
            },
        .ping_workers =
            [this](std::chrono::milliseconds deadline, std::function<void(std::size_t, std::size_t)> done) {
                ping_workers(deadline, std::move(done));
            },
        .reload =
            [this] {
                if (draining_) return std::vector<std::string>{"apilb is stopping (SIGTERM): no reload"};
                if (upgrading()) {
                    return std::vector<std::string>{
                        "an upgrade is in progress: no reload (the new process reads the file as it starts; reload "
                        "once the upgrade has ended)"};
                }
                return reload();
            },
        .upgrade = [this](std::function<void(const upgrade_outcome&)> done) { return start_upgrade(std::move(done)); },
    };
    admin_ = std::make_unique<admin_server>(control_, *snap_->cfg->admin, std::move(hooks), inherited);
}

void process::start_watchdog() {
    APILB_ASSERT_ROLE(control);
#ifdef APILB_HAVE_SYSTEMD
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return;
    // Ping twice per watchdog period; each ping gets a quarter of it.
    const auto period = std::chrono::microseconds(usec / 2);
    const auto deadline = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::microseconds(usec / 4));
    spdlog::info("systemd watchdog: {}ms; fed while every worker answers within {}ms", usec / 1000, deadline.count());
    watchdog_timer_ = std::make_unique<asio::steady_timer>(control_);
    auto tick = std::make_shared<std::function<void()>>();
    *tick = [this, period, deadline, weak = std::weak_ptr<std::function<void()>>(tick)] {
        ping_workers(std::max(deadline, std::chrono::milliseconds(1)), [](std::size_t answered, std::size_t total) {
            if (answered == total) {
                notify_systemd("WATCHDOG=1");
            } else {
                spdlog::error("systemd watchdog: {} of {} worker(s) did not answer; not feeding the watchdog",
                              total - answered, total);
            }
        });
        watchdog_timer_->expires_after(period);
        watchdog_timer_->async_wait([weak](error_code ec) {
            if (ec) return;
            if (auto t = weak.lock()) (*t)();
        });
    };
    watchdog_tick_ = tick;
    (*tick)();
#endif
}

}  // namespace apilb
