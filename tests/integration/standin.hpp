// Helpers for health tests: the stand-in apiserver as a process that can be
// switched, killed, frozen and restarted on the same port, and a small TLS
// client (OpenSSL, blocking, bounded) that holds a watch open through apilb.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness.hpp"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace apilb::test {

/// Makes the test PKI (tests/tools/mkcerts.sh) in `dir`; fails the test if it cannot.
std::string make_certs(const temp_dir& dir);

/// Writes `dir`/kubeconfig as kubeadm shapes one: the test CA and client
/// certificate from `certs` (files beside it), a server apilb never uses
/// (discovery connects to backend addresses). Returns its path.
std::string write_kubeconfig(const temp_dir& dir, const std::string& certs);

/// Writes `dir`/kubelet.conf as kubeadm's TLS bootstrap leaves it on a
/// node: the CA of `certs` inline, the client certificate and key both
/// `pki`/kubelet-client-current.pem (the link the kubelet rotates; the
/// caller makes it). Returns its path.
std::string write_kubelet_conf(const temp_dir& dir, const std::string& certs, const std::string& pki);

/// apilb-standin on `ip`, serving HTTPS with the test certificates.
class standin_process {
public:
    /// `extra` are more command-line options (--require-client-cert, ...).
    /// Port 0 lets the kernel choose; restart() reuses the port chosen.
    standin_process(const temp_dir& dir, std::string certs, std::string ip, std::string name,
                    std::vector<std::string> extra = {}, std::uint16_t port = 0);
    /// Ends the process (resuming it first if it is frozen).
    ~standin_process();

    const std::string& name() const { return name_; }
    const std::string& ip() const { return ip_; }
    std::uint16_t port() const { return port_; }
    std::string address() const { return ip_ + ":" + std::to_string(port_); }

    /// POST /control/readyz?status=ok|fail|hang, straight to the stand-in.
    bool set_readyz(const std::string& state);
    /// An answer from request(): the HTTP status (0 when curl got none) and the body.
    struct reply {
        int status = 0;
        std::string body;
    };
    /// `method path` straight to the stand-in with the test client
    /// certificate: its Kubernetes API or its /control/ surface
    /// (tests/standin/k8s_api.hpp), e.g. request("PUT", "/control/slices/kubernetes",
    /// R"({"endpoints":[{"addresses":["127.0.0.2"]}]})"). The certificate
    /// authenticates only with "--client-ca CERTS/ca.crt" among the options.
    reply request(const std::string& method, const std::string& path, const std::string& body = {});
    /// SIGKILL: the kernel closes its sockets; connects are refused from now on.
    void kill();
    /// SIGSTOP: a blackhole; the kernel still completes TCP handshakes, nothing answers.
    void freeze();
    /// SIGCONT.
    void thaw();
    /// Starts it again on the same port after kill().
    void restart();
    std::string log() const;

private:
    void start();

    const temp_dir& dir_;
    std::string certs_;
    std::string ip_;
    std::string name_;
    std::vector<std::string> extra_;
    std::uint16_t port_;
    int generation_ = 0;
    bool frozen_ = false;
    std::unique_ptr<process> proc_;
};

/// A TLS client context trusting the test CA (shared by many tls_session).
class tls_client_context {
public:
    explicit tls_client_context(const std::string& ca_file);
    ~tls_client_context();
    SSL_CTX* get() const { return ctx_; }

private:
    SSL_CTX* ctx_ = nullptr;
};

/// One HTTPS connection through apilb, with blocking, time-bounded I/O.
class tls_session {
public:
    explicit tls_session(const tls_client_context& ctx) : ctx_(ctx) {}
    ~tls_session();
    tls_session(const tls_session&) = delete;
    tls_session& operator=(const tls_session&) = delete;

    /// Connects to ip:port, handshakes (verifying "kubernetes"), sends `GET
    /// target` and reads the response header; false (with `error`) on any
    /// failure. `timeout` bounds the whole of it.
    bool open(const std::string& ip, std::uint16_t port, const std::string& target, std::chrono::milliseconds timeout,
              std::string& error);
    int status() const { return status_; }
    /// The X-Standin-Name header: which apiserver answered.
    const std::string& backend() const { return backend_; }
    /// Reads the rest of a response; returns the body bytes read so far.
    std::string read_rest(std::chrono::milliseconds timeout);
    /// Waits up to `slice` for the connection to end; true once it has ended
    /// (EOF, reset, or a TLS error). Data that arrives is discarded.
    bool ended_within(std::chrono::milliseconds slice);
    void close();

private:
    const tls_client_context& ctx_;
    client tcp_;
    SSL* ssl_ = nullptr;
    int status_ = 0;
    std::string backend_;
    std::string pending_;  ///< bytes read past the header
};

/// Sessions through an apilb listening on 127.0.0.1:`port` to stand-in
/// apiservers: which one answers (X-Standin-Name) a new TLS session's `GET
/// /version`.
class session_sampler {
public:
    session_sampler(const tls_client_context& ctx, std::uint16_t port) : ctx_(ctx), port_(port) {}
    /// The apiserver that answers one new session ("" when none did within 5 s).
    std::string one() const;
    /// Which apiservers answer `n` new sessions, and how often.
    std::map<std::string, int> many(int n) const;
    /// Polls new sessions until one reaches `name`; false after `t`.
    bool reaches(const std::string& name, std::chrono::milliseconds t) const;

private:
    const tls_client_context& ctx_;
    std::uint16_t port_;
};

}  // namespace apilb::test
