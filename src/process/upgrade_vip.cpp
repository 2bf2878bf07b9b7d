// The VIP's side of an upgrade with a vrrp section (docs/upgrade.md, "With a
// vrrp section"): the old process owns the track file, the notify FIFO and
// (manage: true) keepalived's keeper until the new one has taken every
// session; then it lets go and the new one takes over. Before that moment a
// failed upgrade changes nothing of the VIP's side (rollback). The keeper
// moves as `child` frames (handover_children.hpp), as FRR's keepers do.
#include <boost/asio/post.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <optional>

#include "apilb/core/thread_role.hpp"
#include "apilb/process/process.hpp"
#include "apilb/vip/vrrp_agent.hpp"

namespace apilb {

namespace {

/// The release waits this long for the control thread, which answers
/// within a few ms unless the machine is starved.
constexpr auto release_wait = std::chrono::seconds(2);

std::string to_hex(const std::string& bytes) {
    std::string out;
    for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
    return out;
}

/// The bytes of `hex`; what is not hex ends it (a line that cannot be read
/// loses at most a part of one notification, never the role).
std::string from_hex(const std::string& hex) {
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
        unsigned v = 0;
        if (std::sscanf(hex.c_str() + i, "%2x", &v) != 1) break;
        out += static_cast<char>(v);
    }
    return out;
}

}  // namespace

std::optional<handed_children> process::vip_children() {
    APILB_ASSERT_ROLE(control);
    if (!vrrp_) return std::nullopt;
    return vrrp_->hand_over_keeper();
}

std::vector<handover::state_line> process::release_vip() {
    if (!vrrp_) return {};
    auto released = std::make_shared<std::promise<vrrp_release>>();
    auto future = released->get_future();
    boost::asio::post(control_, [this, released] { released->set_value(vrrp_->release()); });
    if (future.wait_for(release_wait) != std::future_status::ready) {
        // It still runs, later: the new process takes over without the role
        // (unknown until keepalived's next notification).
        spdlog::warn("upgrade: the VIP agent did not let go within {}s; the new process takes over anyway",
                     std::chrono::seconds(release_wait).count());
        return {};
    }
    const vrrp_release r = future.get();
    handover::state_line line{.kind = "vrrp", .fields = {}};
    line.add("role", to_string(r.role));
    line.add("pending", r.pending.empty() ? std::string("-") : to_hex(r.pending));
    return {line};
}

void process::take_over_vip(const std::vector<handover::state_line>& lines) {
    APILB_ASSERT_ROLE(control);
    if (!vip_from_old_) return;
    vip_from_old_ = false;
    std::vector<handed_children> groups = std::move(vip_children_);
    vip_children_.clear();
    // What is not taken closes here: a keepalived of the old config stops
    // once the old process ends.
    if (!vrrp_) return;
    vrrp_release from;
    for (const auto& l : lines) {
        if (l.kind != "vrrp") continue;
        if (const std::string* role = l.find("role")) from.role = parse_role(*role);
        if (const std::string* pending = l.find("pending"); pending && *pending != "-")
            from.pending = from_hex(*pending);
    }
    handed_children keeper;
    for (auto& g : groups) {
        if (g.group == "keepalived") keeper = std::move(g);
    }
    vrrp_->take_over(from, std::move(keeper));
}

}  // namespace apilb
