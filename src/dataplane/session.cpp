#include "apilb/dataplane/session.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <limits>
#include <optional>
#include <string_view>

#include <sys/socket.h>

#include <cerrno>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apilb/core/health.hpp"
#include "apilb/logging/logging.hpp"
#include "apilb/core/pacing.hpp"
#include "apilb/dataplane/socket_options.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

void session_entry::abort(close_reason why) {
    if (closed_by == close_reason::none) closed_by = why;
    // A FIN would tell a client that a response cut at 29.9 of 30 MB was
    // whole (the kernel sends what is queued, then the FIN); a reset cannot
    // be mistaken for a normal end, and frees what the sockets hold at once.
    for (poll_socket* s : {client, upstream}) {
        if (s == nullptr || !s->is_open()) continue;
        s->set_abortive_close();
        s->close();
    }
    if (pacing_timer) pacing_timer->cancel();
}

namespace {

std::string endpoint_text(const tcp::endpoint& ep) {
    const auto a = ep.address();
    return a.is_v6() ? fmt::format("[{}]:{}", a.to_string(), ep.port())
                     : fmt::format("{}:{}", a.to_string(), ep.port());
}

/// Reserves a session slot on a backend, honouring limits.per_backend across
/// all workers without a lock.
bool try_reserve(backend_stats& stats, std::uint32_t per_backend) {
    auto current = stats.active.load(std::memory_order_relaxed);
    do {
        if (per_backend != 0 && current >= per_backend) return false;
    } while (!stats.active.compare_exchange_weak(current, current + 1, std::memory_order_relaxed));
    return true;
}

/// Passive health detection: the first failure of a backend marks it
/// suspect at once (other workers skip it from now on) and tells the health
/// checker, which probes it at once. Later failures while it is suspect are
/// not reported again, so a burst of clients failing together posts once.
void report_passive(worker_context& ctx, const pool_runtime& pool, const backend_runtime& b, std::string what) {
    if (!pool.cfg->health.passive || !ctx.report_passive) return;
    if (b.health->suspect.exchange(true, std::memory_order_relaxed)) return;
    ctx.report_passive(b.health, std::move(what));
}

/// Backends tried so far by one session; no allocation for pools of up to 16.
using tried_set = boost::container::small_vector<std::uint8_t, 16>;

/// What the balancer needs of every backend now: its health tier, its
/// weight scaled by slow start (in 1/1000), and whether it may be chosen.
void fill_loads(std::vector<backend_load>& loads, const pool_runtime& pool, const tried_set& tried,
                std::uint32_t per_backend) {
    const health_config& health = pool.cfg->health;
    const bool try_all = health.all_unhealthy == all_unhealthy_policy::try_all;
    const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 clock_type::now().time_since_epoch()).count();
    loads.resize(pool.backends.size());
    for (std::size_t i = 0; i < loads.size(); ++i) {
        const auto& b = pool.backends[i];
        const auto active = b.stats->active.load(std::memory_order_relaxed);
        const bool healthy = b.health->healthy.load(std::memory_order_relaxed);
        const health_tier tier = tier_of(healthy, b.health->suspect.load(std::memory_order_relaxed));
        std::uint32_t permille = 1000;
        if (const auto ramp = b.health->ramp_start_ns.load(std::memory_order_relaxed); ramp != 0 && healthy) {
            permille = slow_start_permille(std::chrono::nanoseconds(now - ramp), health.slow_start);
        }
        loads[i] = {.weight = b.cfg->weight * permille,
                    .active = active,
                    // drain: no new sessions, like an unhealthy backend under
                    // all_unhealthy: reject (a Maglev key moves to its next choice).
                    .available = !b.drained() && !tried[i] && (per_backend == 0 || active < per_backend) &&
                                 (tier != health_tier::unhealthy || try_all),
                    .tier = static_cast<std::uint8_t>(tier)};
    }
}

/// Closes with RST instead of FIN: a reset is passed on as a reset.
void close_with_reset(poll_socket& s) {
    s.set_abortive_close();
    s.close();
}

/// How a session apilb closed ended, in its log line; nullptr if apilb did not close it.
const char* close_text(close_reason why) {
    switch (why) {
    case close_reason::none: return nullptr;
    case close_reason::idle: return "idle-timeout";
    case close_reason::health: return "backend-unhealthy";
    case close_reason::reload: return "backend-removed";
    case close_reason::rebalance: return "rebalanced";
    case close_reason::drain: return "drain";
    case close_reason::stalled: return "write-stalled";
    }
    return nullptr;
}

/// A session that ended because one of its legs failed counts once, by that
/// leg and by how: the kernel gave up on the peer (ETIMEDOUT, from
/// tcp.user_timeout or keepalive) or the peer reset it (anything else). The
/// direction that read the failed leg, or wrote to it, holds the error.
void count_failed_leg(process_stats& stats, const pump_result& to_backend, const pump_result& from_backend) {
    const pump_result* failed = nullptr;
    bool client_leg = false;
    if (to_backend.end == pump_end::source_reset || from_backend.end == pump_end::sink_failed) {
        failed = to_backend.end == pump_end::source_reset ? &to_backend : &from_backend;
        client_leg = true;
    } else if (from_backend.end == pump_end::source_reset || to_backend.end == pump_end::sink_failed) {
        failed = from_backend.end == pump_end::source_reset ? &from_backend : &to_backend;
    }
    if (failed == nullptr) return;
    const bool timed_out = failed->error.value() == ETIMEDOUT;
    auto& counter = client_leg ? (timed_out ? stats.client_timeout_total : stats.client_reset_total)
                               : (timed_out ? stats.backend_timeout_total : stats.backend_reset_total);
    counter.fetch_add(1, std::memory_order_relaxed);
}

/// Writes all of `bytes` to the non-blocking socket `s`.
asio::awaitable<error_code> send_all(poll_socket& s, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(s.native_handle(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n > 0) {
            bytes.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            auto [ec] = co_await s.async_wait(poll_socket::wait_type::write, asio::as_tuple(asio::use_awaitable));
            if (ec) co_return ec;
            continue;
        }
        co_return n < 0 ? error_code(errno, boost::system::system_category()) : error_code(asio::error::broken_pipe);
    }
    co_return error_code{};
}

/// Choosing and connecting across the attempts of one session.
struct connect_state {
    explicit connect_state(std::size_t backends) : tried(backends, 0) {}
    std::uint64_t key_hash = 0;  ///< maglev pools: the client's key
    tried_set tried;
    std::uint32_t attempts = 0;
    std::string failures;     ///< "name: reason; ..." for the log when every attempt failed
    error_code local_failure; ///< this process is out of something: not a backend's fault
};

/// The Maglev key of a client: its address bytes (and port), hashed the same
/// way on every apilb, so both balancers of a pair agree.
std::uint64_t client_key_hash(const tcp::endpoint& ep, hash_key key) {
    std::string bytes;
    const auto addr = ep.address();
    if (addr.is_v4()) {
        const auto b = addr.to_v4().to_bytes();
        bytes.assign(b.begin(), b.end());
    } else {
        const auto b = addr.to_v6().to_bytes();
        bytes.assign(b.begin(), b.end());
    }
    if (key == hash_key::source_address_port) {
        bytes.push_back(static_cast<char>(ep.port() >> 8));
        bytes.push_back(static_cast<char>(ep.port() & 0xff));
    }
    return stable_hash(bytes);
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

/// One proxied connection. A coroutine chooses and connects (with retries,
/// and the replay of a TLS ClientHello after a backend that failed before
/// answering); once connected, the coroutine ends and the session lives on
/// as this object alone, owned by its relay's completion: an idle watch
/// costs the object, its two sockets and two pending waits.
class session : private pending_connect {
public:
    session(worker_context& ctx, std::size_t listener_index);
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    /// Chooses a backend, connects (moving on to the next one on failure,
    /// until connect_attempts are used), writes what the client sent to a
    /// backend that failed before answering, and starts the relay.
    static asio::awaitable<void> establish(std::unique_ptr<session> self);
    /// Takes the accepted client socket; false if it cannot be watched.
    bool adopt_client(int fd);
    /// Connects the adopted client to a backend and relays. Pools with
    /// storm control go through establish(); the others take the callback
    /// path, which costs no coroutine frames, co_spawn or handler allocations
    /// (a quarter of the user-space instructions of a short connection).
    static void start(std::unique_ptr<session> self);

private:
    /// The connect loop's steps, shared by connect_next() and the callback path.
    enum class step { ready, next, stop };
    /// Counts an attempt, picks a backend not tried yet and reserves a
    /// session on it: `ready` with `pick` set, `next` to try again, or `stop`.
    step pick_backend(std::size_t& pick);
    /// Opens the socket to `backend` with the TCP options; false (the
    /// reservation given back) if this process is out of descriptors.
    bool open_upstream(const backend_runtime& backend);
    /// The connect to backend `pick` failed with `cec`: counted, reported,
    /// the socket closed. False if the session must not try another backend.
    bool connect_failed(std::size_t pick, const error_code& cec);
    /// The callback path: connects to the next backend that will have the
    /// client, or gives up. `self` is owned by the connect while it runs.
    static void connect_next_without_coroutine(std::unique_ptr<session> self);
    static void on_connected(void* self, const error_code& ec);
    /// Both paths: the connect about to start joins the worker's deadline
    /// queue; once it ends, connect_ended() takes it out and says timed_out
    /// if the deadline closed the socket.
    void watch_connect_deadline();
    error_code connect_ended(const error_code& ec);
    static void on_connect_deadline(pending_connect& p);

    /// Storm control: waits for this backend's next turn (a paced start of a
    /// connection). False if there is none within queue_timeout, the queue
    /// is full, or the session was closed meanwhile.
    asio::awaitable<bool> wait_for_turn(const backend_runtime& backend);
    /// Sleeps `delay_ns` (a storm-control wait that closing the session
    /// cuts short); false if the session was aborted meanwhile.
    asio::awaitable<bool> pacing_sleep(std::int64_t delay_ns);
    /// storm_control.max_connecting: takes one of the backend's slots for
    /// connections being established, waiting (up to queue_timeout) for one
    /// to free. False if none freed in time or the session was closed.
    asio::awaitable<bool> wait_for_slot(const backend_runtime& backend);
    /// Gives the slot back (connect failed, the backend's first byte came,
    /// or the session ended) and wakes a waiter of this worker.
    void release_slot();
    static void on_backend_answered(void* self) { static_cast<session*>(self)->release_slot(); }
    /// One connect to the next backend the balancer picks; true if connected
    /// (with a session slot reserved on it). Loops over failed attempts.
    asio::awaitable<bool> connect_next();
    void start_relay(std::unique_ptr<session> self);
    void relay_ended(std::unique_ptr<session> self);
    /// The backend failed before its first byte; true if the session may
    /// try another one with what the client sent.
    bool may_move_on();
    /// No backend took the client: say why, close the client.
    void give_up();
    /// The relay ended: counters and the session's log line.
    void account();
    /// Adds the bytes moved since the last call to the backend's counters.
    void publish_bytes();
    static void on_publish(void* self) { static_cast<session*>(self)->publish_bytes(); }
    std::string client_text() const;

    worker_context& ctx_;
    // Held for the whole session: a reload must not pull the config, or the
    // balancer state its positions index, out from under it.
    const std::shared_ptr<generation> gen_;
    const snapshot* const snap_;
    const listener_runtime& listener_;
    const pool_runtime& pool_;
    std::size_t listener_index_;
    poll_socket client_;
    poll_socket upstream_;
    session_entry entry_;
    relay relay_;
    connect_state st_;
    std::optional<tcp::endpoint> client_ep_;  ///< only for Maglev and debug logs
    clock_type::time_point started_ = clock_type::now();
    const backend_runtime* chosen_ = nullptr;
    std::size_t chosen_index_ = 0;
    std::string sent_;            ///< the client's bytes before the backend's first one, for a replay
    std::uint64_t replayed_ = 0;  ///< bytes of `sent_` written to the current backend
    error_code last_error_;       ///< why the last backend failed before its first byte
    std::atomic<std::uint32_t>* slot_ = nullptr;  ///< a backend's connecting count this session holds one of
    bool connect_timed_out_ = false;  ///< the pending connect passed its deadline
    std::uint64_t published_to_ = 0;    ///< of the bytes to the current backend, those in its counters
    std::uint64_t published_from_ = 0;  ///< of the bytes from it, those in its counters
};

session::session(worker_context& ctx, std::size_t listener_index)
    : ctx_(ctx),
      gen_(ctx.current),
      snap_(gen_->snap.get()),
      listener_(snap_->listeners[listener_index]),
      pool_(snap_->pools[listener_.pool_index]),
      listener_index_(listener_index),
      client_(ctx.sockets),
      upstream_(ctx.sockets),
      relay_(client_, upstream_, ctx.relay, entry_.last_activity),
      st_(pool_.backends.size()) {
    entry_.client = &client_;
    entry_.upstream = &upstream_;
    entry_.pump = &relay_;
    ctx_.sessions.push_back(entry_);
    entry_.pool = &pool_;
    entry_.publish_bytes = &session::on_publish;
    entry_.owner = this;
    expire = &session::on_connect_deadline;
}

bool session::adopt_client(int fd) {
    if (const error_code ec = client_.adopt(fd)) {
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
    if (pool_.maglev && client_ep_) st_.key_hash = client_key_hash(*client_ep_, pool_.cfg->maglev_key);
    entry_.key_hash = st_.key_hash;
    return true;
}

session::~session() {
    release_slot();
    if (std::uncaught_exceptions() > 0) {
        // Unwinding (an allocation failed): the client must not take the
        // end for a complete answer.
        client_.set_abortive_close();
        upstream_.set_abortive_close();
        ctx_.stats.reset_no_memory_total.fetch_add(1, std::memory_order_relaxed);
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

session::step session::pick_backend(std::size_t& pick) {
    const config& cfg = *snap_->cfg;
    ++st_.attempts;
    // The worker's scratch vector: filled and read with no suspension between.
    fill_loads(ctx_.loads, pool_, st_.tried, cfg.limits.per_backend);
    const auto chosen = pool_.maglev ? choose_maglev(*pool_.maglev, st_.key_hash, ctx_.loads)
                                     : gen_->balancers[listener_.pool_index].choose(pool_.cfg->balance, ctx_.loads);
    if (!chosen) return step::stop;
    st_.tried[*chosen] = 1;
    if (!try_reserve(*pool_.backends[*chosen].stats, cfg.limits.per_backend)) return step::next;
    pick = *chosen;
    return step::ready;
}

bool session::open_upstream(const backend_runtime& backend) {
    if (const error_code ec = upstream_.open(backend.endpoint.protocol())) {
        // Not the backend's fault: this process is out of descriptors or memory.
        backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
        release_slot();
        if (is_resource_exhaustion(ec)) ctx_.pause_accepting(ec, "opening a backend socket");
        st_.local_failure = ec;
        return false;
    }
    if (auto opt_ec = apply_tcp_options(upstream_.native_handle(), snap_->cfg->tcp)) {
        spdlog::debug("backend {}: setting TCP options failed: {}", backend.cfg->name, opt_ec.message());
    }
    return true;
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
    spdlog::debug("backend {} ({}) failed a client's connect: {}", backend.cfg->name,
                  endpoint_text(backend.endpoint), cec.message());
    st_.failures += fmt::format("{}{}: {}", st_.failures.empty() ? "" : "; ", backend.cfg->name, cec.message());
    return true;
}

asio::awaitable<bool> session::connect_next() {
    while (st_.attempts < pool_.cfg->connect_attempts && !entry_.aborted()) {
        std::size_t pick = 0;
        const step got = pick_backend(pick);
        if (got == step::next) continue;
        if (got == step::stop) break;
        const backend_runtime& backend = pool_.backends[pick];
        if (pool_.cfg->storm_control.new_per_second != 0) {
            if (!co_await wait_for_turn(backend)) {
                backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
                if (entry_.aborted()) break;
                st_.failures += fmt::format("{}{}: storm control (no turn within {}ms)",
                                            st_.failures.empty() ? "" : "; ", backend.cfg->name,
                                            pool_.cfg->storm_control.queue_timeout.count());
                continue;
            }
        }
        if (pool_.cfg->storm_control.max_connecting != 0 && !co_await wait_for_slot(backend)) {
            backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
            if (entry_.aborted()) break;
            st_.failures += fmt::format("{}{}: storm control (no connect slot within {}ms)",
                                        st_.failures.empty() ? "" : "; ", backend.cfg->name,
                                        pool_.cfg->storm_control.queue_timeout.count());
            continue;
        }
        if (!open_upstream(backend)) break;
        watch_connect_deadline();
        // poll_socket completes from its loop, never inside this call.
        auto [ec] = co_await upstream_.async_connect(backend.endpoint, asio::as_tuple(asio::use_awaitable));
        const error_code cec = connect_ended(ec);
        if (!cec) {
            chosen_ = &backend;
            chosen_index_ = pick;
            co_return true;
        }
        if (!connect_failed(pick, cec)) break;
    }
    co_return false;
}

void session::start(std::unique_ptr<session> self) {
    const storm_control_config& sc = self->pool_.cfg->storm_control;
    if (sc.new_per_second == 0 && sc.max_connecting == 0) return connect_next_without_coroutine(std::move(self));
    const auto ex = self->client_.get_executor();  // before `self` is moved from
    asio::co_spawn(ex, establish(std::move(self)), [](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            spdlog::error("session failed: {}", ex.what());
        }
    });
}

void session::connect_next_without_coroutine(std::unique_ptr<session> self) {
    session& s = *self;
    // The same loop as connect_next(), less storm control's waits; the
    // client has sent nothing yet that a replay would need.
    while (s.st_.attempts < s.pool_.cfg->connect_attempts && !s.entry_.aborted()) {
        std::size_t pick = 0;
        const step got = s.pick_backend(pick);
        if (got == step::next) continue;
        if (got == step::stop) break;
        const backend_runtime& backend = s.pool_.backends[pick];
        if (!s.open_upstream(backend)) break;
        s.chosen_index_ = pick;  // chosen_ only once connected
        s.watch_connect_deadline();
        // Completes from the poller's loop, never inside this call.
        s.upstream_.connect(backend.endpoint, &session::on_connected, self.release());
        return;
    }
    s.give_up();  // the session ends with `self`
}

void session::on_connected(void* arg, const error_code& ec) {
    std::unique_ptr<session> self(static_cast<session*>(arg));
    session& s = *self;
    const error_code cec = s.connect_ended(ec);
    if (!cec) {
        s.chosen_ = &s.pool_.backends[s.chosen_index_];
        return s.start_relay(std::move(self));
    }
    if (!s.connect_failed(s.chosen_index_, cec)) return s.give_up();
    connect_next_without_coroutine(std::move(self));
}

void session::watch_connect_deadline() {
    const auto timeout = snap_->cfg->timeouts.connect;
    connect_timed_out_ = false;
    deadline = clock_type::now() + timeout;
    ctx_.watch_connect(*this, timeout, upstream_.get_executor());
}

error_code session::connect_ended(const error_code& ec) {
    unlink();  // from the worker's pending connects
    return connect_timed_out_ ? error_code{asio::error::timed_out} : ec;
}

void session::on_connect_deadline(pending_connect& p) {
    auto& s = static_cast<session&>(p);
    s.connect_timed_out_ = true;
    s.upstream_.close();  // the connect completes from the loop, aborted
}

namespace {

std::int64_t steady_now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

/// Reserves a turn in the GCRA `state`, shared with every worker, without a
/// lock; nullopt if it would wait longer than `max_delay`.
std::optional<gcra_slot> reserve_turn(std::atomic<std::int64_t>& state, std::int64_t interval, std::uint32_t burst,
                                      std::int64_t max_delay) {
    const std::int64_t now = steady_now_ns();
    std::int64_t tat = state.load(std::memory_order_relaxed);
    std::optional<gcra_slot> slot;
    do {
        slot = gcra_reserve(tat, now, interval, burst, max_delay);
        if (!slot) break;
    } while (!state.compare_exchange_weak(tat, slot->new_tat, std::memory_order_relaxed));
    return slot;
}

}  // namespace

asio::awaitable<bool> session::wait_for_turn(const backend_runtime& backend) {
    const storm_control_config& sc = pool_.cfg->storm_control;
    backend_stats& stats = *backend.stats;
    const std::int64_t interval = 1'000'000'000 / sc.new_per_second;
    const std::int64_t max_delay =
        std::chrono::duration_cast<std::chrono::nanoseconds>(sc.queue_timeout).count();
    const std::optional<gcra_slot> slot = reserve_turn(stats.pacing_tat_ns, interval, sc.burst, max_delay);
    if (!slot) {
        stats.pacing_refused_total.fetch_add(1, std::memory_order_relaxed);
        co_return false;
    }
    if (slot->delay_ns != 0) {
        if (stats.pacing_waiting.fetch_add(1, std::memory_order_relaxed) >= sc.queue) {
            // The queue is full. The reserved turn goes unused: the next clients
            // wait as if it had been taken, which errs towards the backend.
            stats.pacing_waiting.fetch_sub(1, std::memory_order_relaxed);
            stats.pacing_refused_total.fetch_add(1, std::memory_order_relaxed);
            co_return false;
        }
        stats.pacing_delayed_total.fetch_add(1, std::memory_order_relaxed);
        const bool waited = co_await pacing_sleep(slot->delay_ns);
        stats.pacing_waiting.fetch_sub(1, std::memory_order_relaxed);
        if (!waited) co_return false;
    }
    // The turn says when this client may go. A worker that wakes late (a
    // loaded machine, a stopped process) would start every turn that came
    // due meanwhile at once: 300 ms late, 150 connects in a moment on top
    // of the rate. So the start takes a turn too, in a second state that
    // only starts enter: on time it is free (the turns are spaced already);
    // late, the starts are spaced again.
    const std::optional<gcra_slot> start =
        reserve_turn(stats.pacing_start_tat_ns, interval, sc.burst, std::numeric_limits<std::int64_t>::max());
    if (start->delay_ns == 0) co_return true;
    co_return co_await pacing_sleep(start->delay_ns);
}

asio::awaitable<bool> session::pacing_sleep(std::int64_t delay_ns) {
    asio::steady_timer timer(upstream_.get_executor());
    timer.expires_after(std::chrono::nanoseconds(delay_ns));
    entry_.pacing_timer = &timer;
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    entry_.pacing_timer = nullptr;
    co_return !entry_.aborted();
}

asio::awaitable<bool> session::wait_for_slot(const backend_runtime& backend) {
    const storm_control_config& sc = pool_.cfg->storm_control;
    std::atomic<std::uint32_t>& connecting = backend.stats->connecting;
    const auto deadline = clock_type::now() + sc.queue_timeout;
    std::optional<asio::steady_timer> timer;
    bool waited = false;
    for (;;) {
        auto current = connecting.load(std::memory_order_relaxed);
        while (current < sc.max_connecting) {
            if (connecting.compare_exchange_weak(current, current + 1, std::memory_order_relaxed)) {
                slot_ = &connecting;
                if (waited) backend.stats->pacing_delayed_total.fetch_add(1, std::memory_order_relaxed);
                co_return true;
            }
        }
        if (entry_.aborted() || clock_type::now() >= deadline) {
            if (!entry_.aborted()) backend.stats->pacing_refused_total.fetch_add(1, std::memory_order_relaxed);
            co_return false;
        }
        waited = true;
        if (!timer) timer.emplace(upstream_.get_executor());
        timer->expires_at(deadline);
        const auto it = ctx_.slot_waiters.insert(ctx_.slot_waiters.end(), &*timer);
        ctx_.arm_slot_tick(upstream_.get_executor());
        entry_.pacing_timer = &*timer;
        co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
        entry_.pacing_timer = nullptr;
        ctx_.slot_waiters.erase(it);
    }
}

void session::release_slot() {
    if (!slot_) return;
    slot_->fetch_sub(1, std::memory_order_relaxed);
    slot_ = nullptr;
    ctx_.wake_slot_waiters(false);
}

asio::awaitable<void> session::establish(std::unique_ptr<session> self) {
    session& s = *self;
    while (co_await s.connect_next()) {
        if (s.sent_.empty()) break;
        // Replay what the client sent to the backend that failed.
        const error_code wec = co_await send_all(s.upstream_, s.sent_);
        if (!wec) {
            s.replayed_ = s.sent_.size();
            break;
        }
        s.last_error_ = wec;
        if (!s.may_move_on()) {
            s.chosen_ = nullptr;
            break;
        }
    }
    if (!s.chosen_) co_return s.give_up();  // the session ends with this frame
    s.start_relay(std::move(self));
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
    relay_.keep_for_replay(&sent_, replay_limit);
    if (slot_) relay_.on_answered(&session::on_backend_answered, this);
    relay_.async_run([self = std::move(self)]() mutable {
        session& s = *self;
        s.relay_ended(std::move(self));
    });
}

void session::relay_ended(std::unique_ptr<session> self) {
    if (!relay_.backend_failed_early() || entry_.aborted()) return account();
    last_error_ = relay_.early_error();
    if (!may_move_on()) return give_up();
    asio::co_spawn(client_.get_executor(), establish(std::move(self)), [](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            spdlog::error("session failed: {}", ex.what());
        }
    });
}

bool session::may_move_on() {
    // The backend failed before the client saw anything of it: the client may
    // go to the next one with what it sent -- but only a TLS handshake, which
    // no server acts on before answering it. Plain bytes may have been a
    // request the dead backend carried out; sending them again could repeat it.
    const bool may_replay = sent_.empty() || is_tls_handshake(sent_);
    const char* why = last_error_ == asio::error::eof ? "closed before any byte came back"
                                                      : "reset before any byte came back";
    report_passive(ctx_, pool_, *chosen_, why);
    spdlog::debug("backend {} ({}) {}; {} the client's {}B", chosen_->cfg->name, endpoint_text(chosen_->endpoint),
                  why, may_replay ? "trying another with" : "cannot replay", sent_.size());
    st_.failures += fmt::format("{}{}: {}", st_.failures.empty() ? "" : "; ", chosen_->cfg->name, why);
    upstream_.close();
    chosen_->stats->active.fetch_sub(1, std::memory_order_relaxed);
    release_slot();
    entry_.backend = nullptr;
    entry_.relaying = false;
    chosen_ = nullptr;
    replayed_ = 0;
    // What the failed backend was sent stays in its counters.
    published_to_ = 0;
    published_from_ = 0;
    return may_replay;
}

void session::give_up() {
    if (st_.local_failure) {
        spdlog::debug("client {}: closed: {}", client_text(), st_.local_failure.message());
    } else if (!entry_.aborted()) {
        ctx_.stats.no_backend_total.fetch_add(1, std::memory_order_relaxed);
        std::uint64_t suppressed = 0;
        if (ctx_.connect_warnings.allow(suppressed)) {
            const log_scope fields({.event = "no_backend", .pool = pool_.cfg->name, .backend = {}, .client = client_text(),
                                    .reason = st_.failures.empty() ? "none_available" : "connect_failed"});
            spdlog::warn("listener {}: no backend of pool {} accepted client {} ({}){}", listener_.cfg->name,
                         pool_.cfg->name, client_text(),
                         st_.failures.empty() ? (pool_.cfg->health.all_unhealthy == all_unhealthy_policy::reject
                                                     ? "no backend is healthy (all_unhealthy: reject) or free"
                                                     : "every backend is at its session limit")
                                              : st_.failures,
                         suppressed ? fmt::format(" [{} similar suppressed]", suppressed) : "");
        }
    }
    // No other backend could take the client: what the last one did reaches
    // the client as it was, a reset as a reset.
    if (last_error_ && last_error_ != asio::error::eof) close_with_reset(client_);
}

void session::account() {
    pump_result to_backend = relay_.to_backend();
    const pump_result& from_backend = relay_.from_backend();
    to_backend.bytes += replayed_;
    backend_stats& bstats = *chosen_->stats;
    switch (entry_.closed_by) {
    case close_reason::none: break;
    case close_reason::idle: ctx_.stats.closed_by_idle_total.fetch_add(1, std::memory_order_relaxed); break;
    case close_reason::health:
        ctx_.stats.closed_by_health_total.fetch_add(1, std::memory_order_relaxed);
        bstats.closed_by_health_total.fetch_add(1, std::memory_order_relaxed);
        break;
    case close_reason::reload: ctx_.stats.closed_by_reload_total.fetch_add(1, std::memory_order_relaxed); break;
    case close_reason::rebalance:
        ctx_.stats.closed_by_rebalance_total.fetch_add(1, std::memory_order_relaxed);
        bstats.closed_by_rebalance_total.fetch_add(1, std::memory_order_relaxed);
        break;
    case close_reason::drain: ctx_.stats.closed_by_drain_total.fetch_add(1, std::memory_order_relaxed); break;
    case close_reason::stalled: ctx_.stats.closed_by_stall_total.fetch_add(1, std::memory_order_relaxed); break;
    }
    if (!entry_.aborted()) count_failed_leg(ctx_.stats, to_backend, from_backend);
    // An apiserver that resets a connection before sending anything is not
    // serving (crashing, or shutting down its listener): count it against it.
    // (Usually found by the relay's early end; this is for a client that
    // half-closed or sent much before the backend's first byte.)
    if (!entry_.aborted() && from_backend.bytes == 0 &&
        (from_backend.end == pump_end::source_reset || to_backend.end == pump_end::sink_failed)) {
        report_passive(ctx_, pool_, *chosen_, "reset before any byte came back");
    }
    bstats.active.fetch_sub(1, std::memory_order_relaxed);
    publish_bytes();  // the rest since the worker's last tick

    if (spdlog::should_log(spdlog::level::debug)) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started_);
        const char* how = close_text(entry_.closed_by);
        const log_scope fields({.event = "session_closed",
                                .pool = pool_.cfg->name,
                                .backend = chosen_->cfg->name,
                                .client = client_text(),
                                .reason = how ? how : "ended"});
        spdlog::debug("session closed: listener={} client={} backend={} ({}) client_to_backend={}B "
                      "backend_to_client={}B duration={}ms end={}",
                      listener_.cfg->name, client_text(), chosen_->cfg->name, endpoint_text(chosen_->endpoint),
                      to_backend.bytes, from_backend.bytes, ms.count(),
                      how ? std::string(how)
                          : fmt::format("client:{}{},backend:{}{}", to_string(to_backend.end),
                                        to_backend.error ? "(" + to_backend.error.message() + ")" : "",
                                        to_string(from_backend.end),
                                        from_backend.error ? "(" + from_backend.error.message() + ")" : ""));
    }
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

}  // namespace

void start_session(worker_context& ctx, int fd, std::size_t listener_index) {
    // Out of memory for one session: that client is reset and counted, and
    // the accept loop goes on. An exception let out of here would end the
    // accept loop, and this worker would never accept again.
    std::unique_ptr<session> s;
    try {
        s = std::make_unique<session>(ctx, listener_index);
    } catch (const std::bad_alloc&) {
        close_with_reset(fd);
        ctx.stats.active_sessions.fetch_sub(1, std::memory_order_relaxed);
        ctx.stats.reset_no_memory_total.fetch_add(1, std::memory_order_relaxed);
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
