#include "apilb/vip/child_lifeline.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
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
