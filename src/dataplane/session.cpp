// A session's life, top to bottom: start() -> connect_next() (storm
// control's gate, then a connect, retried on the next backend) ->
// on_connected() -> replay() of what the client sent to a backend that
// failed before answering -> start_relay() -> relay_ended() -> finalize(),
// the one exit, which records the close reason and closes with FIN or RST.
// Every step is a poller or timer callback that owns the session
// (std::unique_ptr, released into the pending wait): no coroutine frames,
// co_spawn or handler allocations on the path of a new connection.
#include "apilb/dataplane/session.hpp"

#include <algorithm>
#include <limits>
#include <string_view>
#include <utility>

#include <sys/socket.h>

#include <cerrno>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apilb/dataplane/session_impl.hpp"
#include "apilb/dataplane/socket_options.hpp"
#include "apilb/logging/logging.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

void session_entry::abort(close_reason why) {
    if (closed_by == close_reason::none) closed_by = why;
    // Every reason apilb starts calls for a reset (close_action): a FIN
    // would tell a client that a response cut at 29.9 of 30 MB was whole
    // (the kernel sends what is queued, then the FIN); a reset cannot be
    // mistaken for a normal end, and frees what the sockets hold at once.
    for (poll_socket* s : {client, upstream}) {
        if (s == nullptr || !s->is_open()) continue;
        s->set_abortive_close();
        s->close();
    }
    if (storm_wait) storm_wait->wake();
    // A quiesced direction has no wait for the close to complete.
    if (pump && quiesce_until != std::chrono::steady_clock::time_point::max()) {
        quiesce_until = std::chrono::steady_clock::time_point::max();
        pump->end_quiesce();
    }
}

namespace {

/// Passive health detection: the first failure of a backend marks it
/// suspect at once (other workers skip it from now on) and tells the health
/// checker, which probes it at once. Later failures while it is suspect are
/// not reported again, so a burst of clients failing together posts once.
void report_passive(worker_context& ctx, const pool_runtime& pool, const backend_runtime& b, std::string what) {
    if (!pool.cfg->health.passive || !ctx.report_passive) return;
    if (b.health->suspect.exchange(true, std::memory_order_relaxed)) return;
    ctx.report_passive(b.health, std::move(what));
}

/// True if `bytes` start with a TLS handshake record (content type 22,
/// protocol major version 3): a ClientHello.
bool is_tls_handshake(std::string_view bytes) {
    return bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0x16 &&
           static_cast<unsigned char>(bytes[1]) == 0x03;
}

/// What a client may send before its backend's first byte and still be
/// replayed to another backend: a TLS ClientHello is well under this.
constexpr std::size_t replay_limit = 16 * 1024;

/// Why a relay that apilb did not cut ended: a failed leg, by the leg and
/// how -- the kernel gave up on the peer (ETIMEDOUT, from tcp.user_timeout
/// or keepalive) or the peer reset it (anything else); the direction that
/// read the failed leg, or wrote to it, holds the error -- else completed.
close_reason relay_end_reason(const pump_result& to_backend, const pump_result& from_backend) {
    const pump_result* failed = nullptr;
    bool client_leg = false;
    if (to_backend.end == pump_end::source_reset || from_backend.end == pump_end::sink_failed) {
        failed = to_backend.end == pump_end::source_reset ? &to_backend : &from_backend;
        client_leg = true;
    } else if (from_backend.end == pump_end::source_reset || to_backend.end == pump_end::sink_failed) {
        failed = from_backend.end == pump_end::source_reset ? &from_backend : &to_backend;
    }
    if (failed == nullptr) return close_reason::completed;
    const bool timed_out = failed->error.value() == ETIMEDOUT;
    if (client_leg) return timed_out ? close_reason::client_timeout : close_reason::client_reset;
    return timed_out ? close_reason::backend_timeout : close_reason::backend_reset;
}

}  // namespace

namespace session_impl {

std::string endpoint_text(const tcp::endpoint& ep) {
    const auto a = ep.address();
    return a.is_v6() ? fmt::format("[{}]:{}", a.to_string(), ep.port())
                     : fmt::format("{}:{}", a.to_string(), ep.port());
}

session::session(worker_context& ctx, std::size_t listener_index, bool connecting)
    : ctx_(ctx),
      gen_(ctx.current),
      snap_(gen_->snap.get()),
      listener_(snap_->listeners[listener_index]),
      pool_(snap_->pools[listener_.pool_index]),
      listener_index_(listener_index),
      client_(ctx.sockets),
      upstream_(ctx.sockets),
      relay_(client_, upstream_, ctx.relay, entry_.last_activity),
      conn_(connecting ? std::make_unique<connect_state>(upstream_, pool_.backends.size()) : nullptr) {
    entry_.client = &client_;
    entry_.upstream = &upstream_;
    entry_.pump = &relay_;
    ctx_.sessions.push_back(entry_);
    entry_.pool = &pool_;
    entry_.publish_bytes = &session::on_publish;
    entry_.owner = this;
    if (conn_) entry_.storm_wait = &conn_->wait;
}

bool session::adopt_client(int fd) {
    if (const error_code ec = client_.adopt_connected(fd)) {
        if (is_resource_exhaustion(ec)) ctx_.pause_accepting(ec, "watching a client socket");
        return false;
    }
    // The client socket has its TCP options already: accepted sockets
    // inherit them from the listener. Its address is looked up now only for
    // Maglev and debug logs; a warning looks it up when it names it.
    if (pool_.maglev || spdlog::should_log(spdlog::level::debug)) {
        error_code ec;
        if (auto ep = client_.remote_endpoint(ec); !ec) client_ep_ = ep;
    }
    if (pool_.maglev && client_ep_) entry_.key_hash = client_key_hash(*client_ep_, pool_.cfg->maglev_key);
    return true;
}

session::~session() {
    release_slot();
    if (std::uncaught_exceptions() > 0) {
        // Unwinding (an allocation failed): no log line (it could throw
        // again), but the counter and the close its reason calls for, so
        // that the client does not take the end for a complete answer.
        if (close_action(close_reason::no_memory) == close_how::reset) {
            client_.set_abortive_close();
            upstream_.set_abortive_close();
        }
        process_counter(ctx_.stats, close_reason::no_memory)->fetch_add(1, std::memory_order_relaxed);
    }
    client_.close();
    upstream_.close();
    ctx_.stats.active_sessions.fetch_sub(1, std::memory_order_relaxed);
}

std::string session::client_text() const {
    if (client_ep_) return endpoint_text(*client_ep_);
    error_code ec;
    const auto ep = client_.remote_endpoint(ec);
    return ec ? std::string("?") : endpoint_text(ep);
}

void session::connect_next(std::unique_ptr<session> self) {
    session& s = *self;
    connect_state& c = *s.conn_;
    const pool_config& pool = *s.pool_.cfg;
    for (;;) {
        if (c.gate == gate_step::pick) {
            if (c.attempts >= pool.connect_attempts || s.entry_.aborted()) break;
            std::size_t pick = 0;
            const step got = s.pick_backend(pick);
            if (got == step::next) continue;
            if (got == step::stop) break;
            c.chosen_index = pick;  // chosen_ only once connected
            const storm_control_config& sc = pool.storm_control;
            c.gate = sc.new_per_second != 0   ? gate_step::turn
                     : sc.max_connecting != 0 ? gate_step::slot
                                              : gate_step::open;
        }
        const backend_runtime& backend = s.pool_.backends[c.chosen_index];
        if (c.gate != gate_step::open) {
            const gate g = s.pass_gate(backend);
            if (g == gate::wait) return wait_at_gate(std::move(self));
            if (g == gate::refused) {
                const bool no_slot = c.gate == gate_step::slot || c.gate == gate_step::slot_retry;
                c.gate = gate_step::pick;
                backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
                if (s.entry_.aborted()) break;
                c.add_failure(backend.cfg->name,
                              fmt::format("storm control (no {} within {}ms)", no_slot ? "connect slot" : "turn",
                                          pool.storm_control.queue_timeout.count()));
                continue;
            }
        }
        c.gate = gate_step::pick;
        if (!s.open_upstream(backend)) break;
        s.watch_connect_deadline();
        // Completes from the poller's loop, never inside this call.
        s.upstream_.connect(backend.endpoint, &session::on_connected, self.release());
        return;
    }
    s.give_up();  // the session ends with `self`
}

session::step session::pick_backend(std::size_t& pick) {
    const config& cfg = *snap_->cfg;
    connect_state& c = *conn_;
    ++c.attempts;
    // The worker's scratch vector: filled and read with no suspension between.
    fill_loads(ctx_.loads, pool_, c.tried, cfg.limits.per_backend);
    const auto chosen = pool_.maglev ? choose_maglev(*pool_.maglev, entry_.key_hash, ctx_.loads)
                                     : gen_->balancers[listener_.pool_index].choose(pool_.cfg->balance, ctx_.loads);
    if (!chosen) return step::stop;
    c.tried[*chosen] = 1;
    if (!try_reserve(*pool_.backends[*chosen].stats, cfg.limits.per_backend)) return step::next;
    pick = *chosen;
    return step::ready;
}

session::gate session::pass_gate(const backend_runtime& backend) {
    const storm_control_config& sc = pool_.cfg->storm_control;
    connect_state& c = *conn_;
    backend_stats& stats = *backend.stats;
    const std::int64_t interval = sc.new_per_second != 0 ? 1'000'000'000 / sc.new_per_second : 0;
    const auto wait_until = [&c](clock_type::time_point at) {
        c.wake_at = at;
        return gate::wait;
    };
    if (c.gate == gate_step::turn) {
        const std::int64_t max_delay = std::chrono::duration_cast<std::chrono::nanoseconds>(sc.queue_timeout).count();
        const std::optional<gcra_slot> turn = reserve_turn(stats.storm_tat_ns, interval, sc.burst, max_delay);
        if (!turn) {
            stats.storm_refused_total.fetch_add(1, std::memory_order_relaxed);
            return gate::refused;
        }
        c.gate = gate_step::start;
        if (turn->delay_ns != 0) {
            if (stats.storm_waiting.fetch_add(1, std::memory_order_relaxed) >= sc.queue) {
                // The queue is full. The reserved turn goes unused: the next clients
                // wait as if it had been taken, which errs towards the backend.
                stats.storm_waiting.fetch_sub(1, std::memory_order_relaxed);
                stats.storm_refused_total.fetch_add(1, std::memory_order_relaxed);
                return gate::refused;
            }
            stats.storm_delayed_total.fetch_add(1, std::memory_order_relaxed);
            c.gate = gate_step::turn_waited;
            return wait_until(clock_type::now() + std::chrono::nanoseconds(turn->delay_ns));
        }
    }
    if (c.gate == gate_step::turn_waited) {
        stats.storm_waiting.fetch_sub(1, std::memory_order_relaxed);
        if (entry_.aborted()) return gate::refused;
        c.gate = gate_step::start;
    }
    if (c.gate == gate_step::start) {
        // The turn says when this client may go. A worker that wakes late (a
        // loaded machine, a stopped process) would start every turn that came
        // due meanwhile at once: 300 ms late, 150 connects in a moment on top
        // of the rate. So the start takes a turn too, in a second state that
        // only starts enter: on time it is free (the turns are spaced already);
        // late, the starts are spaced again.
        const std::optional<gcra_slot> start = reserve_turn(stats.storm_start_tat_ns, interval, sc.burst,
                                                            std::numeric_limits<std::int64_t>::max());
        c.gate = gate_step::start_waited;
        if (start->delay_ns != 0) return wait_until(clock_type::now() + std::chrono::nanoseconds(start->delay_ns));
    }
    if (c.gate == gate_step::start_waited) {
        if (entry_.aborted()) return gate::refused;
        // The start turns were spaced when they were taken, but a wait that
        // ends late ends together with every other one due meanwhile: 150 ms
        // late at 500/s, 75 connects at once, which pile into the next second
        // on top of its own (572 in one second was seen at a cap of 500).
        // So the moment of the connect itself must keep the rate, in a third
        // state that counts only real departures. One that would break it
        // takes a new start turn, behind the clients already waiting.
        if (const std::int64_t early = take_turn_now(stats.storm_departure_tat_ns, interval, sc.burst); early != 0) {
            c.gate = gate_step::start;
            return wait_until(clock_type::now() + std::chrono::nanoseconds(early));
        }
        c.gate = gate_step::slot;
    }
    if (c.gate == gate_step::slot) {
        if (sc.max_connecting == 0) return gate::open;
        c.slot_deadline = clock_type::now() + sc.queue_timeout;
        c.slot_waited = false;
        c.gate = gate_step::slot_retry;
    }
    std::atomic<std::uint32_t>& connecting = stats.connecting;
    auto current = connecting.load(std::memory_order_relaxed);
    while (current < sc.max_connecting) {
        if (connecting.compare_exchange_weak(current, current + 1, std::memory_order_relaxed)) {
            c.slot = &connecting;
            if (c.slot_waited) stats.storm_delayed_total.fetch_add(1, std::memory_order_relaxed);
            return gate::open;
        }
    }
    if (entry_.aborted() || clock_type::now() >= c.slot_deadline) {
        if (!entry_.aborted()) stats.storm_refused_total.fetch_add(1, std::memory_order_relaxed);
        return gate::refused;
    }
    c.slot_waited = true;
    return wait_until(c.slot_deadline);
}

void session::wait_at_gate(std::unique_ptr<session> self) {
    session& s = *self;
    // The wait owns the session now. It cannot fail to start: an Asio
    // timer's wait could, and the session then died with its backend's
    // reservation (and storm_waiting) still counted.
    connect_state& c = *s.conn_;
    s.ctx_.gate.wait(c.wait, c.wake_at, c.gate == gate_step::slot_retry, &session::on_gate_wait_over, self.release());
}

void session::release_slot() {
    if (!conn_ || !conn_->slot) return;
    std::exchange(conn_->slot, nullptr)->fetch_sub(1, std::memory_order_relaxed);
    ctx_.gate.wake_slot_waiters(false);
}

void session::on_backend_answered(void* arg) {
    auto& s = *static_cast<session*>(arg);
    // The relay kept the client's bytes in conn_->sent until now and has
    // let go of them already.
    s.release_slot();
    s.entry_.storm_wait = nullptr;
    s.conn_.reset();
}

bool session::open_upstream(const backend_runtime& backend) {
    if (const error_code ec = upstream_.open(backend.endpoint.protocol())) {
        // Not the backend's fault: this process is out of descriptors or memory.
        backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
        release_slot();
        if (is_resource_exhaustion(ec)) ctx_.pause_accepting(ec, "opening a backend socket");
        conn_->local_failure = ec;
        return false;
    }
    if (auto opt_ec = apply_new_socket_tcp_options(upstream_.native_handle(), snap_->cfg->tcp)) {
        spdlog::debug("backend {}: setting TCP options failed: {}", backend.cfg->name, opt_ec.message());
    }
    return true;
}

void session::watch_connect_deadline() {
    const auto timeout = snap_->cfg->timeouts.connect;
    conn_->timed_out = false;
    conn_->deadline = clock_type::now() + timeout;
    ctx_.connects.watch(*conn_, gen_->connects);
}

error_code session::connect_ended(const error_code& ec) {
    conn_->unlink();  // from the worker's pending connects
    return conn_->timed_out ? error_code{asio::error::timed_out} : ec;
}

void session::on_connected(void* arg, const error_code& ec) {
    std::unique_ptr<session> self(static_cast<session*>(arg));
    session& s = *self;
    const error_code cec = s.connect_ended(ec);
    if (cec) {
        if (!s.connect_failed(s.conn_->chosen_index, cec)) return s.give_up();
        return connect_next(std::move(self));
    }
    s.chosen_ = &s.pool_.backends[s.conn_->chosen_index];
    if (!s.conn_->sent.empty()) return replay(std::move(self));
    s.start_relay(std::move(self));
}

bool session::connect_failed(std::size_t pick, const error_code& cec) {
    const config& cfg = *snap_->cfg;
    const backend_runtime& backend = pool_.backends[pick];
    upstream_.close();
    backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
    release_slot();
    if (cec == asio::error::operation_aborted || entry_.aborted()) return false;
    backend.stats->connect_failures_total.fetch_add(1, std::memory_order_relaxed);
    (cec == asio::error::timed_out            ? backend.stats->connect_timeout_total
     : cec == asio::error::connection_refused ? backend.stats->connect_refused_total
                                              : backend.stats->connect_error_total)
        .fetch_add(1, std::memory_order_relaxed);
    report_passive(ctx_, pool_, backend,
                   cec == asio::error::timed_out
                       ? fmt::format("connect timed out after {}ms", cfg.timeouts.connect.count())
                   : cec == asio::error::connection_refused ? std::string("connect refused")
                                                            : "connect failed: " + cec.message());
    spdlog::debug("backend {} ({}) failed a client's connect: {}", backend.cfg->name, endpoint_text(backend.endpoint),
                  cec.message());
    conn_->add_failure(backend.cfg->name, cec.message());
    return true;
}

void session::replay(std::unique_ptr<session> self) {
    session& s = *self;
    const std::string& sent = s.conn_->sent;
    error_code ec;
    while (s.replayed_ < sent.size()) {
        const ssize_t n = ::send(s.upstream_.native_handle(), sent.data() + s.replayed_, sent.size() - s.replayed_,
                                 MSG_NOSIGNAL);
        if (n > 0) {
            s.replayed_ += static_cast<std::uint32_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return s.upstream_.wait(poll_socket::wait_type::write, &session::on_replay_writable, self.release());
        }
        ec = n < 0 ? error_code(errno, boost::system::system_category()) : error_code(asio::error::broken_pipe);
        break;
    }
    if (!ec) return s.start_relay(std::move(self));
    failed_before_answering(std::move(self), ec);
}

void session::on_replay_writable(void* arg, const error_code& ec) {
    std::unique_ptr<session> self(static_cast<session*>(arg));
    if (!ec) return replay(std::move(self));
    failed_before_answering(std::move(self), ec);
}

void session::start_relay(std::unique_ptr<session> self) {
    // From here the session can be closed from outside: idle sessions are
    // found by the worker's sweep (one timer per worker, not one per
    // session), unhealthy backends' sessions by the health checker.
    entry_.last_activity = clock_type::now();
    entry_.backend = chosen_->health.get();
    entry_.relaying = true;
    // Counted once connected, not when it ends: a watch lasts hours.
    chosen_->stats->sessions_total.fetch_add(1, std::memory_order_relaxed);
    ctx_.resources_recovered();
    relay_.rearm();
    if (adopted_) {
        relay_.resume(published_to_, published_from_);
    } else {
        relay_.keep_for_replay(&conn_->sent, replay_limit);
        relay_.on_answered(&session::on_backend_answered, this);
    }
    // The relay owns the session until both directions end; it completes
    // through a plain callback, which allocates nothing.
    relay_.run(&session::on_relay_done, self.release());
}

void session::on_relay_done(void* arg) {
    std::unique_ptr<session> self(static_cast<session*>(arg));
    session& s = *self;
    s.relay_ended(std::move(self));
}

void session::relay_ended(std::unique_ptr<session> self) {
    if (entry_.aborted()) return finalize(entry_.closed_by);
    if (relay_.ran_out_of_memory()) return finalize(close_reason::no_memory);
    if (relay_.backend_failed_early()) return failed_before_answering(std::move(self), relay_.early_error());
    const pump_result& to_backend = relay_.to_backend();
    const pump_result& from_backend = relay_.from_backend();
    // An apiserver that resets a connection before sending anything is not
    // serving (crashing, or shutting down its listener): count it against it.
    // (Usually found by the relay's early end; this is for a client that
    // half-closed or sent much before the backend's first byte.)
    if (from_backend.bytes == 0 &&
        (from_backend.end == pump_end::source_reset || to_backend.end == pump_end::sink_failed)) {
        report_passive(ctx_, pool_, *chosen_, "reset before any byte came back");
    }
    finalize(relay_end_reason(to_backend, from_backend));
}

void session::failed_before_answering(std::unique_ptr<session> self, const error_code& why) {
    session& s = *self;
    s.conn_->last_error = why;
    if (!s.may_move_on()) return s.give_up();
    connect_next(std::move(self));
}

bool session::may_move_on() {
    // The backend failed before the client saw anything of it: the client may
    // go to the next one with what it sent -- but only a TLS handshake, which
    // no server acts on before answering it. Plain bytes may have been a
    // request the dead backend carried out; sending them again could repeat it.
    connect_state& c = *conn_;
    const bool may_replay = c.sent.empty() || is_tls_handshake(c.sent);
    const char* why = c.last_error == asio::error::eof ? "closed before any byte came back"
                                                       : "reset before any byte came back";
    report_passive(ctx_, pool_, *chosen_, why);
    spdlog::debug("backend {} ({}) {}; {} the client's {}B", chosen_->cfg->name, endpoint_text(chosen_->endpoint), why,
                  may_replay ? "trying another with" : "cannot replay", c.sent.size());
    c.add_failure(chosen_->cfg->name, why);
    upstream_.close();
    chosen_->stats->active.fetch_sub(1, std::memory_order_relaxed);
    release_slot();
    entry_.backend = nullptr;
    entry_.relaying = false;
    entry_.keepalive_set = false;  // the next backend's socket is a new one
    chosen_ = nullptr;
    replayed_ = 0;
    // What the failed backend was sent stays in its counters.
    published_to_ = 0;
    published_from_ = 0;
    return may_replay;
}

void session::give_up() {
    // A session closed while connecting keeps apilb's reason (a drain).
    finalize(entry_.aborted()       ? entry_.closed_by
             : conn_->local_failure ? close_reason::no_resources
                                    : close_reason::no_backend);
}

void session::finalize(close_reason why) {
    if (auto* counter = process_counter(ctx_.stats, why)) counter->fetch_add(1, std::memory_order_relaxed);
    if (chosen_) {
        backend_stats& bstats = *chosen_->stats;
        if (auto* counter = backend_counter(bstats, why)) counter->fetch_add(1, std::memory_order_relaxed);
        bstats.active.fetch_sub(1, std::memory_order_relaxed);
        publish_bytes();  // the rest since the worker's last tick
    }

    // Only a session that never got an answer gives up (give_up()): its
    // connect_state is there to say why.
    if (why == close_reason::no_backend && conn_) {
        std::uint64_t suppressed = 0;
        if (ctx_.connect_warnings.allow(suppressed)) {
            const log_scope fields({.event = "no_backend",
                                    .pool = pool_.cfg->name,
                                    .backend = {},
                                    .client = client_text(),
                                    .reason = conn_->failures.empty() ? "none_available" : "connect_failed"});
            spdlog::warn("listener {}: no backend of pool {} accepted client {} ({}){}", listener_.cfg->name,
                         pool_.cfg->name, client_text(),
                         conn_->failures.empty() ? (pool_.cfg->health.all_unhealthy == all_unhealthy_policy::reject
                                                        ? "no backend is healthy (all_unhealthy: reject) or free"
                                                        : "every backend is at its session limit")
                                                 : conn_->failures,
                         suppressed ? fmt::format(" [{} similar suppressed]", suppressed) : "");
        }
    } else if (why == close_reason::no_resources && conn_) {
        spdlog::debug("client {}: closed: {}", client_text(), conn_->local_failure.message());
    } else if (chosen_ && spdlog::should_log(spdlog::level::debug)) {
        const pump_result& to_backend = relay_.to_backend();
        const pump_result& from_backend = relay_.from_backend();
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started_);
        const log_scope fields({.event = "session_closed",
                                .pool = pool_.cfg->name,
                                .backend = chosen_->cfg->name,
                                .client = client_text(),
                                .reason = to_string(why)});
        spdlog::debug(
            "session closed: listener={} client={} backend={} ({}) client_to_backend={}B "
            "backend_to_client={}B duration={}ms end={}",
            listener_.cfg->name, client_text(), chosen_->cfg->name, endpoint_text(chosen_->endpoint),
            to_backend.bytes + replayed_, from_backend.bytes, ms.count(),
            closed_by_apilb(why) ? std::string(to_string(why))
                                 : fmt::format("client:{}{},backend:{}{}", to_string(to_backend.end),
                                               to_backend.error ? "(" + to_backend.error.message() + ")" : "",
                                               to_string(from_backend.end),
                                               from_backend.error ? "(" + from_backend.error.message() + ")" : ""));
    }

    if (close_action(why) == close_how::reset) {
        for (poll_socket* s : {&client_, &upstream_}) {
            if (s->is_open()) s->set_abortive_close();
        }
    }
    // The sockets close with the session, right after.
}

void session::publish_bytes() {
    // The relay's counts run on while it relays; the worker's tick and the
    // end of the session add the difference, so each byte is counted once.
    // (Between a backend's early failure and may_move_on() the relay's
    // counts are already reset: nothing is added then.)
    const std::uint64_t to = relay_.to_backend().bytes + replayed_;
    const std::uint64_t from = relay_.from_backend().bytes;
    backend_stats& bstats = *chosen_->stats;
    if (to > published_to_) {
        bstats.bytes_to_backend.fetch_add(to - published_to_, std::memory_order_relaxed);
        published_to_ = to;
    }
    if (from > published_from_) {
        bstats.bytes_from_backend.fetch_add(from - published_from_, std::memory_order_relaxed);
        published_from_ = from;
    }
}

void session::set_backend_keepalive(clock_type::duration min_age) {
    if (!entry_.relaying || entry_.keepalive_set || entry_.aborted() || clock_type::now() - started_ < min_age) return;
    // Once, whatever the outcome: a socket that refuses an option now
    // (reset meanwhile) would refuse it at every sweep.
    entry_.keepalive_set = true;
    const tcp_config& tcp = snap_->cfg->tcp;
    // An adopted socket holds what the old process set, if it set anything.
    if (!adopted_ && !has_keepalive_tcp_options(tcp)) return;
    if (auto ec = apply_keepalive_tcp_options(upstream_.native_handle(), tcp, !adopted_)) {
        spdlog::debug("backend {}: setting keepalive options failed: {}", chosen_->cfg->name, ec.message());
    }
}

}  // namespace session_impl

using session_impl::session;

void set_backend_keepalive(session_entry& s, std::chrono::steady_clock::duration min_age) {
    if (s.owner != nullptr) static_cast<session*>(s.owner)->set_backend_keepalive(min_age);
}

void start_session(worker_context& ctx, int fd, std::size_t listener_index) {
    // Out of memory for one session: that client is reset and counted, and
    // the accept loop goes on. An exception let out of here would end the
    // accept loop, and this worker would never accept again.
    std::unique_ptr<session> s;
    try {
        s = std::make_unique<session>(ctx, listener_index, true);
    } catch (const std::bad_alloc&) {
        close_with_reset(fd);
        ctx.stats.active_sessions.fetch_sub(1, std::memory_order_relaxed);
        process_counter(ctx.stats, close_reason::no_memory)->fetch_add(1, std::memory_order_relaxed);
        return ctx.pause_accepting(boost::system::errc::make_error_code(boost::system::errc::not_enough_memory),
                                   "starting a session");
    }
    if (!s->adopt_client(fd)) return;  // closed; the session un-counts itself
    try {
        session::start(std::move(s));
    } catch (const std::bad_alloc&) {
        // The session is gone: reset, un-counted and counted by its destructor.
        ctx.stats.resource_errors_total.fetch_add(1, std::memory_order_relaxed);
    }
}

}  // namespace apilb