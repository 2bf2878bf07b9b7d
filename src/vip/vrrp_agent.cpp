#include "apilb/vip/vrrp_agent.hpp"

#include "apilb/core/thread_role.hpp"
#include "apilb/vip/keepalived_supervisor.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace apilb {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

/// How often readiness is re-evaluated: well under one advertisement
/// interval, so a health change reaches keepalived within a few ms.
constexpr auto readiness_period = 10ms;
/// Hand-off: how often the VIP is checked, and how long a connect to it may take.
constexpr auto handoff_period = 10ms;
constexpr auto handoff_connect_timeout = 50ms;

std::error_code last_error() { return {errno, std::generic_category()}; }

}  // namespace

const char* to_string(vrrp_role r) {
    switch (r) {
    case vrrp_role::unknown: return "unknown";
    case vrrp_role::backup: return "BACKUP";
    case vrrp_role::master: return "MASTER";
    case vrrp_role::fault: return "FAULT";
    case vrrp_role::stop: return "STOP";
    }
    return "unknown";
}

std::optional<vrrp_role> parse_notify_line(const std::string& line) {
    std::istringstream in(line);
    std::string type, name, state;
    if (!(in >> type >> name >> state) || type != "INSTANCE") return std::nullopt;
    if (state == "MASTER") return vrrp_role::master;
    if (state == "BACKUP") return vrrp_role::backup;
    if (state == "FAULT") return vrrp_role::fault;
    if (state == "STOP") return vrrp_role::stop;
    return std::nullopt;
}

vrrp_role parse_role(const std::string& text) {
    for (vrrp_role r : {vrrp_role::backup, vrrp_role::master, vrrp_role::fault, vrrp_role::stop}) {
        if (text == to_string(r)) return r;
    }
    return vrrp_role::unknown;
}

vrrp_agent::vrrp_agent(asio::io_context& control, std::shared_ptr<const snapshot> snap)
    : control_(control), snap_(std::move(snap)), timer_(control), fifo_(control) {}

vrrp_agent::~vrrp_agent() = default;

void vrrp_agent::start(bool upgrade) {
    APILB_ASSERT_ROLE(control);
    const vrrp_config& v = *snap_->cfg->vrrp;
    std::filesystem::create_directories(v.state_dir);
    // Not ready until the first check has run (it runs at once). Not in an
    // upgrade: the old process's 0 stays until this one takes over, and a
    // 1 here would move the VIP away.
    owner_ = !upgrade;
    if (owner_) publish("starting");

    // keepalived creates the FIFO too; whoever comes first makes it. Opened
    // read-write so that keepalived restarting (the writer going away) is
    // not an end of file.
    if (::mkfifo(v.notify_fifo().c_str(), 0600) != 0 && errno != EEXIST) {
        throw std::system_error(last_error(), "cannot create the notify FIFO " + v.notify_fifo());
    }
    const int fd = ::open(v.notify_fifo().c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw std::system_error(last_error(), "cannot open the notify FIFO " + v.notify_fifo());
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) {
        ::close(fd);
        throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                                "the notify FIFO " + v.notify_fifo() + " exists and is not a FIFO");
    }
    fifo_.assign(fd);
    if (upgrade) {
        spdlog::info(
            "vrrp: the old process keeps the track file, the notify FIFO and keepalived until it has handed over");
        return;
    }

    spdlog::info(
        "vrrp: interface {}, virtual router {}, priority {}, advert {}ms, {} VIP(s); track file {}, "
        "notify FIFO {}",
        v.interface, v.virtual_router_id, v.priority, v.advert_interval.count(), v.vips.size(), v.track_file(),
        v.notify_fifo());
    asio::co_spawn(control_, readiness_loop(), asio::detached);
    asio::co_spawn(control_, notify_loop(), asio::detached);
    if (v.manage) {
        supervisor_ = std::make_unique<keepalived_supervisor>(control_, snap_);
        supervisor_->start();
    }
}

std::optional<handed_children> vrrp_agent::hand_over_keeper() const {
    APILB_ASSERT_ROLE(control);
    if (!supervisor_ || !owner_) return std::nullopt;
    handed_children out = supervisor_->hand_over();
    if (out.children.empty()) return std::nullopt;
    return out;
}

vrrp_release vrrp_agent::release() {
    APILB_ASSERT_ROLE(control);
    if (!owner_) return {.role = role(), .pending = {}};
    owner_ = false;
    released_ = true;
    stopped_ = true;
    timer_.cancel();
    boost::system::error_code ignored;
    // Cancelled here, on the thread that reads: whatever the reads took from
    // the FIFO is in the buffer now, and the kernel keeps the rest for the
    // new process. Whole lines are taken here, the rest goes over.
    fifo_.cancel(ignored);
    take_notify_lines();
    vrrp_release out{.role = role(), .pending = {}};
    const auto data = fifo_buffer_.data();
    out.pending.assign(asio::buffers_begin(data), asio::buffers_end(data));
    fifo_buffer_.consume(fifo_buffer_.size());
    if (supervisor_) supervisor_->release();
    spdlog::info("vrrp: handed over to the new process (role {}); the track file stays {}", to_string(out.role),
                 published_ && published_->empty() ? "0" : "1");
    return out;
}

void vrrp_agent::take_over(const vrrp_release& from, handed_children keeper) {
    APILB_ASSERT_ROLE(control);
    // What is not taken closes with `keeper`: a keepalived nobody adopts
    // stops once the old process ends.
    if (owner_ || stopped_) return;
    owner_ = true;
    // No role came (the old process died, or did not let go in time), and
    // keepalived says nothing until its state changes: a node holding a VIP
    // is the MASTER (keepalived adds the VIPs only then), or the pair's
    // apilb_vrrp_role would show no MASTER until the next change.
    const bool guessed = from.role == vrrp_role::unknown && holds_a_vip();
    role_.store(guessed ? vrrp_role::master : from.role, std::memory_order_relaxed);
    if (!from.pending.empty()) {
        const auto n = asio::buffer_copy(fifo_buffer_.prepare(from.pending.size()), asio::buffer(from.pending));
        fifo_buffer_.commit(n);
    }
    spdlog::info("vrrp: took over the track file, the notify FIFO{} from the old process (role {}{})",
                 snap_->cfg->vrrp->manage ? " and keepalived" : "", to_string(role()),
                 guessed                        ? ": this node holds the VIPs"
                 : role() == vrrp_role::unknown ? " until keepalived's next notification"
                                                : "");
    take_notify_lines();
    asio::co_spawn(control_, readiness_loop(), asio::detached);
    asio::co_spawn(control_, notify_loop(), asio::detached);
    if (snap_->cfg->vrrp->manage) {
        supervisor_ = std::make_unique<keepalived_supervisor>(control_, snap_);
        supervisor_->adopt(std::move(keeper));
    }
}

void vrrp_agent::update(std::shared_ptr<const snapshot> snap) {
    APILB_ASSERT_ROLE(control);
    if (!snap->cfg->vrrp) {
        spdlog::warn("vrrp: the reloaded config has no vrrp section; keeping the VIP as it is until a restart");
        return;
    }
    snap_ = std::move(snap);
    if (supervisor_) supervisor_->reload(snap_);
}

void vrrp_agent::stop() {
    APILB_ASSERT_ROLE(control);
    stopped_ = true;
    owner_ = false;
    timer_.cancel();
    boost::system::error_code ignored;
    fifo_.cancel(ignored);
    fifo_.close(ignored);
    if (supervisor_) supervisor_->stop();
}

std::string vrrp_agent::fault_reason() const {
    if (draining_) return "draining";
    // Listeners are bound before the server runs (a failed bind ends the
    // process), so a running apilb always has them. The same check as /readyz.
    return unready_reason(*snap_);
}

void vrrp_agent::publish(const std::string& reason) {
    APILB_ASSERT_ROLE(control);
    // Another process owns the track file (an upgrade, docs/upgrade.md).
    if (!owner_ || published_ == reason) return;
    const std::string path = snap_->cfg->vrrp->track_file();
    if (auto ec = write_file_atomically(path, reason.empty() ? "0\n" : "1\n")) {
        // Tried again on the next round (10 ms): published_ is left as it
        // was. Said once, then at most every 10 s with how often it failed.
        track_failing_ = true;
        std::uint64_t suppressed = 0;
        if (track_errors_.allow(suppressed)) {
            spdlog::error(
                "vrrp: cannot write the track file {}: {}{}", path, ec.message(),
                suppressed > 0 ? fmt::format(" ({} failed writes since the last report)", suppressed + 1) : "");
        }
        return;
    }
    if (track_failing_) {
        spdlog::info("vrrp: the track file {} is written again", path);
        track_failing_ = false;
        track_errors_ = log_limiter(std::chrono::seconds(10));  // a new failure is said at once
    }
    if (reason.empty()) {
        spdlog::info("vrrp: ready: this node may hold the VIPs");
    } else if (published_ || reason != "starting") {
        spdlog::warn("vrrp: not ready ({}): keepalived gives up the VIPs", reason);
    }
    published_ = reason;
}

asio::awaitable<void> vrrp_agent::readiness_loop() {
    while (!stopped_) {
        publish(fault_reason());
        timer_.expires_after(readiness_period);
        co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }
}

asio::awaitable<void> vrrp_agent::notify_loop() {
    while (!stopped_) {
        auto [ec, n] = co_await asio::async_read_until(fifo_, fifo_buffer_, '\n', asio::as_tuple(asio::use_awaitable));
        // Released (an upgrade) or stopped meanwhile: what was read stays in
        // the buffer for release().
        if (stopped_) co_return;
        if (ec) {
            spdlog::error("vrrp: reading the notify FIFO failed: {}", ec.message());
            co_return;
        }
        take_notify_lines();
    }
}

void vrrp_agent::take_notify_lines() {
    for (;;) {
        const auto data = fifo_buffer_.data();
        const auto begin = asio::buffers_begin(data), end = asio::buffers_end(data);
        const auto nl = std::find(begin, end, '\n');
        if (nl == end) return;
        std::string line(begin, nl);
        fifo_buffer_.consume(line.size() + 1);
        take_notify_line(std::move(line));
    }
}

void vrrp_agent::take_notify_line(std::string line) {
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (auto role = parse_notify_line(line)) {
        const vrrp_role before = role_.exchange(*role, std::memory_order_relaxed);
        if (before != *role) spdlog::info("vrrp: role {} -> {}", to_string(before), to_string(*role));
    }
}

bool vrrp_agent::holds_a_vip() const {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return false;
    bool found = false;
    for (const ifaddrs* a = list; a != nullptr && !found; a = a->ifa_next) {
        if (a->ifa_addr == nullptr) continue;
        std::array<char, INET6_ADDRSTRLEN> text{};
        const int family = a->ifa_addr->sa_family;
        const void* raw = nullptr;
        if (family == AF_INET) raw = &reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr;
        if (family == AF_INET6) raw = &reinterpret_cast<const sockaddr_in6*>(a->ifa_addr)->sin6_addr;
        if (raw == nullptr || ::inet_ntop(family, raw, text.data(), text.size()) == nullptr) continue;
        for (const auto& vip : snap_->cfg->vrrp->vips) found = found || vip.ip == text.data();
    }
    ::freeifaddrs(list);
    return found;
}

void vrrp_agent::hand_off(std::function<void()> then) {
    APILB_ASSERT_ROLE(control);
    if (!owner_) {
        // An upgrade's new process that has not taken over yet: the VIP's
        // side is still the old process's (it rolls back once this one ends).
        spdlog::info("vrrp: the VIP's side is not this process's (an upgrade in progress); nothing to hand over");
        then();
        return;
    }
    draining_ = true;
    publish(fault_reason());
    asio::co_spawn(control_, handoff_loop(std::move(then)), asio::detached);
}

asio::awaitable<void> vrrp_agent::handoff_loop(std::function<void()> then) {
    const vrrp_config& v = *snap_->cfg->vrrp;
    const auto start = clock_type::now();
    const auto deadline = start + v.handoff_timeout;
    auto elapsed = [&] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start).count();
    };

    // A listener on a VIP (or on every address) tells when a peer serves it:
    // once the VIP has left this host, a connect to it reaches the peer.
    std::optional<asio::ip::tcp::endpoint> probe;
    for (const auto& l : snap_->listeners) {
        for (const auto& vip : v.vips) {
            if (l.cfg->address.ip == vip.ip)
                probe = asio::ip::tcp::endpoint(asio::ip::make_address(vip.ip), l.endpoint.port());
        }
    }
    if (!probe) {
        for (const auto& l : snap_->listeners) {
            if (l.endpoint.address().is_unspecified() && l.endpoint.address().is_v6() == v.vips.front().is_v6) {
                probe = asio::ip::tcp::endpoint(asio::ip::make_address(v.vips.front().ip), l.endpoint.port());
            }
        }
    }

    if (!holds_a_vip() && role_.load() != vrrp_role::master) {
        spdlog::info("vrrp: this node does not hold the VIPs; nothing to hand over");
    } else {
        spdlog::info("vrrp: handing the VIPs over (up to {}ms)", v.handoff_timeout.count());
        asio::steady_timer wait(control_);
        bool done = false;
        while (!done && !stopped_ && !cut_short_ && clock_type::now() < deadline) {
            if (!holds_a_vip()) {
                if (!probe) {
                    spdlog::info(
                        "vrrp: the VIPs left this node after {}ms (no listener on a VIP to see the peer take "
                        "it)",
                        elapsed());
                    done = true;
                    break;
                }
                boost::beast::tcp_stream stream(control_);
                stream.expires_after(handoff_connect_timeout);
                auto [ec] = co_await stream.async_connect(*probe, asio::as_tuple(asio::use_awaitable));
                if (!ec) {
                    spdlog::info("vrrp: a peer serves {} {}ms after the hand-off began", probe->address().to_string(),
                                 elapsed());
                    done = true;
                    break;
                }
            }
            wait.expires_after(handoff_period);
            co_await wait.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        if (cut_short_) {
            spdlog::warn("vrrp: hand-off cut short by a second signal after {}ms", elapsed());
        } else if (!done && !stopped_) {
            spdlog::warn("vrrp: no peer took the VIPs within {}ms; draining anyway", v.handoff_timeout.count());
        }
    }
    // Released meanwhile (a SIGTERM that met an upgrade's last step): the
    // new process holds the VIP's side; this one drains all the same.
    if (!stopped_ || released_) then();
}

}  // namespace apilb
