#include "apilb/logging/log_sink.hpp"

#include <poll.h>
#include <unistd.h>

#include <spdlog/pattern_formatter.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "apilb/core/thread_role.hpp"

namespace apilb {
namespace {

std::atomic<std::uint64_t> dropped_since_start{0};

/// How often a writer waiting for `fd` to take bytes looks at the abandon flag.
constexpr int poll_slice_ms = 100;

}  // namespace

struct log_sink::state {
    int fd;
    limits lim;
    std::mutex mu;                     ///< guards everything below; held only to format and queue or to swap
    std::condition_variable wake;      ///< the writer waits on it; loggers only notify
    std::condition_variable finished;  ///< stop() waits on it, bounded
    std::unique_ptr<spdlog::formatter> formatter = std::make_unique<spdlog::pattern_formatter>();
    std::vector<std::string> lines;
    std::size_t bytes = 0;
    std::uint64_t dropped_unreported = 0;
    bool stopping = false;
    bool done = false;
    std::atomic<bool> abandon{false};  ///< stop()'s budget ran out: write nothing more

    /// Writes all of `text` unless `fd` fails or abandon is set. Waits for
    /// `fd` with poll() and writes at most PIPE_BUF at a time, which a pipe
    /// that polls writable takes without blocking, so the writer looks at
    /// abandon at least every poll slice even when the reader has stopped.
    bool write_all(std::string_view text) {
        while (!text.empty()) {
            if (abandon.load(std::memory_order_relaxed)) return false;
            pollfd p{.fd = fd, .events = POLLOUT, .revents = 0};
            const int r = ::poll(&p, 1, poll_slice_ms);
            if (r < 0 && errno != EINTR) return false;
            if (r <= 0) continue;
            if ((p.revents & POLLOUT) == 0) return false;  // POLLERR, POLLHUP, POLLNVAL: no reader, no fd
            const ssize_t n = ::write(fd, text.data(), std::min<std::size_t>(text.size(), PIPE_BUF));
            if (n < 0) {
                if (errno == EINTR || errno == EAGAIN) continue;
                return false;  // EPIPE and the like: this line is lost, the next may go
            }
            text.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    std::string notice(std::uint64_t dropped) {
        const std::string text = fmt::format("{} log line(s) dropped: stderr did not take them as fast as they came",
                                             dropped);
        spdlog::memory_buf_t buf;
        std::lock_guard lock(mu);
        formatter->format(spdlog::details::log_msg("apilb", spdlog::level::warn, text), buf);
        return {buf.data(), buf.size()};
    }

    void run() {
        std::vector<std::string> batch;
        for (;;) {
            std::uint64_t dropped = 0;
            {
                std::unique_lock lock(mu);
                wake.wait(lock, [&] { return !lines.empty() || dropped_unreported != 0 || stopping; });
                if (lines.empty() && dropped_unreported == 0) break;  // stopping, all written
                // The lines dropped so far came after every queued one: the
                // queue was full when they came. The notice goes right after them.
                batch.swap(lines);
                bytes = 0;
                dropped = std::exchange(dropped_unreported, 0);
            }
            for (const auto& line : batch) {
                if (!write_all(line) && abandon.load(std::memory_order_relaxed)) break;
            }
            batch.clear();
            if (dropped != 0) write_all(notice(dropped));
            if (abandon.load(std::memory_order_relaxed)) break;
        }
        std::lock_guard lock(mu);
        done = true;
        finished.notify_all();
    }
};

log_sink::log_sink(int fd, limits lim) : state_(std::make_shared<state>()) {
    state_->fd = fd;
    state_->lim = lim;
    state_->lines.reserve(lim.max_lines);
    writer_ = std::thread([s = state_] {
        set_thread_role(thread_role::log_writer);
        s->run();
    });
}

log_sink::~log_sink() { stop(std::chrono::seconds(1)); }

void log_sink::log(const spdlog::details::log_msg& msg) {
    state& s = *state_;
    bool queued = false;
    {
        std::lock_guard lock(s.mu);
        if (!s.stopping && s.lines.size() < s.lim.max_lines) {
            spdlog::memory_buf_t buf;
            s.formatter->format(msg, buf);
            // One line always fits an empty queue, however long.
            if (s.lines.empty() || s.bytes + buf.size() <= s.lim.max_bytes) {
                s.lines.emplace_back(buf.data(), buf.size());
                s.bytes += buf.size();
                queued = true;
            }
        }
        if (!queued) ++s.dropped_unreported;
    }
    if (queued) {
        s.wake.notify_one();
    } else {
        dropped_since_start.fetch_add(1, std::memory_order_relaxed);
    }
}

void log_sink::set_pattern(const std::string& pattern) {
    set_formatter(std::make_unique<spdlog::pattern_formatter>(pattern));
}

void log_sink::set_formatter(std::unique_ptr<spdlog::formatter> sink_formatter) {
    std::lock_guard lock(state_->mu);
    state_->formatter = std::move(sink_formatter);
}

void log_sink::stop(std::chrono::milliseconds budget) {
    if (!writer_.joinable()) return;
    state& s = *state_;
    std::unique_lock lock(s.mu);
    s.stopping = true;
    s.wake.notify_one();
    if (!s.finished.wait_for(lock, budget, [&] { return s.done; })) {
        s.abandon = true;
        // A writer in poll() sees the flag within a slice; one in a write()
        // that blocks after all (a stopped terminal) is left behind with its
        // own reference to the state and ends with the process.
        if (!s.finished.wait_for(lock, std::chrono::milliseconds(3 * poll_slice_ms), [&] { return s.done; })) {
            lock.unlock();
            writer_.detach();
            return;
        }
    }
    lock.unlock();
    writer_.join();
}

std::uint64_t log_sink::dropped_total() { return dropped_since_start.load(std::memory_order_relaxed); }

}  // namespace apilb
