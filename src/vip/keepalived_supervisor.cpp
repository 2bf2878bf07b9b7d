#include "apilb/vip/keepalived_supervisor.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <thread>
#include <utility>
#include <vector>

#include "apilb/core/file_read.hpp"
#include "apilb/core/keepalived_conf.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/vip/vip_address.hpp"
#include "apilb/vip/vrrp_agent.hpp"

namespace apilb {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr auto watch_period = 50ms;
constexpr std::chrono::milliseconds first_backoff{100};
constexpr std::chrono::milliseconds max_backoff{10'000};
/// A keepalived that ran this long before dying starts again from first_backoff.
constexpr auto stable_after = 30s;

}  // namespace

keepalived_supervisor::keepalived_supervisor(asio::io_context& control, std::shared_ptr<const snapshot> snap)
    : control_(control), snap_(std::move(snap)), timer_(control) {}

keepalived_supervisor::~keepalived_supervisor() {
    if (keeper_ > 0) stop();
    forget();
}

void keepalived_supervisor::forget() noexcept {
    if (pidfd_ >= 0) ::close(pidfd_);
    pidfd_ = -1;
    keeper_ = -1;
    adopted_ = false;
}

std::string keepalived_supervisor::render() const {
    std::error_code ec;
    std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
    return render_keepalived_conf(
        *snap_->cfg, {.config_path = snap_->cfg->source, .apilb_path = ec ? std::string("/usr/sbin/apilb") : self});
}

void keepalived_supervisor::write_config(const std::string& text) {
    const std::string path = snap_->cfg->vrrp->state_dir + "/keepalived.conf";
    if (auto ec = write_file_atomically(path, text)) throw std::system_error(ec, "cannot write " + path);
    rendered_ = text;
}

void keepalived_supervisor::start() {
    APILB_ASSERT_ROLE(control);
    write_config(render());
    spawn();
    asio::co_spawn(control_, watch_loop(), asio::detached);
}

void keepalived_supervisor::spawn() {
    const vrrp_config& v = *snap_->cfg->vrrp;
    const std::string& dir = v.state_dir;
    // Without a lifeline no keeper could tell that apilb died.
    if (!lifeline_.valid()) lifeline_ = lifeline::make();
    // Console logging goes to apilb's stderr, next to apilb's own lines.
    const std::vector<std::string> args{v.keepalived_path,
                                        "--dont-fork",
                                        "--log-console",
                                        "--no-syslog",
                                        "--vrrp",
                                        "--use-file",
                                        dir + "/keepalived.conf",
                                        "--pid",
                                        dir + "/keepalived.pid",
                                        "--vrrp_pid",
                                        dir + "/keepalived-vrrp.pid",
                                        "--checkers_pid",
                                        dir + "/keepalived-checkers.pid",
                                        "--bfd_pid",
                                        dir + "/keepalived-bfd.pid"};
    // A keeper killed outright still takes keepalived down gracefully: it
    // then gives up the VIPs with a priority-0 advert.
    const pid_t pid = spawn_keeper(args, lifeline_, {.out_path = {}, .death_signal = SIGTERM});
    forget();
    keeper_ = pid;
    // Opened before the keeper can be reaped, so it names this process; an
    // upgrade hands a duplicate to the new apilb, which is not its parent.
    pidfd_ = open_pidfd(pid);
    started_at_ = clock_type::now();
    spdlog::info("vrrp: started keepalived (keeper pid {}) with {}/keepalived.conf", keeper_, dir);
}

void keepalived_supervisor::remove_vips() {
    const vrrp_config& v = *snap_->cfg->vrrp;
    for (const auto& vip : v.vips) {
        if (auto ec = remove_vip(v.interface, vip)) {
            spdlog::error("vrrp: cannot remove VIP {} from {}: {}", vip.ip, v.interface, ec.message());
        }
    }
}

asio::awaitable<void> keepalived_supervisor::watch_loop() {
    while (!stopping_) {
        timer_.expires_after(watch_period);
        if (auto [ec] = co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable)); ec || stopping_) co_return;
        if (keeper_ <= 0) continue;
        int status = -1;
        if (!keeper_ended(keeper_, pidfd_, adopted_, status)) continue;
        forget();
        // A crashed keepalived leaves its VIPs configured while the peer takes
        // them too: take them off before anything else.
        remove_vips();
        if (clock_type::now() - started_at_ > stable_after) backoff_ = first_backoff;
        ++restarts_;
        spdlog::error("vrrp: keepalived {}; VIPs removed; restarting it in {}ms (restart {})",
                      describe_keeper_status(status), backoff_.count(), restarts_);
        timer_.expires_after(backoff_);
        if (auto [ec] = co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable)); ec || stopping_) co_return;
        backoff_ = std::min(backoff_ * 2, max_backoff);
        try {
            spawn();
        } catch (const std::system_error& e) {
            spdlog::error("vrrp: {}", e.what());  // what() ends with the code's message
        }
    }
}

void keepalived_supervisor::reload(std::shared_ptr<const snapshot> snap) {
    APILB_ASSERT_ROLE(control);
    snap_ = std::move(snap);
    const std::string text = render();
    if (text == rendered_) return;
    write_config(text);
    if (keeper_ > 0) {
        signal_keeper(keeper_, pidfd_, adopted_, SIGHUP);  // the keeper passes it on
        spdlog::info("vrrp: the vrrp section changed; keepalived reloads its config (SIGHUP)");
    }
}

handed_children keepalived_supervisor::hand_over() const {
    APILB_ASSERT_ROLE(control);
    handed_children out;
    out.group = "keepalived";
    if (keeper_ <= 0 || !lifeline_.valid()) return out;
    out.line = lifeline_.duplicate();
    const int fd = pidfd_ < 0 ? -1 : ::fcntl(pidfd_, F_DUPFD_CLOEXEC, 3);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "dup of keepalived's keeper's pidfd");
    out.children.push_back({.name = "keepalived", .pid = keeper_, .daemon = -1, .pidfd = fd});
    return out;
}

void keepalived_supervisor::release() {
    APILB_ASSERT_ROLE(control);
    stopping_ = true;
    released_ = true;
    timer_.cancel();
    if (keeper_ > 0) {
        spdlog::info("vrrp: keepalived (keeper pid {}) goes on under the new process", keeper_);
        // The keeper stays our child until we exit (then init's).
        forget();
    }
    // Our lifeline closes: if the new process dies now, keepalived stops.
    lifeline_.reset();
}

void keepalived_supervisor::adopt(handed_children handed) {
    APILB_ASSERT_ROLE(control);
    const std::string text = render();
    auto it = std::find_if(handed.children.begin(), handed.children.end(),
                           [](const handed_child& c) { return c.name == "keepalived" && c.pidfd >= 0; });
    if (!handed.line.valid() || it == handed.children.end()) {
        spdlog::warn("vrrp: the old process handed over no keepalived; starting one");
        handed.reset();
        start();
        return;
    }
    lifeline_ = std::move(handed.line);
    forget();
    keeper_ = it->pid;
    pidfd_ = std::exchange(it->pidfd, -1);
    adopted_ = true;
    handed.reset();
    started_at_ = clock_type::now();
    spdlog::info("vrrp: supervising keepalived (keeper pid {}) handed over by the old process", keeper_);
    const std::string path = snap_->cfg->vrrp->state_dir + "/keepalived.conf";
    const file_contents on_disk = read_regular_file(path, 1 << 20);
    if (!on_disk || on_disk.bytes != text) {
        write_config(text);
        signal_keeper(keeper_, pidfd_, adopted_, SIGHUP);
        spdlog::info("vrrp: the rendered keepalived.conf changed; keepalived reloads it (SIGHUP)");
    } else {
        rendered_ = text;
    }
    asio::co_spawn(control_, watch_loop(), asio::detached);
}

void keepalived_supervisor::stop() {
    APILB_ASSERT_ROLE(control);
    stopping_ = true;
    timer_.cancel();
    if (released_ || keeper_ <= 0) return;
    signal_keeper(keeper_, pidfd_, adopted_, SIGTERM);  // the keeper passes it on, SIGKILLs it after 3 s
    int status = -1;
    const auto deadline = clock_type::now() + 3s;
    bool gone = false;
    while (!gone && clock_type::now() < deadline) {
        gone = keeper_ended(keeper_, pidfd_, adopted_, status);
        if (!gone) std::this_thread::sleep_for(10ms);
    }
    if (!gone) {
        spdlog::warn("vrrp: keepalived (keeper pid {}) did not stop within 3s; killing it", keeper_);
        signal_keeper(keeper_, pidfd_, adopted_, SIGKILL);
        ::kill(-keeper_, SIGKILL);  // the keeper's group: keepalived too
        if (!adopted_) ::waitpid(keeper_, &status, 0);
        remove_vips();
    } else {
        spdlog::info("vrrp: keepalived stopped");
    }
    forget();
}

}  // namespace apilb
