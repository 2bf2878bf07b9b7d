// Process-wide logging: spdlog's default logger on stderr, as text or JSON
// lines, through a bounded queue and a writer thread of its own.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <string>

#include "apilb/core/config.hpp"

namespace apilb {

/// Installs the default logger. `level_override`, when not empty, wins over
/// the config (the command line's --log-level). Throws std::invalid_argument
/// for an unknown level name.
void init_logging(const log_config& cfg, const std::string& level_override = {});

/// Writes the lines still queued, for at most `budget`, then stops the
/// writer; lines logged later are dropped. Call before the process exits,
/// so that its last lines (a startup error) reach stderr when stderr works
/// and exit does not hang when it does not.
void shutdown_logging(std::chrono::milliseconds budget);

/// Log lines dropped since start because stderr did not take them as fast
/// as they came (apilb_log_lines_dropped_total). Any thread.
std::uint64_t log_lines_dropped();

/// Stable, queryable fields of a log line (Loki, Elasticsearch): JSON lines
/// carry the non-empty ones as top-level keys beside "msg"; the text format
/// leaves them out (its message already says the same for people).
struct log_fields {
    std::string event;  ///< what happened, snake_case: "backend_unhealthy", "reload_failed", ...
    std::string pool;
    std::string backend;
    std::string client;  ///< "ip:port"
    std::string reason;  ///< a check_failure name or a short cause
};

/// Attaches `fields` to the lines this thread logs while the scope lives
/// (spdlog formats in the calling thread). An inner scope replaces the outer
/// one's fields until it ends.
class log_scope {
public:
    explicit log_scope(log_fields fields);
    ~log_scope();
    log_scope(const log_scope&) = delete;
    log_scope& operator=(const log_scope&) = delete;

private:
    log_fields fields_;
    const log_fields* outer_;
};

/// co_spawn's completion handler for a coroutine whose exception must end
/// only that coroutine, not its thread: logs "<what> failed: <what()>" (at
/// critical with `critical`, else at error). An exception not derived from
/// std::exception leaves the handler, as the io_context's run() would see it.
struct log_if_failed {
    const char* what;
    bool critical = false;
    void operator()(std::exception_ptr e) const;
};

/// Escapes `text` for use inside a JSON string literal.
std::string json_escape(std::string_view text);

/// Lets a noisy warning through at most once per interval, counting the rest.
class log_limiter {
public:
    explicit log_limiter(std::chrono::milliseconds interval) : interval_(interval) {}
    /// True if the caller should log now; `suppressed` is how many were swallowed since.
    bool allow(std::uint64_t& suppressed);

private:
    std::chrono::milliseconds interval_;
    std::chrono::steady_clock::time_point next_{};
    std::uint64_t suppressed_ = 0;
};

}  // namespace apilb
