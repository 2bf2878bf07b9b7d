// Socket options for both legs of a session.
#pragma once

#include <boost/system/error_code.hpp>

#include "apilb/core/config.hpp"

namespace apilb {

/// Sets TCP_NODELAY, SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT,
/// TCP_USER_TIMEOUT and the buffer bound (SO_RCVBUF, TCP_NOTSENT_LOWAT) as
/// configured on the open TCP socket `fd`. Set on a
/// listening socket, they are inherited by every socket it accepts (Linux).
/// Returns the first error.
boost::system::error_code apply_tcp_options(int fd, const tcp_config& cfg);

/// What a backend socket just made by socket() needs before its connect:
/// apply_tcp_options()'s TCP_NODELAY and buffer bound, leaving out what a
/// new socket has already (TCP_NODELAY off). Not the dead-peer detection
/// (apply_keepalive_tcp_options), which a short connection never needs: the
/// worker's sweep sets it on sessions that live on. Not for a listener a
/// reload reconfigures: it may hold other values.
boost::system::error_code apply_new_socket_tcp_options(int fd, const tcp_config& cfg);

/// The dead-peer detection of apply_tcp_options(): SO_KEEPALIVE with
/// TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, and TCP_USER_TIMEOUT, on a connected
/// socket (the keepalive timer then counts from the last segment received,
/// not from this call). `fresh`: the socket has none of them set yet (made
/// by socket()), so what is off is not set, nor TCP_KEEPCNT beside
/// TCP_USER_TIMEOUT, which then decides alone when unanswered keepalive
/// probes end the connection (tcp(7)); otherwise (a socket another process
/// set up) every one is set. Returns the first error.
boost::system::error_code apply_keepalive_tcp_options(int fd, const tcp_config& cfg, bool fresh);

/// Whether apply_keepalive_tcp_options() sets anything on a fresh socket
/// with `cfg`: keepalive on, or a user timeout.
bool has_keepalive_tcp_options(const tcp_config& cfg);

/// Sets SO_LINGER 0 on `fd`, so that its close sends a reset (the peer sees
/// ECONNRESET), never a clean end of stream.
void set_reset_on_close(int fd);

/// Closes `fd` with a reset (set_reset_on_close, then close).
void close_with_reset(int fd);

}  // namespace apilb
