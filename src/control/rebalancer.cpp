#include "apilb/control/rebalancer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "apilb/core/health.hpp"
#include "apilb/core/pacing.hpp"
#include "apilb/core/thread_role.hpp"

namespace apilb {

namespace {
constexpr auto tick_period = std::chrono::milliseconds(100);
}

rebalancer::rebalancer(boost::asio::io_context& control, snapshot_fn current, close_fn close)
    : timer_(control), current_(std::move(current)), close_(std::move(close)) {}

void rebalancer::start() {
    APILB_ASSERT_ROLE(control);
    const auto snap = current_();
    const bool wanted = std::any_of(snap->pools.begin(), snap->pools.end(),
                                    [](const pool_runtime& p) { return p.cfg->rebalance.enabled; });
    if (!wanted || running_) return;
    running_ = true;
    timer_.expires_after(tick_period);
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec && running_) tick();
    });
}

void rebalancer::stop() {
    APILB_ASSERT_ROLE(control);
    running_ = false;
    timer_.cancel();
}

void rebalancer::tick() {
    APILB_ASSERT_ROLE(control);
    const auto snap = current_();
    std::vector<rebalance_order> orders;
    bool any = false;
    for (const pool_runtime& pool : snap->pools) {
        const rebalance_config& rb = pool.cfg->rebalance;
        if (!rb.enabled) continue;
        any = true;
        pool_state& st = pools_[pool.cfg->name];
        // Quotas the workers did not use last tick go back into the bucket.
        for (const auto& q : st.issued) st.tokens += static_cast<double>(std::max<std::int64_t>(0, q->load()));
        st.issued.clear();
        const double per_tick = rb.max_closes_per_second * std::chrono::duration<double>(tick_period).count();
        st.tokens = std::min(st.tokens + per_tick, std::max(1.0, per_tick));
        auto budget = static_cast<std::int64_t>(st.tokens);
        if (budget <= 0) continue;
        auto issue = [&](std::shared_ptr<const backend_health> backend, std::int64_t n) {
            auto quota = std::make_shared<std::atomic<std::int64_t>>(n);
            st.issued.push_back(quota);
            st.tokens -= static_cast<double>(n);
            orders.push_back({.pool = pool.cfg->name, .backend = std::move(backend), .quota = std::move(quota)});
        };
        if (pool.maglev) {
            // Sessions away from their preferred backend (it was down when
            // they connected) go back to it; nothing else moves.
            issue(nullptr, budget);
            continue;
        }
        // The weights the balancer uses now: a backend in its slow start
        // takes a growing share, and asking more of it would only churn.
        const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count();
        std::vector<backend_share> shares;
        for (const auto& b : pool.backends) {
            std::uint32_t permille = 1000;
            if (const auto ramp = b.health->ramp_start_ns.load(std::memory_order_relaxed); ramp != 0) {
                permille = slow_start_permille(std::chrono::nanoseconds(now - ramp), pool.cfg->health.slow_start);
            }
            shares.push_back({.active = b.stats->active.load(std::memory_order_relaxed),
                              .weight = std::max<std::uint32_t>(1, b.cfg->weight * permille),
                              .eligible = b.takes_sessions()});
        }
        const auto plan = rebalance_plan(shares, rb.tolerance);
        for (std::size_t i = 0; i < plan.size() && budget > 0; ++i) {
            if (plan[i] == 0) continue;
            const std::int64_t n = std::min<std::int64_t>(plan[i], budget);
            budget -= n;
            issue(pool.backends[i].health, n);
        }
    }
    if (!orders.empty()) close_(std::move(orders));
    if (!any || !running_) {
        running_ = false;
        return;
    }
    timer_.expires_after(tick_period);
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec && running_) tick();
    });
}

}  // namespace apilb
