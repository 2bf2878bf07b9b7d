// Tools for netfault_test: many TLS watches driven by one epoll thread
// (recording how each connection ended), a TCP server that streams until its
// connection fails, a slow lossy link between two namespaces made of TUN
// devices, and a bulk TLS echo. Used by that test only.
#pragma once

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <queue>
#include <random>
#include <regex>

#include "netns.hpp"
#include "standin.hpp"

namespace apilb::test::netfault {

using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---------------------------------------------------------------- TLS watches

/// How a client's connection ended, as the client saw it.
enum class end_kind { reset, timeout, fin, close_notify, error };

inline const char* to_string(end_kind k) {
    switch (k) {
    case end_kind::reset: return "reset";
    case end_kind::timeout: return "timeout";
    case end_kind::fin: return "FIN";
    case end_kind::close_notify: return "close_notify";
    case end_kind::error: return "error";
    }
    return "?";
}

/// Why an OpenSSL call on a non-blocking socket failed; `err` is errno right after it.
inline end_kind classify(SSL* ssl, int rc, int err) {
    const int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_ZERO_RETURN) return end_kind::close_notify;
    if (e == SSL_ERROR_SYSCALL) {
        if (err == ECONNRESET || err == EPIPE) return end_kind::reset;
        if (err == ETIMEDOUT) return end_kind::timeout;
        return err == 0 ? end_kind::fin : end_kind::error;
    }
    if (e == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        return end_kind::fin;
    }
    return end_kind::error;
}

/// `n` long-lived TLS watches (GET /watch) through apilb, driven by one
/// thread with epoll inside the client namespace, so that thousands cost one
/// thread. Every end is recorded with how it ended; with `reconnect`, a
/// watch that ended (or failed to open) is opened again after a backoff.
class watch_fleet {
public:
    struct ended {
        std::size_t conn;
        steady::time_point at;
        end_kind kind;
        std::string backend;  ///< "" if it ended before it was a watch
    };

    /// Watches to `ip`:`port` from namespace `ns`.
    /// An attempt that is not a watch after `patience` is given up (and retried).
    watch_fleet(const tls_client_context& tls, std::string ns, std::string ip, std::uint16_t port, std::size_t n,
                bool reconnect, std::string target = "/watch?interval_ms=100", milliseconds patience = 10s)
        : tls_(tls),
          ip_(std::move(ip)),
          port_(port),
          reconnect_(reconnect),
          target_(std::move(target)),
          patience_(patience),
          conns_(n) {
        thread_ = std::thread([this, ns = std::move(ns)] { run(ns); });
    }
    ~watch_fleet() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }

    /// Watches open now, by backend.
    std::map<std::string, std::size_t> open_by_backend() const {
        std::lock_guard lock(mu_);
        std::map<std::string, std::size_t> out;
        for (const auto& c : conns_) {
            if (c.st == state::streaming) ++out[c.backend];
        }
        return out;
    }
    std::size_t open_count() const {
        std::size_t n = 0;
        for (const auto& [b, k] : open_by_backend()) n += k;
        return n;
    }
    /// Connections streaming from `backend` now.
    std::vector<std::size_t> on(const std::string& backend) const {
        std::lock_guard lock(mu_);
        std::vector<std::size_t> out;
        for (std::size_t i = 0; i < conns_.size(); ++i) {
            if (conns_[i].st == state::streaming && conns_[i].backend == backend) out.push_back(i);
        }
        return out;
    }
    std::vector<ended> ends() const {
        std::lock_guard lock(mu_);
        return ends_;
    }
    /// When connection `i` last became a watch.
    steady::time_point opened_at(std::size_t i) const {
        std::lock_guard lock(mu_);
        return conns_[i].opened;
    }
    std::string last_error() const {
        std::lock_guard lock(mu_);
        return last_error_;
    }

private:
    enum class state { idle, connecting, handshaking, header, streaming };
    struct conn {
        int fd = -1;
        SSL* ssl = nullptr;
        state st = state::idle;  ///< written under mu_: the test reads it
        std::string head;
        std::string backend;
        steady::time_point started{};
        steady::time_point opened{};
        steady::time_point retry_at{};
        int failures = 0;  ///< attempts in a row that did not become a watch
    };

    void run(const std::string& ns) {
        enter_netns(ns);
        ep_ = ::epoll_create1(EPOLL_CLOEXEC);
        const auto hard_stop = steady::now() + 10min;
        for (std::size_t i = 0; i < conns_.size(); ++i) start(i);
        std::vector<epoll_event> events(256);
        auto next_sweep = steady::now();
        while (!stop_ && steady::now() < hard_stop) {
            const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 20);
            for (int k = 0; k < n; ++k) drive(events[static_cast<std::size_t>(k)].data.u64);
            const auto now = steady::now();
            if (now < next_sweep) continue;
            next_sweep = now + 50ms;
            for (std::size_t i = 0; i < conns_.size(); ++i) {
                conn& c = conns_[i];
                if (c.st == state::idle && reconnect_ && c.retry_at != steady::time_point{} && now >= c.retry_at) {
                    start(i);
                } else if (c.st != state::idle && c.st != state::streaming && now - c.started > patience_) {
                    finish(i, end_kind::timeout, "no watch in time");
                }
            }
        }
        for (std::size_t i = 0; i < conns_.size(); ++i) close_conn(conns_[i]);
        ::close(ep_);
    }

    void set_state(conn& c, state s) {
        std::lock_guard lock(mu_);
        c.st = s;
    }

    void start(std::size_t i) {
        conn& c = conns_[i];
        c.retry_at = {};
        c.head.clear();
        c.started = steady::now();
        c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c.fd < 0) return finish(i, end_kind::error, std::string("socket: ") + std::strerror(errno));
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(port_);
        ::inet_pton(AF_INET, ip_.c_str(), &sa.sin_addr);
        if (::connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 && errno != EINPROGRESS) {
            return finish(i, end_kind::error, std::string("connect: ") + std::strerror(errno));
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
        ev.data.u64 = i;
        ::epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
        set_state(c, state::connecting);
    }

    void drive(std::size_t i) {
        conn& c = conns_[i];
        if (c.st == state::connecting) {
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == EINPROGRESS) return;
            if (err != 0) {
                return finish(i, err == ECONNRESET ? end_kind::reset : end_kind::error,
                              std::string("connect: ") + std::strerror(err));
            }
            c.ssl = SSL_new(tls_.get());
            SSL_set_fd(c.ssl, c.fd);
            SSL_set_tlsext_host_name(c.ssl, "kubernetes");
            SSL_set1_host(c.ssl, "kubernetes");
            set_state(c, state::handshaking);
        }
        if (c.st == state::handshaking) {
            ERR_clear_error();
            errno = 0;
            const int rc = SSL_connect(c.ssl);
            const int err = errno;
            if (rc != 1) {
                const int e = SSL_get_error(c.ssl, rc);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
                return finish(i, classify(c.ssl, rc, err), "TLS handshake");
            }
            const std::string request = "GET " + target_ + " HTTP/1.1\r\nHost: kubernetes\r\n\r\n";
            if (SSL_write(c.ssl, request.data(), static_cast<int>(request.size())) !=
                static_cast<int>(request.size())) {
                return finish(i, end_kind::error, "sending the request");
            }
            set_state(c, state::header);
        }
        char buf[16384];
        for (;;) {
            ERR_clear_error();
            errno = 0;
            const int rc = SSL_read(c.ssl, buf, sizeof buf);
            const int err = errno;
            if (rc <= 0) {
                const int e = SSL_get_error(c.ssl, rc);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
                return finish(i, classify(c.ssl, rc, err), "reading");
            }
            if (c.st != state::header) continue;  // events of a watch: discarded
            c.head.append(buf, static_cast<std::size_t>(rc));
            const auto end = c.head.find("\r\n\r\n");
            if (end == std::string::npos) {
                if (c.head.size() > 65536) return finish(i, end_kind::error, "header too large");
                continue;
            }
            if (!c.head.starts_with("HTTP/1.1 200")) return finish(i, end_kind::error, c.head.substr(0, 40));
            const std::smatch m = [&] {
                std::smatch r;
                static const std::regex name_re("\r\n[Xx]-[Ss]tandin-[Nn]ame: ([^\r]*)");
                std::regex_search(c.head, r, name_re);
                return r;
            }();
            std::lock_guard lock(mu_);
            c.backend = m.empty() ? "?" : m[1].str();
            c.opened = steady::now();
            c.st = state::streaming;
        }
    }

    void close_conn(conn& c) {
        if (c.ssl != nullptr) SSL_free(c.ssl);
        c.ssl = nullptr;
        if (c.fd >= 0) ::close(c.fd);  // also leaves the epoll set
        c.fd = -1;
    }

    void finish(std::size_t i, end_kind kind, const std::string& what) {
        conn& c = conns_[i];
        close_conn(c);
        std::lock_guard lock(mu_);
        ends_.push_back({i, steady::now(), kind, c.st == state::streaming ? c.backend : ""});
        if (c.st != state::streaming) last_error_ = what + ": " + to_string(kind);
        // Like client-go's backoff: a watch that was open retries soon, one
        // that keeps failing waits longer (100 ms doubling to 1.6 s, jittered).
        c.failures = c.st == state::streaming ? 0 : std::min(c.failures + 1, 4);
        const unsigned base = 100u << c.failures;
        c.st = state::idle;
        c.backend.clear();
        c.retry_at = steady::now() + milliseconds(base + rng_() % base);
    }

    const tls_client_context& tls_;
    std::string ip_;
    std::uint16_t port_;
    bool reconnect_;
    std::string target_;
    milliseconds patience_;
    int ep_ = -1;
    mutable std::mutex mu_;
    std::vector<conn> conns_;
    std::vector<ended> ends_;
    std::string last_error_;
    std::minstd_rand rng_{1};  ///< the fleet's thread only
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

// ---------------------------------------------------------------- servers and links

/// A TCP server in a namespace that streams bytes to every connection as
/// fast as it takes them and records how each connection ended for it.
class stream_server {
public:
    stream_server(const std::string& ns, const std::string& ip) {
        std::uint16_t port = 0;
        fd_ = listen_in_netns(ns, ip, 64, port);
        address_ = ip + ":" + std::to_string(port);
        thread_ = std::thread([this] { run(); });
    }
    ~stream_server() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
    }
    const std::string& address() const { return address_; }
    /// When and with which errno the first connection's send failed; 0 while it streams.
    std::pair<steady::time_point, int> ended() const {
        std::lock_guard lock(mu_);
        return {ended_at_, end_errno_};
    }

private:
    void run() {
        int c = -1;
        const std::string chunk(16384, 'x');
        while (!stop_) {
            pollfd p{c < 0 ? fd_ : c, static_cast<short>(c < 0 ? POLLIN : POLLOUT), 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            if (c < 0) {
                c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
                continue;
            }
            if (::send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL) >= 0 || errno == EAGAIN) continue;
            {
                std::lock_guard lock(mu_);
                ended_at_ = steady::now();
                end_errno_ = errno;
            }
            ::close(c);
            c = -2;  // one connection only: stop streaming
            while (!stop_) std::this_thread::sleep_for(20ms);
        }
        if (c >= 0) ::close(c);
    }

    int fd_ = -1;
    std::string address_;
    mutable std::mutex mu_;
    steady::time_point ended_at_{};
    int end_errno_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

/// A slow, lossy, reordering link between two namespaces, run by the test:
/// a TUN device in each (point-to-point, `a_ip` <-> `b_ip`) and a thread that
/// carries every packet across. Packets from b to a are delayed by `delay`,
/// `loss_percent` of them dropped and `reorder_percent` sent at once (ahead
/// of the delayed ones), like `tc netem delay D loss L reorder R` on b's
/// side (this kernel has no sch_netem: CONFIG_NET_SCH_NETEM is not set).
class delay_line {
public:
    delay_line(const netns_segment& seg, const std::string& a, const std::string& a_ip, const std::string& b,
               const std::string& b_ip, milliseconds delay, unsigned loss_percent, unsigned reorder_percent)
        : delay_(delay), loss_(loss_percent), reorder_(reorder_percent) {
        fd_a_ = open_tun(seg, a, a_ip, b_ip);
        fd_b_ = open_tun(seg, b, b_ip, a_ip);
        thread_ = std::thread([this] { run(); });
    }
    ~delay_line() {
        stop_ = true;
        thread_.join();
        ::close(fd_a_);
        ::close(fd_b_);
    }
    std::uint64_t dropped() const { return dropped_; }
    std::uint64_t carried() const { return carried_; }

private:
    struct packet {
        steady::time_point due;
        int to;
        std::string bytes;
        bool operator>(const packet& o) const { return due > o.due; }
    };

    static int open_tun(const netns_segment& seg, const std::string& host, const std::string& ip,
                        const std::string& peer) {
        int fd = -1;
        in_netns(seg.ns(host), [&] {
            fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
            if (fd < 0) throw std::runtime_error(std::string("/dev/net/tun: ") + std::strerror(errno));
            ifreq ifr{};
            ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
            std::strncpy(ifr.ifr_name, "slow0", IFNAMSIZ - 1);
            if (::ioctl(fd, TUNSETIFF, &ifr) != 0)
                throw std::runtime_error(std::string("TUNSETIFF: ") + std::strerror(errno));
        });
        seg.ip(host, {"addr", "add", ip, "peer", peer, "dev", "slow0"});
        seg.ip(host, {"link", "set", "slow0", "up"});
        return fd;
    }

    void run() {
        std::priority_queue<packet, std::vector<packet>, std::greater<>> queue;
        std::minstd_rand rng(42);
        char buf[65536];
        const auto hard_stop = steady::now() + 10min;
        while (!stop_ && steady::now() < hard_stop) {
            pollfd p[2] = {{fd_a_, POLLIN, 0}, {fd_b_, POLLIN, 0}};
            int wait_ms = 5;
            if (!queue.empty()) {
                wait_ms = static_cast<int>(std::clamp<long>(
                    std::chrono::duration_cast<milliseconds>(queue.top().due - steady::now()).count(), 0, 5));
            }
            ::poll(p, 2, wait_ms);
            for (int side = 0; side < 2; ++side) {
                if ((p[side].revents & POLLIN) == 0) continue;
                for (;;) {
                    const ssize_t n = ::read(p[side].fd, buf, sizeof buf);
                    if (n <= 0) break;
                    const bool from_b = side == 1;
                    auto due = steady::now();
                    if (from_b) {
                        if (rng() % 100 < loss_) {
                            ++dropped_;
                            continue;
                        }
                        if (rng() % 100 >= reorder_) due += delay_;
                    }
                    queue.push({due, from_b ? fd_a_ : fd_b_, std::string(buf, static_cast<std::size_t>(n))});
                }
            }
            while (!queue.empty() && queue.top().due <= steady::now()) {
                const packet& top = queue.top();
                (void)!::write(top.to, top.bytes.data(), top.bytes.size());
                ++carried_;
                queue.pop();
            }
        }
    }

    milliseconds delay_;
    unsigned loss_;
    unsigned reorder_;
    int fd_a_ = -1;
    int fd_b_ = -1;
    std::atomic<std::uint64_t> dropped_{0};
    std::atomic<std::uint64_t> carried_{0};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

/// POSTs `body` to /echo through apilb on one TLS connection (blocking,
/// bounded by `timeout`); returns the response body, or "" with `error` set.
inline std::string tls_echo(const tls_client_context& tls, const std::string& ip, std::uint16_t port,
                            const std::string& body, milliseconds timeout, std::string& error) {
    const auto deadline = steady::now() + timeout;
    client tcp;
    if (int err = tcp.connect(ip, port, timeout); err != 0) {
        error = std::string("connect: ") + std::strerror(err);
        return {};
    }
    tcp.set_timeout(timeout);
    SSL* ssl = SSL_new(tls.get());
    SSL_set_fd(ssl, tcp.fd());
    SSL_set_tlsext_host_name(ssl, "kubernetes");
    SSL_set1_host(ssl, "kubernetes");
    std::string out;
    const std::string request =
        fmt::format("POST /echo HTTP/1.1\r\nHost: kubernetes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.size()) +
        body;
    if (SSL_connect(ssl) != 1) {
        error = "TLS handshake failed";
    } else if (SSL_write(ssl, request.data(), static_cast<int>(request.size())) != static_cast<int>(request.size())) {
        error = "sending the request failed";
    } else {
        std::string all;
        char buf[65536];
        for (int n; steady::now() < deadline && (n = SSL_read(ssl, buf, sizeof buf)) > 0;) {
            all.append(buf, static_cast<std::size_t>(n));
        }
        const auto end = all.find("\r\n\r\n");
        if (end == std::string::npos || !all.starts_with("HTTP/1.1 200")) {
            error = "no 200 response (" + std::to_string(all.size()) + " bytes)";
        } else {
            out = all.substr(end + 4);
        }
    }
    SSL_free(ssl);
    return out;
}

}  // namespace apilb::test::netfault
