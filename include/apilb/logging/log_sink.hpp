// The sink every log line goes through: a bounded queue in memory and one
// writer thread, so that no thread that logs ever waits on stderr.
#pragma once

#include <spdlog/sinks/sink.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>

namespace apilb {

/// An spdlog sink that formats in the calling thread (log_scope's fields are
/// thread-local) and queues the line; a writer thread of its own writes the
/// queue to `fd`. When the queue is full the line is dropped and counted,
/// never waited for; the writer says how many were dropped once it can write
/// again. Thread-safe; log() takes one short mutex and never blocks on I/O.
class log_sink final : public spdlog::sinks::sink {
public:
    /// Limits of the queue: past either, lines are dropped.
    struct limits {
        std::size_t max_lines = 4096;
        std::size_t max_bytes = std::size_t{1} << 20;
    };

    /// Starts the writer thread for `fd` (not owned: stderr stays open).
    log_sink(int fd, limits lim);
    /// Stops the writer as stop() does, with a one-second budget.
    ~log_sink() override;
    log_sink(const log_sink&) = delete;
    log_sink& operator=(const log_sink&) = delete;

    void log(const spdlog::details::log_msg& msg) override;
    /// A no-op: lines are written as fast as `fd` takes them; waiting here
    /// would put the caller back on stderr's pace (see stop()).
    void flush() override {}
    void set_pattern(const std::string& pattern) override;
    void set_formatter(std::unique_ptr<spdlog::formatter> sink_formatter) override;

    /// Writes what is queued for at most `budget`, then gives up on the
    /// rest: exit must not hang on a reader that stopped reading. Lines
    /// logged afterwards are dropped. Idempotent.
    void stop(std::chrono::milliseconds budget);

    /// Lines dropped by every log_sink since the process started.
    static std::uint64_t dropped_total();

private:
    struct state;
    std::shared_ptr<state> state_;  ///< shared with the writer thread, which may outlive a stop() that gave up
    std::thread writer_;
};

}  // namespace apilb
