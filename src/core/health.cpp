#include "apilb/core/health.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace apilb {

const char* to_string(check_failure f) {
    switch (f) {
    case check_failure::none: return "passed";
    case check_failure::tcp_refused: return "tcp_refused";
    case check_failure::tcp_timeout: return "tcp_timeout";
    case check_failure::tcp_error: return "tcp_error";
    case check_failure::tls_timeout: return "tls_timeout";
    case check_failure::tls_failed: return "tls_failed";
    case check_failure::http_timeout: return "http_timeout";
    case check_failure::http_error: return "http_error";
    case check_failure::http_status: return "http_status";
    case check_failure::auth_failed: return "auth_failed";
    case check_failure::body_mismatch: return "body_mismatch";
    case check_failure::passive: return "passive";
    }
    return "unknown";
}

std::string check_result::describe() const {
    if (passed()) return detail.empty() ? "passed" : "passed: " + detail;
    return detail.empty() ? std::string(to_string(failure)) : std::string(to_string(failure)) + ": " + detail;
}

health_tracker::health_tracker(std::uint32_t rise, std::uint32_t fall, bool initial_healthy)
    : rise_(std::max(rise, 1u)), fall_(std::max(fall, 1u)), healthy_(initial_healthy) {}

health_tracker health_tracker::with_thresholds(std::uint32_t rise, std::uint32_t fall) const {
    health_tracker t(rise, fall, healthy_);
    t.settled_ = settled_;
    const std::uint32_t limit = healthy_ ? t.fall_ : t.rise_;
    t.streak_ = std::min(streak_, limit - 1);
    return t;
}

health_tracker health_tracker::restored(std::uint32_t rise, std::uint32_t fall, bool healthy, std::uint32_t streak) {
    health_tracker t(rise, fall, healthy);
    t.settled_ = true;
    t.streak_ = healthy ? std::min(streak, t.fall_ - 1) : 0;
    return t;
}

health_change health_tracker::record(bool passed) {
    if (!settled_) {
        // The first round decides at once: until now the state was only what
        // the configuration assumed.
        settled_ = true;
        streak_ = 0;
        const bool changed = healthy_ != passed;
        healthy_ = passed;
        return {.changed = changed, .healthy = healthy_, .streak = 0, .first = true};
    }
    if (!passed) return apply_failure();
    if (healthy_) {
        streak_ = 0;
        return {.changed = false, .healthy = true, .streak = 0, .first = false};
    }
    if (++streak_ < rise_) return {.changed = false, .healthy = false, .streak = streak_, .first = false};
    const std::uint32_t n = streak_;
    healthy_ = true;
    streak_ = 0;
    return {.changed = true, .healthy = true, .streak = n, .first = false};
}

health_change health_tracker::record_passive_failure() { return apply_failure(); }

health_change health_tracker::apply_failure() {
    if (!healthy_) {
        streak_ = 0;
        return {.changed = false, .healthy = false, .streak = 0, .first = false};
    }
    if (++streak_ < fall_) return {.changed = false, .healthy = true, .streak = streak_, .first = false};
    const std::uint32_t n = streak_;
    healthy_ = false;
    streak_ = 0;
    return {.changed = true, .healthy = false, .streak = n, .first = false};
}

std::string probe_settings_key(const health_config& h) {
    const std::string text = fmt::format("{}\n{}\n{}\n{}\n{}{}\n{}\n{}\n{}\n{}\n{}\n{}", static_cast<int>(h.type),
                                         h.path, h.timeout.count(), h.expect_status, h.expect_body ? "1" : "0",
                                         h.expect_body.value_or(""), h.tls.ca_file, h.tls.server_name, h.tls.cert_file,
                                         h.tls.key_file, h.tls.insecure_skip_verify ? 1 : 0, h.bearer_token_file);
    // FNV-1a: stable across builds and releases, unlike std::hash.
    std::uint64_t hash = 0xcbf29ce484222325ULL;
    for (unsigned char c : text) {
        hash ^= c;
        hash *= 0x100000001b3ULL;
    }
    return fmt::format("{:016x}", hash);
}

std::vector<std::string> failing_readyz_checks(std::string_view body) {
    std::vector<std::string> names;
    while (!body.empty()) {
        const auto eol = body.find('\n');
        std::string_view line = body.substr(0, eol);
        body = eol == std::string_view::npos ? std::string_view{} : body.substr(eol + 1);
        if (!line.starts_with("[-]")) continue;
        line.remove_prefix(3);
        const auto end = line.find_first_of(" \t\r");
        const std::string_view name = line.substr(0, end);
        // Check names are short words ("etcd", "poststarthook/rbac/bootstrap-roles");
        // anything else is not a check line and is not repeated into our logs.
        const bool plausible = !name.empty() && name.size() <= 128 &&
                               std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; });
        if (plausible) names.emplace_back(name);
        if (names.size() >= 32) break;
    }
    return names;
}

namespace {

/// `text` cut short and with control characters replaced, for one log line.
std::string printable(std::string_view text, std::size_t max = 80) {
    std::string out;
    for (std::size_t i = 0; i < text.size() && i < max; ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        out += (c < 0x20 || c >= 0x7f) ? ' ' : static_cast<char>(c);
    }
    if (text.size() > max) out += "...";
    return out;
}

std::string failing_checks_text(std::string_view body) {
    const auto names = failing_readyz_checks(body);
    if (names.empty()) return {};
    std::string out = "; failing checks: ";
    for (std::size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
    return out;
}

}  // namespace

check_result judge_http_response(unsigned status, std::string_view reason, std::string_view body,
                                 const health_config& cfg) {
    const std::string status_text = "GET " + printable(cfg.path) + ": HTTP " + std::to_string(status) +
                                    (reason.empty() ? "" : " ") + printable(reason);
    if (status == 401 || status == 403) {
        // The apiserver answers, so it is not down; whether it is ready is
        // unknown because it does not accept who we are. With
        // --anonymous-auth=false health endpoints need credentials.
        return {check_failure::auth_failed,
                status_text +
                    ": the apiserver rejects the probe's credentials (an authentication problem, not "
                    "the apiserver being down); set health.tls.cert_file/key_file or "
                    "health.bearer_token_file, or allow anonymous access to " +
                    printable(cfg.path)};
    }
    if (status != cfg.expect_status) {
        // The failing /readyz checks say why; for any other answer (a proxy's
        // error page, a redirect) the start of the body does.
        std::string why = failing_checks_text(body);
        if (why.empty() && !body.empty()) why = "; body: \"" + printable(body) + "\"";
        return {check_failure::http_status,
                status_text + " (expected " + std::to_string(cfg.expect_status) + ")" + why};
    }
    if (cfg.expect_body && body.find(*cfg.expect_body) == std::string_view::npos) {
        return {check_failure::body_mismatch, status_text + ", but the body does not contain \"" +
                                                  printable(*cfg.expect_body) + "\" (body: \"" + printable(body) +
                                                  "\")"};
    }
    return {check_failure::none, status_text};
}

std::uint32_t slow_start_permille(std::chrono::nanoseconds since_healthy, duration window) {
    constexpr std::uint32_t floor = 100;
    if (window.count() <= 0) return 1000;
    if (since_healthy.count() <= 0) return floor;
    const auto window_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(window);
    if (since_healthy >= window_ns) return 1000;
    const double fraction = static_cast<double>(since_healthy.count()) / static_cast<double>(window_ns.count());
    return floor + static_cast<std::uint32_t>(fraction * (1000 - floor));
}

duration next_probe_delay(duration interval, double random_unit) {
    random_unit = std::clamp(random_unit, 0.0, 1.0);
    const double factor = 0.9 + 0.1 * random_unit;
    return duration{std::max<std::int64_t>(1, std::llround(static_cast<double>(interval.count()) * factor))};
}

duration first_round_offset(duration interval, std::size_t index, std::size_t count, double random_unit) {
    if (count == 0) count = 1;
    index %= count;
    // Backend i of n is probed again after (i+1)/n of an interval, so the
    // second round is spread over the interval instead of firing together.
    const double slot = static_cast<double>(index + 1) / static_cast<double>(count);
    const double jitter = 0.05 * std::clamp(random_unit, 0.0, 1.0);
    return duration{
        std::max<std::int64_t>(1, std::llround(static_cast<double>(interval.count()) * std::min(1.0, slot + jitter)))};
}

health_tier tier_of(bool healthy, bool suspect) {
    if (!healthy) return health_tier::unhealthy;
    return suspect ? health_tier::suspect : health_tier::healthy;
}

}  // namespace apilb
