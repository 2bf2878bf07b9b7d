// What guards the admin endpoint besides TLS (docs/admin.md#who-may-change-things):
// the bearer token file, created at first start; the certificate's names,
// which the Host check takes (apilb/admin_request.hpp); and who a loopback
// caller is, for the log. Used by admin_server on the control thread.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct ssl_ctx_st;

namespace apilb {

/// The admin bearer token as admin_server found or made it.
struct admin_token {
    std::string token;     ///< "" if none could be read or created
    bool created = false;  ///< the file did not exist and was written now (mode 0600)
    std::string problem;   ///< why there is no token, for the log and the refusal
};

/// Reads the token in `path` or, if the file does not exist, creates it
/// (O_EXCL, mode 0600) holding 32 random bytes as hex. Throws
/// std::runtime_error (naming the file) if it exists but cannot be read or
/// is empty; a file that cannot be created leaves `problem` set.
admin_token ensure_admin_token(const std::string& path);

/// The DNS names of the context's certificate (subjectAltName), lower case.
std::vector<std::string> certificate_dns_names(ssl_ctx_st* ctx);

/// The uid that owns the client socket `peer` connected to `local`, when
/// both are on this host (loopback), from /proc/self/net/tcp{,6}; nullopt
/// if not found. Reads a bounded number of lines.
std::optional<unsigned> loopback_peer_uid(const boost::asio::ip::tcp::endpoint& peer,
                                          const boost::asio::ip::tcp::endpoint& local);

}  // namespace apilb
