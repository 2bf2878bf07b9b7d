// What the health checker keeps of a backend's probes for the admin
// endpoint (status page, /metrics): the last result, recent changes and a
// duration histogram. Control thread only.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apilb/dataplane/snapshot.hpp"

namespace apilb {

/// Upper bounds (seconds) of the probe duration histogram buckets; +Inf is implied.
inline constexpr std::array<double, 10> probe_duration_buckets{0.001, 0.0025, 0.005, 0.01, 0.025,
                                                               0.05,  0.1,    0.25,  0.5,  1.0};

/// What the admin endpoint shows about a backend's probes. Written and read on
/// the control thread only (health checker, admin server), so no atomics.
struct probe_record {
    bool probed = false;          ///< a check has completed
    bool passed = false;          ///< the last check's outcome
    std::string reason = "none";  ///< check_failure name of the last check ("none" = passed)
    std::string detail;           ///< the last check's describe()
    double duration_s = 0;        ///< how long the last check took
    std::int64_t last_probe_unix_ms = 0;
    std::uint64_t transitions_total = 0;  ///< healthy <-> unhealthy changes
    /// Recent changes, oldest first, at most 16: unix ms, became healthy, reason.
    struct change {
        std::int64_t unix_ms;
        bool healthy;
        std::string reason;
    };
    std::vector<change> recent_changes;
    std::array<std::uint64_t, probe_duration_buckets.size()> bucket_counts{};  ///< not cumulative
    std::uint64_t count = 0;
    double sum_s = 0;
};

/// The probe record of `h`, made at its first use. Control thread.
inline probe_record& probe_record_of(backend_health& h) {
    if (!h.probes) h.probes = std::make_shared<probe_record>();
    return *h.probes;
}

/// The probe record of `h`, or an empty one (never probed) if it has none
/// yet. Control thread.
inline const probe_record& probe_record_or_empty(const backend_health& h) {
    static const probe_record none;
    return h.probes ? *h.probes : none;
}

}  // namespace apilb
