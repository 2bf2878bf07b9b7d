#include "apilb/dataplane/fd_table.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <filesystem>

namespace apilb {

std::uint64_t count_open_fds() {
    struct stat st {};
    if (::stat("/proc/self/fd", &st) == 0 && st.st_size > 0) return static_cast<std::uint64_t>(st.st_size);
    std::error_code ec;
    std::uint64_t n = 0;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        ++n;
    }
    return n > 0 ? n - 1 : 0;  // less the listing's own descriptor
}

std::error_code reserve_fd_table(std::uint64_t descriptors) {
    if (descriptors < 2 || descriptors > INT_MAX) return {};
    // Any open descriptor will do to duplicate; /dev/null is always there.
    const int probe = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (probe < 0) return {errno, std::system_category()};
    std::error_code ec;
    // F_DUPFD takes the lowest free descriptor from the one asked for: the
    // table is grown to hold it, and stays so after the close.
    const int high = ::fcntl(probe, F_DUPFD_CLOEXEC, static_cast<int>(descriptors - 1));
    if (high < 0) {
        ec = {errno, std::system_category()};
    } else {
        ::close(high);
    }
    ::close(probe);
    return ec;
}

}  // namespace apilb
