// The upgrade handover channel (docs/upgrade.md, "Zero-drop upgrade"):
// versioned, bounded frames over an inherited AF_UNIX SOCK_SEQPACKET socket,
// with descriptors passed by SCM_RIGHTS. Blocking calls, each bounded by its
// deadline; used by the new process before it serves and by the old one's
// upgrade thread, never by a worker.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "apilb/dataplane/session_record.hpp"

namespace apilb::handover {

/// The protocol both sides must speak; a frame of another version is refused.
/// 2 added the session frames: a release that speaks 1 cannot take sessions.
/// 3 added the state frames (health and counters); a release that speaks 2
/// would refuse them mid-way as an unknown type, so the skew is refused at
/// the first frame instead, with both versions in the reason.
/// 4 added the child frames (supervised daemons that move with an upgrade,
/// a bgp section's announcement): a release that speaks 3 would take the
/// VIPs off as it starts and stop FRR with the old process. 5 added the
/// vrrp section's handover (the track file, the notify FIFO, keepalived's
/// keeper as child frames): a release that speaks 4 would write FAULT as it
/// starts and move the VIP to the peer.
inline constexpr std::uint16_t protocol_version = 5;
/// Magic, version, type, payload length.
inline constexpr std::size_t header_bytes = 12;
/// Hard limit of one frame, header included.
inline constexpr std::size_t max_frame_bytes = 64 * 1024;
/// Hard limit of descriptors in one frame (the kernel's SCM_MAX_FD is 253).
inline constexpr std::size_t max_frame_fds = 64;
/// The environment variable that names the new process's end of the channel.
inline constexpr const char* channel_env = "APILB_HANDOVER_FD";

/// What a frame says; its number is on the wire.
enum class frame_type : std::uint16_t {
    hello = 1,           ///< new -> old: "<pid> <version>"
    listener = 2,        ///< old -> new: "<kind> <address>", one descriptor per socket
    listeners_end = 3,   ///< old -> new: "<count of listener frames>"
    ready = 4,           ///< new -> old: "<pid>"
    abort = 5,           ///< either way: the reason
    session = 6,         ///< old -> new: a session record, its client and backend sockets
    sessions_end = 7,    ///< old -> new: "<count of session frames>"
    sessions_taken = 8,  ///< new -> old: "<count of session frames received>"
    state = 9,           ///< old -> new: health and counters, lines of handover_state.hpp
    state_end = 10,      ///< old -> new: "<count of state frames sent>"
    child = 11,          ///< old -> new: a lifeline or a child process (handover_children.hpp)
};

/// The version of the session record inside a `session` frame; a record of
/// another version is refused (its session reset), the channel goes on.
inline constexpr unsigned session_record_version = 1;
/// Hard limit of one session record.
inline constexpr std::size_t max_session_record_bytes = 1024;

/// Any failure of the channel: a timeout, a closed or foreign peer, a bad frame.
class handover_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A frame of another protocol version than protocol_version: the peer is
/// another release, told why with an `abort` (docs/upgrade.md).
class version_skew_error : public handover_error {
public:
    using handover_error::handover_error;
};

/// Descriptors received with a frame; closes the ones not released.
class owned_fds {
public:
    owned_fds() = default;
    owned_fds(owned_fds&& other) noexcept : fds_(std::move(other.fds_)) { other.fds_.clear(); }
    owned_fds& operator=(owned_fds&& other) noexcept;
    owned_fds(const owned_fds&) = delete;
    owned_fds& operator=(const owned_fds&) = delete;
    ~owned_fds() { reset(); }

    void push_back(int fd) { fds_.push_back(fd); }
    std::size_t size() const noexcept { return fds_.size(); }
    bool empty() const noexcept { return fds_.empty(); }
    const std::vector<int>& get() const noexcept { return fds_; }
    /// Hands every descriptor to the caller, who must close them.
    std::vector<int> release() noexcept;
    /// Closes every descriptor.
    void reset() noexcept;

private:
    std::vector<int> fds_;
};

/// A frame's header and payload, parsed from bytes (no descriptors).
struct frame_view {
    frame_type type;
    std::string_view payload;
};

/// A received frame with its descriptors.
struct frame {
    frame_type type;
    std::string payload;
    owned_fds fds;
};

/// The bytes of a frame of `type` with `payload` (`version` only differs in tests).
std::string encode_frame(frame_type type, std::string_view payload, std::uint16_t version = protocol_version);

/// Parses one whole message as a frame; throws handover_error saying what is
/// wrong (short, magic, version skew, length, unknown type). Pure: fuzzed.
frame_view decode_frame(std::string_view message);

/// How many descriptors a frame of `type` may carry.
std::size_t fds_allowed(frame_type type) noexcept;

/// Sends `bytes` as one message with `fds` (not closed), as they are: no
/// check of size, framing or descriptor count (send_frame makes them; tests
/// send bad frames through this). Throws handover_error.
void send_message(int sock, std::string_view bytes, std::span<const int> fds,
                  std::chrono::steady_clock::time_point deadline);

/// Sends one frame with `fds` (not closed: the caller keeps its copies),
/// waiting at most until `deadline` for room. Throws handover_error.
void send_frame(int sock, frame_type type, std::string_view payload, std::span<const int> fds,
                std::chrono::steady_clock::time_point deadline);

/// Receives one frame, waiting at most until `deadline`. Received
/// descriptors are close-on-exec; on any error every one of them is closed
/// before it throws handover_error (timeout, peer closed, truncated,
/// oversized, too many descriptors, bad header).
frame receive_frame(int sock, std::chrono::steady_clock::time_point deadline);

/// Throws handover_error unless the peer of `sock` runs as this process's
/// effective uid (SO_PEERCRED); returns its pid.
int check_peer(int sock);

/// One listening address handed over: "data" (a listener's sockets, one per
/// old worker) or "admin" (the admin endpoint's socket).
struct listener_entry {
    std::string kind;
    std::string address;
};

/// "<kind> <address>"; throws handover_error if the payload is not that
/// (kind "data" or "admin", address without spaces, at most 256 bytes).
listener_entry parse_listener(std::string_view payload);
/// The payload of a `session` frame: "v1 listener=<a> pool=<p> backend=<b>
/// address=<a> to=<n> from=<n> age_ms=<n> client_fin=<0|1> backend_fin=<0|1>",
/// every field once, in that order, values without spaces.
std::string encode_session(const session_record& r);
/// Parses a `session` payload; throws handover_error naming the field and
/// what was expected (unknown record version, over max_session_record_bytes,
/// a missing, misplaced or malformed field). Pure: fuzzed.
session_record parse_session(std::string_view payload);

/// "<pid> <version>" of a hello; throws handover_error.
std::pair<int, std::string> parse_hello(std::string_view payload);
/// A decimal count or pid, 0..2^31-1; throws handover_error naming `what`.
int parse_number(std::string_view text, const char* what);
/// The test-only hook `name` from the environment (APILB_UPGRADE_TEST_*,
/// APILB_RELOAD_TEST_*): its decimal value, or nullopt when it is unset or
/// not a number (a production process never has one).
std::optional<int> test_hook(const char* name);

}  // namespace apilb::handover
