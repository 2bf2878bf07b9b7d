#include "apilb/vip/child_lifeline.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>
#include <utility>

#include "apilb/vip/child_fds.hpp"

namespace apilb {

lifeline::lifeline(lifeline&& other) noexcept
    : read_(std::exchange(other.read_, -1)), write_(std::exchange(other.write_, -1)) {}

lifeline& lifeline::operator=(lifeline&& other) noexcept {
    if (this != &other) {
        reset();
        read_ = std::exchange(other.read_, -1);
        write_ = std::exchange(other.write_, -1);
    }
    return *this;
}

lifeline lifeline::make() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "lifeline pipe");
    return lifeline(fds[0], fds[1]);
}

lifeline lifeline::duplicate() const {
    const int r = ::fcntl(read_, F_DUPFD_CLOEXEC, 3);
    const int w = r < 0 ? -1 : ::fcntl(write_, F_DUPFD_CLOEXEC, 3);
    lifeline out(r, w);
    if (!out.valid()) throw std::system_error(errno, std::generic_category(), "cannot share a lifeline (dup)");
    return out;
}

void lifeline::reset() noexcept {
    if (read_ >= 0) ::close(read_);
    if (write_ >= 0) ::close(write_);
    read_ = write_ = -1;
}

int keep_only_lifeline(int read_fd, int bound) noexcept {
    constexpr int kept = 3;
    if (read_fd < 0) {
        close_inherited_fds(bound);
        return -1;
    }
    // dup3 refuses equal numbers; a lifeline already at 3 stays where it is.
    if (read_fd != kept && ::dup3(read_fd, kept, O_CLOEXEC) < 0) return -1;
    ::fcntl(kept, F_SETFD, FD_CLOEXEC);
    close_inherited_fds(bound, kept + 1);
    return kept;
}

namespace {

/// SIGTERM to the daemon, SIGKILL this much later.
constexpr auto keeper_term_grace = std::chrono::seconds(3);

/// The keeper (spawn_keeper). The daemon cannot hold PR_SET_PDEATHSIG on
/// apilb, which would tie it to the process that forked it rather than to
/// the last apilb (an upgrade passes the lifeline on, docs/upgrade.md).
/// Only async-signal-safe calls (and signalfd, a plain system call): apilb
/// is multithreaded and the keeper does not exec.
[[noreturn]] void keeper_main(char* const* argv, const char* out_path, int death_signal, int max_fd,
                              int lifeline_read) {
    ::setpgid(0, 0);
    // apilb's sockets and the lifeline's write end must not live on in the
    // keeper or the daemon: a write end here would keep the keeper alive.
    const int line = keep_only_lifeline(lifeline_read, max_fd);
    if (line < 0) ::_exit(126);
    sigset_t waited;
    ::sigemptyset(&waited);
    ::sigaddset(&waited, SIGTERM);
    ::sigaddset(&waited, SIGINT);
    ::sigaddset(&waited, SIGHUP);
    ::sigaddset(&waited, SIGCHLD);
    ::sigprocmask(SIG_SETMASK, &waited, nullptr);
    ::signal(SIGCHLD, SIG_DFL);  // an ignored SIGCHLD would reap the daemon behind our back
    const int signals = ::signalfd(-1, &waited, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signals < 0) ::_exit(126);
    const pid_t keeper = ::getpid();
    const pid_t d = ::fork();
    if (d < 0) ::_exit(126);
    if (d == 0) {
        ::prctl(PR_SET_PDEATHSIG, death_signal);
        if (::getppid() != keeper) ::_exit(0);
        if (out_path[0] != '\0') {
            const int in = ::open("/dev/null", O_RDONLY);
            // O_APPEND: apilb empties the file past its bound (frr_supervisor's
            // bound_logs) and the daemon's next write lands at its new end.
            // O_NOFOLLOW: the directory is the daemon user's, the keeper root.
            const int out = ::open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW, 0640);
            if (in >= 0) ::dup2(in, 0);
            if (out >= 0) {
                ::dup2(out, 1);
                ::dup2(out, 2);
            }
            if (in > 2) ::close(in);
            if (out > 2) ::close(out);
        }
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_DFL);
        ::signal(SIGXFSZ, SIG_DFL);
        ::execv(argv[0], argv);  // the lifeline and the signalfd are close-on-exec
        ::_exit(127);
    }
    bool termed = false;
    timespec kill_at{};
    for (;;) {
        // Once terminating, the hung-up lifeline would wake every poll: only the signals then.
        pollfd p[2] = {{signals, POLLIN, 0}, {line, POLLIN, 0}};
        ::poll(p, termed ? 1 : 2, 100);
        // Nobody writes on it: POLLIN is its end too (a read gives 0).
        bool stop = !termed && (p[1].revents & (POLLHUP | POLLIN | POLLERR)) != 0;
        signalfd_siginfo info;
        while (::read(signals, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
            if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT) stop = true;
            if (info.ssi_signo == SIGHUP && !termed) ::kill(d, SIGHUP);
        }
        if (stop && !termed) {
            termed = true;
            ::kill(d, SIGTERM);
            ::clock_gettime(CLOCK_MONOTONIC, &kill_at);
            kill_at.tv_sec += std::chrono::seconds(keeper_term_grace).count();
        }
        int status = 0;
        if (::waitpid(d, &status, WNOHANG) == d) {
            ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        }
        if (termed) {
            timespec now{};
            ::clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec > kill_at.tv_sec || (now.tv_sec == kill_at.tv_sec && now.tv_nsec >= kill_at.tv_nsec)) {
                ::kill(d, SIGKILL);
            }
        }
    }
}

}  // namespace

pid_t spawn_keeper(const std::vector<std::string>& args, const lifeline& line, const keeper_options& options) {
    if (!line.valid()) throw std::system_error(EBADF, std::generic_category(), "a keeper needs a lifeline");
    // Everything the child uses is made before the fork.
    std::vector<std::string> copy = args;
    std::vector<char*> argv;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string out = options.out_path;
    const int max_fd = inherited_fd_bound();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::system_error(errno, std::generic_category(), "cannot start a keeper (fork)");
    if (pid == 0) keeper_main(argv.data(), out.c_str(), options.death_signal, max_fd, line.read_fd());
    // Also here: a stop right after the fork signals the group.
    ::setpgid(pid, pid);
    return pid;
}

bool keeper_ended(pid_t pid, int pidfd, bool adopted, int& status) noexcept {
    status = -1;
    if (pid <= 0) return true;
    if (!adopted) return ::waitpid(pid, &status, WNOHANG) == pid;
    return pidfd_ended(pidfd);
}

void signal_keeper(pid_t pid, int pidfd, bool adopted, int sig) noexcept {
    if (pid <= 0) return;
    if (pidfd >= 0 && pidfd_signal(pidfd, sig) == 0) return;
    if (!adopted) ::kill(pid, sig);
}

std::string describe_keeper_status(int status) {
    if (status == -1) return "ended (its keeper came with an upgrade, so how is not known here)";
    if (WIFSIGNALED(status)) return std::string("its keeper was killed by signal ") + ::strsignal(WTERMSIG(status));
    if (!WIFEXITED(status)) return "stopped";
    const int code = WEXITSTATUS(status);
    if (code > 128) return std::string("was killed by signal ") + ::strsignal(code - 128);
    if (code == 127) return "could not be started (exit status 127: the binary is missing or not executable)";
    return "exited with status " + std::to_string(code);
}

// Through syscall(): glibc 2.36's <sys/pidfd.h> declares the wrappers without
// extern "C", so C++ cannot link them (fixed in 2.37).
int open_pidfd(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0U)); }

bool pidfd_ended(int pidfd) noexcept {
    if (pidfd < 0) return true;
    pollfd p{pidfd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
}

int pidfd_signal(int pidfd, int sig) noexcept {
    if (pidfd < 0) return EBADF;
    return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0U) == 0 ? 0 : errno;
}

handed_children::handed_children(handed_children&& other) noexcept
    : group(std::move(other.group)), line(std::move(other.line)), children(std::move(other.children)) {
    other.children.clear();
}

handed_children& handed_children::operator=(handed_children&& other) noexcept {
    if (this != &other) {
        reset();
        group = std::move(other.group);
        line = std::move(other.line);
        children = std::move(other.children);
        other.children.clear();
    }
    return *this;
}

void handed_children::reset() noexcept {
    line.reset();
    for (auto& c : children) {
        if (c.pidfd >= 0) ::close(c.pidfd);
    }
    children.clear();
}

}  // namespace apilb
