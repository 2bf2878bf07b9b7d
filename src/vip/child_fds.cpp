#include "apilb/vip/child_fds.hpp"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace apilb {

int inherited_fd_bound() noexcept {
    rlimit files{};
    return ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY
               ? static_cast<int>(std::min<rlim_t>(files.rlim_cur, 1 << 20))
               : 65536;
}

void close_inherited_fds(int bound, int first) noexcept {
#ifdef SYS_close_range
    if (::syscall(SYS_close_range, static_cast<unsigned>(first), ~0U, 0U) == 0) return;
#endif
    for (int fd = first; fd < bound; ++fd) ::close(fd);
}

}  // namespace apilb
