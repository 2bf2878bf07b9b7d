// Socket options for both legs of a session.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>

#include "apilb/config.hpp"

namespace apilb {

/// Sets TCP_NODELAY, SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT and
/// TCP_USER_TIMEOUT as configured on the open TCP socket `fd`. Set on a
/// listening socket, they are inherited by every socket it accepts (Linux).
/// Returns the first error.
boost::system::error_code apply_tcp_options(int fd, const tcp_config& cfg);

/// Makes the next close() send RST instead of FIN (SO_LINGER with timeout 0),
/// so that a reset seen on one leg reaches the peer on the other.
void set_abortive_close(boost::asio::ip::tcp::socket& socket);

}  // namespace apilb
