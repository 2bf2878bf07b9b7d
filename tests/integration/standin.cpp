#include "standin.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/socket.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <stdexcept>

namespace apilb::test {

std::string write_kubeconfig(const temp_dir& dir, const std::string& certs) {
    dir.write("kubeconfig",
              "apiVersion: v1\nkind: Config\n"
              "clusters:\n- name: k\n  cluster:\n    server: https://192.0.2.1:6443\n"
              "    certificate-authority: " +
                  certs +
                  "/ca.crt\n"
                  "users:\n- name: admin\n  user:\n    client-certificate: " +
                  certs +
                  "/client.crt\n"
                  "    client-key: " +
                  certs +
                  "/client.key\n"
                  "contexts:\n- name: c\n  context: {cluster: k, user: admin}\n"
                  "current-context: c\n");
    return dir.file("kubeconfig");
}

std::string write_kubelet_conf(const temp_dir& dir, const std::string& certs, const std::string& pki) {
    auto ca64 = run_command({"/usr/bin/base64", "-w0", certs + "/ca.crt"});
    if (ca64.exit_code != 0) throw std::runtime_error("base64: " + ca64.output);
    dir.write("kubelet.conf", "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: " + ca64.output +
                                  "\n    server: https://127.0.0.1:7445\n  name: kubernetes\n"
                                  "contexts:\n- context:\n    cluster: kubernetes\n"
                                  "    user: system:node:worker-1\n  name: system:node:worker-1@kubernetes\n"
                                  "current-context: system:node:worker-1@kubernetes\nkind: Config\n"
                                  "preferences: {}\nusers:\n- name: system:node:worker-1\n  user:\n"
                                  "    client-certificate: " +
                                  pki + "/kubelet-client-current.pem\n    client-key: " + pki +
                                  "/kubelet-client-current.pem\n");
    return dir.file("kubelet.conf");
}

std::string make_certs(const temp_dir& dir) {
    const std::string certs = dir.file("certs");
    auto r = run_command({"/bin/bash", required_env("APILB_MKCERTS"), certs}, 60s);
    if (r.exit_code != 0) throw std::runtime_error("mkcerts failed: " + r.output);
    return certs;
}

// ---------------------------------------------------------------- standin_process

standin_process::standin_process(const temp_dir& dir, std::string certs, std::string ip, std::string name,
                                 std::vector<std::string> extra, std::uint16_t port)
    : dir_(dir),
      certs_(std::move(certs)),
      ip_(std::move(ip)),
      name_(std::move(name)),
      extra_(std::move(extra)),
      port_(port) {
    start();
}

standin_process::~standin_process() {
    if (!proc_) return;
    if (frozen_) thaw();
    if (proc_->running()) {
        proc_->signal(SIGTERM);
        proc_->wait(5s);
    }
    expect_no_sanitizer_report(proc_->log(), "apilb-standin " + name_);
}

void standin_process::start() {
    std::vector<std::string> argv{required_env("APILB_STANDIN_BIN"),
                                  "--listen",
                                  ip_ + ":" + std::to_string(port_),
                                  "--cert",
                                  certs_ + "/server.crt",
                                  "--key",
                                  certs_ + "/server.key",
                                  "--name",
                                  name_};
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    proc_ = std::make_unique<process>(argv, dir_.file(name_ + "-" + std::to_string(generation_++) + ".log"));
    const std::regex re("listening on [0-9.]+:([0-9]+)");
    for (int i = 0; i < 1000; ++i) {
        std::smatch m;
        const std::string log = proc_->log();
        if (std::regex_search(log, m, re)) {
            port_ = static_cast<std::uint16_t>(std::stoi(m[1].str()));
            return;
        }
        if (!proc_->running()) break;
        std::this_thread::sleep_for(10ms);
    }
    throw std::runtime_error("stand-in " + name_ + " did not start: " + proc_->log());
}

bool standin_process::set_readyz(const std::string& state) {
    auto r = run_command(
        {"/usr/bin/curl", "-sS", "--max-time", "5", "--cacert", certs_ + "/ca.crt", "--cert", certs_ + "/client.crt",
         "--key", certs_ + "/client.key", "-X", "POST", "https://" + address() + "/control/readyz?status=" + state},
        10s);
    return r.exit_code == 0 && r.output == "ok";
}

standin_process::reply standin_process::request(const std::string& method, const std::string& path,
                                                const std::string& body) {
    std::vector<std::string> argv{"/usr/bin/curl",
                                  "-sS",
                                  "--max-time",
                                  "10",
                                  "--cacert",
                                  certs_ + "/ca.crt",
                                  "--cert",
                                  certs_ + "/client.crt",
                                  "--key",
                                  certs_ + "/client.key",
                                  "-X",
                                  method,
                                  "-w",
                                  "\n%{http_code}"};
    if (!body.empty()) argv.insert(argv.end(), {"-H", "Content-Type: application/json", "--data-binary", body});
    argv.push_back("https://" + address() + path);
    auto r = run_command(argv, 20s);
    reply out;
    const auto nl = r.output.rfind('\n');
    if (r.exit_code != 0 || nl == std::string::npos) return out;
    out.status = std::atoi(r.output.c_str() + nl + 1);
    out.body = r.output.substr(0, nl);
    return out;
}

void standin_process::kill() {
    if (frozen_) thaw();
    proc_->signal(SIGKILL);
    proc_->wait(5s);
}

void standin_process::freeze() {
    proc_->signal(SIGSTOP);
    frozen_ = true;
}

void standin_process::thaw() {
    proc_->signal(SIGCONT);
    frozen_ = false;
}

void standin_process::restart() {
    if (proc_ && proc_->running()) kill();
    start();
}

std::string standin_process::log() const { return proc_ ? proc_->log() : std::string(); }

// ---------------------------------------------------------------- TLS client

tls_client_context::tls_client_context(const std::string& ca_file) {
    // OpenSSL writes with write(2): a peer that is gone must be an error, not SIGPIPE.
    ::signal(SIGPIPE, SIG_IGN);
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr || SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr) != 1) {
        throw std::runtime_error("cannot make a TLS client context with " + ca_file);
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx_, alpn, sizeof alpn - 1);
}

tls_client_context::~tls_client_context() { SSL_CTX_free(ctx_); }

tls_session::~tls_session() { close(); }

void tls_session::close() {
    if (ssl_ != nullptr) {
        // close_notify, as a well-behaved client sends: the stand-in then
        // ends its side at once instead of waiting for it.
        tcp_.set_timeout(200ms);
        ERR_clear_error();
        SSL_shutdown(ssl_);
        SSL_free(ssl_);
    }
    ssl_ = nullptr;
    tcp_.close();
}

namespace {

using steady = std::chrono::steady_clock;

std::chrono::milliseconds left(steady::time_point deadline) {
    return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()), 1ms);
}

std::string lowercase(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

}  // namespace

bool tls_session::open(const std::string& ip, std::uint16_t port, const std::string& target,
                       std::chrono::milliseconds timeout, std::string& error) {
    close();
    const auto deadline = steady::now() + timeout;
    if (int err = tcp_.connect(ip, port, timeout); err != 0) {
        error = std::string("connect: ") + std::strerror(err);
        return false;
    }
    ssl_ = SSL_new(ctx_.get());
    SSL_set_fd(ssl_, tcp_.fd());
    SSL_set_tlsext_host_name(ssl_, "kubernetes");
    SSL_set1_host(ssl_, "kubernetes");
    for (;;) {
        ERR_clear_error();
        tcp_.set_timeout(left(deadline));
        const int rc = SSL_connect(ssl_);
        if (rc == 1) break;
        const int e = SSL_get_error(ssl_, rc);
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && steady::now() < deadline) continue;
        error = e == SSL_ERROR_WANT_READ ? "TLS handshake timed out"
                                         : "TLS handshake failed (" + std::to_string(e) + ")";
        return false;
    }
    const std::string request = "GET " + target + " HTTP/1.1\r\nHost: kubernetes\r\nUser-Agent: apilb-test\r\n\r\n";
    tcp_.set_timeout(left(deadline));
    ERR_clear_error();
    if (SSL_write(ssl_, request.data(), static_cast<int>(request.size())) != static_cast<int>(request.size())) {
        error = "sending the request failed";
        return false;
    }
    std::string head;
    char buf[16384];
    while (head.find("\r\n\r\n") == std::string::npos) {
        tcp_.set_timeout(left(deadline));
        ERR_clear_error();
        const int n = SSL_read(ssl_, buf, sizeof buf);
        if (n > 0) {
            head.append(buf, static_cast<std::size_t>(n));
            if (head.size() > 65536) {
                error = "response header too large";
                return false;
            }
            continue;
        }
        const int e = SSL_get_error(ssl_, n);
        if (e == SSL_ERROR_WANT_READ && steady::now() < deadline) continue;
        error = e == SSL_ERROR_WANT_READ ? "no response within the timeout" : "connection ended before a response";
        return false;
    }
    const auto end = head.find("\r\n\r\n");
    pending_ = head.substr(end + 4);
    head.resize(end);
    std::smatch m;
    if (!std::regex_search(head, m, std::regex("^HTTP/1\\.1 ([0-9]{3})"))) {
        error = "bad status line";
        return false;
    }
    status_ = std::stoi(m[1].str());
    const std::string lower = lowercase(head);
    const auto at = lower.find("\r\nx-standin-name: ");
    if (at != std::string::npos) {
        const auto from = at + 18;
        backend_ = head.substr(from, head.find("\r\n", from) - from);
    }
    return true;
}

std::string tls_session::read_rest(std::chrono::milliseconds timeout) {
    const auto deadline = steady::now() + timeout;
    std::string out = std::move(pending_);
    pending_.clear();
    char buf[16384];
    while (ssl_ != nullptr && steady::now() < deadline) {
        tcp_.set_timeout(left(deadline));
        ERR_clear_error();
        const int n = SSL_read(ssl_, buf, sizeof buf);
        if (n > 0) {
            out.append(buf, static_cast<std::size_t>(n));
            continue;
        }
        if (SSL_get_error(ssl_, n) != SSL_ERROR_WANT_READ) break;
    }
    return out;
}

bool tls_session::ended_within(std::chrono::milliseconds slice) {
    if (ssl_ == nullptr) return true;
    const auto deadline = steady::now() + slice;
    char buf[16384];
    for (;;) {
        tcp_.set_timeout(left(deadline));
        ERR_clear_error();
        const int n = SSL_read(ssl_, buf, sizeof buf);
        if (n <= 0 && SSL_get_error(ssl_, n) != SSL_ERROR_WANT_READ) return true;
        if (steady::now() >= deadline) return false;
    }
}

// ---------------------------------------------------------------- session_sampler

std::string session_sampler::one() const {
    tls_session s(ctx_);
    std::string error;
    if (!s.open("127.0.0.1", port_, "/version", 5s, error)) return "";
    return s.backend();
}

std::map<std::string, int> session_sampler::many(int n) const {
    std::map<std::string, int> seen;
    for (int i = 0; i < n; ++i) ++seen[one()];
    return seen;
}

bool session_sampler::reaches(const std::string& name, std::chrono::milliseconds t) const {
    return wait_until([&] { return one() == name; }, t, 50ms);
}

}  // namespace apilb::test
