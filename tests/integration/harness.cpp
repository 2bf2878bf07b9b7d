#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

extern char** environ;

namespace apilb::test {

std::string required_env(const char* name) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') {
        throw std::runtime_error(std::string("environment variable ") + name +
                                 " is not set (run the tests through meson test)");
    }
    return v;
}

namespace {
/// APILB_SANITIZE, or "none" outside meson test (where APILB_BIN is missing
/// too, and each test says so): read at static initialisation, so it must
/// not throw.
std::string apilb_sanitize() {
    const char* v = std::getenv("APILB_SANITIZE");
    return v == nullptr || *v == '\0' ? "none" : v;
}
}  // namespace

bool apilb_has_asan() { return apilb_sanitize().find("address") != std::string::npos; }

bool apilb_sanitized() { return apilb_sanitize() != "none"; }

temp_dir::temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/apilb-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
}

temp_dir::~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

void temp_dir::write(const std::string& name, const std::string& content) const {
    std::ofstream out(file(name), std::ios::binary | std::ios::trunc);
    out << content;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

namespace {

sockaddr_in make_addr(const std::string& ip, std::uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr) != 1) throw std::runtime_error("bad ip " + ip);
    return sa;
}

}  // namespace

namespace {

/// The ports free_port() hands out: 8 192 just below the kernel's ephemeral
/// range, which no port-0 bind or connect ever takes. If the range leaves no
/// room below it, the ports above it; failing that, the range itself (then
/// only the claims below keep concurrent tests apart).
std::pair<unsigned, unsigned> free_port_range() {
    unsigned lo = 32768, hi = 60999;
    std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
    in >> lo >> hi;
    constexpr unsigned span = 8192;
    if (lo >= 1024 + span) return {lo - span, lo};
    if (hi + span <= 65535) return {hi + 1, hi + 1 + span};
    return {lo, hi + 1};
}

/// Claims `port` for this process until it exits: binds an abstract Unix
/// socket named after it, which the kernel releases when the process dies
/// (also on a crash). False if another test process holds it.
bool claim_port(std::uint16_t port) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error("free_port: socket(AF_UNIX): " + std::string(strerror(errno)));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    const std::string name = "apilb-test-port-" + std::to_string(port);
    std::memcpy(sa.sun_path + 1, name.data(), name.size());  // sun_path[0] == 0: abstract
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
        ::close(fd);
        return false;
    }
    return true;  // the descriptor stays open: that is the claim
}

/// Whether a listener could bind ip:port now.
bool bindable(const std::string& ip, std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    auto sa = make_addr(ip, port);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    ::close(fd);
    return ok;
}

}  // namespace

std::uint16_t free_port(const std::string& ip) {
    const auto [first, end] = free_port_range();
    const unsigned span = end - first;
    // A random start, so that tests started together do not all try the
    // same ports first; then in turn.
    static std::atomic<unsigned> next{std::random_device{}()};
    for (unsigned tried = 0; tried < span; ++tried) {
        const auto port = static_cast<std::uint16_t>(first + next++ % span);
        if (claim_port(port) && bindable(ip, port)) return port;
    }
    throw std::runtime_error("free_port: no port in " + std::to_string(first) + "-" + std::to_string(end - 1) +
                             " is both unclaimed by other tests and free on " + ip);
}

process::process(std::vector<std::string> argv, std::string log_path) : log_path_(std::move(log_path)) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + ": " + strerror(rc));
}

process::~process() {
    if (running()) {
        ::kill(pid_, SIGKILL);
        wait(5s);
    }
}

void process::signal(int signo) const {
    if (pid_ > 0) ::kill(pid_, signo);
}

std::optional<int> process::wait(std::chrono::milliseconds timeout) {
    if (exit_code_) return exit_code_;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_) {
            exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return exit_code_;
        }
        if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(10ms);
    }
}

bool process::running() { return !exit_code_ && pid_ > 0 && !wait(0ms).has_value(); }

command_result run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
    temp_dir dir;
    command_result r;
    {
        process p(argv, dir.file("out"));
        auto code = p.wait(timeout);
        if (!code) {
            p.signal(SIGKILL);
            p.wait(5s);
            r.exit_code = -1;
        } else {
            r.exit_code = *code;
        }
        r.output = p.log();
    }
    return r;
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout, std::chrono::milliseconds poll) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(poll);
    }
    return pred();
}

double ms_since(std::chrono::steady_clock::time_point t0, std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(t - t0).count();
}

bool wait_for_port(const std::string& ip, std::uint16_t port, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        client c;
        if (c.connect(ip, port, 1s) == 0) return true;
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

apilb_process::apilb_process(const temp_dir& dir, const std::string& yaml, const std::string& listen_ip,
                             std::uint16_t listen_port, std::vector<std::string> extra_args,
                             std::vector<std::string> prefix) {
    dir.write("apilb.yaml", with_test_relay_io(yaml));
    std::vector<std::string> argv = std::move(prefix);
    for (const auto& a :
         {required_env("APILB_BIN"), std::string("run"), std::string("--config"), dir.file("apilb.yaml")}) {
        argv.push_back(a);
    }
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    proc_ = std::make_unique<process>(argv, dir.file("apilb.log"));
    // Wait for the startup line rather than probing the port: a probe would
    // itself be proxied to a backend and disturb the test's counts. The bound
    // is generous because a sanitizer build on a loaded 2-core machine has
    // been seen to take over 10 s to print its first line; a healthy start
    // still returns as soon as the line appears.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    bool started = false;
    while (!started && std::chrono::steady_clock::now() < deadline && proc_->running()) {
        started = proc_->log().find("apilb started:") != std::string::npos;
        if (!started) std::this_thread::sleep_for(10ms);
    }
    if (!started) {
        throw std::runtime_error("apilb did not start listening on " + listen_ip + ":" + std::to_string(listen_port) +
                                 "; log:\n" + proc_->log());
    }
}

std::string test_relay_io() {
    const char* v = std::getenv("APILB_TEST_RELAY_IO");
    return v == nullptr ? std::string() : std::string(v);
}

std::string with_test_relay_io(const std::string& yaml) {
    const std::string io = test_relay_io();
    if (io.empty()) return yaml;
    // The top-level relay section, flow (`relay: {mode: copy}`) or block.
    std::size_t at = yaml.rfind("\nrelay:");
    at = yaml.compare(0, 6, "relay:") == 0 ? 0 : (at == std::string::npos ? at : at + 1);
    if (at == std::string::npos)
        return yaml + (yaml.empty() || yaml.back() == '\n' ? "" : "\n") + "relay: {io: " + io + "}\n";
    const std::size_t eol = std::min(yaml.find('\n', at), yaml.size());
    const std::string line = yaml.substr(at, eol - at);
    if (line.find("io:") != std::string::npos) return yaml;
    if (const std::size_t brace = line.find('{'); brace != std::string::npos)
        return yaml.substr(0, at + brace + 1) + "io: " + io + ", " + yaml.substr(at + brace + 1);
    // Block: the next line's indentation is the section's.
    std::size_t indent = 2;
    if (eol < yaml.size()) {
        const std::size_t next = yaml.find_first_not_of(' ', eol + 1);
        if (next != std::string::npos && next > eol + 1) indent = next - eol - 1;
        // A block that already names io: left alone.
        for (std::size_t p = eol; p < yaml.size() && p != std::string::npos;) {
            const std::size_t start = p + 1;
            if (start >= yaml.size() || yaml[start] != ' ') break;
            if (yaml.compare(yaml.find_first_not_of(' ', start), 3, "io:") == 0) return yaml;
            p = yaml.find('\n', start);
        }
    }
    return yaml.substr(0, eol) + "\n" + std::string(indent, ' ') + "io: " + io + yaml.substr(eol);
}

std::string single_pool_config(std::uint16_t port, const std::vector<std::string>& backends, const std::string& balance,
                               unsigned workers, const std::string& extra) {
    std::string b;
    for (std::size_t i = 0; i < backends.size(); ++i) {
        b += "      - {name: b" + std::to_string(i) + ", address: \"" + backends[i] + "\"}\n";
    }
    return "workers: " + std::to_string(workers) +
           "\nlisteners:\n  - {name: front, address: \"127.0.0.1:" + std::to_string(port) +
           "\", pool: p}\npools:\n  - name: p\n    balance: " + balance + "\n    backends:\n" + b +
           "log: {level: debug}\n" + extra;
}

apilb_process::~apilb_process() {
    if (proc_->running()) {
        proc_->signal(SIGKILL);
        proc_->wait(5s);
    }
    expect_no_sanitizer_report(proc_->log(), "apilb");
}

void expect_no_sanitizer_report(const std::string& log, const std::string& what) {
    // "ThreadSanitizer:" also catches TSan's fatal start-up errors (an
    // unexpected memory mapping), not only its race reports.
    for (const char* marker :
         {"runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "ThreadSanitizer:"}) {
        const auto at = log.find(marker);
        if (at != std::string::npos) {
            ADD_FAILURE() << what << " reported a sanitizer finding:\n" << log.substr(at > 200 ? at - 200 : 0, 3000);
            return;
        }
    }
}

bool apilb_process::wait_for_log(const std::string& text, std::chrono::milliseconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (proc_->log().find(text) != std::string::npos) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(10ms);
    }
}

std::optional<int> apilb_process::terminate(std::chrono::milliseconds timeout) {
    proc_->signal(SIGTERM);
    return proc_->wait(timeout);
}

client::~client() { close(); }

client& client::operator=(client&& o) noexcept {
    if (this != &o) {
        close();
        fd_ = o.fd_;
        reset_after_connect_ = o.reset_after_connect_;
        o.fd_ = -1;
    }
    return *this;
}

bool client::open() {
    close();
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    return fd_ >= 0;
}

bool client::bind(const std::string& source_ip) {
    if (!open()) return false;
    auto sa = make_addr(source_ip, 0);
    return ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
}

int client::connect(const std::string& ip, std::uint16_t port, std::chrono::milliseconds timeout) {
    if (fd_ < 0 && !open()) return errno;
    auto sa = make_addr(ip, port);
    int rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    if (rc != 0 && errno != EINPROGRESS) {
        const int err = errno;
        close();
        return err;
    }
    if (rc != 0) {
        pollfd p{fd_, POLLOUT, 0};
        rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
        if (rc <= 0) {
            close();
            return ETIMEDOUT;
        }
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
        // A refused connect is ECONNREFUSED; ECONNRESET means the connection
        // was made and then reset (apilb refusing a client over its limits
        // does that at once). Connected, then: the next read sees the reset.
        reset_after_connect_ = err == ECONNRESET ? ECONNRESET : 0;
        if (err != 0 && err != ECONNRESET) {
            close();
            return err;
        }
    }
    const int flags = ::fcntl(fd_, F_GETFL);
    ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
    set_timeout(10s);
    return 0;
}

void client::set_timeout(std::chrono::milliseconds timeout) {
    timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

bool client::send_all(const void* data, std::size_t len) {
    if (reset_after_connect_ != 0) return false;
    auto p = static_cast<const char*>(data);
    while (len > 0) {
        const ssize_t n = ::send(fd_, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += n;
        len -= static_cast<std::size_t>(n);
    }
    return true;
}

long client::recv_some(void* buf, std::size_t max) {
    if (reset_after_connect_ != 0) return -std::exchange(reset_after_connect_, 0);
    for (;;) {
        const ssize_t n = ::recv(fd_, buf, max, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        return n;
    }
}

std::string client::recv_exact(std::size_t n) {
    std::string out;
    char buf[65536];
    while (out.size() < n) {
        const long r = recv_some(buf, std::min(sizeof buf, n - out.size()));
        if (r <= 0) break;
        out.append(buf, static_cast<std::size_t>(r));
    }
    return out;
}

std::string client::recv_until_eof(int& end_errno, std::size_t limit) {
    std::string out;
    char buf[65536];
    for (;;) {
        const long r = recv_some(buf, sizeof buf);
        if (r == 0) {
            end_errno = 0;
            return out;
        }
        if (r < 0) {
            end_errno = static_cast<int>(-r);
            return out;
        }
        out.append(buf, static_cast<std::size_t>(r));
        if (out.size() > limit) {
            end_errno = E2BIG;
            return out;
        }
    }
}

void client::shutdown_write() { ::shutdown(fd_, SHUT_WR); }

void client::reset() {
    if (fd_ < 0) return;
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close();
}

void client::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

tcp_server::tcp_server(const std::string& ip, handler h) : ip_(ip), handler_(std::move(h)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    auto sa = make_addr(ip, 0);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(listen_fd_, 4096) != 0) {
        throw std::runtime_error("tcp_server bind/listen failed: " + std::string(strerror(errno)));
    }
    socklen_t len = sizeof sa;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] {
        for (;;) {
            pollfd p{listen_fd_, POLLIN, 0};
            const int rc = ::poll(&p, 1, 50);
            if (stopping_) return;
            if (rc <= 0) continue;
            int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) continue;
            ++accepted_;
            conn_threads_.emplace_back([this, fd]() mutable {
                handler_(fd);
                if (fd >= 0) ::close(fd);
            });
        }
    });
}

tcp_server::~tcp_server() {
    stop();
    for (auto& t : conn_threads_) t.join();
}

void tcp_server::stop() {
    if (stopping_.exchange(true)) return;
    thread_.join();
    ::close(listen_fd_);
}

tcp_server::handler echo_handler() {
    return [](int& fd) {
        timeval tv{30, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[65536];
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            const char* p = buf;
            std::size_t left = static_cast<std::size_t>(n);
            while (left > 0) {
                const ssize_t w = ::send(fd, p, left, MSG_NOSIGNAL);
                if (w <= 0) return;
                p += w;
                left -= static_cast<std::size_t>(w);
            }
        }
        ::shutdown(fd, SHUT_WR);
    };
}

blackhole::blackhole(const std::string& ip) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    ::listen(fd_, 0);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    address_ = ip + ":" + std::to_string(ntohs(sa.sin_port));
    // Fill the queue; the fillers that cannot get in time out quietly.
    for (int i = 0; i < 4; ++i) {
        client c;
        if (c.connect(ip, ntohs(sa.sin_port), 200ms) == 0) fillers_.push_back(std::move(c));
    }
}

blackhole::~blackhole() { ::close(fd_); }

std::uint64_t fnv1a(const void* data, std::size_t len, std::uint64_t h) {
    auto p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < len; ++i) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

std::string random_bytes(std::size_t n, std::uint32_t seed) {
    std::string s(n, '\0');
    std::mt19937_64 rng(seed);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(&s[i], &v, 8);
    }
    for (; i < n; ++i) s[i] = static_cast<char>(rng());
    return s;
}

http_answer http_exchange(std::uint16_t port, const std::string& method, const std::string& path,
                          const std::string& extra_headers, const std::string& host, const std::string& source_ip) {
    client c;
    if (!c.bind(source_ip) || c.connect("127.0.0.1", port) != 0) return {};
    c.set_timeout(10s);
    c.send_all(method + " " + path + " HTTP/1.1\r\nHost: " + host + ":" + std::to_string(port) +
               "\r\nConnection: close\r\nContent-Length: 0\r\n" + extra_headers + "\r\n");
    int end = 0;
    const std::string raw = c.recv_until_eof(end, 1 << 22);
    http_answer r;
    if (raw.rfind("HTTP/1.1 ", 0) != 0) return r;
    r.status = std::stoi(raw.substr(9, 3));
    if (const auto sep = raw.find("\r\n\r\n"); sep != std::string::npos) r.body = raw.substr(sep + 4);
    return r;
}

}  // namespace apilb::test
