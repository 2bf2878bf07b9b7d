// Children of apilb that outlive the process that started them (docs/upgrade.md,
// "Children across an upgrade"): a supervisor's keeper processes end their
// daemon when the *last* apilb holding the lifeline's write end is gone,
// however it ended, and a process that did not fork a keeper watches it
// through a pidfd. The descriptors move to the next apilb over the handover
// channel (process/handover_children.cpp). Control thread, except the
// keeper-side helpers, which are async-signal-safe.
#pragma once

#include <sys/types.h>

#include <csignal>
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
    /// Duplicates of both ends (close-on-exec), for the next apilb; throws
    /// std::system_error.
    lifeline duplicate() const;
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

/// How a keeper runs its daemon (spawn_keeper).
struct keeper_options {
    /// The daemon's stdout and stderr (stdin /dev/null); empty: apilb's own.
    std::string out_path;
    /// The daemon's PR_SET_PDEATHSIG: a keeper killed outright takes its
    /// daemon along (SIGTERM lets keepalived give up the VIPs with a
    /// priority-0 advert; FRR's daemons drop privileges, which clears it).
    int death_signal = SIGKILL;
};

/// Forks a keeper for `argv` (argv[0] an absolute path): the leader of a new
/// process group with its daemon, holding `line`'s read end and no other
/// descriptor of apilb. The keeper passes SIGHUP on, turns SIGTERM/SIGINT or
/// the lifeline's hang-up into SIGTERM to the daemon (SIGKILL 3 s later),
/// and exits with the daemon's exit status or 128 + the signal that ended it
/// (127: it could not exec). One keeper for every supervisor (keepalived,
/// FRR). Returns its pid; throws std::system_error.
pid_t spawn_keeper(const std::vector<std::string>& argv, const lifeline& line, const keeper_options& options);

/// Whether keeper `pid` has ended: reaped with `status` set when it is this
/// process's child (`adopted` false), else seen through `pidfd` with
/// `status` -1 (another process's child: not ours to read). Never blocks.
bool keeper_ended(pid_t pid, int pidfd, bool adopted, int& status) noexcept;

/// Sends `sig` to keeper `pid`: through `pidfd` when there is one, else by
/// pid, but only to this process's own unreaped child (`adopted` false),
/// whose pid cannot have been reused.
void signal_keeper(pid_t pid, int pidfd, bool adopted, int sig) noexcept;

/// How a keeper's waitpid status (-1: not known, keeper_ended) reads in a log line.
std::string describe_keeper_status(int status);

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
