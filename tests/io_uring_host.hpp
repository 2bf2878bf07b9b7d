// Whether this host lets a process have an io_uring at all. Some hosts
// refuse it by policy: a container runtime's default seccomp profile
// (EPERM), the `kernel.io_uring_disabled` sysctl (EPERM), a kernel built
// without it (ENOSYS). There the tests of relay.io: io_uring skip, saying
// why, instead of failing. Found by a raw io_uring_setup of a one-entry
// ring, not by apilb's own probe (io_uring_unavailable): a fault in the
// probe must fail its tests, never make the ring's tests skip themselves.
// scripts/test.sh asks the same question before its io_uring stage.
#pragma once

#include <linux/io_uring.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

namespace apilb::test {

/// Why this host refuses io_uring to this process, or "" if it does not.
/// Only a refusal counts (EPERM, EACCES, ENOSYS): a setup that fails for
/// want of memory or descriptors is the test's failure, not the host's.
inline const std::string& io_uring_refused_here() {
    static const std::string why = [] {
        io_uring_params params{};
        const long fd = ::syscall(__NR_io_uring_setup, 1, &params);
        if (fd >= 0) {
            ::close(static_cast<int>(fd));
            return std::string();
        }
        const int err = errno;
        if (err != EPERM && err != EACCES && err != ENOSYS) return std::string();
        std::string out = std::string("io_uring_setup failed: ") + std::strerror(err);
        std::ifstream sysctl("/proc/sys/kernel/io_uring_disabled");
        if (int disabled = 0; sysctl >> disabled && disabled != 0)
            out += " (kernel.io_uring_disabled = " + std::to_string(disabled) + ")";
        return out;
    }();
    return why;
}

}  // namespace apilb::test

/// First statement of a test that needs io_uring on this host.
#define APILB_SKIP_WITHOUT_IO_URING()                                                                    \
    do {                                                                                                 \
        if (const std::string& apilb_why_ = ::apilb::test::io_uring_refused_here(); !apilb_why_.empty()) \
            GTEST_SKIP() << "this host refuses io_uring to its processes: " << apilb_why_;               \
    } while (false)
