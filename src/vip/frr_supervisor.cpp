#include "apilb/vip/frr_supervisor.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "apilb/core/file_read.hpp"
#include "apilb/core/file_write.hpp"
#include "apilb/core/frr_conf.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/logging/logging.hpp"
#include "apilb/vip/child_lifeline.hpp"
#include "apilb/vip/frr_query.hpp"

namespace apilb {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

/// Debian keeps the daemons out of $PATH.
constexpr const char* frr_daemon_dir = "/usr/lib/frr";
/// The daemons refuse to run as root (their vty group is frrvty).
constexpr const char* frr_user = "frr";
constexpr auto watch_period = 50ms;
constexpr std::chrono::milliseconds first_backoff{100};
constexpr std::chrono::milliseconds max_backoff{10'000};
/// Daemons that ran this long before one ended start again from first_backoff.
constexpr auto stable_after = 30s;
/// A daemon that opened no vty socket in this time failed to start.
constexpr auto start_timeout = 10s;
/// SIGTERM, then SIGKILL this much later (apilb and the keeper alike).
constexpr auto term_grace = 3s;
/// The most each daemon's log and output file hold before apilb rotates or
/// empties them (bound_logs). They live under /run, a tmpfs: memory. FRR
/// logs a few lines a minute at its default level; this holds hours of it.
constexpr off_t max_log_bytes = 1 << 20;
/// vtysh applying frr.conf: 64 peers' worth of configuration is a few KiB.
constexpr auto apply_timeout = 10s;
constexpr std::size_t max_apply_output = 1 << 20;

/// The first line of `text` (at most 200 characters), safe for a log line.
std::string first_line(const std::string& text) {
    std::string line = single_line(text.substr(0, std::min(text.find('\n'), std::size_t{200})));
    return line.empty() ? "no output" : line;
}

/// The pid in a daemon's pid file, or -1.
pid_t read_pid_file(const std::string& path) {
    file_contents f = read_regular_file(path, 64);
    if (!f) return -1;
    try {
        const long pid = std::stol(f.bytes);
        return pid > 0 ? static_cast<pid_t>(pid) : -1;
    } catch (const std::exception&) {
        return -1;
    }
}

/// The parent of `pid` (from /proc), or -1. The pid files are frr's to
/// write: a pid is signalled only if it is the keeper's child.
pid_t parent_of(pid_t pid) {
    file_contents stat = read_regular_file("/proc/" + std::to_string(pid) + "/stat", 4096);
    const auto paren = stat ? stat.bytes.rfind(')') : std::string::npos;
    if (paren == std::string::npos || paren + 4 >= stat.bytes.size()) return -1;
    // "pid (comm) S ppid ...": comm may hold blanks and parentheses.
    try {
        return static_cast<pid_t>(std::stol(stat.bytes.substr(paren + 4)));
    } catch (const std::exception&) {
        return -1;
    }
}

}  // namespace

frr_supervisor::frr_supervisor(asio::io_context& control, std::shared_ptr<const config> cfg)
    : control_(control), cfg_(std::move(cfg)), dir_(cfg_->bgp->vty_socket_dir), timer_(control) {
    daemons_.push_back({.name = "zebra"});
    daemons_.push_back({.name = "bgpd"});
    const auto& peers = cfg_->bgp->peers;
    if (std::any_of(peers.begin(), peers.end(), [](const bgp_peer& p) { return p.bfd; })) {
        daemons_.push_back({.name = "bfdd"});
    }
}

frr_supervisor::~frr_supervisor() {
    if (!released_ && std::any_of(daemons_.begin(), daemons_.end(), [](const daemon& d) { return d.keeper > 0; }))
        stop();
    for (auto& d : daemons_) forget(d);
}

void frr_supervisor::start() {
    APILB_ASSERT_ROLE(control);
    asio::co_spawn(control_, run_loop(false), asio::detached);
}

void frr_supervisor::forget(daemon& d) {
    if (d.pidfd >= 0) ::close(d.pidfd);
    d.pidfd = -1;
    d.keeper = -1;
    d.pid = -1;
    d.adopted = false;
}

bool frr_supervisor::keeper_ended(daemon& d, std::string& how) {
    int status = -1;
    if (!apilb::keeper_ended(d.keeper, d.pidfd, d.adopted, status)) return false;
    // A keeper killed by a signal left its daemon behind: end the group. One
    // that came with an upgrade is not ours to reap: a daemon it left behind
    // is found by its pid file at the next start (end_leftover).
    if (status != -1 && WIFSIGNALED(status)) ::kill(-d.keeper, SIGKILL);
    how = describe_keeper_status(status);
    return true;
}


handed_children frr_supervisor::freeze() {
    APILB_ASSERT_ROLE(control);
    if (!watching_ || stopping_ || frozen_ || !lifeline_.valid()) {
        throw std::runtime_error("apilb's FRR is being started or restarted; try the upgrade again once it runs");
    }
    handed_children out;
    out.group = "frr";
    try {
        out.line = lifeline_.duplicate();
    } catch (const std::system_error& e) {
        throw std::runtime_error(std::string("FRR: ") + e.what());
    }
    for (const auto& d : daemons_) {
        const int fd = d.pidfd < 0 ? -1 : ::fcntl(d.pidfd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0) throw std::runtime_error("no pidfd for " + d.name + "'s keeper (pidfd_open needs Linux 5.3)");
        out.children.push_back({.name = d.name, .pid = d.keeper, .daemon = d.pid, .pidfd = fd});
    }
    frozen_ = true;
    return out;
}

void frr_supervisor::thaw() {
    APILB_ASSERT_ROLE(control);
    frozen_ = false;
}

void frr_supervisor::release() {
    APILB_ASSERT_ROLE(control);
    released_ = true;
    stopping_ = true;
    timer_.cancel();
    // The keepers stay this process's children until it exits (then the
    // service manager's); only the new process watches them now.
    for (auto& d : daemons_) forget(d);
    lifeline_.reset();
    spdlog::info("frr: zebra, bgpd{} handed over; they run on", daemons_.size() > 2 ? " and bfdd" : "");
}

void frr_supervisor::adopt(handed_children children, std::uint64_t restarts) {
    APILB_ASSERT_ROLE(control);
    restarts_ = restarts;
    lifeline_ = std::move(children.line);
    bool all = lifeline_.valid();
    for (auto& d : daemons_) {
        auto it = std::find_if(children.children.begin(), children.children.end(),
                               [&](const handed_child& c) { return c.name == d.name && c.pidfd >= 0; });
        if (it == children.children.end()) {
            all = false;
            continue;
        }
        d.keeper = it->pid;
        d.pid = it->daemon;
        d.pidfd = std::exchange(it->pidfd, -1);
        d.adopted = true;
        spdlog::info("frr: took over {} (pid {}, keeper {}) in {}", d.name, d.pid, d.keeper, dir_);
    }
    children.reset();  // pidfds of daemons this config does not run
    if (!lifeline_.valid()) lifeline_ = lifeline::make();
    if (!all) spdlog::error("frr: the old process did not hand over every daemon; starting them all again");
    asio::co_spawn(control_, run_loop(all), asio::detached);
}

asio::awaitable<bool> frr_supervisor::pause(std::chrono::milliseconds d) {
    timer_.expires_after(d);
    auto [ec] = co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    co_return !ec && !stopping_;
}

asio::awaitable<void> frr_supervisor::run_loop(bool adopted) {
    if (!lifeline_.valid()) {
        try {
            lifeline_ = lifeline::make();
        } catch (const std::system_error& e) {
            // Without it no keeper could tell that apilb died: start none.
            spdlog::error("frr: {}; not starting FRR", e.what());
            co_return;
        }
    }
    while (!stopping_) {
        const auto began = clock_type::now();
        bool up = adopted;
        if (!std::exchange(adopted, false)) up = co_await start_all();
        if (stopping_) co_return;
        if (up) {
            watching_ = true;
            co_await watch();
            watching_ = false;
        }
        if (stopping_) co_return;
        // A bgpd left on a restarted zebra keeps a stale session: all go.
        co_await end_all();
        if (stopping_) co_return;
        if (up && clock_type::now() - began > stable_after) backoff_ = first_backoff;
        ++restarts_;
        spdlog::error("frr: starting zebra, bgpd{} again in {}ms (restart {})", daemons_.size() > 2 ? " and bfdd" : "",
                      backoff_.count(), restarts_);
        const bool waited = co_await pause(backoff_);
        if (!waited) co_return;
        backoff_ = std::min(backoff_ * 2, max_backoff);
    }
}

bool frr_supervisor::prepare_dir() {
    const passwd* pw = ::getpwnam(frr_user);
    if (pw == nullptr) {
        spdlog::error("frr: there is no {} user to run the daemons as (Debian's frr package makes it)", frr_user);
        return false;
    }
    struct stat st {};
    if (::lstat(dir_.c_str(), &st) != 0) {
        std::error_code ec;
        std::filesystem::create_directories(dir_, ec);
        // Made here, so apilb may hand it to frr: the daemons write their
        // sockets, pid files and logs in it.
        // chmod before chown: afterwards it is frr's (no CAP_FOWNER needed).
        if (ec || ::chmod(dir_.c_str(), 0750) != 0 || ::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
            spdlog::error("frr: cannot make {} for the frr user: {}", dir_,
                          ec ? ec.message() : std::string(std::strerror(errno)));
            return false;
        }
    } else if (!S_ISDIR(st.st_mode) || st.st_uid != pw->pw_uid) {
        // Never taken over: a configured path that names some other directory
        // must not be handed to frr.
        spdlog::error("frr: {} exists but is not a directory owned by {}; remove it and apilb makes it", dir_,
                      frr_user);
        return false;
    }
    const std::string empty = path("empty.conf");
    if (auto ec = write_file_atomically(empty, "")) {
        spdlog::error("frr: cannot write {}: {}", empty, ec.message());
        return false;
    }
    (void)::chown(empty.c_str(), pw->pw_uid, pw->pw_gid);
    return true;
}

void frr_supervisor::end_leftover(const std::string& name) {
    // A daemon of an earlier apilb whose keeper was SIGKILLed with it: its
    // pid file names it, its command line names this directory.
    const pid_t pid = read_pid_file(path(name + ".pid"));
    if (pid <= 0) return;
    file_contents cmdline = read_regular_file("/proc/" + std::to_string(pid) + "/cmdline", 64 << 10);
    if (!cmdline || cmdline.bytes.find(std::string("--vty_socket") + '\0' + dir_ + '\0') == std::string::npos) return;
    spdlog::warn("frr: {} (pid {}) of an earlier run still runs in {}; killing it", name, pid, dir_);
    ::kill(pid, SIGKILL);
}

void frr_supervisor::spawn(daemon& d) {
    std::vector<std::string> args{std::string(frr_daemon_dir) + "/" + d.name, "-u", frr_user, "-g", frr_user, "-i",
                                  path(d.name + ".pid"), "-z", path("zserv.api"), "--vty_socket", dir_, "-f",
                                  path("empty.conf"),
                                  // No vty on TCP: the sockets in dir_ are enough.
                                  "-P", "0", "--log", "file:" + path(d.name + ".log")};
    if (d.name == "bfdd") args.insert(args.end(), {"--bfdctl", path("bfdd.sock")});
    // The daemon drops to the frr user, which clears its PR_SET_PDEATHSIG:
    // until then a dying keeper takes it along.
    const pid_t pid = spawn_keeper(args, lifeline_, {.out_path = path(d.name + ".out"), .death_signal = SIGKILL});
    forget(d);
    d.keeper = pid;
    // Opened before the keeper can be reaped, so it names this process; an
    // upgrade hands a duplicate to the new apilb, which is not its parent.
    d.pidfd = open_pidfd(pid);
    d.term_sent = false;
}

asio::awaitable<bool> frr_supervisor::start_all() {
    if (!prepare_dir()) co_return false;
    std::string text;
    {
        std::string error;
        const frr_render_options options = read_frr_passwords(*cfg_->bgp, error);
        if (!error.empty()) {
            spdlog::error("frr: cannot render frr.conf: {}", error);
            co_return false;
        }
        try {
            text = render_frr_conf(*cfg_, options);
        } catch (const std::invalid_argument& e) {
            spdlog::error("frr: cannot render frr.conf: {}", e.what());
            co_return false;
        }
    }
    // The file holds the peers' passwords.
    if (auto ec = write_file_atomically(path("frr.conf"), text); ec || ::chmod(path("frr.conf").c_str(), 0600) != 0) {
        spdlog::error("frr: cannot write {}: {}", path("frr.conf"), ec ? ec.message() : std::strerror(errno));
        co_return false;
    }
    // zebra first: bgpd and bfdd connect to its socket.
    for (auto& d : daemons_) {
        end_leftover(d.name);
        const std::string vty = path(d.name + ".vty");
        std::error_code ignored;
        std::filesystem::remove(vty, ignored);
        std::filesystem::remove(path(d.name + ".pid"), ignored);
        // The last run's log stays for a look, one generation.
        std::filesystem::rename(path(d.name + ".log"), path(d.name + ".log.1"), ignored);
        try {
            spawn(d);
        } catch (const std::system_error& e) {
            spdlog::error("frr: {}", e.what());
            co_return false;
        }
        const auto deadline = clock_type::now() + start_timeout;
        while (!std::filesystem::exists(vty, ignored)) {
            std::string how;
            if (keeper_ended(d, how)) {
                forget(d);
                spdlog::error("frr: {} {} at start; see {} and {}", d.name, how, path(d.name + ".out"),
                              path(d.name + ".log"));
                co_return false;
            }
            if (clock_type::now() > deadline) {
                spdlog::error("frr: {} opened no vty socket within {}s; see {}", d.name,
                              std::chrono::seconds(start_timeout).count(), path(d.name + ".log"));
                co_return false;
            }
            const bool waited = co_await pause(20ms);
            if (!waited) co_return false;
        }
        d.pid = read_pid_file(path(d.name + ".pid"));
        spdlog::info("frr: started {} (pid {}, keeper {}) in {}", d.name, d.pid, d.keeper, dir_);
    }
    // As `vtysh -b` does at boot: every daemon takes its part of the file.
    // Built before the co_await: GCC 12 miscompiles a braced list in a coroutine.
    std::vector<std::string> apply{cfg_->bgp->vtysh_path, "--vty_socket", dir_, "-f", path("frr.conf")};
    const command_outcome r = co_await run_bounded(control_, std::move(apply), max_apply_output, apply_timeout);
    if (stopping_) co_return false;
    if (!r.ok) {
        // vtysh names the line it refused on stdout, and says on stderr why
        // it could not run at all: say both.
        spdlog::error("frr: vtysh could not apply {}: {}: {}{}{}", path("frr.conf"), r.error, first_line(r.output),
                      r.errors.empty() ? "" : "; ", first_line(r.errors));
        co_return false;
    }
    spdlog::info("frr: {} applied", path("frr.conf"));
    co_return true;
}

asio::awaitable<void> frr_supervisor::watch() {
    for (;;) {
        const bool waited = co_await pause(watch_period);
        if (!waited) co_return;
        // Handing them over: the new process may take them from any moment on.
        if (frozen_) continue;
        for (auto& d : daemons_) {
            std::string how;
            if (d.keeper <= 0 || !keeper_ended(d, how)) continue;
            spdlog::error("frr: {} (pid {}) {}; see {}", d.name, d.pid, how, path(d.name + ".log"));
            forget(d);
            co_return;
        }
        for (const auto& d : daemons_) bound_logs(d);
    }
}

void frr_supervisor::bound_logs(const daemon& d) const {
    // FRR 8.4 never limits its log file; with debugging on, or a peer that
    // flaps, it writes without end into a directory under /run (memory).
    const off_t max = max_log_bytes;
    const std::string log = path(d.name + ".log");
    struct stat st {};
    if (d.pid > 0 && ::lstat(log.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > max &&
        parent_of(d.pid) == d.keeper) {
        // What Debian's logrotate does for the frr service: move the file and
        // send SIGUSR1, on which the daemon opens its log file anew.
        if (::rename(log.c_str(), (log + ".1").c_str()) == 0 && ::kill(d.pid, SIGUSR1) == 0) {
            spdlog::info("frr: {} passed {} bytes: moved to {}.1, {} writes a new one", log, max, log, d.name);
        } else {
            spdlog::warn("frr: cannot rotate {} past {} bytes: {}", log, max, std::strerror(errno));
        }
    }
    // The daemon holds its output file open: emptied, not moved. Opened
    // without following a link and only if it is one file of its own: the
    // directory is frr's, apilb root.
    const std::string out = path(d.name + ".out");
    const int fd = ::open(out.c_str(), O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 && st.st_size > max &&
        ::ftruncate(fd, 0) == 0) {
        spdlog::warn("frr: {} wrote more than {} bytes on its output; emptied {}", d.name, max, out);
    }
    ::close(fd);
}

bool frr_supervisor::ending_step() {
    // bgpd first: it sends the routers a Cease, so they withdraw the routes
    // at once rather than after BFD or the hold time; zebra last.
    static constexpr const char* order[] = {"bgpd", "bfdd", "zebra"};
    const auto now = clock_type::now();
    for (const char* name : order) {
        auto it = std::find_if(daemons_.begin(), daemons_.end(), [&](const daemon& d) { return d.name == name; });
        if (it == daemons_.end() || it->keeper <= 0) continue;
        daemon& d = *it;
        std::string how;
        if (keeper_ended(d, how)) {
            spdlog::info("frr: {} (pid {}) stopped", d.name, d.pid);
        } else if (!d.term_sent) {
            signal_keeper(d.keeper, d.pidfd, d.adopted, SIGTERM);  // the keeper passes it on
            d.term_sent = true;
            d.kill_at = now + term_grace;
            return false;
        } else if (now >= d.kill_at) {
            spdlog::warn("frr: {} (pid {}) did not stop within {}s; killing it", d.name, d.pid,
                         std::chrono::seconds(term_grace).count());
            if (d.pid > 0) ::kill(d.pid, SIGKILL);
            signal_keeper(d.keeper, d.pidfd, d.adopted, SIGKILL);
            ::kill(-d.keeper, SIGKILL);
            if (!d.adopted) {
                int status = 0;
                ::waitpid(d.keeper, &status, 0);
            } else {
                pollfd p{d.pidfd, POLLIN, 0};
                ::poll(&p, 1, 1000);  // not ours to reap: its end, at most a second
            }
        } else {
            return false;
        }
        forget(d);
    }
    return true;
}

asio::awaitable<void> frr_supervisor::end_all() {
    // co_await only as a statement of its own: GCC 12 miscompiled it in a
    // condition here (an invalid opcode when the loop ended).
    for (;;) {
        if (ending_step()) co_return;
        const bool waited = co_await pause(10ms);
        if (!waited) co_return;
    }
}

void frr_supervisor::stop() {
    APILB_ASSERT_ROLE(control);
    stopping_ = true;
    timer_.cancel();
    if (released_) return;
    if (std::none_of(daemons_.begin(), daemons_.end(), [](const daemon& d) { return d.keeper > 0; })) return;
    while (!ending_step()) std::this_thread::sleep_for(10ms);
    spdlog::info("frr: zebra, bgpd{} stopped", daemons_.size() > 2 ? " and bfdd" : "");
}

}  // namespace apilb
