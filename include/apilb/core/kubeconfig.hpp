// What discovery needs from a kubeconfig: the cluster CA and the user's
// client certificate and key or token, of the current context. Pure core:
// parses text already read (the caller proves first that yaml-cpp's parse
// of it ends, apilb/yaml_guard.hpp) and reads the files it names, bounded.
#pragma once

#include <string>

#include "apilb/core/config.hpp"

namespace apilb {

/// Credentials from a kubeconfig. Each PEM is given inline (`*_pem`, from
/// a `*-data` key) or as a path (`*_file`, made absolute against the
/// kubeconfig's directory); never both.
struct kube_credentials {
    std::string server;  ///< the cluster's server URL, for messages only
    std::string ca_pem;
    std::string ca_file;
    std::string cert_pem;
    std::string cert_file;
    std::string key_pem;
    std::string key_file;
    std::string token;       ///< a bearer token given inline
    std::string token_file;  ///< or in a file (re-read when it changes)
    bool insecure_skip_verify = false;
};

/// Parses `text`, the kubeconfig at `path`. Throws config_load_error whose
/// errors name `path`, line and key (e.g. "users[0].user.client-key-data:
/// not base64") for anything discovery cannot use: no current context, a
/// context naming a missing cluster or user, no credentials, a file that
/// cannot be read.
kube_credentials parse_kubeconfig(const std::string& text, const std::string& path);

}  // namespace apilb
