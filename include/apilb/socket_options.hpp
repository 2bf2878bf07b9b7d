// Socket options for both legs of a session.
#pragma once

#include <boost/system/error_code.hpp>

#include "apilb/config.hpp"

namespace apilb {

/// Sets TCP_NODELAY, SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT,
/// TCP_USER_TIMEOUT and the buffer bound (SO_RCVBUF, TCP_NOTSENT_LOWAT) as
/// configured on the open TCP socket `fd`. Set on a
/// listening socket, they are inherited by every socket it accepts (Linux).
/// Returns the first error.
boost::system::error_code apply_tcp_options(int fd, const tcp_config& cfg);

}  // namespace apilb
