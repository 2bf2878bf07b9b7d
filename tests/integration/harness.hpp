// Test harness for integration tests: the real apilb binary as a child
// process, real TCP servers on loopback "hosts" (127.0.0.2, .3, …), and
// blocking client helpers with timeouts. Every wait is bounded.
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace apilb::test {

using namespace std::chrono_literals;

/// An environment variable the meson test definition sets; fails the test if missing.
std::string required_env(const char* name);

/// Whether the apilb under test (APILB_BIN) was built with AddressSanitizer,
/// or with any sanitizer: meson's b_sanitize of apilb's build, in
/// APILB_SANITIZE. Asked at run time, not with __SANITIZE_ADDRESS__: the
/// sanitizer build runs the plain build's test programs against its own
/// apilb (tests/integration/meson.build).
bool apilb_has_asan();
bool apilb_sanitized();

/// A fresh directory under $TMPDIR, removed when the object dies.
class temp_dir {
public:
    temp_dir();
    ~temp_dir();
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }
    void write(const std::string& name, const std::string& content) const;

private:
    std::string path_;
};

std::string read_file(const std::string& path);

/// A port for a server the test starts later on `ip` (apilb, a restartable
/// backend), that no other test can take meanwhile: it lies below the kernel's
/// ephemeral range (which every port-0 bind and connect draws from), and this
/// process holds it (an abstract socket named after it) until it exits, so
/// concurrent tests never get the same one. Free on `ip` when returned.
std::uint16_t free_port(const std::string& ip = "127.0.0.1");

/// A child process with stdout+stderr captured to a file. Killed (SIGKILL)
/// when the object dies if it is still running.
class process {
public:
    process(std::vector<std::string> argv, std::string log_path);
    ~process();
    process(const process&) = delete;
    process& operator=(const process&) = delete;

    pid_t pid() const { return pid_; }
    void signal(int signo) const;
    /// Waits up to `timeout` for the exit; returns the exit code, or
    /// 128+signal if it died of a signal, or nullopt if still running.
    std::optional<int> wait(std::chrono::milliseconds timeout);
    bool running();
    std::string log() const { return read_file(log_path_); }
    const std::string& log_path() const { return log_path_; }

private:
    pid_t pid_ = -1;
    std::optional<int> exit_code_;
    std::string log_path_;
};

/// Runs a command to completion (bounded); returns exit code and output.
struct command_result {
    int exit_code = -1;
    std::string output;  ///< stdout and stderr together
};
command_result run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = 30s);

/// A config with one listener "front" on 127.0.0.1:`port` and one pool "p"
/// over `backends` (named b0, b1, …) with debug logging; `extra` is appended
/// (further top-level sections).
std::string single_pool_config(std::uint16_t port, const std::vector<std::string>& backends, const std::string& balance,
                               unsigned workers, const std::string& extra = {});

/// The relay.io this test run asks for: APILB_TEST_RELAY_IO (`meson test
/// --setup io_uring` sets it, tests/meson.build), or "" for the config's own.
std::string test_relay_io();

/// `yaml` with relay.io set to test_relay_io() (added to its relay section,
/// or as one), unchanged if that is "" or the config sets relay.io itself.
/// apilb_process applies it to every config it starts apilb with.
std::string with_test_relay_io(const std::string& yaml);

/// Fails the current test if `log` holds an ASan/UBSan/LSan/TSan report.
void expect_no_sanitizer_report(const std::string& log, const std::string& what);

/// Polls `pred` every `poll` until it holds or `timeout` passes; the last
/// answer of `pred` decides.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
                std::chrono::milliseconds poll = 10ms);

/// Milliseconds from `t0` to `t` (now by default).
double ms_since(std::chrono::steady_clock::time_point t0,
                std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now());

/// Polls until a TCP connect to ip:port succeeds.
bool wait_for_port(const std::string& ip, std::uint16_t port, std::chrono::milliseconds timeout = 10s);

/// The real apilb binary with a config written from YAML text.
class apilb_process {
public:
    /// `yaml` is the whole config. Starts `apilb run` and waits until
    /// `listen_ip:listen_port` accepts connections.
    /// `prefix` runs apilb under another command (e.g. prlimit).
    apilb_process(const temp_dir& dir, const std::string& yaml, const std::string& listen_ip, std::uint16_t listen_port,
                  std::vector<std::string> extra_args = {}, std::vector<std::string> prefix = {});
    /// Fails the test if apilb's log holds a sanitizer report.
    ~apilb_process();
    process& proc() { return *proc_; }
    std::string log() const { return proc_->log(); }
    /// Polls the log until it contains `text` (log lines can trail the
    /// socket event a test observed).
    bool wait_for_log(const std::string& text, std::chrono::milliseconds timeout = 5s) const;
    /// SIGTERM, then waits for the exit code.
    std::optional<int> terminate(std::chrono::milliseconds timeout = 15s);

private:
    std::unique_ptr<process> proc_;
};

/// A blocking TCP client socket with send/receive timeouts.
class client {
public:
    client() = default;
    ~client();
    client(client&& o) noexcept : fd_(o.fd_), reset_after_connect_(o.reset_after_connect_) { o.fd_ = -1; }
    client& operator=(client&& o) noexcept;

    /// Creates the socket now (connect() would otherwise do it); false on failure.
    bool open();
    /// Opens the socket and binds it to a source address (port chosen by the kernel).
    bool bind(const std::string& source_ip);
    /// Connects (opening the socket if open() was not called); returns the
    /// errno on failure (0 on success).
    int connect(const std::string& ip, std::uint16_t port, std::chrono::milliseconds timeout = 5s);
    int fd() const { return fd_; }
    bool send_all(const void* data, std::size_t len);
    bool send_all(const std::string& s) { return send_all(s.data(), s.size()); }
    /// Reads up to `max` bytes; returns bytes read, 0 on EOF, -errno on error (-EAGAIN on timeout).
    long recv_some(void* buf, std::size_t max);
    /// Reads exactly n bytes (or until EOF/error/timeout); returns what it got.
    std::string recv_exact(std::size_t n);
    /// Reads until EOF; returns the data and, in `end_errno`, 0 for a clean
    /// EOF or the errno that ended it (ECONNRESET, EAGAIN for a timeout).
    std::string recv_until_eof(int& end_errno, std::size_t limit = 1 << 30);
    void shutdown_write();
    /// Closes with RST instead of FIN.
    void reset();
    void close();
    void set_timeout(std::chrono::milliseconds timeout);

private:
    int fd_ = -1;
    /// The peer accepted and reset before connect() looked (SO_ERROR gave
    /// ECONNRESET, which reading it cleared): the next read reports it.
    int reset_after_connect_ = 0;
};

/// What http_exchange() got back.
struct http_answer {
    int status = 0;  ///< 0: no HTTP answer (connect failed, closed, timed out)
    std::string body;
};

/// One HTTP/1.1 request to 127.0.0.1:`port` on a fresh connection
/// (Connection: close, 10 s), sent from `source_ip` with `host`:`port` as Host;
/// `extra_headers` are whole lines ending in CRLF.
http_answer http_exchange(std::uint16_t port, const std::string& method, const std::string& path,
                          const std::string& extra_headers = {}, const std::string& host = "127.0.0.1",
                          const std::string& source_ip = "127.0.0.1");

/// A TCP server on its own thread; `handler` runs on a thread per connection
/// with the connected fd (which the server closes after the handler returns,
/// unless the handler set it to -1).
class tcp_server {
public:
    using handler = std::function<void(int& fd)>;
    tcp_server(const std::string& ip, handler h);
    ~tcp_server();
    std::uint16_t port() const { return port_; }
    const std::string& ip() const { return ip_; }
    std::string address() const { return ip_ + ":" + std::to_string(port_); }
    int accepted() const { return accepted_.load(); }
    /// Stops accepting and closes the listening socket (the port then refuses).
    void stop();

private:
    std::string ip_;
    std::uint16_t port_ = 0;
    int listen_fd_ = -1;
    handler handler_;
    std::atomic<bool> stopping_{false};
    std::atomic<int> accepted_{0};
    std::thread thread_;
    std::vector<std::thread> conn_threads_;
};

/// Results that server threads record (one per connection, say) and the
/// test reads once enough have come.
template <typename T>
class recorder {
public:
    void add(T value) {
        std::lock_guard lock(mu_);
        items_.push_back(std::move(value));
    }
    /// What was recorded, as soon as there are `n`, or at `timeout`.
    std::vector<T> wait_for(std::size_t n, std::chrono::milliseconds timeout = 25s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            {
                std::lock_guard lock(mu_);
                if (items_.size() >= n || std::chrono::steady_clock::now() > deadline) return items_;
            }
            std::this_thread::sleep_for(10ms);
        }
    }

private:
    std::mutex mu_;
    std::vector<T> items_;
};

/// Echoes every byte back until EOF, then half-closes.
tcp_server::handler echo_handler();

/// A listening socket whose accept queue is full: SYNs to it are dropped,
/// so a connect to it hangs until the connect timeout (a host that is gone).
class blackhole {
public:
    explicit blackhole(const std::string& ip);
    ~blackhole();
    blackhole(const blackhole&) = delete;
    blackhole& operator=(const blackhole&) = delete;
    /// "ip:port".
    const std::string& address() const { return address_; }

private:
    int fd_ = -1;
    std::string address_;
    std::vector<client> fillers_;
};

/// FNV-1a 64 over a byte string: enough to compare payloads.
std::uint64_t fnv1a(const void* data, std::size_t len, std::uint64_t h = 1469598103934665603ULL);

/// `n` pseudo-random bytes from `seed`.
std::string random_bytes(std::size_t n, std::uint32_t seed);

}  // namespace apilb::test
