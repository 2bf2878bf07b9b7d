// The process's descriptor table: how full it is, and growing it ahead of
// need so that accept() and socket() never wait for the kernel to grow it.
#pragma once

#include <cstdint>
#include <system_error>

namespace apilb {

/// The process's open file descriptors: in constant time where the kernel
/// gives the size of /proc/self/fd (Linux 6.2+), else by listing it (about
/// 1 µs per descriptor: 17 ms of a /metrics scrape at 9 000 sessions).
std::uint64_t count_open_fds();

/// Grows the kernel's descriptor table of this process to hold descriptors
/// 0..`descriptors`-1 (rounded up by the kernel), so that accept() and
/// socket() never grow it while serving. In a process with more than one
/// thread each growth (the table doubles: 64, 128, ... 16384) waits for an
/// RCU grace period in the kernel (expand_fdtable -> synchronize_rcu), 10-90 ms
/// on a loaded machine, during which the worker that needed the descriptor
/// sleeps; a reconnect storm into a fresh process meets all of them. The table
/// never shrinks. Returns the error of the descriptor used to grow it, if any.
std::error_code reserve_fd_table(std::uint64_t descriptors);

}  // namespace apilb
