// The admin HTTP endpoint (docs/admin.md): /livez, /readyz, /metrics,
// /api/v1/status, drain/enable/reload, and the status page, over HTTP or
// HTTPS with optional client certificates. Runs on the control io_context,
// never on a worker, so a slow admin client cannot stall the relay; workers
// are only reached by posting a ping.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apilb/admin/admin_report.hpp"
#include "apilb/admin/admin_request.hpp"
#include "apilb/dataplane/snapshot.hpp"

namespace boost::asio::ssl {
class context;
}

namespace apilb {

/// How an upgrade ended (POST /api/v1/upgrade?wait=1; process_upgrade.cpp).
struct upgrade_outcome {
    std::string failure;                 ///< "" = the new process serves and this one drains
    int new_pid = 0;                     ///< the process started for it
    std::size_t handed_over = 0;         ///< established sessions the new process took
    std::size_t kept = 0;                ///< sessions with bytes in flight, drained by this one
    std::chrono::milliseconds phase{0};  ///< the session phase (ready to sessions_taken)
    /// Refused before it started, for what apilb was doing (an upgrade that
    /// waited for a reload's apply in vain): 409, like a refusal at once.
    bool conflict = false;
};

/// What asking for an upgrade came to at once.
struct upgrade_start {
    std::string refused;    ///< "" = started; else why not (nothing changed)
    bool conflict = false;  ///< refused for what apilb is doing or configured with, not a failure to start
    int new_pid = 0;        ///< once started; 0 while it waits for a reload's apply to end
};

/// What the admin server asks of the process. Every function is called on
/// the control thread.
struct admin_hooks {
    std::function<std::shared_ptr<const snapshot>()> current;  ///< the running snapshot
    std::function<admin_facts()> facts;
    /// Pings every worker; calls `done(answered, total)` on the control
    /// thread when all answered or `deadline` passed.
    std::function<void(std::chrono::milliseconds deadline, std::function<void(std::size_t, std::size_t)> done)>
        ping_workers;
    /// Applies the config file; every reason it was rejected
    /// (file:line:col: key: message), empty if it was applied.
    std::function<std::vector<std::string>()> reload;
    /// Starts an upgrade as SIGUSR2 does; `done` runs once, on the control
    /// thread, with its outcome, unless it was refused.
    std::function<upgrade_start(std::function<void(const upgrade_outcome&)> done)> upgrade;
};

/// The admin bearer token in `path`, trailing newlines and spaces removed
/// ("" if it holds nothing else); nullopt if the file cannot be read. The
/// server and the CLI both read it with this, so they agree on the token.
std::optional<std::string> read_admin_token(const std::string& path);

/// Control thread, like every request it serves; start(), stop() and
/// reload_tls_files() check it (APILB_ASSERT_ROLE).
class admin_server {
public:
    /// Binds `cfg.address`, reads the token file (creating it, mode 0600,
    /// if it does not exist) and, with `cfg.tls`, builds the TLS context from
    /// its files. Throws std::system_error (naming the address) if the bind
    /// fails, std::runtime_error (naming the file) if the token file exists
    /// but cannot be read or is empty, or a TLS file does not load. A token
    /// file that cannot be created is logged and POSTs are refused.
    /// With `inherited_fd` (an upgrade: the old process's listening socket
    /// for the same address, which it then owns) it listens on that instead
    /// of binding.
    admin_server(boost::asio::io_context& control, const admin_config& cfg, admin_hooks hooks, int inherited_fd = -1);
    ~admin_server();
    admin_server(const admin_server&) = delete;
    admin_server& operator=(const admin_server&) = delete;

    /// Starts accepting.
    void start();
    /// Closes the acceptor and every connection.
    void stop();
    /// After an upgrade handed over: stops accepting (the new process
    /// accepts on the same socket) and closes idle connections; a request
    /// being answered is answered, then its connection closes.
    void retire();
    /// A request is being answered (retire() lets it finish).
    bool answering() const;

    /// Certificate rotation: re-reads the certificate, key and client CA
    /// from the files the running admin section names. New connections use
    /// them, open ones keep what they started with. If they do not load, the
    /// old ones stay and it returns false; either way it logs what happened.
    /// True without TLS.
    bool reload_tls_files();

    boost::asio::ip::tcp::endpoint local_endpoint() const;
    /// The listening socket (an upgrade duplicates it for the new process).
    int native_listener() { return acceptor_.native_handle(); }
    /// The endpoint's own counters (also in /metrics).
    const admin_stats& stats() const { return stats_; }

private:
    /// One open connection, listed from accept to close.
    struct connection {
        boost::beast::tcp_stream* stream = nullptr;  ///< set once serve() holds the socket
        boost::asio::ip::tcp::endpoint peer;
        boost::asio::ip::tcp::endpoint local;
        bool busy = false;     ///< a complete request is being answered
        bool closing = false;  ///< evicted or stopped: no longer counted
    };
    using connection_list = std::list<connection>;
    using request = admin_request;
    boost::asio::awaitable<void> accept_loop();
    /// Makes room for a connection from `peer` under the per-peer and total
    /// caps by closing the oldest idle one; false if every slot is busy.
    bool make_room(const boost::asio::ip::address& peer);
    void close_connection(connection& c);
    boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket, connection_list::iterator conn);
    /// Reads requests and answers them until the client is done (admin_server.cpp).
    template <class Stream>
    boost::asio::awaitable<void> serve_requests(Stream& stream, connection& conn, bool client_verified);
    /// The answer to one request (decide_admin_request, then the route);
    /// `client_verified`: a client certificate was presented and verified
    /// against admin.tls.client_ca_file.
    boost::asio::awaitable<admin_reply> handle(const request& req, const connection& conn, bool client_verified);
    /// Counts and logs (rate-limited) a POST refused for its credentials.
    void log_refused_post(const request& req, const connection& conn, boost::beast::http::status status,
                          const std::string& why);
    /// POST /api/v1/upgrade[?wait=1]: 202 once started, or with `wait` the
    /// outcome (at most upgrade_wait_limit); `who` names the caller for the log.
    boost::asio::awaitable<admin_reply> upgrade(bool wait, const std::string& who);
    /// POST /api/v1/backends/{pool}/{backend}/{drain|enable}; `who` names the caller for the log.
    admin_reply drain_or_enable(const std::string& pool, const std::string& backend, bool drain,
                                const std::string& who);
    void count_handshake_failure(const boost::asio::ip::tcp::endpoint& peer, const std::string& why);
    /// access_.host_names from the config and the running certificate.
    void set_host_names();
    /// "127.0.0.1:41234 (uid 0)": the caller of a state change, for the log.
    std::string describe_peer(const connection& conn) const;

    boost::asio::io_context& control_;
    boost::asio::ip::tcp::acceptor acceptor_;
    admin_hooks hooks_;
    admin_config cfg_;
    /// The token ("" = none configured or it could not be created), why
    /// POSTs are refused outright ("" = they are authenticated), the Host
    /// names: what decide_admin_request checks.
    admin_access access_;
    /// nullptr = plain HTTP. Replaced by reload_tls_files(); each connection
    /// holds the one it started with.
    std::shared_ptr<boost::asio::ssl::context> tls_;
    admin_stats stats_;
    std::chrono::steady_clock::time_point last_failure_log_{};
    std::chrono::steady_clock::time_point last_auth_log_{};
    std::chrono::steady_clock::time_point last_evict_log_{};
    connection_list open_;  ///< oldest first; closed by stop()
    bool stopped_ = false;
    bool retiring_ = false;  ///< retire(): answer what is asked, then close
    /// The wait of a POST /api/v1/upgrade?wait=1 (at most one: a second
    /// upgrade is refused while one runs); stop() wakes it.
    boost::asio::steady_timer* upgrade_wait_ = nullptr;
    /// A descriptor (/dev/null) held in reserve and closed when accept() finds
    /// the process out of descriptors, so that /livez and /metrics still
    /// answer; reopened when an admin connection ends. -1 while in use.
    int spare_fd_ = -1;
    std::chrono::steady_clock::time_point last_accept_log_{};
    std::uint64_t accept_errors_suppressed_ = 0;
};

}  // namespace apilb
