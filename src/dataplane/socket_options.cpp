#include "apilb/dataplane/socket_options.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace apilb {
namespace {

boost::system::error_code set_int(int fd, int level, int name, int value) {
    if (::setsockopt(fd, level, name, &value, sizeof value) != 0) {
        return {errno, boost::system::system_category()};
    }
    return {};
}

int whole_seconds(duration d) { return static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(d).count()); }

/// What a connect needs at once: TCP_NODELAY and the buffer bound.
/// `fresh` leaves out what cannot change a new socket.
boost::system::error_code set_connect_options(int fd, const tcp_config& cfg, bool fresh) {
    boost::system::error_code first;
    auto keep = [&first](boost::system::error_code ec) {
        if (ec && !first) first = ec;
    };
    // A new socket has it off.
    if (cfg.nodelay || !fresh) keep(set_int(fd, IPPROTO_TCP, TCP_NODELAY, cfg.nodelay ? 1 : 0));
    if (cfg.socket_buffer != 0) {
        // The kernel doubles SO_RCVBUF for its bookkeeping: ask for half, so
        // that the buffer (`rb` in `ss -tm`) is socket_buffer. Fixing it
        // also turns off receive autotuning, which is what grew it to
        // tcp_rmem's maximum behind a client that never reads.
        keep(set_int(fd, SOL_SOCKET, SO_RCVBUF, static_cast<int>(cfg.socket_buffer / 2)));
        // Only the unsent part of the send queue: data in flight is not
        // limited, so a distant client's throughput is not either.
        keep(set_int(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, static_cast<int>(cfg.socket_buffer)));
    }
    return first;
}

/// Dead-peer detection: the keepalive set and TCP_USER_TIMEOUT. `fresh`:
/// the socket has none of them set yet.
boost::system::error_code set_keepalive_options(int fd, const tcp_config& cfg, bool fresh) {
    boost::system::error_code first;
    auto keep = [&first](boost::system::error_code ec) {
        if (ec && !first) first = ec;
    };
    // A new socket has it off. SO_KEEPALIVE goes first: TCP_KEEPIDLE set on
    // a socket with keepalive on re-arms the timer to fire keepalive_idle
    // after the last segment received (tcp_sock_set_keepidle_locked,
    // keepalive_time_elapsed), not after this call, so options set late
    // still probe on time.
    if (cfg.keepalive || !fresh) keep(set_int(fd, SOL_SOCKET, SO_KEEPALIVE, cfg.keepalive ? 1 : 0));
    if (cfg.keepalive) {
        keep(set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, whole_seconds(cfg.keepalive_idle)));
        keep(set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, whole_seconds(cfg.keepalive_interval)));
        // With TCP_USER_TIMEOUT set the kernel ends a connection whose probes
        // go unanswered once that much time has passed, and never looks at
        // TCP_KEEPCNT (tcp_keepalive_timer; tcp(7)). A listener gets it all
        // the same: a reload may turn user_timeout off, and its sockets
        // then need the count they inherit.
        if (!fresh || cfg.user_timeout.count() == 0) {
            keep(set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, static_cast<int>(cfg.keepalive_count)));
        }
    }
    if (cfg.user_timeout.count() > 0) {
        keep(set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, static_cast<int>(cfg.user_timeout.count())));
    }
    return first;
}

}  // namespace

boost::system::error_code apply_tcp_options(int fd, const tcp_config& cfg) {
    const auto ec = set_connect_options(fd, cfg, false);
    const auto kec = set_keepalive_options(fd, cfg, false);
    return ec ? ec : kec;
}

boost::system::error_code apply_new_socket_tcp_options(int fd, const tcp_config& cfg) {
    return set_connect_options(fd, cfg, true);
}

boost::system::error_code apply_keepalive_tcp_options(int fd, const tcp_config& cfg, bool fresh) {
    return set_keepalive_options(fd, cfg, fresh);
}

bool has_keepalive_tcp_options(const tcp_config& cfg) { return cfg.keepalive || cfg.user_timeout.count() > 0; }

void set_reset_on_close(int fd) {
    const ::linger lg{.l_onoff = 1, .l_linger = 0};
    (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

void close_with_reset(int fd) {
    set_reset_on_close(fd);
    ::close(fd);
}

}  // namespace apilb
