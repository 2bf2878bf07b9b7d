#include "apilb/process/handover.hpp"

#include <fmt/format.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

namespace apilb::handover {

namespace {

using clock_type = std::chrono::steady_clock;

constexpr char magic[4] = {'A', 'L', 'B', 'H'};

void put_u16(std::string& out, std::uint16_t v) {
    out.push_back(static_cast<char>(v & 0xff));
    out.push_back(static_cast<char>(v >> 8));
}

void put_u32(std::string& out, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint32_t get_le(std::string_view bytes, std::size_t at, std::size_t n) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v |= std::uint32_t{static_cast<unsigned char>(bytes[at + i])} << (8 * i);
    return v;
}

std::string errno_text(const char* what, int err) { return fmt::format("{}: {}", what, std::strerror(err)); }

/// Waits until `sock` is ready for `events` or `deadline` passes (throws).
void wait_for(int sock, short events, clock_type::time_point deadline, const char* what) {
    while (true) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock_type::now());
        if (left.count() <= 0) throw handover_error(fmt::format("{}: timed out", what));
        pollfd p{.fd = sock, .events = events, .revents = 0};
        const int n = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 60'000)));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw handover_error(errno_text(what, errno));
        // POLLHUP with data still queued: recvmsg reads it, then sees the end.
        if (n > 0) return;
    }
}

}  // namespace

owned_fds& owned_fds::operator=(owned_fds&& other) noexcept {
    if (this != &other) {
        reset();
        fds_ = std::move(other.fds_);
        other.fds_.clear();
    }
    return *this;
}

std::vector<int> owned_fds::release() noexcept {
    std::vector<int> out = std::move(fds_);
    fds_.clear();
    return out;
}

void owned_fds::reset() noexcept {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
}

std::string encode_frame(frame_type type, std::string_view payload, std::uint16_t version) {
    std::string out(magic, sizeof magic);
    put_u16(out, version);
    put_u16(out, static_cast<std::uint16_t>(type));
    put_u32(out, static_cast<std::uint32_t>(payload.size()));
    out.append(payload);
    return out;
}

frame_view decode_frame(std::string_view message) {
    if (message.size() < header_bytes) {
        throw handover_error(
            fmt::format("frame of {} byte(s) is shorter than its {}-byte header", message.size(), header_bytes));
    }
    if (message.size() > max_frame_bytes) {
        throw handover_error(fmt::format("frame of {} bytes is over the limit of {}", message.size(), max_frame_bytes));
    }
    if (std::memcmp(message.data(), magic, sizeof magic) != 0) throw handover_error("frame without the ALBH magic");
    const auto version = static_cast<std::uint16_t>(get_le(message, 4, 2));
    if (version != protocol_version) {
        throw version_skew_error(
            fmt::format("protocol version {} from the peer, this side speaks {}", version, protocol_version));
    }
    const auto type = static_cast<std::uint16_t>(get_le(message, 6, 2));
    if (type < static_cast<std::uint16_t>(frame_type::hello) || type > static_cast<std::uint16_t>(frame_type::child)) {
        throw handover_error(fmt::format("unknown frame type {}", type));
    }
    const std::uint32_t length = get_le(message, 8, 4);
    if (length != message.size() - header_bytes) {
        throw handover_error(fmt::format("frame says {} payload byte(s), {} arrived (truncated or padded)", length,
                                         message.size() - header_bytes));
    }
    return {.type = static_cast<frame_type>(type), .payload = message.substr(header_bytes)};
}

std::size_t fds_allowed(frame_type type) noexcept {
    switch (type) {
    case frame_type::listener: return max_frame_fds;
    case frame_type::session: return 2;  // client, backend
    case frame_type::child: return 2;    // a lifeline's two ends, or a keeper's pidfd
    default: return 0;
    }
}

void send_frame(int sock, frame_type type, std::string_view payload, std::span<const int> fds,
                clock_type::time_point deadline) {
    if (fds.size() > fds_allowed(type)) {
        throw handover_error(
            fmt::format("{} descriptor(s) for a frame that may carry {}", fds.size(), fds_allowed(type)));
    }
    const std::string bytes = encode_frame(type, payload);
    if (bytes.size() > max_frame_bytes) throw handover_error("frame over the size limit");
    send_message(sock, bytes, fds, deadline);
}

void send_message(int sock, std::string_view bytes, std::span<const int> fds, clock_type::time_point deadline) {
    iovec iov{.iov_base = const_cast<char*>(bytes.data()), .iov_len = bytes.size()};
    std::vector<char> control(fds.empty() ? 0 : CMSG_SPACE(fds.size() * sizeof(int)));
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds.empty()) {
        msg.msg_control = control.data();
        msg.msg_controllen = control.size();
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
        std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
    }
    while (true) {
        const ssize_t n = ::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0) return;  // SOCK_SEQPACKET: all of it or nothing
        if (errno == EINTR) continue;
        if (errno != EAGAIN) throw handover_error(errno_text("send", errno));
        wait_for(sock, POLLOUT, deadline, "send");
    }
}

frame receive_frame(int sock, clock_type::time_point deadline) {
    // One byte more than a frame may have: a longer message shows as MSG_TRUNC.
    std::string buf(max_frame_bytes + 1, '\0');
    alignas(cmsghdr) char control[CMSG_SPACE(max_frame_fds * sizeof(int))];
    while (true) {
        iovec iov{.iov_base = buf.data(), .iov_len = buf.size()};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t n = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            wait_for(sock, POLLIN, deadline, "receive");
            continue;
        }
        if (n < 0) throw handover_error(errno_text("receive", errno));
        // Every descriptor the kernel installed is ours to close from here,
        // whatever is wrong with the rest.
        frame f{.type = frame_type::abort, .payload = {}, .fds = {}};
        bool foreign_control = false;
        if (msg.msg_controllen > 0) {
            for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
                    foreign_control = true;
                    continue;
                }
                const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (std::size_t i = 0; i < count; ++i) {
                    int fd = -1;
                    std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                    f.fds.push_back(fd);
                }
            }
        }
        if (n == 0) throw handover_error("the peer closed the channel");
        if (msg.msg_flags & MSG_TRUNC) {
            throw handover_error(fmt::format("frame over the limit of {} bytes", max_frame_bytes));
        }
        if (msg.msg_flags & MSG_CTRUNC) {
            throw handover_error(fmt::format("more than {} descriptors in one frame", max_frame_fds));
        }
        if (foreign_control) throw handover_error("ancillary data other than SCM_RIGHTS");
        const frame_view view = decode_frame(std::string_view(buf.data(), static_cast<std::size_t>(n)));
        if (f.fds.size() > fds_allowed(view.type)) {
            throw handover_error(fmt::format("{} descriptor(s) with a frame of type {} that may carry {}", f.fds.size(),
                                             static_cast<int>(view.type), fds_allowed(view.type)));
        }
        f.type = view.type;
        f.payload = std::string(view.payload);
        return f;
    }
}

int check_peer(int sock) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        throw handover_error(errno_text("SO_PEERCRED", errno));
    }
    if (cred.uid != ::geteuid()) {
        throw handover_error(fmt::format("peer pid {} runs as uid {}, not {}", cred.pid, cred.uid, ::geteuid()));
    }
    return cred.pid;
}

int parse_number(std::string_view text, const char* what) {
    int v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc{} || end != text.data() + text.size() || v < 0 || text.empty()) {
        throw handover_error(
            fmt::format("{}: expected a decimal number, got \"{}\"", what, std::string(text.substr(0, 32))));
    }
    return v;
}

std::optional<int> test_hook(const char* name) {
    const char* v = std::getenv(name);
    if (v == nullptr) return std::nullopt;
    try {
        return parse_number(v, name);
    } catch (const handover_error&) {
        return std::nullopt;
    }
}

listener_entry parse_listener(std::string_view payload) {
    const auto space = payload.find(' ');
    if (space == std::string_view::npos || payload.size() > 256) {
        throw handover_error("listener frame: expected \"<kind> <address>\"");
    }
    listener_entry e{.kind = std::string(payload.substr(0, space)), .address = std::string(payload.substr(space + 1))};
    if (e.kind != "data" && e.kind != "admin") throw handover_error("listener frame: kind must be data or admin");
    if (e.address.empty() || e.address.find_first_of(" \n\r\t") != std::string::npos) {
        throw handover_error("listener frame: address must be one word");
    }
    return e;
}

std::string encode_session(const session_record& r) {
    return fmt::format(
        "v{} listener={} pool={} backend={} address={} to={} from={} age_ms={} client_fin={} backend_fin={}",
        session_record_version, r.listener, r.pool, r.backend, r.backend_address, r.bytes_to_backend,
        r.bytes_from_backend, r.age_ms, r.client_fin ? 1 : 0, r.backend_fin ? 1 : 0);
}

namespace {

/// The next space-separated word of `rest` as "<key>=<value>"; returns the
/// value and moves `rest` past it. Throws naming `key` if it is not next.
std::string_view take_field(std::string_view& rest, std::string_view key) {
    const auto end = rest.find(' ');
    const std::string_view word = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
    if (word.size() <= key.size() + 1 || !word.starts_with(key) || word[key.size()] != '=') {
        throw handover_error(
            fmt::format("session record: expected {}=<value>, got \"{}\"", key, std::string(word.substr(0, 64))));
    }
    return word.substr(key.size() + 1);
}

std::uint64_t take_u64(std::string_view& rest, std::string_view key) {
    const std::string_view text = take_field(rest, key);
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        throw handover_error(fmt::format("session record: {} must be a decimal number, got \"{}\"", key,
                                         std::string(text.substr(0, 32))));
    }
    return v;
}

bool take_flag(std::string_view& rest, std::string_view key) {
    const std::string_view text = take_field(rest, key);
    if (text != "0" && text != "1") throw handover_error(fmt::format("session record: {} must be 0 or 1", key));
    return text == "1";
}

}  // namespace

session_record parse_session(std::string_view payload) {
    if (payload.size() > max_session_record_bytes) {
        throw handover_error(fmt::format("session record of {} bytes is over the limit of {}", payload.size(),
                                         max_session_record_bytes));
    }
    std::string_view rest = payload;
    const auto end = rest.find(' ');
    const std::string_view version = rest.substr(0, end);
    if (version != fmt::format("v{}", session_record_version)) {
        throw handover_error(fmt::format("session record version \"{}\", this side reads v{}",
                                         std::string(version.substr(0, 16)), session_record_version));
    }
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
    session_record r;
    r.listener = take_field(rest, "listener");
    r.pool = take_field(rest, "pool");
    r.backend = take_field(rest, "backend");
    r.backend_address = take_field(rest, "address");
    r.bytes_to_backend = take_u64(rest, "to");
    r.bytes_from_backend = take_u64(rest, "from");
    r.age_ms = take_u64(rest, "age_ms");
    r.client_fin = take_flag(rest, "client_fin");
    r.backend_fin = take_flag(rest, "backend_fin");
    if (!rest.empty()) throw handover_error("session record: unexpected bytes after backend_fin");
    return r;
}

std::pair<int, std::string> parse_hello(std::string_view payload) {
    const auto space = payload.find(' ');
    if (space == std::string_view::npos || payload.size() > 256) {
        throw handover_error("hello frame: expected \"<pid> <version>\"");
    }
    return {parse_number(payload.substr(0, space), "hello pid"), std::string(payload.substr(space + 1))};
}

}  // namespace apilb::handover
