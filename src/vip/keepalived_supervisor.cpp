#include "apilb/vip/keepalived_supervisor.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>
#include <vector>

#include "apilb/core/keepalived_conf.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/vip/child_fds.hpp"
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

std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("was killed by signal ") + ::strsignal(WTERMSIG(status));
    return "stopped";
}

}  // namespace

keepalived_supervisor::keepalived_supervisor(asio::io_context& control, std::shared_ptr<const snapshot> snap)
    : control_(control), snap_(std::move(snap)), timer_(control) {}

keepalived_supervisor::~keepalived_supervisor() {
    if (pid_ > 0) stop();
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
    // Console logging goes to apilb's stderr, next to apilb's own lines.
    std::vector<std::string> args{v.keepalived_path,
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
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int max_fd = inherited_fd_bound();
    const pid_t parent = ::getpid();

    const pid_t pid = ::fork();
    if (pid < 0) throw std::system_error(errno, std::generic_category(), "cannot start keepalived (fork)");
    if (pid == 0) {
        // The child: only async-signal-safe calls until exec. When apilb dies,
        // however it dies, the kernel sends keepalived SIGTERM, and keepalived
        // gives up the VIPs with a priority-0 advert.
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(0);
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_DFL);
        ::signal(SIGXFSZ, SIG_DFL);
        // apilb's listening sockets must not live on in keepalived.
        close_inherited_fds(max_fd);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    pid_ = pid;
    started_at_ = clock_type::now();
    spdlog::info("vrrp: started keepalived (pid {}) with {}/keepalived.conf", pid, dir);
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
        if (pid_ <= 0) continue;
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) != pid_) continue;
        pid_ = -1;
        // A crashed keepalived leaves its VIPs configured while the peer takes
        // them too: take them off before anything else.
        remove_vips();
        if (clock_type::now() - started_at_ > stable_after) backoff_ = first_backoff;
        ++restarts_;
        spdlog::error("vrrp: keepalived {}; VIPs removed; restarting it in {}ms (restart {})", describe_status(status),
                      backoff_.count(), restarts_);
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
    if (pid_ > 0) {
        ::kill(pid_, SIGHUP);
        spdlog::info("vrrp: the vrrp section changed; keepalived reloads its config (SIGHUP)");
    }
}

void keepalived_supervisor::stop() {
    APILB_ASSERT_ROLE(control);
    stopping_ = true;
    timer_.cancel();
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    const auto deadline = clock_type::now() + 3s;
    bool gone = false;
    while (!gone && clock_type::now() < deadline) {
        gone = ::waitpid(pid_, &status, WNOHANG) == pid_;
        if (!gone) std::this_thread::sleep_for(10ms);
    }
    if (!gone) {
        spdlog::warn("vrrp: keepalived (pid {}) did not stop within 3s; killing it", pid_);
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        remove_vips();
    } else {
        spdlog::info("vrrp: keepalived stopped");
    }
    pid_ = -1;
}

}  // namespace apilb
