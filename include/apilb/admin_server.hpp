// The admin HTTP endpoint (docs/admin.md): /livez, /readyz, /metrics,
// /api/v1/status, drain/enable/reload, and the status page. Runs on the
// control io_context, never on a worker, so a slow admin client cannot stall
// the relay; workers are only reached by posting a ping.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <string>

#include "apilb/admin_report.hpp"
#include "apilb/runtime.hpp"

namespace apilb {

/// What the admin server asks of the process. Every function is called on
/// the control thread.
struct admin_hooks {
    std::function<std::shared_ptr<const snapshot>()> current;  ///< the running snapshot
    std::function<admin_facts()> facts;
    /// Pings every worker; calls `done(answered, total)` on the control
    /// thread when all answered or `deadline` passed.
    std::function<void(std::chrono::milliseconds deadline, std::function<void(std::size_t, std::size_t)> done)> ping_workers;
    std::function<bool()> reload;  ///< applies the config file; false if it was rejected
};

class admin_server {
public:
    /// Binds `cfg.address` and reads the token file. Throws std::system_error
    /// (naming the address) if the bind fails, std::runtime_error if the token
    /// file cannot be read or is empty. Control thread.
    admin_server(boost::asio::io_context& control, const admin_config& cfg, admin_hooks hooks);
    ~admin_server() = default;
    admin_server(const admin_server&) = delete;
    admin_server& operator=(const admin_server&) = delete;

    /// Starts accepting. Control thread.
    void start();
    /// Closes the acceptor and every connection. Control thread.
    void stop();

    boost::asio::ip::tcp::endpoint local_endpoint() const;

private:
    struct reply;
    boost::asio::awaitable<void> accept_loop();
    boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket);

    boost::asio::io_context& control_;
    boost::asio::ip::tcp::acceptor acceptor_;
    admin_hooks hooks_;
    std::string token_;  ///< "" = POST needs no token
    std::size_t connections_ = 0;
    std::list<boost::beast::tcp_stream*> open_;  ///< connections being served, closed by stop()
    bool stopped_ = false;
};

}  // namespace apilb
