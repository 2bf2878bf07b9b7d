#include "apilb/vip/bgp_agent.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "apilb/core/config.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/pool_readiness.hpp"
#include "apilb/vip/frr_query.hpp"
#include "apilb/vip/frr_supervisor.hpp"
#include "apilb/vip/vip_address.hpp"

namespace apilb {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

/// As for VRRP: a health change reaches FRR within a few ms.
constexpr auto readiness_period = 10ms;
/// A change of a VIP that failed is tried again this much later.
constexpr auto retry_period = 1s;
/// FRR's session state: how often it is asked, and how much it may say and
/// take. 64 peers (the most the loader takes) answer in well under 1 MiB.
constexpr auto frr_poll_period = 2s;
constexpr auto frr_query_timeout = 2s;
constexpr std::size_t max_frr_answer = 4 << 20;

/// The first line of `text`, at most 200 characters: enough of vtysh's error
/// for a log line. Through single_line, as every outside text in a log line
/// is: a CR or an escape sequence from vtysh stays out of the log.
std::string first_line(const std::string& text) {
    std::string line = single_line(text.substr(0, std::min(text.find('\n'), std::size_t{200})));
    return line.empty() ? "no output" : line;
}

}  // namespace

bgp_agent::bgp_agent(asio::io_context& control, std::shared_ptr<const snapshot> snap)
    : control_(control),
      snap_(std::move(snap)),
      cfg_(*snap_->cfg->bgp),
      timer_(control),
      frr_timer_(control),
      wait_timer_(control),
      vips_(cfg_.vips.size()) {
    report_.enabled = true;
    for (const auto& v : cfg_.vips) report_.vips.push_back({.ip = v.ip});
    for (const auto& p : cfg_.peers) report_.peers.push_back({.address = p.address, .state = {}});
}

bgp_agent::~bgp_agent() = default;

bgp_report bgp_agent::report() const {
    bgp_report r = report_;
    if (frr_) r.frr_restarts = frr_->restarts();
    return r;
}

void bgp_agent::prepare(bool upgrade) {
    APILB_ASSERT_ROLE(control);
    if (upgrade) {
        // The old process's VIPs and FRR stay as they are; the route is the
        // same one (adding replaces it), so a listener on a VIP binds here too.
        owner_ = ownership::waiting;
        for (const auto& v : cfg_.vips) {
            if (auto ec = set_local_route(v.ip, v.is_v6, true)) {
                ++report_.address_errors;
                spdlog::error("bgp: cannot add the local route for VIP {}: {}", v.ip, ec.message());
            }
        }
        spdlog::info("bgp: {} VIP(s) on {}: the old process announces them until it hands them over", cfg_.vips.size(),
                     cfg_.interface);
        if (cfg_.manage) frr_ = std::make_unique<frr_supervisor>(control_, snap_->cfg);
        return;
    }
    for (const auto& v : cfg_.vips) {
        if (auto ec = set_local_route(v.ip, v.is_v6, true)) {
            ++report_.address_errors;
            spdlog::error(
                "bgp: cannot add the local route for VIP {} (the node would not answer for it once "
                "withdrawn): {}",
                v.ip, ec.message());
        }
        // Not announced before the first readiness check: an apilb that was
        // killed left its VIPs on the interface.
        if (auto ec = set_host_address(cfg_.interface, v.ip, v.is_v6, false)) {
            ++report_.address_errors;
            spdlog::error("bgp: cannot take VIP {} off {}: {}", v.ip, cfg_.interface, ec.message());
        }
    }
    spdlog::info("bgp: {} VIP(s) on {} while ready, {} peer(s); withdraw_wait {}ms", cfg_.vips.size(), cfg_.interface,
                 cfg_.peers.size(), cfg_.withdraw_wait.count());
    if (cfg_.manage) {
        frr_ = std::make_unique<frr_supervisor>(control_, snap_->cfg);
        frr_->start();
    }
}

void bgp_agent::start() {
    APILB_ASSERT_ROLE(control);
    // Started by an upgrade: take_over() starts the loop once this process owns the VIPs.
    if (owner_ != ownership::waiting) asio::co_spawn(control_, readiness_loop(), asio::detached);
    asio::co_spawn(control_, frr_loop(), asio::detached);
}

bgp_handover bgp_agent::freeze_for_upgrade() {
    APILB_ASSERT_ROLE(control);
    if (owner_ != ownership::own || stopped_) throw std::runtime_error("the bgp agent is not running");
    bgp_handover h;
    h.managed = frr_ != nullptr;
    if (frr_) h.frr = frr_->freeze();  // throws while FRR restarts: nothing frozen
    for (std::size_t i = 0; i < cfg_.vips.size(); ++i) {
        h.vips.push_back({.ip = cfg_.vips[i].ip,
                          .known = vips_[i].known,
                          .announced = vips_[i].known && vips_[i].reason.empty(),
                          .withdrawals = report_.vips[i].withdrawals});
    }
    h.address_errors = report_.address_errors;
    h.frr_query_failures = report_.frr_query_failures;
    h.frr_restarts = frr_ ? frr_->restarts() : 0;
    owner_ = ownership::frozen;
    spdlog::info("bgp: handing the VIPs' announcement{} to the new process", frr_ ? " and FRR" : "");
    return h;
}

void bgp_agent::resume_after_failed_upgrade() {
    APILB_ASSERT_ROLE(control);
    if (owner_ != ownership::frozen) return;
    owner_ = ownership::own;
    if (frr_) frr_->thaw();
    // The new process may have changed a VIP before it died: each is put
    // where this process's readiness says at the next check (adding what is
    // there, or deleting what is not, changes nothing).
    for (auto& v : vips_) v.known = false;
    spdlog::info("bgp: the VIPs' announcement{} stays with this process", frr_ ? " and FRR" : "");
}

void bgp_agent::handed_over() {
    APILB_ASSERT_ROLE(control);
    owner_ = ownership::released;
    timer_.cancel();
    if (frr_) frr_->release();
}

void bgp_agent::take_over(std::optional<bgp_handover> from_old) {
    APILB_ASSERT_ROLE(control);
    if (owner_ != ownership::waiting || stopped_) return;
    owner_ = ownership::own;
    if (!from_old) {
        // As a fresh start would: nobody else acts on the VIPs now.
        spdlog::warn("bgp: nothing came from the old process; taking the VIPs and FRR as on a fresh start");
        for (const auto& v : cfg_.vips) {
            if (auto ec = set_host_address(cfg_.interface, v.ip, v.is_v6, false)) {
                ++report_.address_errors;
                spdlog::error("bgp: cannot take VIP {} off {}: {}", v.ip, cfg_.interface, ec.message());
            }
        }
        if (frr_) frr_->start();
        asio::co_spawn(control_, readiness_loop(), asio::detached);
        return;
    }
    std::size_t announced = 0;
    for (std::size_t i = 0; i < cfg_.vips.size(); ++i) {
        for (const auto& v : from_old->vips) {
            if (v.ip != cfg_.vips[i].ip || !v.known) continue;
            // As the old process left it: the readiness loop changes it only
            // if this process's own view says otherwise.
            vips_[i].known = true;
            vips_[i].reason = v.announced ? "" : "withdrawn by the old process";
            report_.vips[i].announced = v.announced;
            report_.vips[i].withdrawals = v.withdrawals;
            announced += v.announced ? 1 : 0;
        }
    }
    report_.address_errors += from_old->address_errors;
    report_.frr_query_failures += from_old->frr_query_failures;
    if (frr_) frr_->adopt(std::move(from_old->frr), from_old->frr_restarts);
    spdlog::info("bgp: took over {} VIP(s) from the old process ({} announced){}", cfg_.vips.size(), announced,
                 frr_ ? ", and its FRR" : "");
    asio::co_spawn(control_, readiness_loop(), asio::detached);
}

void bgp_agent::update(std::shared_ptr<const snapshot> snap) {
    APILB_ASSERT_ROLE(control);
    if ((!snap->cfg->bgp || *snap->cfg->bgp != cfg_) && !warned_section_change_) {
        warned_section_change_ = true;
        spdlog::warn("bgp: the reloaded bgp section takes effect on restart; announcing the VIPs of the start");
    }
    snap_ = std::move(snap);
}

std::string bgp_agent::withdraw_reason(const std::string& vip, bool is_v6) const {
    if (draining_) return "draining";
    if (!checked_) return "starting";
    // The pools of the listeners a client of this VIP reaches: those on the
    // VIP itself and those on every address of its family.
    const auto address = asio::ip::make_address(vip);
    std::vector<const pool_runtime*> served;
    for (const auto& l : snap_->listeners) {
        const auto& ip = l.endpoint.address();
        if (ip == address || (ip.is_unspecified() && ip.is_v6() == is_v6))
            served.push_back(&snap_->pools[l.pool_index]);
    }
    // No listener on it (the loader allows it): every pool must serve.
    if (served.empty()) {
        for (const auto& p : snap_->pools) served.push_back(&p);
    }
    for (const pool_runtime* p : served) {
        if (!has_ready_backend(*p)) return "pool " + p->cfg->name + " has no healthy backend";
    }
    return {};
}

void bgp_agent::apply(std::size_t i, const std::string& reason) {
    APILB_ASSERT_ROLE(control);
    // During an upgrade the other process owns the VIPs.
    if (owner_ != ownership::own) return;
    vip_state& s = vips_[i];
    const bgp_vip& v = cfg_.vips[i];
    const bool announce = reason.empty();
    const bool change = !s.known || s.reason.empty() != announce;
    if (!change) {
        if (s.reason != reason) spdlog::warn("bgp: VIP {} stays withdrawn: {}", v.ip, reason);
        s.reason = reason;
        return;
    }
    const auto now = clock_type::now();
    if (now < s.next_try) return;
    if (auto ec = set_host_address(cfg_.interface, v.ip, v.is_v6, announce)) {
        ++report_.address_errors;
        s.next_try = now + retry_period;
        std::uint64_t suppressed = 0;
        if (address_errors_.allow(suppressed)) {
            spdlog::error("bgp: cannot {} VIP {} {} {}: {}{}", announce ? "put" : "take", v.ip, announce ? "on" : "off",
                          cfg_.interface, ec.message(),
                          suppressed > 0 ? fmt::format(" ({} failures since the last report)", suppressed + 1) : "");
        }
        return;
    }
    if (announce) {
        spdlog::info("bgp: VIP {} on {}: FRR announces it", v.ip, cfg_.interface);
    } else {
        if (s.known) ++report_.vips[i].withdrawals;
        // The first check of a starting node is no news.
        if (s.known || reason != "starting") spdlog::warn("bgp: VIP {} withdrawn: {}", v.ip, reason);
    }
    report_.vips[i].announced = announce;
    s.known = true;
    s.reason = reason;
}

asio::awaitable<void> bgp_agent::readiness_loop() {
    while (!stopped_) {
        for (std::size_t i = 0; i < cfg_.vips.size(); ++i)
            apply(i, withdraw_reason(cfg_.vips[i].ip, cfg_.vips[i].is_v6));
        timer_.expires_after(readiness_period);
        co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }
}

void bgp_agent::hand_off(std::function<void()> then) {
    APILB_ASSERT_ROLE(control);
    draining_ = true;
    for (std::size_t i = 0; i < cfg_.vips.size(); ++i) apply(i, "draining");
    asio::co_spawn(control_, withdraw_wait(std::move(then)), asio::detached);
}

asio::awaitable<void> bgp_agent::withdraw_wait(std::function<void()> then) {
    spdlog::info("bgp: VIPs withdrawn; still serving for {}ms while the routers converge", cfg_.withdraw_wait.count());
    wait_timer_.expires_after(cfg_.withdraw_wait);
    auto [ec] = co_await wait_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec && !stopped_) spdlog::warn("bgp: the wait after the withdrawal was cut short by a second signal");
    if (!stopped_) then();
}

void bgp_agent::cut_short() {
    APILB_ASSERT_ROLE(control);
    wait_timer_.cancel();
}

void bgp_agent::stop() {
    APILB_ASSERT_ROLE(control);
    stopped_ = true;
    timer_.cancel();
    frr_timer_.cancel();
    wait_timer_.cancel();
    // Handed over (the new process owns them) or never taken (the old one does).
    if (owner_ != ownership::own && owner_ != ownership::frozen) return;
    for (const auto& v : cfg_.vips) {
        auto ec = set_host_address(cfg_.interface, v.ip, v.is_v6, false);
        if (!ec) ec = set_local_route(v.ip, v.is_v6, false);
        if (ec) spdlog::error("bgp: cannot remove VIP {} on stopping: {}", v.ip, ec.message());
    }
    for (auto& v : report_.vips) v.announced = false;
    // The routes went with the VIPs; bgpd's Cease now ends the sessions.
    if (frr_) frr_->stop();
}

void bgp_agent::note_frr(bool up, const std::string& why) {
    if (!up) ++report_.frr_query_failures;
    // A missing or failing FRR is a state: said when it changes, not each poll.
    if (!frr_said_ || up != report_.frr_up) {
        if (up) {
            spdlog::info("bgp: FRR answers (vtysh {})", cfg_.vtysh_path);
        } else {
            spdlog::warn("bgp: cannot read FRR's BGP sessions (vtysh {}): {}; peers' state unknown until it answers",
                         cfg_.vtysh_path, why);
        }
    }
    frr_said_ = true;
    report_.frr_up = up;
}

asio::awaitable<void> bgp_agent::frr_loop() {
    while (!stopped_) {
        std::vector<std::string> argv{cfg_.vtysh_path};
        if (!cfg_.vty_socket_dir.empty()) argv.insert(argv.end(), {"--vty_socket", cfg_.vty_socket_dir});
        argv.insert(argv.end(), {"-c", "show bgp neighbors json"});
        const command_outcome r = co_await run_bounded(control_, argv, max_frr_answer, frr_query_timeout);
        if (stopped_) co_return;
        auto states = r.ok ? parse_bgp_neighbors(r.output) : std::nullopt;
        if (states) {
            note_frr(true, {});
        } else {
            // vtysh says why it failed on stderr ("failed to connect to any daemons").
            note_frr(false, r.ok ? "the answer is not FRR's neighbour JSON: " + first_line(r.output)
                                 : r.error + ": " + first_line(r.errors.empty() ? r.output : r.errors));
        }
        for (auto& p : report_.peers) {
            std::string now;
            if (states) {
                if (auto it = states->find(p.address); it != states->end()) now = it->second;
            }
            if (now != p.state && (now == "Established" || p.state == "Established")) {
                spdlog::info("bgp: session with {}: {} -> {}", p.address, p.state.empty() ? "unknown" : p.state,
                             now.empty() ? "unknown" : now);
            }
            p.state = now;
        }
        frr_timer_.expires_after(frr_poll_period);
        co_await frr_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }
}

}  // namespace apilb
