#include "apilb/core/health.hpp"

#include <gtest/gtest.h>

#include <set>

namespace apilb {
namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------- health_tracker

TEST(HealthTracker, FirstCheckDecidesAtOnce) {
    health_tracker up(2, 2, true);
    EXPECT_TRUE(up.healthy()) << "until the first check, a backend is what initial says";
    EXPECT_FALSE(up.settled());
    auto c = up.record(false);
    EXPECT_TRUE(c.changed);
    EXPECT_TRUE(c.first);
    EXPECT_FALSE(c.healthy);
    EXPECT_TRUE(up.settled());

    health_tracker down(2, 2, false);
    EXPECT_FALSE(down.healthy());
    c = down.record(true);
    EXPECT_TRUE(c.changed && c.first && c.healthy);

    health_tracker same(2, 2, true);
    c = same.record(true);
    EXPECT_FALSE(c.changed);
    EXPECT_TRUE(c.first);
}

TEST(HealthTracker, FallConsecutiveFailuresMakeItUnhealthy) {
    health_tracker t(2, 3, true);
    t.record(true);
    EXPECT_FALSE(t.record(false).changed);
    EXPECT_FALSE(t.record(false).changed);
    auto c = t.record(false);
    EXPECT_TRUE(c.changed);
    EXPECT_FALSE(c.healthy);
    EXPECT_EQ(c.streak, 3u);
    EXPECT_FALSE(t.healthy());
}

TEST(HealthTracker, APassInBetweenResetsTheCount) {
    health_tracker t(2, 2, true);
    t.record(true);
    t.record(false);
    t.record(true);
    EXPECT_FALSE(t.record(false).changed) << "failures must be consecutive";
    EXPECT_TRUE(t.record(false).changed);
}

TEST(HealthTracker, RiseConsecutivePassesMakeItHealthyAgain) {
    health_tracker t(3, 1, true);
    t.record(true);
    EXPECT_TRUE(t.record(false).changed) << "fall 1: one failure is enough";
    EXPECT_FALSE(t.record(true).changed);
    EXPECT_FALSE(t.record(false).changed);
    EXPECT_EQ(t.streak(), 0u) << "a failure while unhealthy restarts the rise";
    EXPECT_FALSE(t.record(true).changed);
    EXPECT_FALSE(t.record(true).changed);
    auto c = t.record(true);
    EXPECT_TRUE(c.changed);
    EXPECT_TRUE(c.healthy);
    EXPECT_EQ(c.streak, 3u);
    EXPECT_FALSE(c.first);
}

TEST(HealthTracker, ReloadKeepsTheStateUnderNewThresholds) {
    health_tracker t(2, 3, true);
    t.record(true);  // settled, healthy
    t.record(false);
    t.record(false);  // two of three failures
    // A reload lowers fall to 2: still healthy, one failure away, not silently flipped.
    health_tracker r = t.with_thresholds(2, 2);
    EXPECT_TRUE(r.healthy());
    EXPECT_TRUE(r.settled());
    EXPECT_EQ(r.streak(), 1u);
    auto c = r.record(false);
    EXPECT_TRUE(c.changed);
    EXPECT_FALSE(c.healthy);
    EXPECT_FALSE(c.first) << "a kept backend's next check is not a first round";
    // Unhealthy stays unhealthy across a reload, whatever health.initial says.
    health_tracker u = r.with_thresholds(3, 3);
    EXPECT_FALSE(u.healthy());
    EXPECT_FALSE(u.record(true).changed);
}

TEST(HealthTracker, AnUpgradeKeepsDownUntilRisePassesHereAndFailuresTowardsFall) {
    // Down with 1 of 3 passes in the old process: the passes start over.
    health_tracker d = health_tracker::restored(3, 2, false, 1);
    EXPECT_TRUE(d.settled()) << "a carried state is no first round";
    EXPECT_FALSE(d.healthy());
    EXPECT_EQ(d.streak(), 0u);
    EXPECT_FALSE(d.record(true).changed);
    EXPECT_FALSE(d.record(true).changed);
    const auto c = d.record(true);
    EXPECT_TRUE(c.changed) << "up after rise (3) passes of this process";
    EXPECT_FALSE(c.first);
    // Up with 1 of 2 failures: one more failure brings it down.
    health_tracker u = health_tracker::restored(2, 2, true, 1);
    EXPECT_TRUE(u.healthy());
    EXPECT_TRUE(u.record(false).changed);
    // A streak over the new fall stops one short of it.
    EXPECT_EQ(health_tracker::restored(2, 3, true, 9).streak(), 2u);
}

TEST(HealthTracker, ProbeSettingsKeyChangesWithWhatAProbeChecksOnly) {
    health_config h;
    h.type = health_check_type::https;
    const std::string k = probe_settings_key(h);
    EXPECT_EQ(k.size(), 16u);
    health_config other = h;
    other.rise = 5;
    other.fall = 7;
    other.interval = std::chrono::seconds(9);
    EXPECT_EQ(probe_settings_key(other), k) << "thresholds and interval are clamped, not a new probe";
    other.path = "/livez";
    EXPECT_NE(probe_settings_key(other), k);
    other = h;
    other.tls.ca_file = "/etc/other-ca.crt";
    EXPECT_NE(probe_settings_key(other), k);
    other = h;
    other.expect_body = "";
    EXPECT_NE(probe_settings_key(other), k) << "an empty expected body is not none";
}

TEST(HealthTracker, PassiveFailureCountsButNeverDecidesTheFirstRound) {
    health_tracker t(2, 2, true);
    auto c = t.record_passive_failure();
    EXPECT_FALSE(c.changed);
    EXPECT_FALSE(t.settled()) << "only an active check settles the first round";
    t.record(true);  // first check: healthy, count reset
    EXPECT_FALSE(t.record_passive_failure().changed);
    c = t.record(false);
    EXPECT_TRUE(c.changed) << "a passive failure and a failed probe make fall 2";
    EXPECT_FALSE(c.healthy);
    EXPECT_FALSE(t.record_passive_failure().changed) << "already unhealthy";
}

// ---------------------------------------------------------------- readyz output

TEST(ReadyzVerbose, NamesTheFailingChecks) {
    const std::string body =
        "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]informer-sync ok\n"
        "[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\n"
        "[+]shutdown ok\nreadyz check failed\n";
    EXPECT_EQ(failing_readyz_checks(body), (std::vector<std::string>{"etcd", "poststarthook/rbac/bootstrap-roles"}));
}

TEST(ReadyzVerbose, PassingOrOtherBodiesNameNothing) {
    EXPECT_TRUE(failing_readyz_checks("ok").empty());
    EXPECT_TRUE(failing_readyz_checks("[+]ping ok\nreadyz check passed\n").empty());
    EXPECT_TRUE(failing_readyz_checks("").empty());
    EXPECT_TRUE(failing_readyz_checks("[-]\n[-] \n").empty());
    EXPECT_EQ(failing_readyz_checks("[-]shutdown failed: process is shutting down\r\n"),
              (std::vector<std::string>{"shutdown"}));
}

// ---------------------------------------------------------------- judging a response

health_config https_config() {
    health_config h;
    h.type = health_check_type::https;
    h.path = "/readyz?verbose";
    return h;
}

TEST(JudgeHttpResponse, ExpectedStatusPasses) {
    auto r = judge_http_response(200, "OK", "[+]ping ok\nreadyz check passed\n", https_config());
    EXPECT_TRUE(r.passed()) << r.describe();
}

TEST(JudgeHttpResponse, OtherStatusIsHttpStatusWithTheFailingChecks) {
    auto r = judge_http_response(500, "Internal Server Error", "[+]ping ok\n[-]etcd failed: reason withheld\n",
                                 https_config());
    EXPECT_EQ(r.failure, check_failure::http_status);
    EXPECT_NE(r.detail.find("HTTP 500 Internal Server Error"), std::string::npos) << r.detail;
    EXPECT_NE(r.detail.find("failing checks: etcd"), std::string::npos) << r.detail;
    EXPECT_EQ(r.describe().rfind("http_status: ", 0), 0u) << r.describe();
}

TEST(JudgeHttpResponse, AnUnexpectedStatusShowsTheStartOfTheBodyBoundedAndSanitized) {
    // A proxy's error page, not a /readyz listing: its first words say why.
    auto r = judge_http_response(502, "Bad Gateway", "upstream connect error\r\n\x1b[31m" + std::string(500, 'x'),
                                 https_config());
    EXPECT_EQ(r.failure, check_failure::http_status);
    EXPECT_NE(r.detail.find("(expected 200); body: \"upstream connect error"), std::string::npos) << r.detail;
    EXPECT_EQ(r.detail.find('\x1b'), std::string::npos) << "control characters are not logged";
    EXPECT_NE(r.detail.find("...\""), std::string::npos) << "cut short: " << r.detail;
    EXPECT_LT(r.detail.size(), 200u) << r.detail;
    // No body, nothing added.
    EXPECT_EQ(judge_http_response(500, "", "", https_config()).detail.find("body:"), std::string::npos);
}

TEST(JudgeHttpResponse, UnauthorizedAndForbiddenAreAuthenticationProblems) {
    for (unsigned status : {401u, 403u}) {
        auto r = judge_http_response(status, "", "", https_config());
        EXPECT_EQ(r.failure, check_failure::auth_failed) << status;
        EXPECT_NE(r.detail.find("authentication problem, not the apiserver being down"), std::string::npos) << r.detail;
    }
}

TEST(JudgeHttpResponse, BodyMustContainTheExpectedText) {
    auto h = https_config();
    h.expect_body = "check passed";
    EXPECT_TRUE(judge_http_response(200, "OK", "readyz check passed\n", h).passed());
    auto r = judge_http_response(200, "OK", "nope\x01", h);
    EXPECT_EQ(r.failure, check_failure::body_mismatch);
    EXPECT_EQ(r.detail.find('\x01'), std::string::npos) << "control characters are not logged";
}

TEST(JudgeHttpResponse, AnotherExpectedStatusIsHonoured) {
    auto h = https_config();
    h.expect_status = 204;
    EXPECT_TRUE(judge_http_response(204, "No Content", "", h).passed());
    EXPECT_EQ(judge_http_response(200, "OK", "", h).failure, check_failure::http_status);
}

TEST(CheckFailure, NamesAreStable) {
    EXPECT_STREQ(to_string(check_failure::tcp_refused), "tcp_refused");
    EXPECT_STREQ(to_string(check_failure::tls_failed), "tls_failed");
    EXPECT_STREQ(to_string(check_failure::http_timeout), "http_timeout");
    EXPECT_STREQ(to_string(check_failure::auth_failed), "auth_failed");
    EXPECT_EQ((check_result{check_failure::tcp_timeout, "x"}).describe(), "tcp_timeout: x");
}

// ---------------------------------------------------------------- slow start and schedule

TEST(SlowStart, RampsLinearlyFromTenPercent) {
    EXPECT_EQ(slow_start_permille(0ns, 30s), 100u);
    EXPECT_EQ(slow_start_permille(std::chrono::nanoseconds(-5), 30s), 100u);
    EXPECT_EQ(slow_start_permille(15s, 30s), 550u);
    EXPECT_EQ(slow_start_permille(30s, 30s), 1000u);
    EXPECT_EQ(slow_start_permille(1h, 30s), 1000u);
    EXPECT_EQ(slow_start_permille(1s, 0ms), 1000u) << "window 0: no slow start";
    std::uint32_t previous = 0;
    for (int s = 0; s <= 30; ++s) {
        const auto p = slow_start_permille(std::chrono::seconds(s), 30s);
        EXPECT_GE(p, previous);
        previous = p;
    }
}

TEST(ProbeSchedule, DelayIsNeverLongerThanTheInterval) {
    EXPECT_EQ(next_probe_delay(2000ms, 0.0), 1800ms);
    EXPECT_LE(next_probe_delay(2000ms, 0.999), 2000ms);
    EXPECT_GE(next_probe_delay(2000ms, 0.5), 1800ms);
    EXPECT_GE(next_probe_delay(1ms, 0.0), 1ms);
}

TEST(ProbeSchedule, FirstRoundOffsetsSpreadBackendsOverTheInterval) {
    std::set<duration> offsets;
    for (std::size_t i = 0; i < 4; ++i) {
        const auto d = first_round_offset(2000ms, i, 4, 0.0);
        EXPECT_GT(d, 0ms);
        EXPECT_LE(d, 2000ms);
        offsets.insert(d);
    }
    EXPECT_EQ(offsets, (std::set<duration>{500ms, 1000ms, 1500ms, 2000ms}));
    EXPECT_LE(first_round_offset(2000ms, 3, 4, 0.99), 2000ms);
    EXPECT_EQ(first_round_offset(2000ms, 0, 0, 0.0), 2000ms) << "count 0 is treated as 1";
}

TEST(HealthTier, SuspectAndUnhealthyComeLater) {
    EXPECT_EQ(tier_of(true, false), health_tier::healthy);
    EXPECT_EQ(tier_of(true, true), health_tier::suspect);
    EXPECT_EQ(tier_of(false, false), health_tier::unhealthy);
    EXPECT_EQ(tier_of(false, true), health_tier::unhealthy);
}

}  // namespace
}  // namespace apilb
