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

/// apply_tcp_options() for a socket just made by socket() (a backend
/// connect's), with the same effect in fewer calls: what a new socket has
/// already (TCP_NODELAY and SO_KEEPALIVE off) is not set, nor is
/// TCP_KEEPCNT with TCP_USER_TIMEOUT set, which then decides alone when
/// unanswered keepalive probes end the connection (tcp(7)). Not for a
/// listener a reload reconfigures: it may hold other values.
boost::system::error_code apply_new_socket_tcp_options(int fd, const tcp_config& cfg);

/// Sets SO_LINGER 0 on `fd`, so that its close sends a reset (the peer sees
/// ECONNRESET), never a clean end of stream.
void set_reset_on_close(int fd);

/// Closes `fd` with a reset (set_reset_on_close, then close).
void close_with_reset(int fd);

}  // namespace apilb
