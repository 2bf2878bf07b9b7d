// apilb's side of the VIP: tells keepalived whether this node deserves the
// VIPs (a track file written atomically), learns the node's VRRP role from
// keepalived's notify FIFO, and hands the VIPs over on SIGTERM before the
// drain. Lives on the control io_context; see docs/vip.md.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

#include "apilb/core/file_write.hpp"
#include "apilb/dataplane/snapshot.hpp"
#include "apilb/logging/logging.hpp"
#include "apilb/vip/child_lifeline.hpp"

namespace apilb {

class keepalived_supervisor;

/// This node's role as keepalived last reported it.
enum class vrrp_role { unknown = 0, backup = 1, master = 2, fault = 3, stop = 4 };
const char* to_string(vrrp_role);

/// Parses one notify FIFO line (`INSTANCE "VI_APILB" MASTER 150`); nullopt
/// for lines about other things (groups, virtual servers) or garbage.
std::optional<vrrp_role> parse_notify_line(const std::string& line);
/// The role named by to_string(); unknown for anything else.
vrrp_role parse_role(const std::string& text);

/// What an upgrade's old process hands over of the VIP when it lets go
/// (docs/upgrade.md, "With a vrrp section"): the role keepalived last
/// reported and the notify bytes it had read but not yet taken as a line.
struct vrrp_release {
    vrrp_role role = vrrp_role::unknown;
    std::string pending;
};

/// Control thread; start(), hand_off(), update() and stop() check it
/// (APILB_ASSERT_ROLE). role() may be read from any thread.
class vrrp_agent {
public:
    /// `snap` must have a vrrp section. Nothing happens before start().
    vrrp_agent(boost::asio::io_context& control, std::shared_ptr<const snapshot> snap);
    ~vrrp_agent();
    vrrp_agent(const vrrp_agent&) = delete;
    vrrp_agent& operator=(const vrrp_agent&) = delete;

    /// Creates the state directory, writes FAULT until the first readiness
    /// check, opens the notify FIFO and starts the readiness loop. Throws
    /// std::system_error if the state directory or FIFO cannot be made.
    /// `upgrade` (the new process of an upgrade): the old process still owns
    /// the VIP's side, so this one only makes sure of the directory and opens
    /// the FIFO (so that its writer always has a reader); it writes, reads and
    /// supervises nothing before take_over().
    void start(bool upgrade = false);

    /// The old process of an upgrade: keepalived's keeper to hand over
    /// (manage: true and one runs): duplicates of its lifeline and pidfd as
    /// group "keepalived" (child frames); nullopt when there is none.
    /// Control thread; throws std::system_error.
    std::optional<handed_children> hand_over_keeper() const;

    /// The old process, once the new one has taken every session: stops
    /// writing the track file (it keeps the value it has), reading the FIFO
    /// and supervising keepalived, which goes on; says what the new process
    /// needs. Afterwards stop() and hand_off() touch nothing of the VIP.
    vrrp_release release();

    /// The new process, once the old one let go (or is gone): writes the
    /// track file from its own view (taken over with the health state, so
    /// the value does not change), reads the FIFO on from `from` (no role in
    /// it: MASTER if a VIP is on this host, else unknown), and with
    /// manage: true supervises the keeper in `keeper` (none: starts keepalived).
    void take_over(const vrrp_release& from, handed_children keeper);

    /// True while this process owns the VIP's side (not before take_over()
    /// in an upgrade's new process, not after release()).
    bool owner() const noexcept { return owner_; }

    /// SIGTERM: marks the node not ready (keepalived gives the VIPs up at
    /// once, with a priority-0 advert) and calls `then` when a peer serves
    /// the VIP, when this node never held it, or after handoff_timeout.
    void hand_off(std::function<void()> then);

    /// A second signal: a hand-off in progress stops waiting for the peer.
    void cut_short() noexcept { cut_short_ = true; }

    /// Ends the loops and closes the FIFO; the track file stays at FAULT.
    /// With manage: true, stops keepalived (blocks up to about 3 s).
    void stop();

    /// A reload built `snap` (same vrrp section or not): readiness follows
    /// its pools; with manage: true keepalived gets the new config (SIGHUP).
    void update(std::shared_ptr<const snapshot> snap);

    vrrp_role role() const noexcept { return role_.load(std::memory_order_relaxed); }

private:
    boost::asio::awaitable<void> readiness_loop();
    boost::asio::awaitable<void> notify_loop();
    /// Takes every whole line in fifo_buffer_ as a notification.
    void take_notify_lines();
    void take_notify_line(std::string line);
    boost::asio::awaitable<void> handoff_loop(std::function<void()> then);
    /// "" when this node can serve, else why not.
    std::string fault_reason() const;
    void publish(const std::string& reason);
    /// True while any VIP is on one of this host's interfaces.
    bool holds_a_vip() const;

    boost::asio::io_context& control_;
    std::shared_ptr<const snapshot> snap_;
    boost::asio::steady_timer timer_;
    boost::asio::posix::stream_descriptor fifo_;
    boost::asio::streambuf fifo_buffer_;
    bool draining_ = false;
    bool stopped_ = false;
    bool owner_ = false;
    bool released_ = false;  ///< release() ran: the new process of an upgrade owns the VIP's side
    bool cut_short_ = false;
    std::optional<std::string> published_;  ///< last reason written ("" = ready)
    /// The track file is rewritten every 10 ms while writing fails; the
    /// error is said at most every 10 s, and its end once.
    log_limiter track_errors_{std::chrono::seconds(10)};
    bool track_failing_ = false;
    std::atomic<vrrp_role> role_{vrrp_role::unknown};
    std::unique_ptr<keepalived_supervisor> supervisor_;  ///< manage: true only
};

}  // namespace apilb
