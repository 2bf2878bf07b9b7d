// apilb's side of the BGP announcement (docs/bgp.md): each VIP sits on the
// configured local interface while this node can serve it, so FRR announces
// it, and leaves it when the node cannot, so FRR withdraws it; a local route
// keeps the node answering for the VIP meanwhile. On SIGTERM the VIPs are
// withdrawn first and the drain starts withdraw_wait later. FRR's session
// state is polled through vtysh for the metrics. Control thread only (every
// member function but the constructor checks it).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apilb/core/bgp_report.hpp"
#include "apilb/dataplane/snapshot.hpp"
#include "apilb/logging/logging.hpp"
#include "apilb/vip/child_lifeline.hpp"

namespace apilb {

class frr_supervisor;

/// What an upgrade moves from the old process's agent to the new one's
/// (docs/upgrade.md, "With a bgp section"): each VIP's announcement as it
/// stands, the counters behind the apilb_bgp_* metrics, and with manage:
/// true the FRR daemons' keepers and lifeline. Move-only (it owns descriptors).
struct bgp_handover {
    struct vip {
        std::string ip;
        bool known = false;      ///< the old process had applied it at least once
        bool announced = false;  ///< on the interface (FRR announces it)
        std::uint64_t withdrawals = 0;
    };
    std::vector<vip> vips;
    std::uint64_t address_errors = 0;
    std::uint64_t frr_query_failures = 0;
    std::uint64_t frr_restarts = 0;
    bool managed = false;  ///< manage: true: `frr` holds the daemons
    handed_children frr;
};

class bgp_agent {
public:
    /// `snap` must have a bgp section. Nothing happens before prepare().
    bgp_agent(boost::asio::io_context& control, std::shared_ptr<const snapshot> snap);
    ~bgp_agent();
    bgp_agent(const bgp_agent&) = delete;
    bgp_agent& operator=(const bgp_agent&) = delete;

    /// Before the listeners bind: adds apilb's local route for every VIP (a
    /// listener on a VIP then binds without ip_nonlocal_bind) and takes the
    /// VIPs off the interface (a killed apilb may have left them there)
    /// until the first readiness check; with manage: true starts FRR.
    /// Failures are logged and counted.
    /// `upgrade`: started by an upgrade; the old process still owns the VIPs
    /// and FRR, so only the local routes are added (again) and nothing else
    /// is touched until take_over().
    void prepare(bool upgrade = false);

    /// Starts the readiness loop (every 10 ms) and the FRR poll (every 2 s).
    void start();

    /// The first health round is done: until then no VIP is announced, so a
    /// starting node does not announce on the config's assumed health and
    /// withdraw a moment later.
    void first_round_done() { checked_ = true; }

    /// SIGTERM: withdraws every VIP at once and calls `then` withdraw_wait
    /// later, while the node keeps serving whatever still arrives.
    void hand_off(std::function<void()> then);

    /// A second signal: the wait after the withdrawal ends now.
    void cut_short();

    /// After the drain: ends the loops, takes the VIPs off the interface and
    /// removes apilb's local routes; with manage: true then stops FRR
    /// (blocks, bgpd first: frr_supervisor::stop).
    void stop();

    /// A reload built `snap`: readiness follows its pools and listeners. The
    /// VIPs and interface stay those of the start (a changed bgp section is
    /// said once, and takes a restart).
    void update(std::shared_ptr<const snapshot> snap);

    /// For the metrics.
    bgp_report report() const;

    /// The old process of an upgrade, before sessions_end: stops changing the
    /// VIPs and supervising FRR, and returns what the new process takes over
    /// (descriptors duplicated). Throws std::runtime_error (nothing changed)
    /// when FRR is being restarted.
    bgp_handover freeze_for_upgrade();
    /// The upgrade failed (the new process is dead): acts again, and puts
    /// each VIP where its readiness says at the next check.
    void resume_after_failed_upgrade();
    /// The upgrade succeeded: from now on this process leaves the VIPs, its
    /// local routes and FRR as they are, at its exit too.
    void handed_over();
    /// The new process of an upgrade, once it has taken the sessions: takes
    /// each VIP's announcement and FRR as the old process left them and acts
    /// from here on; no change unless its own readiness differs. nullopt
    /// (the old process sent nothing, or died first): starts as on a fresh start.
    void take_over(std::optional<bgp_handover> from_old);

private:
    /// "" when `vip` may be announced, else why not.
    std::string withdraw_reason(const std::string& vip, bool is_v6) const;
    /// Puts VIP `i` on the interface or takes it off, if that is not done.
    void apply(std::size_t i, const std::string& reason);
    boost::asio::awaitable<void> readiness_loop();
    boost::asio::awaitable<void> frr_loop();
    boost::asio::awaitable<void> withdraw_wait(std::function<void()> then);
    void note_frr(bool up, const std::string& why);

    boost::asio::io_context& control_;
    std::shared_ptr<const snapshot> snap_;
    const bgp_config cfg_;  ///< the bgp section apilb started with
    boost::asio::steady_timer timer_;
    boost::asio::steady_timer frr_timer_;
    boost::asio::steady_timer wait_timer_;
    bool checked_ = false;
    bool draining_ = false;
    bool stopped_ = false;
    bool warned_section_change_ = false;
    /// Who changes the VIPs: this process, or (waiting, frozen, released) the
    /// other process of an upgrade; apply() acts only as the owner.
    enum class ownership { own, waiting, frozen, released };
    ownership owner_ = ownership::own;
    /// Per VIP: what was applied last, and when a failed change is tried again.
    struct vip_state {
        bool known = false;  ///< applied at least once
        std::string reason;  ///< last withdraw reason applied ("" = announced)
        std::chrono::steady_clock::time_point next_try{};
    };
    std::vector<vip_state> vips_;
    log_limiter address_errors_{std::chrono::seconds(10)};
    bool frr_said_ = false;  ///< the FRR state was logged at least once
    bgp_report report_;
    std::unique_ptr<frr_supervisor> frr_;  ///< manage: true
};

}  // namespace apilb
