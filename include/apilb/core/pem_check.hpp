// Reads the PEM files that the admin endpoint's TLS names, once, at config
// load, so that `apilb check-config` and a reload report a bad key or a
// certificate that is not one where the file and line are known, not only
// the server when it builds its TLS context. Part of the loader; OpenSSL's
// libcrypto only (no sockets, no TLS).
#pragma once

#include <string>

namespace apilb::config_detail {

/// What reading a certificate and key pair found.
struct key_pair_check {
    std::string cert_problem;  ///< "" = cert_file holds at least one certificate
    std::string key_problem;   ///< "" = key_file holds an unencrypted key that matches the first certificate
    std::string cert_warning;  ///< e.g. expired; "" = none
};

/// Checks `cert_pem` (a chain, leaf first, read from `cert_file`) and
/// `key_pem` (read from `key_file`); the names are for messages. Both were
/// read by read_file_path, bounded: OpenSSL sees only memory.
key_pair_check check_key_pair(const std::string& cert_file, const std::string& cert_pem, const std::string& key_file,
                              const std::string& key_pem);

/// "" if `pem` (read from `ca_file`) holds at least one PEM certificate and
/// nothing else that fails to parse; else what is wrong.
std::string ca_bundle_problem(const std::string& ca_file, const std::string& pem);

}  // namespace apilb::config_detail
