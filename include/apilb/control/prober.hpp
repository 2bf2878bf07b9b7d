// Active health probes: one HTTPS GET with Boost.Beast over OpenSSL, or one
// TCP connect. Each probe is bounded in time (the whole probe, by
// beast::tcp_stream::expires_after) and in what it reads (status line,
// headers and a small body). Control thread only: nothing here is shared with
// the workers.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

#include <sys/types.h>

#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include "apilb/control/probe_response.hpp"
#include "apilb/core/config.hpp"
#include "apilb/core/health.hpp"

namespace apilb {

/// A bearer token kept in a file and re-read when the file changes (a
/// projected service-account token is replaced in place). The token is never
/// logged; only the file's name is.
class token_file {
public:
    explicit token_file(std::string path);

    /// The current token, surrounding whitespace removed: re-reads the file
    /// when its inode, size or modification time changed. Keeps the last good
    /// token (and warns once) while the file cannot be read.
    const std::string& get();
    const std::string& path() const noexcept { return path_; }
    /// How many times the file was (re)read successfully.
    std::uint64_t reads() const noexcept { return reads_; }

private:
    std::string path_;
    std::string token_;
    dev_t dev_ = 0;
    ino_t ino_ = 0;
    off_t size_ = -1;
    timespec mtime_{};
    bool failing_ = false;
    std::uint64_t reads_ = 0;
};

/// What probing one pool's backends needs, built once per pool config: the
/// TLS client context (CA, optional client certificate) and the token.
class probe_setup {
public:
    /// Throws std::runtime_error naming the pool and the file when a CA,
    /// certificate or key cannot be loaded.
    explicit probe_setup(const pool_config& pool);
    probe_setup(const probe_setup&) = delete;
    probe_setup& operator=(const probe_setup&) = delete;

    const health_config& cfg() const noexcept { return cfg_; }
    /// Null unless the type is https.
    boost::asio::ssl::context* tls() noexcept { return tls_ ? &*tls_ : nullptr; }
    /// Null unless bearer_token_file is set.
    token_file* token() noexcept { return token_ ? &*token_ : nullptr; }

private:
    const health_config& cfg_;
    std::optional<boost::asio::ssl::context> tls_;
    std::optional<token_file> token_;
};

/// Lets stop() end a probe in flight: the probe registers its socket here
/// while it runs. Shared by the probe's frame and its owner, so neither
/// outlives what it points to. Control thread only.
struct probe_cancel {
    boost::asio::ip::tcp::socket* socket = nullptr;
    bool cancelled = false;
    /// Closes the probe's socket; its pending operation completes at once.
    void cancel();
};

/// One probe of `endpoint` as the pool's health config says: https (connect,
/// TLS handshake with SNI and name verification, GET, bounded read, judge)
/// or tcp (connect only). `as_type` overrides the type (type none uses tcp
/// to re-check a suspect backend). Never throws for network failures: every
/// failure is a check_result with its layer and reason.
boost::asio::awaitable<check_result> run_probe(probe_setup& setup, health_check_type as_type,
                                               const boost::asio::ip::tcp::endpoint& endpoint,
                                               std::shared_ptr<probe_cancel> cancel);

}  // namespace apilb
