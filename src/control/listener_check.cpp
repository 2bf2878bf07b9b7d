#include "apilb/control/listener_check.hpp"

#include "apilb/core/thread_role.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <system_error>
#include <unordered_set>
#include <vector>

namespace apilb {
namespace {

namespace fs = std::filesystem;
using boost::asio::ip::tcp;

/// A listening socket from the kernel's table.
struct listening_socket {
    boost::asio::ip::address address;
    std::uint16_t port = 0;
    unsigned long uid = 0;
    unsigned long inode = 0;
};

/// Bounds on reading /proc: a host with very many sockets or processes
/// makes the check incomplete (the bind rules still apply), never slow.
constexpr std::size_t max_table_lines = 1 << 20;
constexpr std::size_t max_processes = 20000;
constexpr auto scan_budget = std::chrono::seconds(1);

/// "0100007F" (a 32-bit word as the kernel prints it: in host order) back
/// into the word's bytes as they sit in memory, which are the address's.
bool parse_words(std::string_view hex, unsigned char* out, std::size_t words) {
    if (hex.size() != words * 8) return false;
    for (std::size_t i = 0; i < words; ++i) {
        std::uint32_t w = 0;
        for (char c : hex.substr(i * 8, 8)) {
            const int v = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (v < 0) return false;
            w = (w << 4) | static_cast<std::uint32_t>(v);
        }
        std::memcpy(out + 4 * i, &w, 4);
    }
    return true;
}

std::optional<listening_socket> parse_line(const std::string& line, bool v6) {
    std::istringstream in(line);
    std::string sl, local, remote, st, queues, timer, retransmits;
    listening_socket s;
    unsigned long timeout = 0;
    if (!(in >> sl >> local >> remote >> st >> queues >> timer >> retransmits >> s.uid >> timeout >> s.inode)) {
        return std::nullopt;
    }
    if (st != "0A") return std::nullopt;  // TCP_LISTEN
    const auto colon = local.find(':');
    if (colon == std::string::npos) return std::nullopt;
    const std::string_view addr(local.data(), colon);
    if (v6) {
        boost::asio::ip::address_v6::bytes_type b{};
        if (!parse_words(addr, b.data(), 4)) return std::nullopt;
        s.address = boost::asio::ip::address_v6(b);
    } else {
        boost::asio::ip::address_v4::bytes_type b{};
        if (!parse_words(addr, b.data(), 1)) return std::nullopt;
        s.address = boost::asio::ip::address_v4(b);
    }
    s.port = static_cast<std::uint16_t>(std::stoul(local.substr(colon + 1), nullptr, 16));
    return s;
}

/// Sockets listening on `ep`'s port in its family whose address overlaps it.
std::vector<listening_socket> listeners_on(const tcp::endpoint& ep) {
    const bool v6 = ep.address().is_v6();
    std::ifstream table(v6 ? "/proc/net/tcp6" : "/proc/net/tcp");
    std::vector<listening_socket> found;
    std::string line;
    std::getline(table, line);  // the header
    for (std::size_t n = 0; n < max_table_lines && std::getline(table, line); ++n) {
        const auto s = parse_line(line, v6);
        // The kernel prints its listening hash first, then the other
        // states: the first other line ends the listeners.
        if (!s) break;
        if (s->port != ep.port()) continue;
        if (s->address == ep.address() || s->address.is_unspecified() || ep.address().is_unspecified()) {
            found.push_back(*s);
        }
    }
    return found;
}

/// The socket inodes among this process's descriptors.
std::unordered_set<unsigned long> own_socket_inodes() {
    std::unordered_set<unsigned long> inodes;
    std::error_code ec;
    // increment(ec), not ++: entries come and go while we read.
    for (fs::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) {
        struct stat st {};
        if (::stat(it->path().c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) inodes.insert(st.st_ino);
    }
    return inodes;
}

/// "pid 1234 (apilb)" for the process that holds socket `inode`, looking
/// through /proc within the scan budget; empty if not found (another user's
/// process, hidden from us, or past the bounds).
std::string process_holding(unsigned long inode) {
    const std::string wanted = fmt::format("socket:[{}]", inode);
    const auto deadline = std::chrono::steady_clock::now() + scan_budget;
    std::error_code ec;
    std::size_t processes = 0;
    for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
        const fs::path proc = it->path();
        const std::string pid = proc.filename().string();
        if (pid.empty() || !std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
        if (++processes > max_processes || std::chrono::steady_clock::now() > deadline) break;
        std::error_code fd_ec;
        for (fs::directory_iterator fd(proc / "fd", fd_ec), fd_end; !fd_ec && fd != fd_end; fd.increment(fd_ec)) {
            std::error_code link_ec;
            if (fs::read_symlink(fd->path(), link_ec).string() != wanted) continue;
            std::ifstream comm(proc / "comm");
            std::string name;
            std::getline(comm, name);
            return fmt::format("pid {} ({})", pid, name);
        }
    }
    return {};
}

std::string describe(const std::vector<listening_socket>& holders) {
    const listening_socket& h = holders.front();
    std::string who = process_holding(h.inode);
    if (who.empty()) who = fmt::format("a process of uid {} (socket inode {})", h.uid, h.inode);
    const std::string on = h.address.is_v6() ? fmt::format("[{}]:{}", h.address.to_string(), h.port)
                                             : fmt::format("{}:{}", h.address.to_string(), h.port);
    return fmt::format("{} listens on {}", who, on);
}

/// Sockets on `ep` that are not this process's.
std::vector<listening_socket> foreign_listeners(const tcp::endpoint& ep) {
    std::vector<listening_socket> found = listeners_on(ep);
    if (found.empty()) return found;
    const auto own = own_socket_inodes();
    std::erase_if(found, [&](const listening_socket& s) { return own.contains(s.inode); });
    return found;
}

}  // namespace

std::string foreign_listener_holder(const tcp::endpoint& ep) {
    const auto found = foreign_listeners(ep);
    return found.empty() ? std::string() : describe(found);
}

void refuse_foreign_listener(const std::string& listener, const tcp::endpoint& ep) {
    APILB_ASSERT_ROLE(control);
    const auto found = foreign_listeners(ep);
    if (found.empty()) return;
    const std::string address = ep.address().is_v6() ? fmt::format("[{}]:{}", ep.address().to_string(), ep.port())
                                                     : fmt::format("{}:{}", ep.address().to_string(), ep.port());
    throw std::system_error(std::make_error_code(std::errc::address_in_use),
                            fmt::format("listener {}: {} is taken: {}; apilb does not share a listening "
                                        "address with another process",
                                        listener, address, describe(found)));
}

}  // namespace apilb
