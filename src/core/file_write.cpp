#include "apilb/core/file_write.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace apilb {
namespace {

std::error_code last_error() { return {errno, std::generic_category()}; }

/// Writes all of `content`; a regular file may take it in several writes.
std::error_code write_all(int fd, const std::string& content) {
    std::size_t done = 0;
    while (done < content.size()) {
        const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n < 0 ? last_error() : std::make_error_code(std::errc::io_error);
        done += static_cast<std::size_t>(n);
    }
    return {};
}

/// fsync of the directory that holds `path`, so the rename itself is on disk.
std::error_code sync_directory_of(const std::string& path) {
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return last_error();
    std::error_code ec = ::fsync(fd) == 0 ? std::error_code{} : last_error();
    ::close(fd);
    return ec;
}

}  // namespace

std::error_code write_file_atomically(const std::string& path, const std::string& content, bool durable) {
    const std::string tmp = path + ".tmp";
    // O_NONBLOCK: should the name be a FIFO with no reader, open fails
    // (ENXIO) instead of waiting for one on the control thread.
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0644);
    if (fd < 0) return last_error();
    std::error_code ec = write_all(fd, content);
    if (!ec && durable && ::fsync(fd) != 0) ec = last_error();
    if (::close(fd) != 0 && !ec) ec = last_error();
    // rename(2) replaces the name in one step; keepalived's inotify watch sees
    // a file that was complete from its first byte.
    if (!ec && ::rename(tmp.c_str(), path.c_str()) != 0) ec = last_error();
    if (ec) {
        ::unlink(tmp.c_str());
        return ec;
    }
    return durable ? sync_directory_of(path) : std::error_code{};
}

}  // namespace apilb
