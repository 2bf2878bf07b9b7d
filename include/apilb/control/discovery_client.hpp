// Discovery's API client: lists, then watches, one pool's `kubernetes`
// EndpointSlices (v1 Endpoints where the cluster answers 404), the way
// client-go's reflector does: resourceVersion tracking, bookmarks, 410 Gone
// -> relist, exponential backoff with jitter. It reaches the API directly
// through a backend address (healthy first), never through apilb's own
// listener, over TLS verified against the cluster CA. Every step is bounded:
// connect and handshake time, a list's size and time, a watch's silence
// (idle_timeout), an event's size. Control thread only (checked): one
// coroutine on the control io_context; nothing here touches a worker.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "apilb/control/endpoint_slices.hpp"
#include "apilb/core/config.hpp"

namespace apilb {

/// Where a pool's discovered set came from.
enum class discovery_source { seed, state_file, api };
const char* to_string(discovery_source);

/// What the watch is doing now (apilb_discovery_watch_state).
enum class watch_state { starting = 0, listing = 1, watching = 2, backoff = 3, stopped = 4 };
const char* to_string(watch_state);

/// One pool's discovery counters: relaxed atomics, written on the control
/// thread, read by /metrics and the status API.
struct discovery_stats {
    std::atomic<int> state{static_cast<int>(watch_state::starting)};
    std::atomic<std::int64_t> last_sync_unix{0};      ///< last list or event applied (seconds since epoch); 0 = never
    std::atomic<std::uint64_t> lists_total{0};        ///< successful lists
    std::atomic<std::uint64_t> relists_total{0};      ///< lists after the first (410, a broken watch, an error)
    std::atomic<std::uint64_t> events_total{0};       ///< watch events applied (bookmarks included)
    std::atomic<std::uint64_t> errors_total{0};       ///< failed connects, TLS, HTTP status, parse, bounds
    std::atomic<std::uint64_t> empty_lists_total{0};  ///< lists that named no usable apiserver, not applied
    std::atomic<std::uint64_t> credential_reloads_total{0};  ///< changed credential files taken into use
    std::atomic<std::uint64_t> credential_errors_total{0};   ///< changed credential files that could not be used
};

/// Follows one pool's apiservers from the API. Owned by the process.
class discovery_client {
public:
    /// The addresses to reach the API through, best first (healthy backends
    /// of the pool's running snapshot).
    using targets_fn = std::function<std::vector<boost::asio::ip::tcp::endpoint>()>;
    /// A new set from the API: never empty (an empty list is not passed on).
    using change_fn = std::function<void(const std::vector<discovered_endpoint>&)>;

    /// Reads the credentials (kubeconfig behind the YAML guard, or the
    /// service account) and builds the TLS context. Throws
    /// config_load_error or std::runtime_error naming the file.
    discovery_client(boost::asio::io_context& control, const pool_config& pool, targets_fn targets,
                     change_fn on_change);
    ~discovery_client();
    discovery_client(const discovery_client&) = delete;
    discovery_client& operator=(const discovery_client&) = delete;

    /// Starts the list+watch loop. Control thread.
    void start();
    /// Ends it: closes the connection in flight; the loop ends at once.
    void stop();

    const discovery_stats& stats() const noexcept { return *stats_; }
    const std::string& pool() const noexcept { return pool_; }
    /// The last set the API gave, or the state file's until it does (empty
    /// before either).
    const std::vector<discovered_endpoint>& current() const noexcept { return current_; }
    /// Where current() came from.
    discovery_source source() const noexcept { return source_; }
    /// The apiserver address the list or watch runs through now, or the
    /// last one tried during a backoff ("" before the first). Control thread.
    const std::string& api_server() const noexcept { return api_server_; }
    /// Why the last list or watch failed: one line of at most
    /// max_error_chars ("" when none has failed). Control thread.
    const std::string& last_error() const noexcept { return last_error_; }
    /// When last_error() was set (Unix seconds; 0 = never).
    std::int64_t last_error_unix() const noexcept { return last_error_unix_; }
    /// The bound on last_error()'s length, so that the status stays small.
    static constexpr std::size_t max_error_chars = 300;
    /// Starts from a last-known-good set (the state file) until the API answers.
    void assume(std::vector<discovered_endpoint> known) {
        current_ = std::move(known);
        source_ = discovery_source::state_file;
    }

private:
    struct shared;  // what the coroutine and stop() both reach
    boost::asio::awaitable<void> run(std::shared_ptr<shared> life);
    /// One list (every page); "" or why it failed.
    boost::asio::awaitable<std::string> list(const boost::asio::ip::tcp::endpoint& target);
    /// One watch from resource_version_ until it ends; "" when it ended
    /// normally (timeoutSeconds), "410" for Gone, else why it failed.
    boost::asio::awaitable<std::string> watch(const boost::asio::ip::tcp::endpoint& target);
    /// Reads the credentials again when a file they came from changed;
    /// keeps the ones in use when the new ones cannot be read.
    void refresh_credentials();
    /// The stamps of credential_files_ now.
    std::vector<std::array<std::int64_t, 5>> stamps() const;
    /// Keeps `err` (bounded, one line) and its time for the status.
    void record_error(const std::string& err);
    /// Stamps last_sync_unix with now.
    void mark_synced();
    /// Publishes the merged set if it changed and is not empty.
    void publish();
    std::string request_target(bool watching, const std::string& continue_token);

    boost::asio::io_context& control_;
    std::string pool_;
    discovery_config cfg_;
    targets_fn targets_;
    change_fn on_change_;
    std::optional<boost::asio::ssl::context> tls_;
    std::string token_;                                           ///< inline bearer token
    std::string token_file_;                                      ///< or re-read from this file before each request
    std::vector<std::string> credential_files_;                   ///< the files tls_ and the token came from
    std::vector<std::array<std::int64_t, 5>> credential_stamps_;  ///< and what they were then
    discovery_api api_ = discovery_api::endpoint_slices;
    std::string resource_version_;
    std::map<std::string, slice_state> slices_;
    std::vector<discovered_endpoint> current_;
    discovery_source source_ = discovery_source::seed;
    std::string api_server_;
    std::string last_error_;
    std::int64_t last_error_unix_ = 0;
    std::shared_ptr<discovery_stats> stats_;
    std::shared_ptr<shared> life_;
    std::minstd_rand random_;
};

}  // namespace apilb
