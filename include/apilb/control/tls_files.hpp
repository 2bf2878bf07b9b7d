// PEM files into an OpenSSL context, read by read_regular_file (only a
// regular file, at most max_pem_bytes) and handed to OpenSSL as memory.
// OpenSSL's own *_file functions open whatever they are given and read it to
// the end: a FIFO would block the caller forever. For the prober, the admin
// endpoint and the CLI; each function throws std::runtime_error whose text
// starts with `what` (the config key or option) and the file's name.
#pragma once

#include <openssl/ssl.h>

#include <string>

namespace apilb {

/// OpenSSL's queued errors (this thread's) as one line; empties the queue.
std::string ssl_errors();

/// The certificates (and CRLs) in `path` become trust anchors of `ctx`;
/// with `request_names`, their subjects also go into the server's
/// CertificateRequest, so that a client with several certificates offers
/// the right one.
void load_ca_file(SSL_CTX* ctx, const std::string& what, const std::string& path, bool request_names = false);

/// `ctx`'s own certificate and its chain from `path`, leaf first.
void load_certificate_chain_file(SSL_CTX* ctx, const std::string& what, const std::string& path);

/// `ctx`'s private key from `path`; the context's passphrase callback
/// applies, as with SSL_CTX_use_PrivateKey_file.
void load_private_key_file(SSL_CTX* ctx, const std::string& what, const std::string& path);

/// What every TLS client context of apilb's control side sets (probes,
/// discovery): TLS 1.2 or later, no passphrase prompt (an encrypted key
/// fails to load), ALPN http/1.1 (kube-apiserver would pick h2 if offered
/// nothing). Verification is the caller's.
void set_client_defaults(SSL_CTX* ctx);

/// Names the server `name` on `ssl`: SNI for a DNS name (RFC 6066 allows
/// only host names there) and, with `verify`, the name or IP the
/// certificate must carry (OpenSSL's own check, so that a mismatch reads
/// "hostname mismatch"). Returns whether `name` is an IP address.
bool set_server_name(SSL* ssl, const std::string& name, bool verify);

/// The same three from PEM bytes already read (a kubeconfig's *-data);
/// `path` names where they came from in messages.
void load_ca_pem(SSL_CTX* ctx, const std::string& what, const std::string& path, const std::string& pem,
                 bool request_names = false);
void load_certificate_chain_pem(SSL_CTX* ctx, const std::string& what, const std::string& path, const std::string& pem);
void load_private_key_pem(SSL_CTX* ctx, const std::string& what, const std::string& path, const std::string& pem);

}  // namespace apilb
