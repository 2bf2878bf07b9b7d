#include "apilb/core/file_read.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace apilb {
namespace {

/// What a file that is not regular is, in the words of `ls -l`'s first column.
const char* kind_of(mode_t mode) {
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

file_contents failed(std::string message) { return {.bytes = {}, .error = std::move(message)}; }

/// Closes the descriptor on every path out.
struct fd_guard {
    int fd;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

}  // namespace

std::string describe_size(std::size_t bytes) {
    if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
    if (bytes >= (1u << 10) && bytes % (1u << 10) == 0) return std::to_string(bytes >> 10) + " KiB";
    return std::to_string(bytes) + " bytes";
}

file_contents read_regular_file(const std::string& path, std::size_t max_bytes) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer; O_NOCTTY: a terminal never becomes ours. Regular files ignore
    // O_NONBLOCK, so the reads below are ordinary.
    const fd_guard file{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)};
    if (file.fd < 0) {
        const int err = errno;
        struct stat st {};
        // A Unix socket cannot be opened at all (ENXIO); say what it is.
        if (err == ENXIO && ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
            return failed(std::string("is ") + kind_of(st.st_mode) + ", expected a regular file");
        }
        return failed(std::string("cannot be read: ") + std::strerror(err));
    }
    struct stat st {};
    if (::fstat(file.fd, &st) != 0) return failed(std::string("cannot be read: ") + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return failed(std::string("is ") + kind_of(st.st_mode) + ", expected a regular file");
    const std::string too_large = "is larger than " + describe_size(max_bytes);
    if (static_cast<std::size_t>(st.st_size) > max_bytes) return failed(too_large);

    // The size can change under us (or be 0, as in /proc): read to the end,
    // but never more than one byte past the limit.
    std::string bytes(static_cast<std::size_t>(st.st_size) + 1, '\0');
    std::size_t used = 0;
    while (true) {
        if (used == bytes.size()) {
            if (used > max_bytes) return failed(too_large);
            bytes.resize(std::min(max_bytes + 1, std::max<std::size_t>(used * 2, 4096)));
        }
        const ssize_t n = ::read(file.fd, bytes.data() + used, bytes.size() - used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return failed(std::string("cannot be read: ") + std::strerror(errno));
        if (n == 0) break;
        used += static_cast<std::size_t>(n);
    }
    if (used > max_bytes) return failed(too_large);
    bytes.resize(used);
    return {.bytes = std::move(bytes), .error = {}};
}

}  // namespace apilb
