// connload: the two load patterns no Debian tool produces, for tests/bench.
//
//   connload storm ADDR[,ADDR...] N [TIMEOUT_S]
//       Issues N non-blocking connect()s back to back (a reconnect storm), then
//       on each connection sends one HTTP/1.1 request and reads the whole
//       response. Prints one JSON line: wall time from the first connect() to
//       the last complete response, per-connection latency percentiles
//       (connect() call -> response complete) and failures.
//
//   connload hold ADDR[,ADDR...]
//       Idle-connection holder, driven by lines on stdin:
//         open N   open N more connections (at most 256 connecting at once),
//                  each sends one keep-alive request, reads the response, and
//                  then sits idle; prints "ready TOTAL FAILED" when done
//         quit     close everything and exit
//
// Several addresses are used round-robin (the "direct" case spreads over the
// backends itself). Written against the raw socket API with epoll, one thread,
// so that the load generator is cheap next to what it measures.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "connload: %s: %s\n", what.c_str(), std::strerror(errno));
    std::exit(1);
}

std::vector<sockaddr_in> parse_addresses(const std::string& list) {
    std::vector<sockaddr_in> out;
    std::size_t start = 0;
    while (start <= list.size()) {
        const std::size_t end = std::min(list.find(',', start), list.size());
        const std::string item = list.substr(start, end - start);
        const std::size_t colon = item.rfind(':');
        if (colon == std::string::npos) {
            std::fprintf(stderr, "connload: bad address '%s' (want a.b.c.d:port)\n", item.c_str());
            std::exit(2);
        }
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(static_cast<std::uint16_t>(std::stoi(item.substr(colon + 1))));
        if (::inet_pton(AF_INET, item.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
            std::fprintf(stderr, "connload: bad address '%s'\n", item.c_str());
            std::exit(2);
        }
        out.push_back(sa);
        start = end + 1;
    }
    return out;
}

void raise_nofile() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
    }
}

enum class state { connecting, reading, idle, done, failed };

struct conn {
    int fd = -1;
    state st = state::connecting;
    clock_type::time_point started;
    double latency_us = 0;
    std::string in;
};

/// True once `in` holds a whole response (headers plus Content-Length body).
bool response_complete(const std::string& in) {
    const std::size_t hdr_end = in.find("\r\n\r\n");
    if (hdr_end == std::string::npos) return false;
    std::size_t body = 0;
    const std::string_view head(in.data(), hdr_end);
    for (std::string_view key : {"Content-Length:", "content-length:"}) {
        const std::size_t at = head.find(key);
        if (at != std::string_view::npos) {
            body = std::strtoull(in.c_str() + at + key.size(), nullptr, 10);
            break;
        }
    }
    return in.size() >= hdr_end + 4 + body;
}

class driver {
public:
    driver(std::vector<sockaddr_in> addrs, bool keep_alive)
        : addrs_(std::move(addrs)),
          request_(keep_alive ? "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
                              : "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"),
          keep_alive_(keep_alive) {
        ep_ = ::epoll_create1(EPOLL_CLOEXEC);
        if (ep_ < 0) die("epoll_create1");
    }

    /// Starts one connection; false if socket() failed (out of descriptors).
    bool start_one() {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) return false;
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        const std::size_t id = conns_.size();
        conns_.push_back(
            conn{.fd = fd, .st = state::connecting, .started = clock_type::now(), .latency_us = 0, .in = {}});
        ++in_flight_;
        const sockaddr_in& sa = addrs_[next_addr_++ % addrs_.size()];
        const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
        if (rc != 0 && errno != EINPROGRESS) {
            fail(id);
            return true;
        }
        epoll_event ev{};
        ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = id;
        if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
        return true;
    }

    /// Runs the event loop until no connection is connecting or reading, or
    /// until `deadline`. Returns false on timeout.
    bool run_until_settled(clock_type::time_point deadline) {
        std::vector<epoll_event> events(1024);
        while (in_flight_ > 0) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
            if (left.count() <= 0) return false;
            const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()),
                                       static_cast<int>(std::min<long long>(left.count(), 1000)));
            if (n < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            for (int i = 0; i < n; ++i) handle(events[i].data.u64, events[i].events);
        }
        return true;
    }

    /// Keeps at most `window` connections in flight while opening `count` more.
    bool open_windowed(std::size_t count, std::size_t window, clock_type::time_point deadline) {
        std::size_t started = 0;
        std::vector<epoll_event> events(1024);
        while (started < count || in_flight_ > 0) {
            while (started < count && in_flight_ < window) {
                if (!start_one()) {
                    ++failed_;
                }
                ++started;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
            if (left.count() <= 0) return false;
            const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()),
                                       static_cast<int>(std::min<long long>(left.count(), 1000)));
            if (n < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            for (int i = 0; i < n; ++i) handle(events[i].data.u64, events[i].events);
        }
        return true;
    }

    std::vector<conn>& conns() { return conns_; }
    std::size_t failed() const { return failed_; }
    std::size_t alive() const {
        return static_cast<std::size_t>(
            std::count_if(conns_.begin(), conns_.end(), [](const conn& c) { return c.st == state::idle; }));
    }

private:
    void fail(std::size_t id) {
        conn& c = conns_[id];
        if (c.fd >= 0) ::close(c.fd);
        c.fd = -1;
        if (c.st == state::connecting || c.st == state::reading) --in_flight_;
        c.st = state::failed;
        ++failed_;
    }

    void handle(std::size_t id, std::uint32_t ev) {
        conn& c = conns_[id];
        if (c.st == state::connecting && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) return fail(id);
            const ssize_t n = ::send(c.fd, request_.data(), request_.size(), MSG_NOSIGNAL);
            if (n != static_cast<ssize_t>(request_.size())) return fail(id);
            c.st = state::reading;
            epoll_event mod{};
            mod.events = EPOLLIN | EPOLLRDHUP;
            mod.data.u64 = id;
            ::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &mod);
            return;
        }
        if (c.st == state::reading && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))) {
            char buf[4096];
            for (;;) {
                const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
                if (n > 0) {
                    c.in.append(buf, static_cast<std::size_t>(n));
                    continue;
                }
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (n < 0 && errno == EINTR) continue;
                // EOF or error before a whole response: a failure.
                if (!response_complete(c.in)) return fail(id);
                break;
            }
            if (!response_complete(c.in)) return;
            c.latency_us = std::chrono::duration<double, std::micro>(clock_type::now() - c.started).count();
            --in_flight_;
            c.in.clear();
            c.in.shrink_to_fit();
            if (keep_alive_) {
                // Idle from now on: stop watching, so idle connections cost
                // the holder nothing per event loop turn.
                ::epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
                c.st = state::idle;
            } else {
                ::close(c.fd);
                c.fd = -1;
                c.st = state::done;
            }
            return;
        }
        if (c.st == state::idle && (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) fail(id);
    }

    std::vector<sockaddr_in> addrs_;
    std::string request_;
    bool keep_alive_;
    int ep_ = -1;
    std::vector<conn> conns_;
    std::size_t next_addr_ = 0;
    std::size_t in_flight_ = 0;
    std::size_t failed_ = 0;
};

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t idx = std::min(v.size() - 1, static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size())));
    return v[idx];
}

int storm(const std::string& addrs, std::size_t n, int timeout_s) {
    driver d(parse_addresses(addrs), false);
    d.conns().reserve(n);
    const auto t0 = clock_type::now();
    std::size_t socket_failures = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (!d.start_one()) ++socket_failures;
    }
    const auto connects_issued = clock_type::now();
    const bool settled = d.run_until_settled(t0 + std::chrono::seconds(timeout_s));
    std::vector<double> lat;
    clock_type::duration last{};
    for (const conn& c : d.conns()) {
        if (c.st != state::done) continue;
        lat.push_back(c.latency_us);
        last = std::max(last, c.started - t0 +
                                  std::chrono::duration_cast<clock_type::duration>(
                                      std::chrono::duration<double, std::micro>(c.latency_us)));
    }
    const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
    std::printf(
        "{\"connections\": %zu, \"answered\": %zu, \"failed\": %zu, \"timed_out\": %s, "
        "\"issue_ms\": %.2f, \"complete_ms\": %.2f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
        "\"max_ms\": %.3f}\n",
        n, lat.size(), d.failed() + socket_failures, settled ? "false" : "true", ms(connects_issued - t0), ms(last),
        percentile(lat, 50) / 1000, percentile(lat, 99) / 1000, percentile(lat, 100) / 1000);
    return 0;  // failures are in the JSON; the caller judges them
}

int hold(const std::string& addrs) {
    driver d(parse_addresses(addrs), true);
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.rfind("open ", 0) == 0) {
            const std::size_t count = std::stoul(line.substr(5));
            d.open_windowed(count, 256, clock_type::now() + std::chrono::seconds(60));
            std::printf("ready %zu %zu\n", d.alive(), d.failed());
            std::fflush(stdout);
        } else if (line == "quit") {
            break;
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    raise_nofile();
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "storm" && (argc == 4 || argc == 5)) {
        return storm(argv[2], std::stoul(argv[3]), argc == 5 ? std::stoi(argv[4]) : 30);
    }
    if (mode == "hold" && argc == 3) return hold(argv[2]);
    std::fprintf(stderr,
                 "usage: connload storm ADDR[,ADDR...] N [TIMEOUT_S]\n"
                 "       connload hold ADDR[,ADDR...]   (stdin: 'open N' | 'quit')\n");
    return 64;
}
