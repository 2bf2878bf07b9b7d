// A worker's io_uring (liburing), and the start-time probe that decides
// whether the workers may have one (`relay.io`). The ring is made with
// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN: only the worker's
// thread submits, and the kernel runs the completions' task work only when
// that thread enters the ring to wait, not as interrupts of whatever it is
// doing (docs/performance.md, "io_uring: the floor and the decision").
// io_uring is missing or refused under some seccomp profiles (container
// runtimes' defaults) and with the `kernel.io_uring_disabled` sysctl: the
// probe says why, and apilb then stays on epoll.
#pragma once

#include <memory>
#include <string>

#include "apilb/core/config.hpp"

struct io_uring;      // <liburing.h>
struct io_uring_sqe;  // <liburing.h>

namespace apilb {

/// Why a worker could not drive its sockets through io_uring on this host,
/// or "" if it can: sets up a ring as a worker does, asks the kernel for
/// every operation the workers submit, and runs one no-op through it (a
/// seccomp profile may allow the setup and refuse io_uring_enter). Any
/// thread; a few system calls; never throws.
std::string io_uring_unavailable();

/// What relay.io chose at start.
struct relay_io_choice {
    bool io_uring = false;
    std::string reason;  ///< why not io_uring ("" if it is, or if epoll was asked for)
};

/// relay.io resolved against io_uring_unavailable(): `auto` falls back to
/// epoll with the probe's reason; `io_uring` that cannot be had is a config
/// error (throws config_load_error naming the file, line and key).
relay_io_choice choose_relay_io(const config& cfg);

/// One worker's io_uring. Made on any thread but disabled
/// (IORING_SETUP_R_DISABLED): with SINGLE_ISSUER the thread that enables it
/// is the only one that may submit, and workers are made on the control
/// thread. Not movable: SQEs carry pointers into their owners.
class uring {
public:
    /// `entries` submission slots (a power of two). Throws std::system_error.
    explicit uring(unsigned entries);
    ~uring();
    uring(const uring&) = delete;
    uring& operator=(const uring&) = delete;

    /// Makes the calling thread the ring's only submitter. Once, before any
    /// sqe(). Throws std::system_error.
    void enable();

    /// A free submission entry, its user data 0: when the queue is full the
    /// entries in it are submitted first (the kernel takes them at once).
    /// Null only if that submission failed (completions the kernel could
    /// not post wait to be reaped: EBUSY). Submitter thread only.
    ::io_uring_sqe* sqe() noexcept;

    /// Points every entry queued but not yet submitted that names `fd` at
    /// no descriptor (-1: it completes with EBADF), and returns how many.
    /// Before `fd` is closed by a system call while entries for it may wait
    /// in the queue: once closed, its number can go to another socket before
    /// the next submission, and the kernel looks descriptors up only then.
    unsigned forget_fd(int fd) noexcept;

    ::io_uring& get() noexcept { return *ring_; }

private:
    std::unique_ptr<::io_uring> ring_;
};

}  // namespace apilb
