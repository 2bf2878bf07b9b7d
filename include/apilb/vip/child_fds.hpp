// What a child forked by a supervisor (keepalived, FRR) must not inherit:
// apilb's listening and session sockets. Control thread; the second function
// runs in the forked child of a multithreaded process.
#pragma once

namespace apilb {

/// Before fork: the bound for close_inherited_fds (RLIMIT_NOFILE, at most 2^20).
int inherited_fd_bound() noexcept;

/// In the forked child: closes every descriptor from `first` (3: all but
/// stdin, stdout and stderr) up (close_range, or one by one below `bound`
/// where the kernel lacks it). Async-signal-safe.
void close_inherited_fds(int bound, int first = 3) noexcept;

}  // namespace apilb
