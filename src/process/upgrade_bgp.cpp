// The bgp part of an upgrade (docs/upgrade.md, "With a bgp section"): the old
// process freezes its agent (no VIP change, no FRR supervision) right before
// sessions_end and sends the VIPs' announcement and, with manage: true, its
// FRR keepers' pidfds and lifeline; the new process takes them over once it
// said sessions_taken. A rollback thaws the old agent.
#include "apilb/process/upgrade_bgp.hpp"

#include <boost/asio/post.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <poll.h>

#include <future>
#include <mutex>

#include "apilb/core/maglev.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/process/handover_children.hpp"
#include "apilb/process/process.hpp"
#include "apilb/process/process_state.hpp"

namespace apilb {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;
using handover::frame_type;
using handover::handover_error;

namespace {

/// Everything of the section that the announcement and the running FRR
/// depend on; withdraw_wait and vtysh_path only shape this process's own
/// behaviour and may change with an upgrade.
std::string section_fingerprint(const bgp_config& b) {
    std::string text = fmt::format("as={} id={} manage={} interface={} dir={} conf={} med={}", b.local_as, b.router_id,
                                   b.manage, b.interface, b.vty_socket_dir, b.frr_config,
                                   b.med ? std::to_string(*b.med) : "-");
    for (const auto& p : b.peers) {
        text += fmt::format(" peer={},{},{},{},{},{},{}", p.address, p.is_v6, p.remote_as, p.password_file, p.bfd,
                            p.bfd_interval.count(), p.bfd_multiplier);
    }
    for (const auto& v : b.vips) text += " vip=" + v.ip;
    for (const auto& c : b.communities) text += " community=" + c;
    // stable_hash: the same in every release and build (std::hash is not).
    return fmt::format("{:016x}", stable_hash(text));
}

}  // namespace

handover::state_line bgp_section_line(const std::optional<bgp_config>& bgp) {
    handover::state_line l{.kind = "bgp_section", .fields = {}};
    l.add("section", bgp ? section_fingerprint(*bgp) : std::string("none"));
    return l;
}

std::string bgp_section_mismatch(const std::vector<handover::state_line>& lines, const std::optional<bgp_config>& bgp) {
    std::string old = "none";
    for (const auto& l : lines) {
        if (l.kind != "bgp_section") continue;
        if (const std::string* s = l.find("section")) old = *s;
    }
    const std::string mine = bgp ? section_fingerprint(*bgp) : std::string("none");
    if (old == mine) return {};
    if (old == "none") return "the config now has a bgp section, the running apilb has none (that takes a restart)";
    if (!bgp) return "the config no longer has the running apilb's bgp section (that takes a restart)";
    return "the bgp section differs from the running apilb's (the VIPs' announcement and FRR cannot move to another "
           "one; that takes a restart)";
}

std::vector<handover::state_line> bgp_handover_lines(const bgp_handover& h) {
    std::vector<handover::state_line> out;
    handover::state_line b{.kind = "bgp", .fields = {}};
    b.add("managed", h.managed ? "1" : "0")
        .add("address_errors", h.address_errors)
        .add("frr_query_failures", h.frr_query_failures)
        .add("frr_restarts", h.frr_restarts);
    out.push_back(std::move(b));
    for (const auto& v : h.vips) {
        handover::state_line l{.kind = "bgp_vip", .fields = {}};
        l.add("ip", v.ip)
            .add("known", v.known ? "1" : "0")
            .add("announced", v.announced ? "1" : "0")
            .add("withdrawals", v.withdrawals);
        out.push_back(std::move(l));
    }
    return out;
}

bool take_bgp_frame(handover::frame& f, bgp_receipt& r) {
    if (f.type == frame_type::state) {
        if (++r.state_frames > handover::max_state_frames) throw handover_error("too many state frames");
        handover::take_state_frame(f, r.lines, r.bad);
        return true;
    }
    if (f.type == frame_type::state_end) {
        if (handover::parse_number(f.payload, "state_end count") != r.state_frames) {
            throw handover_error("the old process miscounted its bgp state frames");
        }
        return true;
    }
    if (f.type == frame_type::child) {
        handover::take_child_frame(f, r.groups);
        return true;
    }
    return false;
}

std::optional<bgp_handover> bgp_handover_of(bgp_receipt& r) {
    std::optional<bgp_handover> h;
    try {
        for (const auto& l : r.lines) {
            if (l.kind == "bgp") {
                h.emplace();
                h->managed = l.flag("managed");
                h->address_errors = l.number("address_errors");
                h->frr_query_failures = l.number("frr_query_failures");
                h->frr_restarts = l.number("frr_restarts");
            } else if (l.kind == "bgp_vip" && h) {
                h->vips.push_back({.ip = l.text("ip"),
                                   .known = l.flag("known"),
                                   .announced = l.flag("announced"),
                                   .withdrawals = l.number("withdrawals")});
            }
        }
    } catch (const handover_error& e) {
        spdlog::error("upgrade: the old process's bgp state cannot be read: {}", e.what());
        h.reset();
    }
    if (h) {
        for (auto& g : r.groups) {
            if (g.group == "frr") h->frr = std::move(g);
        }
    }
    r.groups.clear();  // closes what no one took
    return h;
}

void process::check_upgrade_bgp(const std::vector<handover::state_line>& old_state) {
    const std::string why = bgp_section_mismatch(old_state, snap_->cfg->bgp);
    if (why.empty()) return;
    try {
        handover::send_frame(handover_channel_, frame_type::abort, why, {},
                             clock_type::now() + std::chrono::seconds(1));
    } catch (const handover_error&) {}
    throw std::runtime_error("upgrade: " + why);
}

void process::hand_over_bgp(int channel, clock_type::time_point deadline, bool& frozen) {
    if (!bgp_) return;
    struct shared {
        std::mutex m;
        bool abandoned = false;
        std::promise<bgp_handover> result;
    };
    auto state = std::make_shared<shared>();
    auto future = state->result.get_future();
    // The agent is the control thread's; this thread waits for it.
    asio::post(control_, [this, state] {
        std::lock_guard lock(state->m);
        if (state->abandoned) return;
        try {
            state->result.set_value(bgp_->freeze_for_upgrade());
        } catch (...) {
            state->result.set_exception(std::current_exception());
        }
    });
    // end_upgrade() (a SIGTERM) shuts the channel down while the control
    // thread waits for this one: a readable channel ends the wait. The new
    // process sends nothing in the session phase but an abort.
    while (future.wait_for(std::chrono::milliseconds(10)) != std::future_status::ready) {
        pollfd p{channel, POLLIN, 0};
        if (clock_type::now() < deadline && ::poll(&p, 1, 0) == 0) continue;
        std::lock_guard lock(state->m);
        if (future.wait_for(std::chrono::seconds(0)) == std::future_status::ready) break;
        state->abandoned = true;
        throw handover_error("the channel ended while the bgp agent was being handed over");
    }
    bgp_handover h;
    try {
        h = future.get();
    } catch (const std::exception& e) {
        throw handover_error(std::string("bgp: ") + e.what());
    }
    frozen = true;
    handover::send_state(channel, handover::encode_state(bgp_handover_lines(h)), deadline);
    if (h.managed) handover::send_children(channel, h.frr, deadline);
}

void process::end_bgp_handover(bool succeeded) {
    APILB_ASSERT_ROLE(control);
    if (!bgp_) return;
    if (succeeded) {
        bgp_->handed_over();
    } else {
        bgp_->resume_after_failed_upgrade();
    }
}

void process::take_over_bgp(std::shared_ptr<bgp_receipt> r) {
    asio::post(control_, [this, r] {
        if (bgp_) bgp_->take_over(r ? bgp_handover_of(*r) : std::nullopt);
    });
}

}  // namespace apilb
