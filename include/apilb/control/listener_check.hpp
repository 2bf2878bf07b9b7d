// Refusing a listener address that another process already listens on.
// apilb's listeners use SO_REUSEPORT, and Linux lets any process of the same
// user bind a port that way beside them and take part of the connections: a
// second apilb would start silently and serve half the clients.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <string>

namespace apilb {

/// Throws std::system_error (EADDRINUSE) naming `listener`, the address and,
/// where /proc tells, the holder (pid and command) if a socket that is not
/// this process's listens on `ep` or on its family's wildcard address with
/// the same port (or on any address of the port when `ep` is the wildcard).
/// Reads the kernel's listening sockets (/proc/net/tcp, tcp6) and this
/// process's descriptors, bounded. Before and after binding; control thread,
/// checked (APILB_ASSERT_ROLE).
void refuse_foreign_listener(const std::string& listener, const boost::asio::ip::tcp::endpoint& ep);

/// Who listens on `ep` besides this process, for an error message
/// ("pid 1234 (apilb)"); empty if no such socket is found.
std::string foreign_listener_holder(const boost::asio::ip::tcp::endpoint& ep);

}  // namespace apilb
