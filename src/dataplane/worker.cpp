#include "apilb/dataplane/worker.hpp"

#include <boost/asio/ip/v6_only.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/socket_options.hpp"

#include <algorithm>
#include <cstring>
#include <system_error>

#include "apilb/core/config_diff.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

/// Connections taken from a listener's queue before the worker's other work
/// gets a turn (HAProxy's maxaccept is 64 too).
constexpr int accepts_per_turn = 64;

/// relay.io: io_uring: the buffers a worker's ring picks from for the
/// relay's reads (poller::provide_buffers), each relay.buffer_size bytes.
constexpr unsigned provided_buffers = 64;

}  // namespace

worker::worker(std::size_t index, std::shared_ptr<const snapshot> snap, process_stats& stats, bool io_uring)
    : index_(index), work_(io_.get_executor()), ctx_(std::move(snap), stats, sockets_) {
    // The worker's thread blocks in the poller's epoll_wait, or its ring
    // (one system call per wake-up), and runs io_'s posted work between
    // wake-ups.
    sockets_.attach(io_, io_uring ? poller::wait_by::ring : poller::wait_by::run);
    sockets_.count_failures_in(&stats.resource_errors_total);
    if (io_uring) {
        // As many as the buffer pool keeps idle: both bound the memory a
        // worker holds for bytes in flight, not per session.
        sockets_.provide_buffers(ctx_.snap().cfg->relay.buffer_size, provided_buffers);
        sockets_.count_empty_buffers_in(&stats.relay_buffers_empty_total);
    }
}

worker::~worker() {
    stop();
    // Session frames still parked in io_ are destroyed with it, after ctx_:
    // unlink them now so their entries do not touch a destroyed list.
    ctx_.sessions.clear();
    acceptors_.clear();
    if (ctx_.spare_fd >= 0) ::close(ctx_.spare_fd);
    sockets_.detach();
}

int worker::open_listener(const listener_runtime& l, const tcp_config& tcp) {
    // A private io_context: the socket is only set up here, then released
    // to whichever worker adopts it.
    asio::io_context setup{1};
    tcp::acceptor acc(setup);
    error_code ec;
    auto fail = [&](const char* what) {
        throw std::system_error(ec, fmt::format("listener {}: {} {}", l.cfg->name, what, l.cfg->address.to_string()));
    };
    acc.open(l.endpoint.protocol(), ec);
    if (ec) fail("cannot open a socket for");
    acc.set_option(asio::socket_base::reuse_address(true), ec);
    // Every worker binds the same address; the kernel spreads new connections
    // over the workers' accept queues.
    int one = 1;
    if (::setsockopt(acc.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        ec = {errno, boost::system::system_category()};
        fail("cannot set SO_REUSEPORT on");
    }
    if (l.endpoint.address().is_v6()) {
        // "[::]:6443" must not also claim IPv4, so it can sit beside "0.0.0.0:6443".
        acc.set_option(asio::ip::v6_only(true), ec);
    }
    // Accepted sockets inherit these, so no session sets them again.
    ec = apply_tcp_options(acc.native_handle(), tcp);
    if (ec) fail("cannot set TCP options on");
    acc.bind(l.endpoint, ec);
    if (ec) fail("cannot bind");
    acc.listen(static_cast<int>(l.cfg->backlog), ec);
    if (ec) fail("cannot listen on");
    // Non-blocking: the worker accepts with accept4 until EAGAIN.
    acc.native_non_blocking(true, ec);
    if (ec) fail("cannot make non-blocking the socket for");
    return acc.release(ec);
}

void worker::bind(std::size_t listener_index) {
    const listener_runtime& l = ctx_.snap().listeners[listener_index];
    add_acceptor(open_listener(l, ctx_.snap().cfg->tcp), listener_index, "socket");
}

void worker::adopt(std::size_t listener_index, int fd) {
    const listener_runtime& l = ctx_.snap().listeners[listener_index];
    auto fail = [&](error_code ec, const char* what) {
        throw std::system_error(ec, fmt::format("listener {}: {} the handed-over socket for {}", l.cfg->name, what,
                                                l.cfg->address.to_string()));
    };
    // The old process's options and backlog came with the socket; this
    // config's apply to the connections it accepts from now on.
    if (error_code ec = apply_tcp_options(fd, ctx_.snap().cfg->tcp)) {
        ::close(fd);
        fail(ec, "cannot set TCP options on");
    }
    if (::listen(fd, static_cast<int>(l.cfg->backlog)) != 0) {
        const error_code ec(errno, boost::system::system_category());
        ::close(fd);
        fail(ec, "cannot listen on");
    }
    // The sender's socket is non-blocking today; a blocking one would stall
    // the worker in accept4 once the queue is empty.
    if (const int flags = ::fcntl(fd, F_GETFL); flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        const error_code ec(errno, boost::system::system_category());
        ::close(fd);
        fail(ec, "cannot make non-blocking");
    }
    add_acceptor(fd, listener_index, "handed-over socket");
}

void worker::add_acceptor(int fd, std::size_t listener_index, const char* which) {
    error_code ec;
    auto slot = adopt_listener(fd, listener_index, ec);
    if (ec) {
        const listener_runtime& l = ctx_.snap().listeners[listener_index];
        throw std::system_error(
            ec, fmt::format("listener {}: cannot adopt the {} for {}", l.cfg->name, which, l.cfg->address.to_string()));
    }
    acceptors_.push_back(std::move(slot));
}

void worker::share_listeners(std::function<void(std::vector<shared_listener>)> done) {
    sockets_.post([this, done = std::move(done)] {
        std::vector<shared_listener> out;
        for (const auto& slot : acceptors_) {
            if (!slot->listener.is_open()) continue;
            const int fd = ::fcntl(slot->listener.native_handle(), F_DUPFD_CLOEXEC, 3);
            if (fd < 0) {
                spdlog::warn("worker {}: cannot duplicate a listening socket for the upgrade: {}", index_,
                             std::strerror(errno));
                continue;
            }
            out.push_back({.address = ctx_.snap().listeners[slot->listener_index].cfg->address.to_string(), .fd = fd});
        }
        done(std::move(out));
    });
}

void worker::hand_over_sessions(
    std::size_t max, std::uint64_t phase,
    std::function<void(std::vector<handed_session>, std::size_t busy, std::size_t kept, std::size_t connecting)> done) {
    sockets_.post([this, max, phase, done = std::move(done)] {
        std::vector<handed_session> out;
        std::size_t busy = 0, kept = 0, connecting = 0;
        if (!stopping_) {
            quiesce_phase_ = phase;
            const auto now = std::chrono::steady_clock::now();
            const auto until = now + ctx_.snap().cfg->timeouts.upgrade_quiesce;
            bool started = false;
            for (auto& s : ctx_.sessions) {
                if (out.size() >= max) break;
                if (s.aborted()) continue;
                if (!s.relaying) {
                    // At the gate, connecting or retrying: its own events
                    // and its connect deadline end that; once established a
                    // later pass takes it, and a connect that fails goes on
                    // here as always (the next backend, or a reset).
                    ++connecting;
                    continue;
                }
                if (s.kept_in_phase == phase) {
                    ++kept;
                    continue;
                }
                handed_session h;
                if (hand_over_session(s, h)) {
                    out.push_back(std::move(h));
                    continue;
                }
                if (s.quiesce_until == std::chrono::steady_clock::time_point::max()) {
                    // Bytes in flight: stop reading, so that what was read
                    // goes out and nothing more comes in; the socket buffers
                    // keep what the peers send meanwhile, and it moves with
                    // the sockets.
                    s.quiesce_until = until;
                    s.pump->quiesce();
                    started = true;
                }
                ++busy;
            }
            // Waits for the first of this pass's quiesces to pass its limit,
            // unless an earlier one is due first.
            if (started && !quiesce_timer_.waiting()) {
                quiesce_timer_.wait_until(until, &worker::on_quiesce_timer, this);
            }
        }
        done(std::move(out), busy, kept, connecting);
    });
}

void worker::end_session_phase() {
    sockets_.post([this] { end_quiesces(true); });
}

void worker::hold_accepting() {
    sockets_.post([this] {
        accepting_held_ = true;
        // The loops end in on_accept_wait (cancelled, held): no accept4
        // runs from here, so every client the kernel queues from now on is
        // the new process's, which holds the same sockets (or, on a socket
        // only it bound, its own queue).
        for (auto& slot : acceptors_) {
            slot->listener.cancel();
            slot->pause_timer.cancel();
        }
    });
}

void worker::resume_accepting() {
    sockets_.post([this] {
        accepting_held_ = false;
        // Only the loops that stopped: one whose cancelled wait has not
        // completed yet goes on by itself, unheld.
        for (auto& slot : acceptors_) {
            if (!slot->held) continue;
            slot->held = false;
            accept_turn(*slot);
        }
    });
}

void worker::end_quiesces(bool all) noexcept {
    constexpr auto none = std::chrono::steady_clock::time_point::max();
    const auto now = std::chrono::steady_clock::now();
    auto next = none;
    for (auto& s : ctx_.sessions) {
        if (s.quiesce_until == none) continue;
        if (all || s.quiesce_until <= now) {
            // Its destination did not take what it read in time: it stays,
            // and reads on where it stopped.
            if (!all) s.kept_in_phase = quiesce_phase_;
            s.quiesce_until = none;
            s.pump->end_quiesce();
        } else {
            next = std::min(next, s.quiesce_until);
        }
    }
    if (all) return quiesce_timer_.cancel();
    if (next != none) quiesce_timer_.wait_until(next, &worker::on_quiesce_timer, this);
}

void worker::on_quiesce_timer(void* self, const error_code& ec) {
    auto& w = *static_cast<worker*>(self);
    if (ec || w.stopping_) return;
    w.end_quiesces(false);
}

void worker::adopt_session(session_record r, int client_fd, int backend_fd) {
    sockets_.post([this, r = std::move(r), client_fd, backend_fd] {
        std::string why = "apilb is stopping";
        if (stopping_) {
            close_with_reset(client_fd);
            close_with_reset(backend_fd);
        } else if (apilb::adopt_session(ctx_, r, client_fd, backend_fd, why)) {
            return;
        }
        ctx_.stats.sessions_refused_total.fetch_add(1, std::memory_order_relaxed);
        spdlog::warn("upgrade: session from {} to backend {} ({}) refused: {}; both sides reset", r.listener, r.backend,
                     r.backend_address, why);
    });
}

std::unique_ptr<worker::acceptor_slot> worker::adopt_listener(int fd, std::size_t listener_index, error_code& ec) {
    auto slot = std::make_unique<acceptor_slot>(*this, listener_index);
    ec = slot->listener.adopt(fd);  // closes fd on failure
    return slot;
}

// The accept loop, the sweep and the publish tick are callbacks on
// poll_timer and poll_socket waits, not coroutines on Asio operations: Asio
// (1.81) allocates every operation it starts and, for a coroutine, starts it
// only after the coroutine has suspended (awaitable_thread::pump). Out of
// memory there, the exception leaves through whatever resumed the coroutine,
// the coroutine is destroyed (by a post, which itself may fail: then
// std::terminate) and its completion handler never runs: the worker would
// silently never accept again. Starting or cancelling these waits
// allocates nothing; what a turn does (a session, a log line) may throw, and
// is caught in the turn.

void worker::on_accept_wait(void* arg, const error_code& ec) {
    auto& slot = *static_cast<acceptor_slot*>(arg);
    // Closed (removed by a reload, or shutdown): the loop is over. A pause
    // cancelled with the listener open is only woken early.
    if (ec && (!slot.listener.is_open() || slot.owner.stopping_)) {
        slot.loop_done = true;
        return;
    }
    slot.owner.accept_turn(slot);
}

void worker::accept_turn(acceptor_slot& slot) noexcept {
    auto until = std::chrono::steady_clock::now();
    accept_next next;
    try {
        next = accept_some(slot, until);
    } catch (const std::exception& e) {
        // Out of memory, say: a listener that stopped accepting for good
        // would be an outage of this worker's share of clients.
        tick_failed("accepting", e, "in 100ms");
        until = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
        ctx_.accept_paused_until = until;
        next = slot.listener.is_open() ? accept_next::pause : accept_next::done;
    }
    switch (next) {
    case accept_next::listener: return slot.listener.wait(poll_socket::wait_type::read, &worker::on_accept_wait, &slot);
    case accept_next::pause: return slot.pause_timer.wait_until(until, &worker::on_accept_wait, &slot);
    case accept_next::done: slot.loop_done = true; return;
    case accept_next::held: slot.held = true; return;
    }
}

void worker::apply(std::shared_ptr<const snapshot> next, std::vector<new_listener> added, std::function<void()> done) {
    sockets_.post([this, next = std::move(next), added = std::move(added), done = std::move(done)]() mutable {
        if (stopping_) {
            for (const auto& a : added) ::close(a.fd);
            done();
            return;
        }
        const snapshot& current = ctx_.snap();
        for (auto& slot : acceptors_) {
            if (!slot->listener.is_open()) continue;
            const listener_runtime& was = current.listeners[slot->listener_index];
            auto it = std::find_if(next->listeners.begin(), next->listeners.end(),
                                   [&](const listener_runtime& l) { return same_listener(*was.cfg, *l.cfg); });
            if (it == next->listeners.end()) {
                // Removed: stop accepting. Its open sessions go on.
                slot->listener.close();
                slot->pause_timer.cancel();              // its loop then ends
                if (slot->held) slot->loop_done = true;  // it has none
                continue;
            }
            slot->listener_index = static_cast<std::size_t>(it - next->listeners.begin());
            // Sockets it accepts from now on inherit the new TCP options.
            if (!(next->cfg->tcp == current.cfg->tcp)) {
                if (auto ec = apply_tcp_options(slot->listener.native_handle(), next->cfg->tcp)) {
                    spdlog::warn("worker {}: listener {}: setting TCP options failed: {}", index_, it->cfg->name,
                                 ec.message());
                }
            }
            // Linux takes a new backlog from a second listen() on a listening socket.
            if (it->cfg->backlog != was.cfg->backlog)
                ::listen(slot->listener.native_handle(), static_cast<int>(it->cfg->backlog));
        }
        // Sessions that started in the old generation hold it: its snapshot
        // and balancer states stay as they were until the last one ends.
        ctx_.current = std::make_shared<generation>(std::move(next));
        // The new limits' sweep (a config with none keeps the sweep going:
        // sessions of the old one may need it).
        if (const auto period = sweep_period(*ctx_.snap().cfg); period.count() > 0) {
            const bool sweeping = sweep_period_.count() > 0;
            sweep_period_ = period;
            if (!sweeping && started_) sweep_tick();
        }
        for (const auto& a : added) {
            const listener_runtime& l = ctx_.snap().listeners[a.listener_index];
            error_code ec;
            auto slot = adopt_listener(a.fd, a.listener_index, ec);
            if (ec) {
                spdlog::error("worker {}: listener {}: cannot adopt the socket for {}: {}", index_, l.cfg->name,
                              l.cfg->address.to_string(), ec.message());
                continue;
            }
            acceptors_.push_back(std::move(slot));
            if (started_) accept_turn(*acceptors_.back());
        }
        // Slots of listeners removed by earlier reloads, once their loops are over.
        std::erase_if(acceptors_, [](const auto& slot) { return slot->loop_done; });
        done();
    });
}

void worker::start() {
    started_ = true;
    ctx_.reserve_spare();
    sweep_period_ = sweep_period(*ctx_.snap().cfg);
    // On the worker thread: a turn may accept, and start, a session at once.
    sockets_.post([this] {
        for (auto& slot : acceptors_) accept_turn(*slot);
        publish_tick();
        if (sweep_period_.count() > 0) sweep_tick();
    });
    thread_ = std::thread([this] {
        // "apilb-w0" .. "apilb-w255" in `top -H` and /proc/PID/task/*/comm.
        ::pthread_setname_np(::pthread_self(), fmt::format("apilb-w{}", index_).c_str());
        set_thread_role(thread_role::worker, static_cast<std::uint32_t>(index_));
        // A failure inside one session must never take the worker down.
        for (;;) {
            try {
                sockets_.run();
                break;
            } catch (const std::exception& e) {
                spdlog::error("worker {}: unexpected exception: {}", index_, e.what());
            }
        }
        exited_.set_value();
    });
}

worker::accept_next worker::accept_some(acceptor_slot& slot, std::chrono::steady_clock::time_point& until) {
    const std::uint32_t max_connections = ctx_.max_connections;
    // A reload may swap ctx_.current and renumber the listeners while this loop
    // waits: look the listener up afresh after every wait, never hold it.
    auto listener_name = [&]() -> const std::string& { return ctx_.snap().listeners[slot.listener_index].cfg->name; };
    int taken = 0;  // accepted in this turn
    for (;;) {
        if (!slot.listener.is_open()) return accept_next::done;
        if (accepting_held_) return accept_next::held;
        if (const auto now = std::chrono::steady_clock::now(); now < ctx_.accept_paused_until) {
            // Out of descriptors: leave new clients in the listen backlog
            // until sessions that end have freed some, instead of spinning.
            until = ctx_.accept_paused_until;
            return accept_next::pause;
        } else if (taken >= accepts_per_turn) {
            // A storm: take the accept queue in bursts, but let the sessions
            // just started (and every other) make progress in between: a
            // timer already due completes in the poller's next wake-up.
            until = now;
            return accept_next::pause;
        }
        const int fd = ::accept4(slot.listener.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK) return accept_next::listener;
            if (err == EINTR) continue;
            const error_code ec(err, boost::system::system_category());
            ctx_.stats.accept_errors_total.fetch_add(1, std::memory_order_relaxed);
            if (is_resource_exhaustion(ec)) {
                ctx_.pause_accepting(ec, fmt::format("listener {}: accept", listener_name()).c_str());
                if ((err == EMFILE || err == ENFILE) && ctx_.resetting_clients() && reset_one(slot)) {
                    ++taken;
                    continue;
                }
                // The queue is empty (or the spare is gone): wait for the next client.
                if (ctx_.resetting_clients()) return accept_next::listener;
            } else {
                // ECONNABORTED and friends: that one client left before we took it.
                spdlog::debug("listener {}: accept: {}", listener_name(), ec.message());
            }
            continue;
        }
        ++taken;
        ctx_.stats.accepted_total.fetch_add(1, std::memory_order_relaxed);
        listener_stats& lstats = *ctx_.snap().listeners[slot.listener_index].stats;
        lstats.accepted_total.fetch_add(1, std::memory_order_relaxed);
        const auto before = ctx_.stats.active_sessions.fetch_add(1, std::memory_order_relaxed);
        if (max_connections != 0 && before >= max_connections) {
            ctx_.stats.active_sessions.fetch_sub(1, std::memory_order_relaxed);
            ctx_.stats.refused_limit_total.fetch_add(1, std::memory_order_relaxed);
            lstats.refused_total.fetch_add(1, std::memory_order_relaxed);
            // Refuse at once, with a reset: accept, then close. The acceptor
            // never stalls, and the client cannot take the end for an answer.
            close_with_reset(fd);
            std::uint64_t suppressed = 0;
            if (ctx_.connect_warnings.allow(suppressed)) {
                spdlog::warn("listener {}: connection limit ({}) reached; refusing new clients{}", listener_name(),
                             max_connections, suppressed ? fmt::format(" [{} similar suppressed]", suppressed) : "");
            }
            continue;
        }
        // The session is built here, on io_'s thread: it takes ctx_.current
        // before any reload can swap it, and slot.listener_index is an
        // index into that generation's snapshot.
        start_session(ctx_, fd, slot.listener_index);
    }
}

bool worker::reset_one(acceptor_slot& slot) {
    // The spare descriptor makes room for exactly one accept. Without it
    // (another thread took the number first), the pause is the fallback.
    if (!ctx_.reserve_spare()) {
        ctx_.accept_paused_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
        return false;
    }
    ::close(ctx_.spare_fd);
    ctx_.spare_fd = -1;
    const int fd = ::accept4(slot.listener.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
        close_with_reset(fd);
        ctx_.stats.reset_no_fds_total.fetch_add(1, std::memory_order_relaxed);
    }
    ctx_.reserve_spare();
    return fd >= 0;
}

std::chrono::milliseconds sweep_period(const config& cfg) {
    using std::chrono::milliseconds;
    milliseconds shortest = milliseconds::max();
    auto consider = [&shortest](milliseconds limit) {
        if (limit.count() > 0) shortest = std::min(shortest, limit);
    };
    consider(cfg.timeouts.idle);
    consider(cfg.timeouts.write_stall);
    // The sweep sets the backend leg's dead-peer detection (a session is
    // at most two periods old then): a tenth of the time before it could
    // act leaves it in place long before.
    if (cfg.tcp.keepalive) consider(cfg.tcp.keepalive_idle);
    consider(cfg.tcp.user_timeout);
    if (shortest == milliseconds::max()) return milliseconds(0);
    // A session is closed at most 10% (or 30 s) after its time is up.
    return std::clamp<milliseconds>(shortest / 10, milliseconds(100), std::chrono::seconds(30));
}

void worker::sweep_tick() noexcept {
    sweep_timer_.wait_until(std::chrono::steady_clock::now() + sweep_period_, &worker::on_sweep_timer, this);
}

void worker::on_sweep_timer(void* self, const error_code& ec) {
    auto& w = *static_cast<worker*>(self);
    if (ec || w.stopping_) return;
    const auto idle = w.ctx_.snap().cfg->timeouts.idle;
    const auto stall = w.ctx_.snap().cfg->timeouts.write_stall;
    const auto now = std::chrono::steady_clock::now();
    try {
        if (idle.count() > 0) {
            w.close_matching(
                [&](const session_entry& s, const snapshot&) { return s.relaying && s.last_activity < now - idle; },
                close_reason::idle);
        }
        if (stall.count() > 0) {
            // A peer that takes nothing (a zero window) while data waits for
            // it holds kernel memory for as long as it likes.
            w.close_matching([&](const session_entry& s,
                                 const snapshot&) { return s.relaying && s.pump->write_blocked_since() < now - stall; },
                             close_reason::stalled);
        }
        // Sessions that outlived a period get their backend leg's
        // keepalive options; short ones end before and never pay for them.
        for (auto& s : w.ctx_.sessions) {
            if (s.relaying && !s.keepalive_set) set_backend_keepalive(s, w.sweep_period_);
        }
    } catch (const std::exception& e) {
        w.tick_failed("sweeping sessions", e);
    }
    w.sweep_tick();
}

void worker::tick_failed(const char* what, const std::exception& e, const char* again) noexcept {
    ctx_.stats.resource_errors_total.fetch_add(1, std::memory_order_relaxed);
    try {
        std::uint64_t suppressed = 0;
        if (ctx_.resource_warnings.allow(suppressed))
            spdlog::critical("worker {}: {} failed: {}; trying again {}", index_, what, e.what(), again);
    } catch (const std::exception&) {}
}

void worker::ping(std::function<void()> answer) { sockets_.post(std::move(answer)); }

void worker::stop_accepting() {
    sockets_.post([this] {
        for (auto& slot : acceptors_) slot->listener.close();
    });
}

void worker::close_sessions(session_rule rule, close_reason why) {
    sockets_.post([this, rule = std::move(rule), why] { close_matching(rule, why); });
}

void worker::close_matching(const session_rule& rule, close_reason why) {
    const snapshot& current = ctx_.snap();
    // Oldest first: sessions are appended as they start. abort() does not
    // unlink; sessions unlink themselves when they end.
    for (auto& s : ctx_.sessions) {
        if (!s.aborted() && rule(s, current)) s.abort(why);
    }
}

session_rule every_session() {
    return [](const session_entry&, const snapshot&) { return true; };
}

session_rule sessions_on(std::shared_ptr<const backend_health> backend) {
    return
        [backend = std::move(backend)](const session_entry& s, const snapshot&) { return s.backend == backend.get(); };
}

session_rule sessions_on_any(std::shared_ptr<const snapshot> keep, std::vector<const backend_health*> backends) {
    return [keep = std::move(keep), backends = std::move(backends)](const session_entry& s, const snapshot&) {
        return std::find(backends.begin(), backends.end(), s.backend) != backends.end();
    };
}

namespace {

/// A Maglev session not on the backend its key prefers in `current`, among
/// backends that can take sessions. The session may have started under an
/// earlier config that listed the backends otherwise: its pool is found by
/// name and its backend by identity.
bool misplaced(const session_entry& s, const snapshot& current, std::vector<backend_load>& loads) {
    const auto& pools = current.pools;
    const auto it = std::find_if(pools.begin(), pools.end(),
                                 [&](const pool_runtime& p) { return p.cfg->name == s.pool->cfg->name; });
    if (it == pools.end() || !it->maglev) return false;
    const pool_runtime& pool = *it;
    loads.resize(pool.backends.size());
    for (std::size_t i = 0; i < pool.backends.size(); ++i) {
        const auto& b = pool.backends[i];
        loads[i] = {.weight = b.cfg->weight, .active = 0, .available = b.takes_sessions(), .tier = 0};
    }
    const auto preferred = choose_maglev(*pool.maglev, s.key_hash, loads);
    return preferred && pool.backends[*preferred].health.get() != s.backend;
}

}  // namespace

session_rule sessions_to_rebalance(std::vector<rebalance_order> orders) {
    // A session matches at most the first order with quota left that wants
    // it; taking sessions oldest first per order, as before, picks the same.
    return [orders = std::move(orders), loads = std::vector<backend_load>()](const session_entry& s,
                                                                             const snapshot& current) mutable {
        if (!s.relaying || !s.pool) return false;
        for (const auto& order : orders) {
            if (order.quota->load(std::memory_order_relaxed) <= 0 || s.pool->cfg->name != order.pool) continue;
            if (order.backend ? s.backend != order.backend.get() : !misplaced(s, current, loads)) continue;
            if (order.quota->fetch_sub(1, std::memory_order_relaxed) <= 0) continue;
            return true;
        }
        return false;
    };
}

void worker::publish_tick() noexcept {
    publish_timer_.wait_until(std::chrono::steady_clock::now() + std::chrono::seconds(1), &worker::on_publish_timer,
                              this);
}

void worker::on_publish_timer(void* self, const error_code& ec) {
    auto& w = *static_cast<worker*>(self);
    if (ec || w.stopping_) return;
    // One pass over this worker's sessions a second; idle ones have
    // nothing to add and touch no shared counter.
    try {
        for (auto& s : w.ctx_.sessions) {
            if (s.relaying && s.publish_bytes) s.publish_bytes(s.owner);
        }
    } catch (const std::exception& e) {
        w.tick_failed("publishing byte counts", e);
    }
    w.publish_tick();
}

void worker::stop() {
    if (!thread_.joinable()) return;
    // Let every session end on its own, so none is destroyed half-way with
    // the io_context's services already gone.
    sockets_.post([this] {
        stopping_ = true;
        for (auto& slot : acceptors_) {
            slot->listener.close();
            slot->pause_timer.cancel();
        }
        sweep_timer_.cancel();
        publish_timer_.cancel();
        quiesce_timer_.cancel();  // the drain's abort() ends every quiesce
        // Armed for the earliest pending connect's deadline, which may be
        // long past the last connect: it must not hold the loop open.
        ctx_.connects.stop();
        ctx_.gate.stop();  // the gated sessions, aborted below, end from the loop
        close_matching(every_session(), close_reason::drain);
        // Every socket is closed: what is left to deliver is queued already.
        // The epoll set is no longer work, so the poller's run() returns
        // once the sessions have wound down.
        sockets_.stop_watching();
    });
    work_.reset();
    sockets_.wake();  // io_ may have run out of work: the loop looks again
    if (exited_.get_future().wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
        spdlog::error("worker {}: did not wind down within 5 s; stopping it", index_);
        sockets_.stop_running();
    }
    thread_.join();
}

}  // namespace apilb
