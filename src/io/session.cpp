#include "apilb/session.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

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

/// Both directions, each ending on its own (half-close), awaited together.
asio::awaitable<std::tuple<pump_result, pump_result>> relay_both(tcp::socket& client, tcp::socket& upstream,
                                                                 relay_resources& res,
                                                                 clock_type::time_point& last_activity) {
    co_return co_await (pump(client, upstream, res, last_activity) &&
                        pump(upstream, client, res, last_activity));
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
    // sees nothing until a backend has accepted.
    const backend_runtime* chosen = nullptr;
    std::vector<backend_load> loads(pool.backends.size());
    std::vector<bool> tried(pool.backends.size(), false);
    std::string failures;
    error_code local_failure;
    for (std::uint32_t attempt = 0; attempt < pool.cfg->connect_attempts && !entry.aborted; ++attempt) {
        for (std::size_t i = 0; i < loads.size(); ++i) {
            const auto& b = pool.backends[i];
            const auto active = b.stats->active.load(std::memory_order_relaxed);
            loads[i] = {.weight = b.cfg->weight,
                        .active = active,
                        .available = !tried[i] && (cfg.limits.per_backend == 0 ||
                                                   active < cfg.limits.per_backend)};
        }
        const auto pick = balancer.choose(pool.cfg->balance, loads);
        if (!pick) break;
        const backend_runtime& backend = pool.backends[*pick];
        tried[*pick] = true;
        if (!try_reserve(*backend.stats, cfg.limits.per_backend)) continue;
        auto [outcome, cec] = co_await connect_one(upstream, backend, cfg);
        if (outcome == connect_outcome::connected) {
            chosen = &backend;
            break;
        }
        backend.stats->active.fetch_sub(1, std::memory_order_relaxed);
        if (outcome == connect_outcome::aborted || entry.aborted) break;
        if (outcome == connect_outcome::local_error) {
            if (is_resource_exhaustion(cec)) ctx.pause_accepting(cec, "opening a backend socket");
            local_failure = cec;
            break;
        }
        backend.stats->connect_failures_total.fetch_add(1, std::memory_order_relaxed);
        spdlog::debug("client {}: backend {} ({}) failed: {}", client_text, backend.cfg->name,
                      endpoint_text(backend.endpoint), cec.message());
        failures += fmt::format("{}{}: {}", failures.empty() ? "" : "; ", backend.cfg->name, cec.message());
    }

    if (!chosen) {
        if (local_failure) {
            spdlog::debug("client {}: closed: {}", client_text, local_failure.message());
        } else if (!entry.aborted) {
            ctx.stats.no_backend_total.fetch_add(1, std::memory_order_relaxed);
            std::uint64_t suppressed = 0;
            if (ctx.connect_warnings.allow(suppressed)) {
                spdlog::warn("listener {}: no backend of pool {} accepted client {} ({}){}",
                             listener.cfg->name, pool.cfg->name, client_text,
                             failures.empty() ? "every backend is at its session limit" : failures,
                             suppressed ? fmt::format(" [{} similar suppressed]", suppressed) : "");
            }
        }
        client.close(ec);
        co_return;
    }

    ctx.resources_recovered();
    backend_stats& bstats = *chosen->stats;
    bstats.sessions_total.fetch_add(1, std::memory_order_relaxed);
    if (auto opt_ec = apply_tcp_options(upstream, cfg.tcp)) {
        spdlog::debug("backend {}: setting TCP options failed: {}", chosen->cfg->name, opt_ec.message());
    }
    client.native_non_blocking(true, ec);
    upstream.native_non_blocking(true, ec);

    // Idle sessions are found by the worker's sweep (one timer per worker,
    // not one per session: tens of thousands of watches sit idle).
    entry.last_activity = clock_type::now();
    entry.relaying = true;
    pump_result to_backend, from_backend;
    if (!entry.aborted) {
        std::tie(to_backend, from_backend) = co_await relay_both(client, upstream, ctx.relay, entry.last_activity);
    }
    const bool idle_fired = entry.idle_expired;
    if (idle_fired) ctx.stats.closed_by_idle_total.fetch_add(1, std::memory_order_relaxed);
    const bool drained = entry.aborted && !idle_fired;
    if (drained) ctx.stats.closed_by_drain_total.fetch_add(1, std::memory_order_relaxed);

    client.close(ec);
    upstream.close(ec);
    bstats.active.fetch_sub(1, std::memory_order_relaxed);
    bstats.bytes_to_backend.fetch_add(to_backend.bytes, std::memory_order_relaxed);
    bstats.bytes_from_backend.fetch_add(from_backend.bytes, std::memory_order_relaxed);

    if (spdlog::should_log(spdlog::level::debug)) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started);
        const char* how = idle_fired ? "idle-timeout" : drained ? "drain" : nullptr;
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
