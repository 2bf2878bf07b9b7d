// Children of apilb that outlive the process that started them (docs/upgrade.md,
// "Children across an upgrade"): a supervisor's keeper processes end their
// daemon when the *last* apilb holding the lifeline's write end is gone,
// however it ended, and a process that did not fork a keeper watches it
// through a pidfd. The descriptors move to the next apilb over the handover
// channel (process/handover_children.cpp). Control thread, except the
// keeper-side helpers, which are async-signal-safe.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace apilb {

/// A pipe whose write end only apilb processes hold (close-on-exec, never
/// inherited by a child): its read end sees POLLHUP once every apilb that
/// held the write end has ended. One per supervisor; each keeper holds the
/// read end. Move-only; closes what it owns.
class lifeline {
public:
    lifeline() = default;
    /// Takes both descriptors (received from the old process).
    lifeline(int read_fd, int write_fd) noexcept : read_(read_fd), write_(write_fd) {}
    lifeline(lifeline&& other) noexcept;
    lifeline& operator=(lifeline&& other) noexcept;
    lifeline(const lifeline&) = delete;
    lifeline& operator=(const lifeline&) = delete;
    ~lifeline() { reset(); }

    /// A new pipe, both ends close-on-exec; throws std::system_error.
    static lifeline make();
    bool valid() const noexcept { return read_ >= 0 && write_ >= 0; }
    int read_fd() const noexcept { return read_; }
    int write_fd() const noexcept { return write_; }
    /// Closes both ends.
    void reset() noexcept;

private:
    int read_ = -1;
    int write_ = -1;
};

/// In a forked keeper, before anything else closes descriptors: moves
/// `read_fd` to descriptor 3 (close-on-exec, so the daemon it execs does not
/// hold it) and closes every other descriptor from 3 up (close_inherited_fds),
/// so that no apilb write end stays in the keeper. Returns 3, or -1.
/// Async-signal-safe.
int keep_only_lifeline(int read_fd, int bound) noexcept;

/// pidfd_open(pid): -1 (errno set) when the kernel lacks it or `pid` is gone.
/// Opened by the parent before it reaps the child, it names that process
/// and no later one with a reused pid.
int open_pidfd(pid_t pid) noexcept;

/// Whether the process of `pidfd` has ended (its pidfd is readable).
bool pidfd_ended(int pidfd) noexcept;

/// Sends `sig` through `pidfd` (no pid reuse race); 0 or an errno.
int pidfd_signal(int pidfd, int sig) noexcept;

/// One child handed over in an upgrade: a keeper (the leader of its
/// process group with its daemon) that the receiving process did not fork.
struct handed_child {
    std::string name;   ///< "zebra", "bgpd", "bfdd", ...
    pid_t pid = -1;     ///< the keeper
    pid_t daemon = -1;  ///< the daemon it runs (from its pid file; -1 unknown)
    int pidfd = -1;     ///< the keeper's, owned
};

/// What a supervisor hands to the next apilb: its lifeline and its children.
/// Owns every descriptor in it; move-only.
struct handed_children {
    std::string group;  ///< the supervisor's name on the wire ("frr")
    lifeline line;
    std::vector<handed_child> children;

    handed_children() = default;
    handed_children(handed_children&& other) noexcept;
    handed_children& operator=(handed_children&& other) noexcept;
    handed_children(const handed_children&) = delete;
    handed_children& operator=(const handed_children&) = delete;
    ~handed_children() { reset(); }
    /// Closes every descriptor and forgets the children.
    void reset() noexcept;
};

}  // namespace apilb
