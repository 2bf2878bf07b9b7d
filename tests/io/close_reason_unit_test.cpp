#include "apilb/dataplane/close_reason.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "apilb/dataplane/stats.hpp"

namespace apilb {
namespace {

constexpr close_reason every_reason[] = {
    close_reason::completed,     close_reason::client_reset,    close_reason::client_timeout,
    close_reason::backend_reset, close_reason::backend_timeout, close_reason::no_backend,
    close_reason::no_resources,  close_reason::no_memory,       close_reason::idle,
    close_reason::health,        close_reason::reload,          close_reason::rebalance,
    close_reason::drain,         close_reason::stalled,
};

TEST(CloseReason, EveryCloseApilbStartsIsAReset) {
    for (const close_reason r : {close_reason::idle, close_reason::health, close_reason::reload,
                                 close_reason::rebalance, close_reason::drain, close_reason::stalled}) {
        EXPECT_TRUE(closed_by_apilb(r)) << to_string(r);
        EXPECT_EQ(close_action(r), close_how::reset) << to_string(r);
    }
    EXPECT_EQ(close_action(close_reason::no_memory), close_how::reset);
}

TEST(CloseReason, APeersCloseIsPassedOnAsThePeerDidIt) {
    // Both directions ended with a FIN: the last FIN goes with the close.
    EXPECT_EQ(close_action(close_reason::completed), close_how::fin);
    // A failed leg: the other leg is reset.
    for (const close_reason r : {close_reason::client_reset, close_reason::client_timeout, close_reason::backend_reset,
                                 close_reason::backend_timeout}) {
        EXPECT_FALSE(closed_by_apilb(r)) << to_string(r);
        EXPECT_EQ(close_action(r), close_how::reset) << to_string(r);
    }
    // Never reached a backend: apilb ends it, so a reset (an empty answer
    // with a FIN would read as served).
    for (const close_reason r : {close_reason::no_backend, close_reason::no_resources}) {
        EXPECT_EQ(close_action(r), close_how::reset) << to_string(r);
    }
}

TEST(CloseReason, EachReasonHasItsOwnCounterAndName) {
    process_stats ps;
    std::set<const void*> counters;
    std::set<std::string> names;
    for (const close_reason r : every_reason) {
        EXPECT_TRUE(names.insert(to_string(r)).second) << to_string(r);
        if (auto* c = process_counter(ps, r)) {
            EXPECT_TRUE(counters.insert(c).second) << to_string(r);
        }
    }
    // The series of docs/metrics.md, one reason each.
    EXPECT_EQ(process_counter(ps, close_reason::idle), &ps.closed_by_idle_total);
    EXPECT_EQ(process_counter(ps, close_reason::health), &ps.closed_by_health_total);
    EXPECT_EQ(process_counter(ps, close_reason::reload), &ps.closed_by_reload_total);
    EXPECT_EQ(process_counter(ps, close_reason::rebalance), &ps.closed_by_rebalance_total);
    EXPECT_EQ(process_counter(ps, close_reason::drain), &ps.closed_by_drain_total);
    EXPECT_EQ(process_counter(ps, close_reason::stalled), &ps.closed_by_stall_total);
    EXPECT_EQ(process_counter(ps, close_reason::client_reset), &ps.client_reset_total);
    EXPECT_EQ(process_counter(ps, close_reason::client_timeout), &ps.client_timeout_total);
    EXPECT_EQ(process_counter(ps, close_reason::backend_reset), &ps.backend_reset_total);
    EXPECT_EQ(process_counter(ps, close_reason::backend_timeout), &ps.backend_timeout_total);
    EXPECT_EQ(process_counter(ps, close_reason::no_backend), &ps.no_backend_total);
    EXPECT_EQ(process_counter(ps, close_reason::no_memory), &ps.reset_no_memory_total);
    // Counted nowhere: a normal end; counted by whoever ran out (resource_errors_total).
    EXPECT_EQ(process_counter(ps, close_reason::completed), nullptr);
    EXPECT_EQ(process_counter(ps, close_reason::no_resources), nullptr);
    // The idle and stall sweeps' log words stay what tests and operators grep for.
    EXPECT_STREQ(to_string(close_reason::idle), "idle-timeout");
    EXPECT_STREQ(to_string(close_reason::health), "backend-unhealthy");
}

TEST(CloseReason, OnlyHealthAndRebalanceAreCountedOnTheBackend) {
    backend_stats bs;
    EXPECT_EQ(backend_counter(bs, close_reason::health), &bs.closed_by_health_total);
    EXPECT_EQ(backend_counter(bs, close_reason::rebalance), &bs.closed_by_rebalance_total);
    for (const close_reason r : every_reason) {
        if (r == close_reason::health || r == close_reason::rebalance) continue;
        EXPECT_EQ(backend_counter(bs, r), nullptr) << to_string(r);
    }
}

}  // namespace
}  // namespace apilb
