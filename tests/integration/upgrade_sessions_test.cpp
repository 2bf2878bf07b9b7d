// The session phase of the upgrade (docs/upgrade.md "Sessions"): every
// established session (idle, half-closed, bulk between bursts, streams that
// never pause, which are quiesced first) moves to the new process and goes
// on without a lost byte or a reset; a session whose destination stops
// reading stays with the old process; a new binary that fails in the session
// phase leaves every session with the old one.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <openssl/sha.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iostream>
#include <regex>
#include <thread>

#include "harness.hpp"
#include "upgrade_support.hpp"

namespace apilb::test {
namespace {

/// sha256 of `bytes`, in hex.
std::string sha256_hex(std::string_view bytes) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    ::SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), md);
    std::string out;
    for (unsigned char c : md) out += fmt::format("{:02x}", c);
    return out;
}

/// A stream that never repeats a piece: piece n has 1 + (n * 7919) % 64 Ki
/// bytes of a pattern made from `seed`, stamped with n, so that a lost,
/// doubled or reordered piece shows. The same seed makes the same stream:
/// the receiver checks every byte by making it again.
class piece_stream {
public:
    explicit piece_stream(std::uint32_t seed) : pattern_(random_bytes(64 * 1024, seed)) {}
    /// The next piece.
    const std::string& next() {
        piece_.assign(pattern_, 0, 1 + (n_ * 7919) % pattern_.size());
        std::memcpy(piece_.data(), &n_, std::min(sizeof n_, piece_.size()));
        ++n_;
        return piece_;
    }
    /// False once `bytes` differ from what the stream sends next.
    bool check(const char* bytes, std::size_t len) {
        while (len > 0) {
            if (at_ == piece_.size()) {
                next();
                at_ = 0;
            }
            const std::size_t k = std::min(len, piece_.size() - at_);
            if (std::memcmp(bytes, piece_.data() + at_, k) != 0) return false;
            at_ += k;
            bytes += k;
            len -= k;
        }
        return true;
    }

private:
    std::string pattern_;
    std::string piece_;
    std::uint64_t n_ = 0;
    std::size_t at_ = 0;
};

/// What the backend saw of one stream_session's client -> backend stream.
struct stream_seen {
    std::uint32_t id = 0;
    std::uint64_t bytes = 0;  ///< until the client's FIN
    bool intact = false;      ///< every byte as sent, ended by a FIN
};

/// The backend side of a stream_session (first byte 'B', then its id, 4
/// bytes): checks what the client streams until its FIN (reading at most
/// 4 KiB, then a pause of 1 ms) and, meanwhile, streams to it without a
/// pause (piece_stream of id + 1000), then ends with a FIN and records what
/// it saw.
void serve_stream(int fd, std::string got, recorder<stream_seen>& seen) {
    char buf[65536];
    while (got.size() < 5) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        got.append(buf, static_cast<std::size_t>(n));
    }
    stream_seen r;
    std::memcpy(&r.id, got.data() + 1, 4);
    std::atomic<bool> done{false};
    std::thread sender([&] {
        piece_stream out(r.id + 1000);
        while (!done) {
            const std::string& p = out.next();
            for (std::size_t at = 0; at < p.size();) {
                const ssize_t w = ::send(fd, p.data() + at, p.size() - at, MSG_NOSIGNAL);
                if (w <= 0) return;
                at += static_cast<std::size_t>(w);
            }
        }
    });
    piece_stream in(r.id);
    bool intact = in.check(got.data() + 5, got.size() - 5);
    r.bytes = got.size() - 5;
    for (;;) {
        // As slow as the client's reader: apilb always holds bytes for both.
        const ssize_t n = ::recv(fd, buf, 4096, 0);
        if (n == 0) break;
        if (n < 0) {
            intact = false;
            break;
        }
        intact = intact && in.check(buf, static_cast<std::size_t>(n));
        r.bytes += static_cast<std::uint64_t>(n);
        std::this_thread::sleep_for(1ms);
    }
    r.intact = intact;
    done = true;
    sender.join();
    ::shutdown(fd, SHUT_WR);
    seen.add(r);
}

/// A backend that echoes, except for a connection whose first byte is 'H'
/// (a half-closed session): it reads until the client's FIN, then, once
/// `release` is set (at most 30 s), answers with the sha256 of all it read
/// and ends with a FIN. Its backend -> client direction outlives the
/// client's FIN across the upgrade. A first byte 'S' (a stalled backend)
/// does the same, but reads nothing after its first read until `release`:
/// its receive buffer fills, and apilb cannot write out what it read. A
/// first byte 'B' is a stream_session's (serve_stream, recorded in `seen`).
tcp_server::handler echo_or_digest(const std::atomic<bool>& release, recorder<stream_seen>& seen) {
    return [&release, &seen](int& fd) {
        timeval tv{30, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[65536];
        std::string kept;
        bool digest = false, first = true;
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            if (first && buf[0] == 'B') return serve_stream(fd, std::string(buf, static_cast<std::size_t>(n)), seen);
            if (first) {
                digest = buf[0] == 'H' || buf[0] == 'S';
                if (buf[0] == 'S') wait_until([&] { return release.load(); }, 30s, 5ms);
            }
            first = false;
            if (digest) {
                kept.append(buf, static_cast<std::size_t>(n));
                continue;
            }
            for (ssize_t at = 0; at < n;) {
                const ssize_t w = ::send(fd, buf + at, static_cast<std::size_t>(n - at), MSG_NOSIGNAL);
                if (w <= 0) return;
                at += w;
            }
        }
        if (digest) {
            wait_until([&] { return release.load(); }, 30s, 5ms);
            const std::string answer = sha256_hex(kept);
            (void)::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
        }
        ::shutdown(fd, SHUT_WR);
    };
}

/// A bulk transfer both ways through one session, paced (64 KiB every
/// 10 ms) so that it runs across the upgrade: `bytes` of random data out,
/// the echo back, both hashed.
class bulk_session {
public:
    bulk_session(std::uint16_t port, std::size_t bytes, std::uint32_t seed) : data_(random_bytes(bytes, seed)) {
        c_.set_timeout(20s);
        connected_ = c_.connect("127.0.0.1", port) == 0;
        if (!connected_) return;
        writer_ = std::thread([this] {
            for (std::size_t at = 0; at < data_.size(); at += 65536) {
                if (!c_.send_all(data_.data() + at, std::min<std::size_t>(65536, data_.size() - at))) return;
                std::this_thread::sleep_for(10ms);
            }
        });
        reader_ = std::thread([this] { echoed_ = c_.recv_exact(data_.size()); });
    }
    ~bulk_session() { join(); }
    void join() {
        if (writer_.joinable()) writer_.join();
        if (reader_.joinable()) reader_.join();
    }
    bool connected() const { return connected_; }
    std::string sent_sha() const { return sha256_hex(data_); }
    std::string echoed_sha() const { return sha256_hex(echoed_); }
    client& conn() { return c_; }

private:
    std::string data_;
    std::string echoed_;
    client c_;
    bool connected_ = false;
    std::thread writer_, reader_;
};


class SessionHandoverTest : public ::testing::Test {
protected:
    std::atomic<bool> release{false};
    recorder<stream_seen> streams_seen;
    tcp_server b0{"127.0.0.1", echo_or_digest(release, streams_seen)};
    tcp_server b1{"127.0.0.1", echo_or_digest(release, streams_seen)};
    temp_dir dir;
    std::uint16_t port = free_port();
    std::uint16_t admin_port = free_port();

    std::string config(const std::string& drain = "3s") const {
        return single_pool_config(
            port, {b0.address(), b1.address()}, "round-robin", 2,
            fmt::format("timeouts: {{drain: {}}}\nadmin: {{address: \"127.0.0.1:{}\"}}\n", drain, admin_port));
    }
    ~SessionHandoverTest() override { release = true; }

    /// 40 idle sessions, then SIGUSR2 with the test-only fault `fault`=3 in
    /// the session phase: the upgrade fails, every session relays on in the
    /// old process, which serves on. The sessions it took back (its log).
    long long take_back_after_failed_session_phase(const char* fault);
};

long long SessionHandoverTest::take_back_after_failed_session_phase(const char* fault) {
    scoped_env env(fault, "3");
    apilb_process old(dir, config(), "127.0.0.1", port);
    std::vector<client> idle = open_idle_sessions(port, 40);
    old.proc().signal(SIGUSR2);
    EXPECT_TRUE(old.wait_for_log("upgrade failed:", 60s)) << old.log();
    EXPECT_TRUE(old.wait_for_log("session(s)", 5s)) << old.log();
    const long long back = from_log(old.log(), R"(took back (\d+) session\(s\))");
    expect_idle_sessions_relay(idle, "after");
    EXPECT_TRUE(old.proc().running());
    EXPECT_EQ(metric(admin_port, "apilb_session_handover_total{result=\"adopted\"}"), back);
    client c;
    c.set_timeout(5s);
    EXPECT_EQ(c.connect("127.0.0.1", port), 0);
    EXPECT_TRUE(c.send_all("new\n"));
    EXPECT_EQ(c.recv_exact(4), "new\n");
    idle.clear();
    EXPECT_EQ(old.terminate(), 0);
    return back;
}

/// How many idle sessions the handover test opens: 150 in the suite;
/// APILB_TEST_HANDOVER_SESSIONS sets another number (the 1 000-session
/// measurement in docs/upgrade.md).
int idle_session_count() {
    if (const char* v = std::getenv("APILB_TEST_HANDOVER_SESSIONS")) return std::max(1, std::atoi(v));
    return 150;
}

TEST_F(SessionHandoverTest, EstablishedSessionsMoveToTheNewProcessWithoutAReset) {
    apilb_process old(dir, config(), "127.0.0.1", port);
    const int idle_n = idle_session_count();
    constexpr int half_n = 20, bulk_n = 4;
    std::vector<client> idle = open_idle_sessions(port, idle_n);
    // Half-closed: the client sent its bytes and FIN; the answer comes after the upgrade.
    std::vector<client> half(half_n);
    std::vector<std::string> half_sha;
    for (int i = 0; i < half_n; ++i) {
        client& c = half[static_cast<std::size_t>(i)];
        c.set_timeout(20s);
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        const std::string payload = "H" + random_bytes(10'000 + static_cast<std::size_t>(i), 100 + i);
        ASSERT_TRUE(c.send_all(payload));
        c.shutdown_write();
        half_sha.push_back(sha256_hex(payload));
    }
    steady_load load(port, 250, 20ms);
    ASSERT_TRUE(wait_until([&] { return load.done() >= 50; }, 20s));
    std::vector<std::unique_ptr<bulk_session>> bulk;
    for (int i = 0; i < bulk_n; ++i) {
        bulk.push_back(std::make_unique<bulk_session>(port, 8u << 20, 7 + i));
        ASSERT_TRUE(bulk.back()->connected());
    }
    const upgrade_outcome up = upgrade(old);
    ASSERT_NE(up.new_pid, 0) << old.log();
    const pid_t new_pid = up.new_pid;
    end_at_exit guard{{new_pid}};
    const std::string& log = up.log;
    const long long handed = up.handed, kept = up.kept;
    std::cout << "session handover: " << handed << " session(s) in " << up.phase_ms << " ms, " << kept << " kept\n";
    EXPECT_GE(handed, idle_n + half_n) << log;
    EXPECT_EQ(kept, 0) << log;

    // The old process had nothing left to drain: it exits 0, and from here
    // only the new one can relay. Every kind of session goes on there,
    // nothing lost.
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    release = true;
    for (int i = 0; i < half_n; ++i) {
        int end_errno = -1;
        const std::string answer = half[static_cast<std::size_t>(i)].recv_until_eof(end_errno);
        EXPECT_EQ(end_errno, 0) << "half-closed session " << i << " did not end with a clean FIN";
        EXPECT_EQ(answer, half_sha[static_cast<std::size_t>(i)]) << "half-closed session " << i;
    }
    expect_idle_sessions_relay(idle, "after");
    for (int i = 0; i < bulk_n; ++i) {
        bulk[static_cast<std::size_t>(i)]->join();
        EXPECT_EQ(bulk[static_cast<std::size_t>(i)]->echoed_sha(), bulk[static_cast<std::size_t>(i)]->sent_sha())
            << "bulk session " << i;
    }
    load.join();
    EXPECT_EQ(load.failed(), 0) << load.last_error() << "\n" << old.log();
    EXPECT_TRUE(alive(new_pid));
    EXPECT_GE(metric(admin_port, "apilb_session_handover_total{result=\"adopted\"}"), idle_n + half_n);
    EXPECT_EQ(metric(admin_port, "apilb_session_handover_total{result=\"refused\"}"), 0);
    EXPECT_NE(old.log().find("session(s) came from the old process, 0 refused"), std::string::npos) << old.log();
    idle.clear();
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

/// Whether apilb's backend legs to `backend` (an "address:port") have a
/// keepalive timer, as `ss -o` shows them; "" if there is no such socket.
std::string backend_leg_timers(const tcp_server& backend) {
    return run_command({"/usr/bin/ss", "-tnoH", "state", "established",
                        fmt::format("( dst 127.0.0.1 and dport = :{} )", backend.port())},
                       10s)
        .output;
}

// A session's backend leg gets its keepalive options from the worker's
// sweep, not at connect. Handed over, it gets them from the process that
// adopted it, with that process's config: here the old one had none to set
// (keepalive off, no user timeout), the new one has.
TEST_F(SessionHandoverTest, AHandedOverSessionGetsTheNewProcessesKeepaliveOptions) {
    if (::access("/usr/bin/ss", X_OK) != 0) GTEST_SKIP() << "ss (iproute2) is not installed";
    const auto config_with = [&](const std::string& tcp, const std::string& write_stall) {
        return single_pool_config(port, {b0.address()}, "round-robin", 2,
                                  fmt::format("tcp: {}\ntimeouts: {{drain: 3s, write_stall: {}}}\n"
                                              "admin: {{address: \"127.0.0.1:{}\"}}\n",
                                              tcp, write_stall, admin_port));
    };
    apilb_process old(dir, config_with("{keepalive: false, user_timeout: 0}", "60s"), "127.0.0.1", port);
    std::vector<client> idle = open_idle_sessions(port, 1);
    const std::string before = backend_leg_timers(b0);
    ASSERT_NE(before, "") << "no backend leg";
    EXPECT_EQ(before.find("keepalive"), std::string::npos) << before;
    // The new process reads the config anew: a sweep every second (a tenth of write_stall).
    dir.write("apilb.yaml", config_with("{keepalive_idle: 42s, user_timeout: 21s}", "10s"));
    const upgrade_outcome up = upgrade(old);
    ASSERT_NE(up.new_pid, 0) << old.log();
    end_at_exit guard{{up.new_pid}};
    EXPECT_EQ(up.handed, 1) << up.log;
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    std::string after;
    EXPECT_TRUE(
        wait_until([&] { return (after = backend_leg_timers(b0)).find("keepalive") != std::string::npos; }, 10s))
        << "the adopted session's backend leg never got keepalive: " << after;
    expect_idle_sessions_relay(idle, "after");
    idle.clear();
    end_by_pid(up.new_pid);
}

TEST_F(SessionHandoverTest, NewBinaryThatDiesInTheSessionPhaseLeavesEverySessionWithTheOld) {
    // The new process exits after its third session frame (test only).
    // Every session it had been sent comes back; those still quiescing
    // when its death was seen never left their worker. Most runs send all
    // 40 first, but with relay.io: io_uring a quiesce waits for its recv's
    // cancel to complete, and under ThreadSanitizer the old process saw
    // the death with 25 sent and 15 still quiescing. Either way all 40
    // relay with the old process (take_back_after_failed_session_phase).
    const long long back = take_back_after_failed_session_phase("APILB_UPGRADE_TEST_DIE_AFTER_SESSIONS");
    EXPECT_GE(back, 3);
    EXPECT_LE(back, 40);
}

/// A session that streams both ways without a pause until stop(): the
/// client sends a piece_stream of `id` back to back while the backend
/// (serve_stream) sends one of id + 1000, each side checking every byte of
/// what comes. Both read slower than the other sends (at most 4 KiB, then
/// a pause of 1 ms), so that apilb holds bytes it cannot write yet in both
/// directions at any moment: the session is never quiet by itself. Bounded: at most 1 GiB or 60 s of sending. After stop() the
/// client sends FIN, and reads until the backend's.
class stream_session {
public:
    stream_session(std::uint16_t port, std::uint32_t id) : id_(id) {
        c_.set_timeout(20s);
        connected_ = c_.connect("127.0.0.1", port) == 0;
        if (!connected_) return;
        writer_ = std::thread([this] {
            std::string header = "B    ";
            std::memcpy(header.data() + 1, &id_, 4);
            if (!c_.send_all(header)) write_failed_ = true;
            piece_stream out(id_);
            const auto end = std::chrono::steady_clock::now() + 60s;
            while (!write_failed_ && !stop_ && sent_ < (1ull << 30) && std::chrono::steady_clock::now() < end) {
                const std::string& p = out.next();
                if (!c_.send_all(p)) {
                    write_failed_ = true;
                    break;
                }
                sent_ += p.size();
            }
            c_.shutdown_write();
        });
        reader_ = std::thread([this] {
            piece_stream in(id_ + 1000);
            std::vector<char> buf(4 * 1024);
            for (;;) {
                const long n = c_.recv_some(buf.data(), buf.size());
                if (n <= 0) {
                    end_errno_ = static_cast<int>(-n);
                    break;
                }
                if (!in.check(buf.data(), static_cast<std::size_t>(n))) corrupt_ = true;
                received_ += static_cast<std::uint64_t>(n);
                std::this_thread::sleep_for(1ms);
            }
        });
    }
    ~stream_session() { stop(); }
    /// Ends the stream: FIN after the piece being sent.
    void request_stop() { stop_ = true; }
    /// request_stop(), then waits for the backend's end.
    void stop() {
        stop_ = true;
        if (writer_.joinable()) writer_.join();
        if (reader_.joinable()) reader_.join();
    }
    bool connected() const { return connected_; }
    std::uint32_t id() const { return id_; }
    std::uint64_t received() const { return received_; }
    /// After stop(), with what the backend saw of this stream: what went
    /// wrong, or empty if every byte went through both ways, in order, each
    /// way ended by a clean FIN.
    std::string check(const std::vector<stream_seen>& seen) const {
        if (write_failed_) return "a send failed";
        if (end_errno_ != 0)
            return fmt::format("backend -> client ended with errno {} after {}B", end_errno_, received_.load());
        if (corrupt_) return "backend -> client: bytes differ from what was sent";
        for (const stream_seen& r : seen) {
            if (r.id != id_) continue;
            if (!r.intact) return "client -> backend: bytes differ from what was sent, or no FIN";
            if (r.bytes != sent_) return fmt::format("client -> backend: sent {}B, {}B came", sent_.load(), r.bytes);
            return {};
        }
        return "the backend recorded nothing of it";
    }

private:
    std::uint32_t id_;
    client c_;
    bool connected_ = false;
    std::atomic<bool> stop_{false};
    std::atomic<bool> write_failed_{false};
    std::atomic<bool> corrupt_{false};
    std::atomic<std::uint64_t> sent_{0}, received_{0};
    int end_errno_ = -1;
    std::thread writer_, reader_;
};

/// How many streams StreamsThatNeverPauseMoveToTheNewProcess runs: 16 in the
/// suite; APILB_TEST_BUSY_SESSIONS sets another number (docs/upgrade.md).
int busy_session_count() {
    if (const char* v = std::getenv("APILB_TEST_BUSY_SESSIONS")) return std::clamp(std::atoi(v), 1, 1000);
    return 16;
}

TEST_F(SessionHandoverTest, StreamsThatNeverPauseMoveToTheNewProcess) {
    apilb_process old(dir, config(), "127.0.0.1", port);
    const int n = busy_session_count();
    std::vector<std::unique_ptr<stream_session>> streams;
    for (int i = 0; i < n; ++i) {
        streams.push_back(std::make_unique<stream_session>(port, static_cast<std::uint32_t>(i)));
        ASSERT_TRUE(streams.back()->connected()) << i;
    }
    const auto all_echoed = [&](std::vector<std::uint64_t> at_least) {
        for (std::size_t i = 0; i < streams.size(); ++i) {
            if (streams[i]->received() < at_least[i]) return false;
        }
        return true;
    };
    // Every stream is under way: bytes are in flight in apilb at any moment.
    ASSERT_TRUE(wait_until([&] { return all_echoed(std::vector<std::uint64_t>(streams.size(), 1 << 20)); }, 30s));
    const upgrade_outcome up = upgrade(old);
    ASSERT_NE(up.new_pid, 0) << old.log();
    const pid_t new_pid = up.new_pid;
    end_at_exit guard{{new_pid}};
    const std::string& log = up.log;
    std::cout << "[ MEASURED ] busy session handover: " << up.handed << " of " << n << " streaming session(s) in "
              << up.phase_ms << " ms, " << up.kept << " kept\n";
    EXPECT_EQ(up.handed, n) << log;
    EXPECT_EQ(up.kept, 0) << log;
    // The old process kept nothing: it exits 0, and from here only the new
    // one relays. Every stream goes on there (another MiB each way at least).
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    std::vector<std::uint64_t> then;
    for (auto& st : streams) then.push_back(st->received() + (1 << 20));
    EXPECT_TRUE(wait_until([&] { return all_echoed(then); }, 30s)) << "a stream stopped after the upgrade";
    // All at once: what the socket buffers hold drains at the readers' pace.
    for (auto& st : streams) st->request_stop();
    for (auto& st : streams) st->stop();
    const std::vector<stream_seen> seen = streams_seen.wait_for(streams.size(), 30s);
    for (auto& st : streams) EXPECT_EQ(st->check(seen), "") << "stream " << st->id();
    EXPECT_TRUE(alive(new_pid));
    EXPECT_EQ(metric(admin_port, "apilb_session_handover_total{result=\"adopted\"}"), n);
    EXPECT_EQ(metric(admin_port, "apilb_session_handover_total{result=\"refused\"}"), 0);
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

TEST_F(SessionHandoverTest, SessionWhoseBackendStopsReadingStaysWithTheOldProcess) {
    // A drain long enough for the kept session to end on its own.
    apilb_process old(dir, config("30s"), "127.0.0.1", port);
    std::vector<client> idle = open_idle_sessions(port, 10);
    // The client sends 16 MiB and FIN to a backend that reads nothing until
    // released: apilb holds bytes it cannot write out.
    const std::string payload = "S" + random_bytes(16u << 20, 41);
    stalling_upload stalled(port, payload);
    ASSERT_TRUE(stalled.connected());
    // Stalled: the client's sends have made no progress for a while.
    EXPECT_TRUE(stalled.wait_stalled());
    ASSERT_LT(stalled.sent(), payload.size()) << "the backend's buffers took all of it";
    const upgrade_outcome up = upgrade(old);
    ASSERT_NE(up.new_pid, 0) << old.log();
    const pid_t new_pid = up.new_pid;
    end_at_exit guard{{new_pid}};
    const std::string& log = up.log;
    std::cout << "[ MEASURED ] session phase with one stalled session: " << up.phase_ms << " ms\n";
    EXPECT_EQ(up.handed, 10) << log;
    EXPECT_EQ(up.kept, 1) << log;
    // Given up after its quiesce (1 s), not after the whole phase (5 s).
    EXPECT_LT(up.phase_ms, 4500) << log;
    // The others relay in the new process; the old one drains the kept one.
    expect_idle_sessions_relay(idle, "after");
    EXPECT_TRUE(old.proc().running());
    release = true;
    stalled.join();
    int end_errno = -1;
    const std::string answer = stalled.conn().recv_until_eof(end_errno);
    EXPECT_EQ(end_errno, 0) << "the kept session did not end with a clean FIN";
    EXPECT_EQ(answer, sha256_hex(payload)) << "the kept session lost bytes";
    EXPECT_EQ(old.proc().wait(30s), 0) << old.log();
    idle.clear();
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (old and new)");
}

TEST_F(SessionHandoverTest, SendThatFailsHalfWayThroughABatchLeavesEverySessionWithTheOld) {
    // The third session frame's send fails as if the new binary had died
    // (test only), with the first worker's whole batch out of its worker:
    // all of it comes back, not only the two frames sent (the other
    // worker's sessions may never have left it).
    EXPECT_GE(take_back_after_failed_session_phase("APILB_UPGRADE_TEST_FAIL_SEND_AT"), 3);
}


}  // namespace
}  // namespace apilb::test
