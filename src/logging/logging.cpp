#include "apilb/logging/logging.hpp"

#include <unistd.h>

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "apilb/logging/log_sink.hpp"

namespace apilb {
namespace {

thread_local const log_fields* current_fields = nullptr;

/// The sink init_logging installed, for shutdown_logging.
std::mutex installed_mu;
std::shared_ptr<log_sink> installed;

/// One JSON object per line: {"ts":"…","level":"…","msg":"…"}. Log shippers
/// (journald, fluent-bit, Loki) take these without a parser of their own.
class json_formatter final : public spdlog::formatter {
public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        const auto t = std::chrono::system_clock::to_time_t(msg.time);
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count() %
                        1000;
        std::tm tm{};
        gmtime_r(&t, &tm);
        char ts[32];
        std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
        const auto level = spdlog::level::to_string_view(msg.level);
        fmt::format_to(std::back_inserter(dest), R"({{"ts":"{}.{:03}Z","level":"{}")", ts, ms,
                       std::string_view(level.data(), level.size()));
        if (const log_fields* f = current_fields) {
            for (const auto& [key, value] : {std::pair<const char*, const std::string*>{"event", &f->event},
                                             {"pool", &f->pool},
                                             {"backend", &f->backend},
                                             {"client", &f->client},
                                             {"reason", &f->reason}}) {
                if (!value->empty())
                    fmt::format_to(std::back_inserter(dest), R"(,"{}":"{}")", key, json_escape(*value));
            }
        }
        fmt::format_to(std::back_inserter(dest), R"(,"msg":"{}"}})",
                       json_escape(std::string_view(msg.payload.data(), msg.payload.size())));
        dest.push_back('\n');
    }
    std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<json_formatter>(); }
};

}  // namespace

log_scope::log_scope(log_fields fields) : fields_(std::move(fields)), outer_(current_fields) {
    current_fields = &fields_;
}
log_scope::~log_scope() { current_fields = outer_; }

std::string json_escape(std::string_view text) {
    std::string out;
    out.reserve(text.size() + 8);
    for (unsigned char c : text) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20) {
                out += fmt::format("\\u{:04x}", c);
            } else {
                out += static_cast<char>(c);
            }
        }
    }
    return out;
}

void init_logging(const log_config& cfg, const std::string& level_override) {
    const std::string& name = level_override.empty() ? cfg.level : level_override;
    const auto level = spdlog::level::from_str(name);
    // from_str maps unknown names to "off"; only "off" itself may mean off.
    if (level == spdlog::level::off && name != "off") {
        throw std::invalid_argument("unknown log level \"" + name +
                                    "\"; expected trace, debug, info, warn, error, critical or off");
    }
    // No thread that logs writes stderr itself: a reader that stops reading
    // (journald, a container runtime under pressure) would stop the workers.
    auto sink = std::make_shared<log_sink>(STDERR_FILENO, log_sink::limits{});
    auto logger = std::make_shared<spdlog::logger>("apilb", sink);
    if (cfg.format == log_format::json) {
        logger->set_formatter(std::make_unique<json_formatter>());
    } else {
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %l %v");
    }
    logger->set_level(level);
    spdlog::set_default_logger(std::move(logger));
    std::shared_ptr<log_sink> previous;
    {
        std::lock_guard lock(installed_mu);
        previous = std::exchange(installed, std::move(sink));
    }
    if (previous) previous->stop(std::chrono::seconds(1));
}

void shutdown_logging(std::chrono::milliseconds budget) {
    std::shared_ptr<log_sink> sink;
    {
        std::lock_guard lock(installed_mu);
        sink = installed;
    }
    if (sink) sink->stop(budget);
}

std::uint64_t log_lines_dropped() { return log_sink::dropped_total(); }

bool log_limiter::allow(std::uint64_t& suppressed) {
    const auto now = std::chrono::steady_clock::now();
    if (now < next_) {
        ++suppressed_;
        return false;
    }
    next_ = now + interval_;
    suppressed = suppressed_;
    suppressed_ = 0;
    return true;
}

void log_if_failed::operator()(std::exception_ptr e) const {
    if (!e) return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        spdlog::log(critical ? spdlog::level::critical : spdlog::level::err, "{} failed: {}", what, ex.what());
    }
}

}  // namespace apilb
