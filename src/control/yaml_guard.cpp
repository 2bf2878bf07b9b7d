#include "apilb/control/yaml_guard.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "apilb/core/config_file.hpp"
#include "apilb/core/file_read.hpp"

extern char** environ;

namespace apilb {
namespace {

using clock_type = std::chrono::steady_clock;

/// The child's exit code when yaml-cpp ran out of memory.
constexpr int exit_out_of_memory = 3;

/// Closes the descriptor on every path out.
struct fd_guard {
    int fd = -1;
    fd_guard() = default;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() { reset(); }
    void reset() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
};

[[noreturn]] void refuse(const std::string& path, std::string message) {
    throw config_load_error(
        {config_error{.file = path, .line = 0, .column = 0, .key_path = {}, .message = std::move(message)}});
}

[[noreturn]] void cannot_check(const std::string& path, const char* step, int err) {
    refuse(path, fmt::format("cannot check the file's YAML in a child process ({}: {}); the file is not loaded", step,
                             std::strerror(err)));
}

/// The bytes in an anonymous in-memory file, positioned at the start: the
/// child's stdin. Unlike a pipe, it never makes the parent wait for the
/// child to read.
int memory_file(const std::string& path, const std::string& text) {
    const int fd = ::memfd_create("apilb-config", MFD_CLOEXEC);
    if (fd < 0) cannot_check(path, "memfd_create", errno);
    fd_guard guard(fd);
    for (std::size_t done = 0; done < text.size();) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) cannot_check(path, "write", errno);
        done += static_cast<std::size_t>(n);
    }
    if (::lseek(fd, 0, SEEK_SET) != 0) cannot_check(path, "lseek", errno);
    guard.fd = -1;
    return fd;
}

/// This very binary, as a descriptor (close-on-exec, never 0-2, which the
/// spawn's file actions overwrite): /proc/self/exe opened now names the file
/// this process runs, even if a package upgrade has replaced it on disk
/// since apilb started.
int open_own_binary(const std::string& path) {
    const int fd = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0) cannot_check(path, "open /proc/self/exe", errno);
    if (fd > STDERR_FILENO) return fd;
    fd_guard low(fd);
    const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    if (moved < 0) cannot_check(path, "fcntl F_DUPFD_CLOEXEC", errno);
    return moved;
}

/// Starts this binary in the guard's mode with `input` as stdin and the
/// write end of `status_pipe` as stdout (it closes when the child exits).
pid_t spawn_child(const std::string& path, int input, int status_pipe) {
    // Spawned through /proc/self/fd/N of an open /proc/self/exe rather than
    // /proc/self/exe itself: under valgrind /proc/self/exe is the tool's own
    // binary (valgrind rewrites readlink and open of it, not execve), which
    // refuses to run and exits 1, so no config ever loaded there. execve
    // resolves the path before it closes the close-on-exec descriptor.
    fd_guard binary(open_own_binary(path));
    const std::string binary_path = "/proc/self/fd/" + std::to_string(binary.fd);
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&actions, input, STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, status_pipe, STDOUT_FILENO);
    // The child writes nothing; a stalled log reader on our stderr must not
    // stall it. Closed rather than /dev/null: a container image or chroot
    // need not have /dev (an open that fails fails the whole spawn).
    posix_spawn_file_actions_addclose(&actions, STDERR_FILENO);
    // The child must die of SIGXCPU and SIGKILL like any process.
    set_default_signals(attr);
    std::string arg0 = "apilb";
    std::string arg1(yaml_guard_mode);
    char* argv[] = {arg0.data(), arg1.data(), nullptr};
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, binary_path.c_str(), &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) cannot_check(path, "posix_spawn /proc/self/exe", rc);
    return pid;
}

}  // namespace

void set_default_signals(posix_spawnattr_t& attr) {
    sigset_t none;
    sigemptyset(&none);
    sigset_t all;
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
}

namespace {

/// CPU time the child has used so far (0 if it cannot be read: then only
/// the wall-clock deadline applies).
std::chrono::milliseconds cpu_time_of(pid_t pid) {
    clockid_t clock{};
    timespec ts{};
    if (::clock_getcpuclockid(pid, &clock) != 0 || ::clock_gettime(clock, &ts) != 0) return {};
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::seconds(ts.tv_sec) +
                                                                 std::chrono::nanoseconds(ts.tv_nsec));
}

/// How a wait for the child ended.
enum class outcome { exited, over_cpu_budget, over_deadline };

/// Waits until the child closes its stdout (it has exited), has used
/// yaml_guard_cpu_budget of CPU, or yaml_guard_deadline has passed.
outcome wait_for_exit(pid_t pid, int status_pipe, clock_type::time_point started) {
    constexpr auto slice = std::chrono::milliseconds(20);
    while (true) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(started + yaml_guard_deadline -
                                                                       clock_type::now());
        if (left.count() <= 0) return outcome::over_deadline;
        if (cpu_time_of(pid) >= yaml_guard_cpu_budget) return outcome::over_cpu_budget;
        pollfd p{.fd = status_pipe, .events = POLLIN, .revents = 0};
        const int n = ::poll(&p, 1, static_cast<int>(std::min(left, slice).count()));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        char byte = 0;
        const ssize_t got = ::read(status_pipe, &byte, 1);
        if (got == 0) return outcome::exited;  // EOF: every copy of the write end is closed
        if (got < 0 && errno != EINTR && errno != EAGAIN) return outcome::exited;
    }
}

}  // namespace

void prove_yaml_parse_ends(const std::string& path, const std::string& text) {
    const auto started = clock_type::now();
    fd_guard input(memory_file(path, text));
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) cannot_check(path, "pipe2", errno);
    fd_guard read_end(fds[0]);
    fd_guard write_end(fds[1]);
    const pid_t pid = spawn_child(path, input.fd, write_end.fd);
    write_end.reset();
    input.reset();
    const outcome waited = wait_for_exit(pid, read_end.fd, started);
    const bool exited = waited == outcome::exited;
    if (!exited) ::kill(pid, SIGKILL);  // our own child, by its PID
    int status = 0;
    pid_t reaped = -1;
    while ((reaped = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {}
    // Without the child's status (SIGCHLD ignored reaps it for us) nothing is proven.
    if (reaped != pid) cannot_check(path, "waitpid", errno);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started);
    const std::string defect =
        "yaml-cpp 0.7 loops forever on some malformed YAML (upstream issue 1040): check the file's syntax, e.g. a "
        "stray \",\", \"[\" or \"{\" outside quotes";
    if (waited == outcome::over_cpu_budget) {
        refuse(path, fmt::format("the YAML parser did not finish within {}ms of CPU time; {}",
                                 yaml_guard_cpu_budget.count(), defect));
    }
    if (waited == outcome::over_deadline) {
        refuse(path,
               fmt::format("the YAML parser did not finish within {}ms; {}", yaml_guard_deadline.count(), defect));
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
    if ((WIFEXITED(status) && WEXITSTATUS(status) == exit_out_of_memory) ||
        (WIFSIGNALED(status) && WTERMSIG(status) == SIGXCPU)) {
        refuse(path, fmt::format("the YAML parser ran out of {} after {}ms; {}",
                                 WIFSIGNALED(status) ? "CPU time" : "memory", took.count(), defect));
    }
    refuse(path, WIFSIGNALED(status)
                     ? fmt::format("the YAML parser died of signal {} ({}); the file is not loaded", WTERMSIG(status),
                                   ::strsignal(WTERMSIG(status)))
                     : fmt::format("the YAML parser's check exited with code {}; the file is not loaded",
                                   WEXITSTATUS(status)));
}

std::shared_ptr<const config> load_config_guarded(const std::string& path, std::string* text) {
    std::string bytes = read_config_file(path);
    prove_yaml_parse_ends(path, bytes);
    auto cfg = parse_config(bytes, path);
    if (text != nullptr) *text = std::move(bytes);
    return cfg;
}

int yaml_guard_child_main() {
    // Hard limits that hold even if the parent were gone: a runaway parse
    // dies of SIGXCPU or of a failed allocation, without a core dump.
    const rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    const auto cpu_seconds = static_cast<rlim_t>(
        std::chrono::ceil<std::chrono::seconds>(yaml_guard_cpu_budget).count() + 1);
    const rlimit cpu{cpu_seconds, cpu_seconds + 1};
    ::setrlimit(RLIMIT_CPU, &cpu);
#ifndef APILB_SANITIZED_BUILD
    const rlimit memory{yaml_guard_memory, yaml_guard_memory};
    ::setrlimit(RLIMIT_AS, &memory);
#endif
    std::string text;
    char buffer[64 * 1024];
    while (text.size() <= max_config_bytes) {
        const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
    }
    try {
        parse_yaml_unguarded(text);
    } catch (const std::bad_alloc&) {
        return exit_out_of_memory;
    }
    return 0;
}

}  // namespace apilb
