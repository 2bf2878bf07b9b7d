#include "apilb/dataplane/close_reason.hpp"

#include "apilb/dataplane/stats.hpp"

namespace apilb {

const char* to_string(close_reason r) noexcept {
    switch (r) {
    case close_reason::none: return "open";
    case close_reason::completed: return "completed";
    case close_reason::client_reset: return "client-reset";
    case close_reason::client_timeout: return "client-timeout";
    case close_reason::backend_reset: return "backend-reset";
    case close_reason::backend_timeout: return "backend-timeout";
    case close_reason::no_backend: return "no-backend";
    case close_reason::no_resources: return "no-resources";
    case close_reason::no_memory: return "no-memory";
    case close_reason::idle: return "idle-timeout";
    case close_reason::health: return "backend-unhealthy";
    case close_reason::reload: return "backend-removed";
    case close_reason::rebalance: return "rebalanced";
    case close_reason::drain: return "drain";
    case close_reason::stalled: return "write-stalled";
    case close_reason::handed_over: return "handed-over";
    }
    return "?";
}

close_how close_action(close_reason r) noexcept {
    switch (r) {
    case close_reason::none:
    case close_reason::completed:
    case close_reason::handed_over: return close_how::fin;  // its sockets are gone already
    default: return close_how::reset;  // a failed leg, no backend, no resources, or apilb's own close
    }
}

std::atomic<std::uint64_t>* process_counter(process_stats& s, close_reason r) noexcept {
    switch (r) {
    case close_reason::none:
    case close_reason::completed:
    case close_reason::no_resources:
    case close_reason::handed_over: return nullptr;  // the upgrade counts what it handed over
    case close_reason::client_reset: return &s.client_reset_total;
    case close_reason::client_timeout: return &s.client_timeout_total;
    case close_reason::backend_reset: return &s.backend_reset_total;
    case close_reason::backend_timeout: return &s.backend_timeout_total;
    case close_reason::no_backend: return &s.no_backend_total;
    case close_reason::no_memory: return &s.reset_no_memory_total;
    case close_reason::idle: return &s.closed_by_idle_total;
    case close_reason::health: return &s.closed_by_health_total;
    case close_reason::reload: return &s.closed_by_reload_total;
    case close_reason::rebalance: return &s.closed_by_rebalance_total;
    case close_reason::drain: return &s.closed_by_drain_total;
    case close_reason::stalled: return &s.closed_by_stall_total;
    }
    return nullptr;
}

std::atomic<std::uint64_t>* backend_counter(backend_stats& s, close_reason r) noexcept {
    switch (r) {
    case close_reason::health: return &s.closed_by_health_total;
    case close_reason::rebalance: return &s.closed_by_rebalance_total;
    default: return nullptr;
    }
}

}  // namespace apilb
