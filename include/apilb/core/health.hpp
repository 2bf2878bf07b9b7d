// Health decisions, apart from I/O: the rise/fall state machine of one
// backend, the layered reason a check failed, what kube-apiserver's
// /readyz?verbose output says is failing, the slow-start ramp of a recovered
// backend and when probes run. Pure core: no Asio, no sockets, no clock
// reads (callers pass times in).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "apilb/core/config.hpp"

namespace apilb {

/// Why a check failed, by the layer that failed (HAProxy's check-t.h idea):
/// logs, metric labels and the status page all use these names.
enum class check_failure : std::uint8_t {
    none,           ///< passed
    tcp_refused,    ///< connect refused (RST): nothing listens
    tcp_timeout,    ///< connect did not complete within the timeout
    tcp_error,      ///< another connect error: unreachable, reset, ...
    tls_timeout,    ///< connected, but the TLS handshake did not complete in time
    tls_failed,     ///< TLS failed: certificate verification, alert, protocol error
    http_timeout,   ///< request sent, no complete response in time
    http_error,     ///< the connection ended or the response was malformed or too large
    http_status,    ///< a response with an unexpected status
    auth_failed,    ///< 401/403: the apiserver is up but rejects the probe's credentials
    body_mismatch,  ///< expected status, but the body lacks the expected text
    passive,        ///< a client's connect failed (passive detection), not a probe
};

/// The snake_case name, e.g. "tcp_refused".
const char* to_string(check_failure);

/// The outcome of one check. `detail` is for people: the status line, the
/// failing readyz checks, the TLS verification error.
struct check_result {
    check_failure failure = check_failure::none;
    std::string detail;

    bool passed() const noexcept { return failure == check_failure::none; }
    /// "passed" or "<reason>: <detail>".
    std::string describe() const;
};

/// What a recorded result did to the backend's state.
struct health_change {
    bool changed = false;
    bool healthy = false;      ///< the state after the result
    std::uint32_t streak = 0;  ///< consecutive results that brought the change (0 for the first check)
    bool first = false;        ///< the change came from the first active check
};

/// Rise/fall for one backend in one counter: `streak` counts consecutive
/// results that disagree with the current state; `rise` passes make an
/// unhealthy backend healthy, `fall` failures make a healthy one unhealthy.
/// The first active check decides at once ("the first round"), so that a
/// restart of apilb knows within one probe which backends are fit.
class health_tracker {
public:
    health_tracker(std::uint32_t rise, std::uint32_t fall, bool initial_healthy);

    /// One active probe's result.
    health_change record(bool passed);
    /// A client's connect to the backend failed: counts as one failure, but
    /// never decides the first round on its own.
    health_change record_passive_failure();

    /// The same state (healthy, settled, streak) under new rise/fall
    /// thresholds, for a backend kept across a reload: it does not go back to
    /// its initial state. A streak that reaches the new threshold stops one
    /// short of it, so the change comes with the next result, not silently.
    health_tracker with_thresholds(std::uint32_t rise, std::uint32_t fall) const;

    /// The state an upgrade's old process judged (docs/upgrade.md, "What
    /// carries over"): settled, `healthy`, and for a healthy backend its
    /// failures towards `fall` (kept, at most fall - 1). A backend that was
    /// unhealthy starts its passes towards `rise` from 0: it comes back only
    /// on this binary's own `rise` passing probes.
    static health_tracker restored(std::uint32_t rise, std::uint32_t fall, bool healthy, std::uint32_t streak);

    bool healthy() const noexcept { return healthy_; }
    /// True once an active check has completed.
    bool settled() const noexcept { return settled_; }
    std::uint32_t streak() const noexcept { return streak_; }

private:
    health_change apply_failure();

    std::uint32_t rise_;
    std::uint32_t fall_;
    bool healthy_;
    bool settled_ = false;
    std::uint32_t streak_ = 0;
};

/// What a probe checks and how it judges the answer (type, path, timeout,
/// status, body, TLS, credentials), as 16 hex digits: two configs with the
/// same key judge a backend alike, so an upgrade may carry its state over.
/// rise, fall and interval are not in it (a carried streak is clamped to
/// the new thresholds, as on a reload).
std::string probe_settings_key(const health_config& h);

/// The names of the failing checks in kube-apiserver's /readyz?verbose
/// (or /livez?verbose) output: lines "[-]etcd failed: reason withheld".
/// kube-apiserver writes the same list for a failing non-verbose request.
std::vector<std::string> failing_readyz_checks(std::string_view body);

/// Judges an HTTP response of a probe: status, then body. `path` is only for
/// the text. 401 and 403 are auth_failed, never "down".
check_result judge_http_response(unsigned status, std::string_view reason, std::string_view body,
                                 const health_config& cfg);

/// Share of its weight, in 1/1000, that a backend healthy for `since_healthy`
/// gets during a slow-start `window`: a linear ramp from 10% to 100%. 1000
/// when the window is 0 or over; never below 100, so a recovered backend
/// always gets some sessions.
std::uint32_t slow_start_permille(std::chrono::nanoseconds since_healthy, duration window);

/// How long after a probe started the next one starts: 90% to 100% of
/// `interval` (from `random_unit` in [0, 1)), so that backends drift apart
/// instead of being probed in lockstep, and never later than the interval (a
/// dead backend is found within fall x interval + timeout).
duration next_probe_delay(duration interval, double random_unit);

/// The delay after the first round (which runs for every backend at once at
/// start) for backend `index` of `count`: spreads the backends evenly over
/// one interval, then next_probe_delay() keeps them apart.
duration first_round_offset(duration interval, std::size_t index, std::size_t count, double random_unit);

/// The order in which new sessions consider backends: lowest tier first.
enum class health_tier : std::uint8_t {
    healthy = 0,    ///< healthy and not suspect
    suspect = 1,    ///< healthy by the probes, but a client's connect just failed
    unhealthy = 2,  ///< only when the pool's all_unhealthy is try-all
};

health_tier tier_of(bool healthy, bool suspect);

}  // namespace apilb
