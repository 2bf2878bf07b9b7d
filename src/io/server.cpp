#include "apilb/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <functional>

#ifdef APILB_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "apilb/worker.hpp"

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

namespace {

void notify_systemd([[maybe_unused]] const char* state) {
#ifdef APILB_HAVE_SYSTEMD
    sd_notify(0, state);
#endif
}

std::string summary(const snapshot& snap, const std::vector<std::unique_ptr<worker>>& workers) {
    const config& cfg = *snap.cfg;
    std::string s = fmt::format("apilb started: {} worker(s), relay {}, max_connections {}, connect timeout {}ms",
                                workers.size(), to_string(cfg.relay.mode), cfg.limits.max_connections,
                                cfg.timeouts.connect.count());
    for (std::size_t i = 0; i < snap.listeners.size(); ++i) {
        const auto& l = snap.listeners[i];
        s += fmt::format("; listener {} on {} -> pool {}", l.cfg->name,
                         l.cfg->address.to_string(), l.cfg->pool);
    }
    for (const auto& p : snap.pools) {
        s += fmt::format("; pool {} ({}, {} attempt(s)):", p.cfg->name, to_string(p.cfg->balance),
                         p.cfg->connect_attempts);
        for (const auto& b : p.backends) {
            s += fmt::format(" {}={} w{}", b.cfg->name, b.cfg->address.to_string(), b.cfg->weight);
        }
    }
    return s;
}

}  // namespace

server::server(std::shared_ptr<const config> cfg) : snap_(snapshot::build(std::move(cfg))) {
    const std::size_t n = snap_->cfg->workers;
    workers_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        workers_.push_back(std::make_unique<worker>(i, snap_, stats_));
        for (std::size_t l = 0; l < snap_->listeners.size(); ++l) workers_.back()->bind(l);
    }
}

server::~server() {
    for (auto& w : workers_) w->stop();
    workers_.clear();
}

int server::run() {
    asio::io_context control;
    asio::signal_set signals(control, SIGINT, SIGTERM, SIGHUP);
    asio::steady_timer drain_timer(control);
    bool draining = false;
    bool aborted = false;
    clock_type::time_point deadline{};

    for (auto& w : workers_) w->start();
    spdlog::info("{}", summary(*snap_, workers_));
    notify_systemd("READY=1");

    auto abort_all = [&] {
        if (aborted) return;
        aborted = true;
        for (auto& w : workers_) w->abort_sessions();
    };

    // Polls the open-session count until it reaches zero or the deadline
    // passes; after the deadline, closes everything and gives the workers a
    // moment to unwind.
    std::function<void()> poll = [&] {
        const auto open = stats_.active_sessions.load(std::memory_order_relaxed);
        const auto now = clock_type::now();
        if (open == 0 || now >= deadline + std::chrono::seconds(5)) {
            if (open != 0) spdlog::error("drain: {} session(s) did not end; exiting anyway", open);
            control.stop();
            return;
        }
        if (now >= deadline && !aborted) {
            spdlog::warn("drain deadline reached: closing {} remaining session(s)", open);
            abort_all();
        }
        drain_timer.expires_after(std::chrono::milliseconds(20));
        drain_timer.async_wait([&](error_code ec) {
            if (!ec) poll();
        });
    };

    std::function<void(error_code, int)> on_signal = [&](error_code ec, int signo) {
        if (ec) return;
        if (signo == SIGHUP) {
            spdlog::warn("SIGHUP: configuration reload is not supported by this version; "
                         "keeping the running configuration");
        } else if (!draining) {
            draining = true;
            notify_systemd("STOPPING=1");
            const auto drain = snap_->cfg->timeouts.drain;
            deadline = clock_type::now() + drain;
            spdlog::info("{}: stopped accepting; draining {} session(s) for up to {}ms",
                         signo == SIGTERM ? "SIGTERM" : "SIGINT",
                         stats_.active_sessions.load(std::memory_order_relaxed), drain.count());
            for (auto& w : workers_) w->stop_accepting();
            poll();
        } else {
            spdlog::warn("second signal during drain: closing every session now");
            deadline = clock_type::now();
            abort_all();
        }
        signals.async_wait(on_signal);
    };
    signals.async_wait(on_signal);

    control.run();
    for (auto& w : workers_) w->stop();
    spdlog::info("apilb stopped: {} session(s) served, {} refused at the limit, {} without a backend",
                 stats_.accepted_total.load() - stats_.refused_limit_total.load(),
                 stats_.refused_limit_total.load(), stats_.no_backend_total.load());
    return 0;
}

}  // namespace apilb
