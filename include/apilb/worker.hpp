// A data-plane thread: one io_context, its own SO_REUSEPORT acceptor per
// listener, and every session it accepted. Sessions never leave their worker,
// so nothing on the byte path takes a lock.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstddef>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "apilb/runtime.hpp"
#include "apilb/session.hpp"

namespace apilb {

class worker {
public:
    worker(std::size_t index, std::shared_ptr<const snapshot> snap, process_stats& stats);
    ~worker();
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    /// Opens, binds and listens on `listener_index`'s address with SO_REUSEPORT.
    /// Control thread, before start(). Throws std::system_error with the reason.
    void bind(std::size_t listener_index);

    /// Caps the process-wide session count this worker admits (0 = none).
    /// Control thread, before start().
    void set_max_connections(std::uint32_t n) { ctx_.max_connections = n; }

    /// Starts the thread and the accept loops.
    void start();
    /// Closes the acceptors; sessions go on. Any thread.
    void stop_accepting();
    /// Closes every session. Any thread.
    void abort_sessions();
    /// Closes the sessions relaying to `backend` (it became unhealthy); they
    /// are counted as closed_by_health. Any thread.
    void abort_sessions_on(const backend_health* backend);
    /// Where sessions report failed connects for passive health detection.
    /// Control thread, before start().
    void set_passive_reporter(passive_reporter r) { ctx_.report_passive = std::move(r); }
    /// Ends everything the worker runs (acceptors, sessions, timers), lets
    /// every coroutine finish, and joins the thread; forces the io_context to
    /// stop only if that takes more than a few seconds. Control thread.
    void stop();

private:
    struct acceptor_slot {
        boost::asio::ip::tcp::acceptor acceptor;
        std::size_t listener_index;
        boost::asio::steady_timer pause_timer;  ///< waits out an accept pause
    };

    boost::asio::awaitable<void> accept_loop(acceptor_slot& slot);
    /// Closes sessions with no traffic for timeouts.idle, checking a few
    /// times per idle period.
    boost::asio::awaitable<void> idle_sweep();

    std::size_t index_;
    boost::asio::io_context io_{1};
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
    worker_context ctx_;
    std::vector<std::unique_ptr<acceptor_slot>> acceptors_;
    boost::asio::steady_timer sweep_timer_{io_};
    bool stopping_ = false;  ///< worker thread only
    std::thread thread_;
    std::promise<void> exited_;
};

}  // namespace apilb
