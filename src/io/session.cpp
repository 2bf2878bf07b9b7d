#include "apilb/session.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <boost/asio/write.hpp>

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apilb/health.hpp"
#include "apilb/socket_options.hpp"

namespace apilb {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using boost::system::error_code;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

void session_entry::abort() {
    aborted = true;
    error_code ignored;
    if (client) client->close(ignored);
    if (upstream) upstream->close(ignored);
}

bool log_limiter::allow(std::uint64_t& suppressed) {
    const auto now = clock_type::now();
    if (now < next_) {
        ++suppressed_;
        return false;
    }
    next_ = now + interval_;
    suppressed = suppressed_;
    suppressed_ = 0;
    return true;
}

bool is_resource_exhaustion(const error_code& ec) {
    if (ec.category() != boost::system::system_category() && ec.category() != asio::error::get_system_category()) {
        return false;
    }
    const int e = ec.value();
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

void worker_context::pause_accepting(const error_code& ec, const char* where) {
    stats.resource_errors_total.fetch_add(1, std::memory_order_relaxed);
    accept_paused_until = clock_type::now() + accept_backoff;
    std::uint64_t suppressed = 0;
    if (resource_warnings.allow(suppressed)) {
        spdlog::warn("{} failed: {}; pausing accepts for {}ms{}", where, ec.message(), accept_backoff.count(),
                     suppressed ? fmt::format(" [{} similar suppressed]", suppressed) : "");
    }
    accept_backoff = std::min(accept_backoff * 2, std::chrono::milliseconds(1000));
}

worker_context::worker_context(std::shared_ptr<const snapshot> s, process_stats& st)
    : snap(std::move(s)), stats(st), relay(snap->cfg->relay), max_connections(snap->cfg->limits.max_connections) {
    for (const auto& p : snap->pools) balancers.emplace_back(p.backends.size());
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

enum class connect_outcome { connected, refused, timed_out, aborted, local_error };

/// One connect attempt, raced against the connect timeout.
asio::awaitable<std::pair<connect_outcome, error_code>> connect_one(tcp::socket& upstream,
                                                                   const backend_runtime& backend,
                                                                   const config& cfg) {
    error_code ec;
    upstream.open(backend.endpoint.protocol(), ec);
    // Not the backend's fault: this process is out of descriptors or memory.
    if (ec) co_return std::pair{connect_outcome::local_error, ec};
    if (auto opt_ec = apply_tcp_options(upstream, cfg.tcp)) {
        spdlog::debug("backend {}: setting TCP options failed: {}", backend.cfg->name, opt_ec.message());
    }
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(cfg.timeouts.connect);
    auto result = co_await (upstream.async_connect(backend.endpoint, asio::as_tuple(asio::use_awaitable)) ||
                            timer.async_wait(asio::as_tuple(asio::use_awaitable)));
    if (result.index() == 1) {
        upstream.close(ec);
        co_return std::pair{connect_outcome::timed_out, error_code{asio::error::timed_out}};
    }
    auto [cec] = std::get<0>(result);
    if (cec) {
        upstream.close(ec);
        co_return std::pair{cec == asio::error::operation_aborted ? connect_outcome::aborted
                                                                  : connect_outcome::refused,
                            cec};
    }
    co_return std::pair{connect_outcome::connected, error_code{}};
}

/// Passive health detection: the first failure of a backend marks it
/// suspect at once (other workers skip it from now on) and tells the health
/// checker, which probes it at once. Later failures while it is suspect are
/// not reported again, so a burst of clients failing together posts once.
void report_passive(worker_context& ctx, const pool_runtime& pool, std::size_t pool_index,
                    std::size_t backend_index, std::string what) {
    const backend_runtime& b = pool.backends[backend_index];
    if (!pool.cfg->health.passive || !ctx.report_passive) return;
    if (b.health->suspect.exchange(true, std::memory_order_relaxed)) return;
    ctx.report_passive(pool_index, backend_index, std::move(what));
}

/// What the balancer needs of every backend now: its health tier, its
/// weight scaled by slow start (in 1/1000), and whether it may be chosen.
void fill_loads(std::vector<backend_load>& loads, const pool_runtime& pool, const std::vector<bool>& tried,
                std::uint32_t per_backend) {
    const health_config& health = pool.cfg->health;
    const bool try_all = health.all_unhealthy == all_unhealthy_policy::try_all;
    const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 clock_type::now().time_since_epoch()).count();
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
                    .available = !b.cfg->drain && !tried[i] && (per_backend == 0 || active < per_backend) &&
                                 (tier != health_tier::unhealthy || try_all),
                    .tier = static_cast<std::uint8_t>(tier)};
    }
}

/// Both directions, each ending on its own (half-close), awaited together.
asio::awaitable<std::tuple<pump_result, pump_result>> relay_both(tcp::socket& client, tcp::socket& upstream,
                                                                 relay_resources& res,
                                                                 clock_type::time_point& last_activity) {
    co_return co_await (pump(client, upstream, res, last_activity) &&
                        pump(upstream, client, res, last_activity));
}

/// Closes with RST instead of FIN: a reset is passed on as a reset.
void close_with_reset(tcp::socket& s) {
    error_code ignored;
    s.set_option(asio::socket_base::linger(true, 0), ignored);
    s.close(ignored);
}

/// Choosing and connecting across the attempts of one session.
struct connect_state {
    explicit connect_state(std::size_t backends) : loads(backends), tried(backends, false) {}
    std::uint64_t key_hash = 0;  ///< maglev pools: the client's key
    std::vector<backend_load> loads;
    std::vector<bool> tried;
    std::uint32_t attempts = 0;
    std::string failures;     ///< "name: reason; ..." for the log when every attempt failed
    error_code local_failure; ///< this process is out of something: not a backend's fault
};

/// Picks the next backend and connects to it, moving on to the next one when
/// a connect fails, until connect_attempts are used. Returns the backend's
/// index with a session slot reserved on it, or nullopt.
asio::awaitable<std::optional<std::size_t>> connect_next(worker_context& ctx, const config& cfg,
                                                         const pool_runtime& pool, std::size_t pool_index,
                                                         balancer_state& balancer, tcp::socket& upstream,
                                                         const session_entry& entry, connect_state& st,
                                                         const std::string& client_text) {
    while (st.attempts < pool.cfg->connect_attempts && !entry.aborted) {
        ++st.attempts;
        fill_loads(st.loads, pool, st.tried, cfg.limits.per_backend);
        const auto pick = pool.maglev ? choose_maglev(*pool.maglev, st.key_hash, st.loads)
                                      : balancer.choose(pool.cfg->balance, st.loads);
        if (!pick) break;
        const backend_runtime& backend = pool.backends[*pick];
        st.tried[*pick] = true;
        if (!try_reserve(*backend.stats, cfg.limits.per_backend)) continue;
        auto [outcome, cec] = co_await connect_one(upstream, backend, cfg);
        if (outcome == connect_outcome::connected) co_return pick;
        backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
        if (outcome == connect_outcome::aborted || entry.aborted) break;
        if (outcome == connect_outcome::local_error) {
            if (is_resource_exhaustion(cec)) ctx.pause_accepting(cec, "opening a backend socket");
            st.local_failure = cec;
            break;
        }
        backend.stats->connect_failures_total.fetch_add(1, std::memory_order_relaxed);
        report_passive(ctx, pool, pool_index, *pick,
                       outcome == connect_outcome::timed_out
                           ? fmt::format("connect timed out after {}ms", cfg.timeouts.connect.count())
                           : cec == asio::error::connection_refused ? std::string("connect refused")
                                                                    : "connect failed: " + cec.message());
        spdlog::debug("client {}: backend {} ({}) failed: {}", client_text, backend.cfg->name,
                      endpoint_text(backend.endpoint), cec.message());
        st.failures += fmt::format("{}{}: {}", st.failures.empty() ? "" : "; ", backend.cfg->name, cec.message());
    }
    co_return std::nullopt;
}

/// How the wait for a backend's first byte ended.
enum class first_byte {
    arrived,         ///< the backend sent something: from now on it owns the session
    backend_failed,  ///< reset or closed before sending anything: the client may be sent elsewhere
    client_eof,      ///< the client half-closed first (the relay will see its EOF again)
    client_failed,   ///< the client's connection failed
    overflow,        ///< the client sent more than can be kept for a replay
    aborted,         ///< the session was closed from outside (drain, health, idle)
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

/// Forwards what the client sends, keeping a copy in `sent`, until the
/// backend sends its first byte or fails. A backend that resets or closes
/// before answering anything (an apiserver killed while its listen queue
/// still held our connection, or one closing its listener) has shown the
/// client nothing, so the session can move to another backend and replay
/// `sent` there: the client never sees the failure.
asio::awaitable<std::pair<first_byte, error_code>> await_first_byte(tcp::socket& client, tcp::socket& upstream,
                                                                    std::string& sent,
                                                                    clock_type::time_point& last_activity) {
    for (;;) {
        auto ready = co_await (client.async_wait(tcp::socket::wait_read, asio::as_tuple(asio::use_awaitable)) ||
                               upstream.async_wait(tcp::socket::wait_read, asio::as_tuple(asio::use_awaitable)));
        if (ready.index() == 1) {
            if (auto [ec] = std::get<1>(ready); ec) {
                co_return std::pair{ec == asio::error::operation_aborted ? first_byte::aborted : first_byte::backend_failed,
                                    ec};
            }
            // Readable means data, EOF or an error; look without taking anything.
            char byte = 0;
            const ssize_t n = ::recv(upstream.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n > 0) co_return std::pair{first_byte::arrived, error_code{}};
            if (n == 0) co_return std::pair{first_byte::backend_failed, error_code{asio::error::eof}};
            if (errno == EAGAIN || errno == EINTR) continue;
            co_return std::pair{first_byte::backend_failed, error_code{errno, asio::error::get_system_category()}};
        }
        if (auto [ec] = std::get<0>(ready); ec) {
            co_return std::pair{ec == asio::error::operation_aborted ? first_byte::aborted : first_byte::client_failed,
                                ec};
        }
        std::array<char, 4096> chunk;
        const ssize_t n = ::recv(client.native_handle(), chunk.data(), chunk.size(), MSG_DONTWAIT);
        if (n == 0) co_return std::pair{first_byte::client_eof, error_code{}};
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            co_return std::pair{first_byte::client_failed, error_code{errno, asio::error::get_system_category()}};
        }
        sent.append(chunk.data(), static_cast<std::size_t>(n));
        last_activity = clock_type::now();
        auto [wec, written] = co_await asio::async_write(upstream, asio::buffer(chunk.data(), static_cast<std::size_t>(n)),
                                                          asio::as_tuple(asio::use_awaitable));
        if (wec) co_return std::pair{first_byte::backend_failed, wec};
        if (sent.size() > replay_limit) co_return std::pair{first_byte::overflow, error_code{}};
    }
}

}  // namespace

asio::awaitable<void> run_session(worker_context& ctx, tcp::socket client, std::size_t listener_index) {
    const auto started = clock_type::now();
    // Hold the snapshot for the whole session: a reload must not pull the
    // config out from under it.
    const std::shared_ptr<const snapshot> snap = ctx.snap;
    const config& cfg = *snap->cfg;
    const listener_runtime& listener = snap->listeners[listener_index];
    const pool_runtime& pool = snap->pools[listener.pool_index];
    balancer_state& balancer = ctx.balancers[listener.pool_index];

    tcp::socket upstream(client.get_executor());
    session_entry entry;
    entry.client = &client;
    entry.upstream = &upstream;
    ctx.sessions.push_back(entry);

    struct active_guard {
        process_stats& stats;
        ~active_guard() { stats.active_sessions.fetch_sub(1, std::memory_order_relaxed); }
    } guard{ctx.stats};

    error_code ec;
    const auto client_ep = client.remote_endpoint(ec);
    const std::string client_text = ec ? std::string("?") : endpoint_text(client_ep);
    if (auto opt_ec = apply_tcp_options(client, cfg.tcp)) {
        spdlog::debug("client {}: setting TCP options failed: {}", client_text, opt_ec.message());
    }

    // Choose and connect, moving to the next backend on failure: the client
    // sees nothing until a backend has accepted, and nothing either of a
    // backend that fails before sending its first byte.
    connect_state st(pool.backends.size());
    if (pool.maglev) st.key_hash = client_key_hash(client_ep, pool.cfg->maglev_key);
    std::optional<std::size_t> pick = co_await connect_next(ctx, cfg, pool, listener.pool_index, balancer, upstream,
                                                            entry, st, client_text);
    const backend_runtime* chosen = nullptr;
    std::size_t chosen_index = 0;
    std::string sent;  // the client's bytes before the backend's first one, for a replay
    first_byte first = first_byte::arrived;
    error_code first_error;  // why the last backend failed before its first byte
    while (pick) {
        chosen = &pool.backends[*pick];
        chosen_index = *pick;
        // (The backend socket got its TCP options in connect_one, before connecting.)
        client.native_non_blocking(true, ec);
        upstream.native_non_blocking(true, ec);
        // From here the session can be closed from outside: idle sessions are
        // found by the worker's sweep (one timer per worker, not one per
        // session), unhealthy backends' sessions by the health checker.
        entry.last_activity = clock_type::now();
        entry.backend = chosen->health.get();
        entry.relaying = true;
        error_code fec;
        if (!sent.empty()) {
            auto [wec, n] = co_await asio::async_write(upstream, asio::buffer(sent), asio::as_tuple(asio::use_awaitable));
            if (wec) {
                first = first_byte::backend_failed;
                fec = wec;
            }
        }
        if (!fec && !entry.aborted) std::tie(first, fec) = co_await await_first_byte(client, upstream, sent, entry.last_activity);
        if (entry.aborted) first = first_byte::aborted;
        if (first == first_byte::client_failed || first == first_byte::backend_failed) first_error = fec;
        if (first != first_byte::backend_failed) break;
        // The backend failed before the client saw anything of it: try the
        // next one with what the client sent -- but only a TLS handshake,
        // which no server acts on before answering it. Plain bytes may have
        // been a request the dead backend carried out; sending them again
        // could repeat it.
        const bool may_replay = sent.empty() || is_tls_handshake(sent);
        const std::string why = fec == asio::error::eof ? "closed before any byte came back" : "reset before any byte came back";
        report_passive(ctx, pool, listener.pool_index, chosen_index, why);
        spdlog::debug("client {}: backend {} ({}) {}; trying another with the client's {}B", client_text,
                      chosen->cfg->name, endpoint_text(chosen->endpoint), why, sent.size());
        st.failures += fmt::format("{}{}: {}", st.failures.empty() ? "" : "; ", chosen->cfg->name, why);
        upstream.close(ec);
        chosen->stats->active.fetch_sub(1, std::memory_order_relaxed);
        entry.backend = nullptr;
        entry.relaying = false;
        chosen = nullptr;
        if (!may_replay) break;
        pick = co_await connect_next(ctx, cfg, pool, listener.pool_index, balancer, upstream, entry, st, client_text);
    }

    if (!chosen) {
        if (st.local_failure) {
            spdlog::debug("client {}: closed: {}", client_text, st.local_failure.message());
        } else if (!entry.aborted) {
            ctx.stats.no_backend_total.fetch_add(1, std::memory_order_relaxed);
            std::uint64_t suppressed = 0;
            if (ctx.connect_warnings.allow(suppressed)) {
                spdlog::warn("listener {}: no backend of pool {} accepted client {} ({}){}",
                             listener.cfg->name, pool.cfg->name, client_text,
                             st.failures.empty() ? (pool.cfg->health.all_unhealthy == all_unhealthy_policy::reject
                                                        ? "no backend is healthy (all_unhealthy: reject) or free"
                                                        : "every backend is at its session limit")
                                                 : st.failures,
                             suppressed ? fmt::format(" [{} similar suppressed]", suppressed) : "");
            }
        }
        // No other backend could take the client: what the last one did
        // reaches the client as it was, a reset as a reset.
        if (first_error && first_error != asio::error::eof) {
            close_with_reset(client);
        } else {
            client.close(ec);
        }
        co_return;
    }

    ctx.resources_recovered();
    // A watch may sit idle for an hour: keep no copy of its first bytes.
    const std::size_t replayable = sent.size();
    std::string().swap(sent);
    backend_stats& bstats = *chosen->stats;
    bstats.sessions_total.fetch_add(1, std::memory_order_relaxed);
    pump_result to_backend, from_backend;
    if (first == first_byte::client_failed) {
        // The client reset while the backend had not answered yet.
        to_backend = {.end = pump_end::source_reset, .bytes = 0, .error = first_error};
        close_with_reset(upstream);
    } else if (!entry.aborted) {
        std::tie(to_backend, from_backend) = co_await relay_both(client, upstream, ctx.relay, entry.last_activity);
    }
    to_backend.bytes += replayable;
    const bool idle_fired = entry.idle_expired;
    if (idle_fired) ctx.stats.closed_by_idle_total.fetch_add(1, std::memory_order_relaxed);
    const bool health_closed = entry.health_closed && !idle_fired;
    if (health_closed) {
        ctx.stats.closed_by_health_total.fetch_add(1, std::memory_order_relaxed);
        chosen->stats->closed_by_health_total.fetch_add(1, std::memory_order_relaxed);
    }
    const bool drained = entry.aborted && !idle_fired && !health_closed;
    if (drained) ctx.stats.closed_by_drain_total.fetch_add(1, std::memory_order_relaxed);
    // An apiserver that resets a connection before sending anything is not
    // serving (crashing, or shutting down its listener): count it against it.
    // (Usually found before the relay, above; this is for a client that
    // half-closed or sent much before the backend's first byte.)
    if (!entry.aborted && from_backend.bytes == 0 &&
        (from_backend.end == pump_end::source_reset || to_backend.end == pump_end::sink_failed)) {
        report_passive(ctx, pool, listener.pool_index, chosen_index, "reset before any byte came back");
    }

    client.close(ec);
    upstream.close(ec);
    bstats.active.fetch_sub(1, std::memory_order_relaxed);
    bstats.bytes_to_backend.fetch_add(to_backend.bytes, std::memory_order_relaxed);
    bstats.bytes_from_backend.fetch_add(from_backend.bytes, std::memory_order_relaxed);

    if (spdlog::should_log(spdlog::level::debug)) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started);
        const char* how = idle_fired ? "idle-timeout" : health_closed ? "backend-unhealthy" : drained ? "drain" : nullptr;
        spdlog::debug("session closed: listener={} client={} backend={} ({}) client_to_backend={}B "
                      "backend_to_client={}B duration={}ms end={}",
                      listener.cfg->name, client_text, chosen->cfg->name, endpoint_text(chosen->endpoint),
                      to_backend.bytes, from_backend.bytes, ms.count(),
                      how ? std::string(how)
                          : fmt::format("client:{}{},backend:{}{}", to_string(to_backend.end),
                                        to_backend.error ? "(" + to_backend.error.message() + ")" : "",
                                        to_string(from_backend.end),
                                        from_backend.error ? "(" + from_backend.error.message() + ")" : ""));
    }
}

}  // namespace apilb
