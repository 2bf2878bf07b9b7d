// Real network faults between real hosts: a client, apilb and two stand-in
// apiservers, each in a network namespace on a private bridge (198.18.0.0/24,
// never connected to the host's interfaces), removed afterwards. Faults are
// the kernel's own: nft rules that drop one direction of a host's traffic,
// and a slow, lossy, reordering link (a delay line the test runs between two
// TUN devices: this kernel has no sch_netem). apilb runs in its namespace as
// the real binary; the clients are TLS watches made from a thread inside the
// client namespace.
//
// Each case prints one line: what the client saw, what apilb logged and
// counted, and how long until clients were served again. docs/reliability.md
// ("Network faults") holds the figures.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <sys/resource.h>

#include <csignal>

#include "netfault_tools.hpp"

namespace apilb::test {
namespace {

using namespace netfault;

const int slowdown = apilb_has_asan() ? 2 : 1;  ///< the ASan build runs with doubled timeouts

const std::string client_ip = "198.18.0.50";
const std::string lb_ip = "198.18.0.10";
const std::string b1_ip = "198.18.0.21";
const std::string b2_ip = "198.18.0.22";

/// "4 reset, 1 FIN": how many connections ended which way.
std::string counts_text(const std::map<std::string, int>& kinds) {
    std::string out;
    for (const auto& [k, n] : kinds) out += fmt::format("{}{} {}", out.empty() ? "" : ", ", n, k);
    return out;
}

class NetFault : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
            GTEST_SKIP() << "needs network namespaces (root, iproute2, veth and bridge): " << why;
        }
        nft_ = find_program("nft");
        ASSERT_FALSE(nft_.empty()) << "nft (nftables) is not installed (scripts/install-deps.sh)";
        // 2 000 watches need 2 000 descriptors here and 4 000 in apilb, which
        // inherits the limit.
        rlimit rl{};
        ::getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
        ::signal(SIGPIPE, SIG_IGN);

        netns_segment::remove_orphans("apilb-nf-");
        segment_ = std::make_unique<netns_segment>("apilb-nf-" + std::to_string(::getpid()));
        segment_->add_host("cl", {client_ip + "/24"});
        segment_->add_host("lb", {lb_ip + "/24"});
        segment_->add_host("b1", {b1_ip + "/24"});
        segment_->add_host("b2", {b2_ip + "/24"});
        certs_ = certs_dir_->file("certs");
        tls_ = std::make_unique<tls_client_context>(certs_ + "/ca.crt");
        in_netns(segment_->ns("b1"), [&] { b1_ = std::make_unique<standin_process>(dir_, certs_, b1_ip, "b1"); });
        in_netns(segment_->ns("b2"), [&] { b2_ = std::make_unique<standin_process>(dir_, certs_, b2_ip, "b2"); });
        in_netns(segment_->ns("lb"), [&] {
            port_ = free_port(lb_ip);
            admin_port_ = free_port("127.0.0.1");
        });
    }

    /// One PKI for every case: making it takes seconds on a loaded machine.
    static void SetUpTestSuite() {
        certs_dir_ = new temp_dir;
        make_certs(*certs_dir_);
    }
    static void TearDownTestSuite() {
        delete certs_dir_;
        certs_dir_ = nullptr;
    }

    void TearDown() override {
        if (apilb_) {
            EXPECT_EQ(apilb_->terminate(), std::optional<int>(0)) << tail(apilb_->log());
        }
        apilb_.reset();
        b1_.reset();
        b2_.reset();
        segment_.reset();
    }

    static std::string tail(const std::string& s) { return s.size() > 6000 ? s.substr(s.size() - 6000) : s; }

    /// apilb in its namespace: listener "api" on lb:port_ over pool "cp"
    /// (`backends` YAML lines), the admin endpoint on its loopback.
    /// `timeouts` always has a short drain: at the end a session may be
    /// left on a link the test has taken away.
    void start_apilb(const std::string& backends, const std::string& pool_extra, const std::string& extra = {},
                     const std::string& timeouts = "{drain: 1s}") {
        const std::string yaml = fmt::format(R"(workers: 2
listeners:
  - {{name: api, address: "{}:{}", pool: cp}}
pools:
  - name: cp
    balance: least-connections
    backends:
{}{}{}timeouts: {}
admin:
  address: "127.0.0.1:{}"
log: {{level: info}}
)",
                                             lb_ip, port_, backends, pool_extra, extra, timeouts, admin_port_);
        in_netns(segment_->ns("lb"), [&] { apilb_ = std::make_unique<apilb_process>(dir_, yaml, lb_ip, port_); });
    }

    std::string both_backends() const {
        return fmt::format("      - {{name: b1, address: \"{}\"}}\n      - {{name: b2, address: \"{}\"}}\n",
                           b1_->address(), b2_->address());
    }

    static std::string health(int interval_ms, int timeout_ms, int fall, const std::string& certs) {
        return fmt::format(R"(    health:
      interval: {}ms
      timeout: {}ms
      rise: 1
      fall: {}
      slow_start: 0s
      tls: {{ca_file: {}/ca.crt}}
)",
                           interval_ms, timeout_ms, fall, certs);
    }

    /// A sample of apilb's /metrics ("name{labels}"), -1 if absent.
    double metric(const std::string& sample) {
        http_answer a;
        in_netns(segment_->ns("lb"), [&] { a = http_exchange(admin_port_, "GET", "/metrics"); });
        const auto at = a.body.find("\n" + sample + " ");
        if (at == std::string::npos) return -1;
        return std::stod(a.body.substr(at + sample.size() + 2));
    }
    double closed(const std::string& reason) {
        return metric("apilb_sessions_closed_total{reason=\"" + reason + "\"}");
    }
    double failed(const std::string& side, const std::string& error) {
        return metric("apilb_sessions_failed_total{side=\"" + side + "\",error=\"" + error + "\"}");
    }
    double healthy(const std::string& backend) {
        return metric("apilb_backend_healthy{pool=\"cp\",backend=\"" + backend + "\"}");
    }

    /// `nft` commands in `host`'s namespace; fails the test if nft does.
    void nft(const std::string& host, const std::string& script) {
        auto r = run_command({find_program("ip"), "netns", "exec", segment_->ns(host), nft_, script}, 10s);
        ASSERT_EQ(r.exit_code, 0) << "nft " << script << ": " << r.output;
    }
    /// Drops every packet `host` sends to `peer` (out) or receives from it (in).
    void drop(const std::string& host, const std::string& direction, const std::string& peer) {
        const bool out = direction == "out";
        nft(host, fmt::format("add table inet netfault; add chain inet netfault c {{ type filter hook {} priority 0; "
                              "policy accept; }}; add rule inet netfault c ip {} {} drop",
                              out ? "output" : "input", out ? "daddr" : "saddr", peer));
    }
    void heal(const std::string& host) { nft(host, "delete table inet netfault"); }

    /// Which backend answers a new GET /version from the client host ("" if none).
    std::string new_client_backend() {
        std::string backend;
        in_netns(segment_->ns("cl"), [&] {
            tls_session s(*tls_);
            std::string error;
            if (s.open(lb_ip, port_, "/version", 5s * slowdown, error) && s.status() == 200) backend = s.backend();
        });
        return backend;
    }

    static inline temp_dir* certs_dir_ = nullptr;
    temp_dir dir_;
    std::string nft_;
    std::unique_ptr<netns_segment> segment_;
    std::string certs_;
    std::unique_ptr<tls_client_context> tls_;
    std::unique_ptr<standin_process> b1_;
    std::unique_ptr<standin_process> b2_;
    std::uint16_t port_ = 0;
    std::uint16_t admin_port_ = 0;
    std::unique_ptr<apilb_process> apilb_;
};

// ---------------------------------------------------------------- case 1

TEST_F(NetFault, ABackendThatGoesSilentMidStreamEndsItsClientsWithAResetInEachDirection) {
    constexpr int interval = 300, timeout = 300, fall = 2;
    // Backend leg: keepalive would find the silence after 1 + 1 x 2 s, the
    // user timeout after 3 s of unacknowledged data; the probes find it first.
    start_apilb(both_backends(), health(interval, timeout, fall, certs_),
                "tcp: {keepalive_idle: 1s, keepalive_interval: 1s, keepalive_count: 2, user_timeout: 3s}\n");
    ASSERT_TRUE(wait_until([&] { return healthy("b1") == 1 && healthy("b2") == 1; }, 5s)) << apilb_->log();
    const milliseconds bound = milliseconds(fall * interval + timeout + 3000) * slowdown;

    for (const std::string direction : {"backend->lb", "lb->backend"}) {
        SCOPED_TRACE(direction);
        // least-connections splits the 8 watches between b1 and b2 once both
        // workers have heard that b1 is healthy; the metric is the control
        // thread's view, which the workers learn a moment later (seconds on
        // a loaded sanitizer run). So a fleet that all went to b2 is opened
        // again, a few times at most. So is one where a watch ended while
        // the fleet opened: with 300 ms probe timeouts a starved sanitizer
        // run can see b1 fail two probes, and apilb then resets b1's
        // sessions, as it should (the log says so below if it happens).
        std::unique_ptr<watch_fleet> fleet_owner;
        std::vector<std::size_t> victims;
        std::string setup_trouble;
        for (int attempt = 0; attempt < 5 && victims.size() < 2; ++attempt) {
            if (attempt > 0) std::this_thread::sleep_for(1s);
            fleet_owner.reset();
            fleet_owner = std::make_unique<watch_fleet>(*tls_, segment_->ns("cl"), lb_ip, port_, 8, false);
            const bool settled = wait_until(
                [&] { return fleet_owner->open_count() == 8 || !fleet_owner->ends().empty(); }, 15s * slowdown);
            if (!settled || !fleet_owner->ends().empty()) {
                setup_trouble += fmt::format("fleet {}: {} of 8 open, {} ended, last error: {}\n", attempt + 1,
                                             fleet_owner->open_count(), fleet_owner->ends().size(),
                                             fleet_owner->last_error());
                continue;
            }
            victims = fleet_owner->on("b1");
        }
        ASSERT_GE(victims.size(), 2u) << "five fleets of 8 watches put fewer than 2 on b1 or did not open\n"
                                      << setup_trouble << tail(apilb_->log());
        if (!setup_trouble.empty()) std::cout << "[ NETFAULT ] opening the fleet again:\n" << setup_trouble;
        watch_fleet& fleet = *fleet_owner;
        const double health0 = closed("health");
        const double timeout0 = failed("backend", "timeout");

        const auto t0 = steady::now();
        if (direction == "backend->lb") {
            drop("b1", "out", lb_ip);
        } else {
            drop("b1", "in", lb_ip);
        }
        ASSERT_FALSE(HasFatalFailure());
        ASSERT_TRUE(wait_until([&] { return fleet.ends().size() >= victims.size(); }, bound + 5s))
            << "the watches on the silent backend did not end\n"
            << tail(apilb_->log());
        const auto ends = fleet.ends();
        double last_end = 0;
        std::map<std::string, int> kinds;
        for (const auto& e : ends) {
            EXPECT_EQ(e.backend, "b1") << "only the silent backend's watches end";
            EXPECT_EQ(e.kind, end_kind::reset) << "a session apilb ends is reset, never a clean end";
            ++kinds[to_string(e.kind)];
            last_end = std::max(last_end, ms_since(t0, e.at));
        }
        EXPECT_LE(last_end, static_cast<double>(bound.count()));
        EXPECT_EQ(fleet.open_by_backend()["b2"], 8 - victims.size()) << "the other backend's watches stay";
        // New clients go to the other backend.
        const auto t_new = steady::now();
        std::string served;
        for (int i = 0; i < 4; ++i) served += new_client_backend() + " ";
        const double new_ms = ms_since(t_new) / 4;
        EXPECT_EQ(served, "b2 b2 b2 b2 ");
        EXPECT_TRUE(apilb_->wait_for_log("backend b1 (" + b1_->address() + ") is unhealthy", 2s)) << apilb_->log();
        EXPECT_EQ(healthy("b1"), 0);
        const double by_health = closed("health") - health0;
        const double by_timeout = failed("backend", "timeout") - timeout0;
        EXPECT_EQ(by_health + by_timeout, static_cast<double>(victims.size()))
            << "every ended session is counted with its reason";
        const std::string seen = counts_text(kinds);
        std::cout << fmt::format(
            "[ NETFAULT ] drop {}: {} watch(es) on b1 ended: {}; last after {:.0f} ms (bound {} ms); counted "
            "closed{{reason=health}} +{:.0f}, failed{{side=backend,error=timeout}} +{:.0f}; b1 healthy={}; new "
            "clients: {}(avg {:.0f} ms each)\n",
            direction, victims.size(), seen, last_end, bound.count(), by_health, by_timeout, healthy("b1"), served,
            new_ms);

        heal("b1");
        ASSERT_FALSE(HasFatalFailure());
        const auto t_heal = steady::now();
        ASSERT_TRUE(wait_until([&] { return healthy("b1") == 1; }, 10s)) << tail(apilb_->log());
        std::cout << fmt::format("[ NETFAULT ] drop {} healed: b1 healthy again after {:.0f} ms\n", direction,
                                 ms_since(t_heal));
    }
}

TEST_F(NetFault, ASilentBackendWithoutProbesIsFoundByKeepaliveOnTheBackendLeg) {
    // No health section: only the backend leg's own TCP settings can find a
    // backend that went silent while its watches are quiet from apilb's side.
    constexpr int idle_s = 1, interval_s = 1, count = 2;
    start_apilb(both_backends(), "",
                fmt::format("tcp: {{keepalive_idle: {}s, keepalive_interval: {}s, keepalive_count: {}, "
                            "user_timeout: 3s}}\n",
                            idle_s, interval_s, count));
    watch_fleet fleet(*tls_, segment_->ns("cl"), lb_ip, port_, 6, false);
    ASSERT_TRUE(wait_until([&] { return fleet.open_count() == 6; }, 15s * slowdown)) << fleet.last_error();
    const auto victims = fleet.on("b1");
    ASSERT_GE(victims.size(), 2u);
    const double timeout0 = failed("backend", "timeout");
    const auto t0 = steady::now();
    drop("b1", "out", lb_ip);
    ASSERT_FALSE(HasFatalFailure());
    const milliseconds expected((idle_s + interval_s * count) * 1000);
    const milliseconds bound = expected + 3000ms * slowdown;
    ASSERT_TRUE(wait_until([&] { return fleet.ends().size() >= victims.size(); }, bound + 5s))
        << "the watches on the silent backend did not end\n"
        << tail(apilb_->log());
    double first_end = 1e9, last_end = 0;
    for (const auto& e : fleet.ends()) {
        EXPECT_EQ(e.backend, "b1");
        EXPECT_EQ(e.kind, end_kind::reset) << "the client leg is reset when the backend leg timed out";
        first_end = std::min(first_end, ms_since(t0, e.at));
        last_end = std::max(last_end, ms_since(t0, e.at));
    }
    // Keepalive counts from the last byte received, up to 100 ms before the drop.
    EXPECT_GE(first_end, static_cast<double>(expected.count()) - 500);
    EXPECT_LE(last_end, static_cast<double>(bound.count()));
    EXPECT_EQ(fleet.open_by_backend()["b2"], 6 - victims.size());
    const double by_timeout = failed("backend", "timeout") - timeout0;
    EXPECT_EQ(by_timeout, static_cast<double>(victims.size())) << "counted as the backend leg timing out";
    std::cout << fmt::format(
        "[ NETFAULT ] drop backend->lb, no probes: {} watch(es) on b1 reset after {:.0f}-{:.0f} ms (keepalive "
        "{}s + {} x {}s = {} ms; bound {} ms); counted failed{{side=backend,error=timeout}} +{:.0f}\n",
        victims.size(), first_end, last_end, idle_s, count, interval_s, expected.count(), bound.count(), by_timeout);
    heal("b1");
}

// ---------------------------------------------------------------- case 3

TEST_F(NetFault, AClientLinkThatGoesSilentWithDataInFlightIsClosedByTheUserTimeoutAndTheBackendIsReset) {
    constexpr milliseconds user_timeout{2000};
    stream_server streamer(segment_->ns("b2"), b2_ip);
    start_apilb(fmt::format("      - {{name: s, address: \"{}\"}}\n", streamer.address()), "",
                fmt::format("tcp: {{keepalive_idle: 1s, keepalive_interval: 1s, keepalive_count: 2, user_timeout: "
                            "{}ms}}\n",
                            user_timeout.count()));
    const double timeout0 = failed("client", "timeout");
    client c;
    std::string got;
    in_netns(segment_->ns("cl"), [&] {
        ASSERT_EQ(c.connect(lb_ip, port_), 0);
        c.set_timeout(5s);
        got = c.recv_exact(1 << 20);
    });
    ASSERT_EQ(got.size(), 1u << 20) << "the backend's stream does not reach the client";
    // The client's ACKs (everything it sends) stop; apilb keeps sending into the silence.
    const auto t0 = steady::now();
    drop("cl", "out", lb_ip);
    ASSERT_FALSE(HasFatalFailure());
    const milliseconds bound = user_timeout + 3000ms * slowdown;
    ASSERT_TRUE(wait_until([&] { return streamer.ended().second != 0; }, bound + 5s))
        << "the backend leg was not closed\n"
        << tail(apilb_->log());
    const auto [ended_at, end_errno] = streamer.ended();
    const double took = ms_since(t0, ended_at);
    EXPECT_EQ(end_errno, ECONNRESET) << "the backend leg must be reset, was: " << std::strerror(end_errno);
    EXPECT_GE(took, static_cast<double>(user_timeout.count()) - 100);
    EXPECT_LE(took, static_cast<double>(bound.count()));
    const double by_timeout = failed("client", "timeout") - timeout0;
    EXPECT_EQ(by_timeout, 1.0) << "counted as the client leg timing out";
    EXPECT_EQ(metric("apilb_backend_active_sessions{pool=\"cp\",backend=\"s\"}"), 0);
    // Once the client's link works again, what it sends finds no session: a reset.
    heal("cl");
    ASSERT_FALSE(HasFatalFailure());
    int end = 0;
    in_netns(segment_->ns("cl"), [&] {
        c.set_timeout(5s);
        (void)c.send_all("x");
        c.recv_until_eof(end);
    });
    EXPECT_EQ(end, ECONNRESET);
    std::cout << fmt::format(
        "[ NETFAULT ] client link silent with data in flight: backend leg {} after {:.0f} ms (user_timeout {} ms, "
        "bound {} ms); counted failed{{side=client,error=timeout}} +{:.0f}; the client, its link back, gets {}\n",
        end_errno == ECONNRESET ? "reset" : std::strerror(end_errno), took, user_timeout.count(), bound.count(),
        by_timeout, end == ECONNRESET ? "a reset" : std::strerror(end));
}

// ---------------------------------------------------------------- case 2

TEST_F(NetFault, ASlowLossyBackendStaysHealthyAndCarriesEveryByteAndOneThatStallsAfterItsHandshakeIsMarkedDown) {
    // b3 sits behind a slow link: 200 ms from it to apilb, 5 % of its packets
    // lost, a quarter reordered. A probe is a connect, a TLS 1.3 handshake and
    // a request: about three round trips, 0.6 s; a lost SYN-ACK costs 1 s
    // more (the SYN's retransmission timeout), a lost data segment at least
    // 200 ms + a round trip: a probe fails only when two of its few packets
    // are lost, and with fall 2 two such probes in a row mark it down.
    segment_->add_detached_host("b3");
    delay_line link(*segment_, "lb", "198.18.1.10", "b3", "198.18.1.23", 200ms, 5, 25);
    std::unique_ptr<standin_process> b3;
    in_netns(segment_->ns("b3"), [&] { b3 = std::make_unique<standin_process>(dir_, certs_, "198.18.1.23", "b3"); });
    constexpr int interval = 500, timeout = 2000, fall = 2;
    start_apilb(fmt::format("      - {{name: b1, address: \"{}\"}}\n      - {{name: b3, address: \"{}\"}}\n",
                            b1_->address(), b3->address()),
                health(interval, timeout, fall, certs_), "", "{connect: 3s, drain: 1s}");
    ASSERT_TRUE(wait_until([&] { return healthy("b1") == 1 && healthy("b3") == 1; }, 10s)) << apilb_->log();

    // b1 completes its TLS handshakes, then never answers /readyz. (The
    // certificate names no 198.18 address: curl reaches it as "kubernetes".)
    const auto r = run_command(
        {find_program("ip"), "netns", "exec", segment_->ns("b1"), "/usr/bin/curl", "-sS", "--max-time", "5", "--cacert",
         certs_ + "/ca.crt", "--resolve", fmt::format("kubernetes:{}:{}", b1_->port(), b1_ip), "-X", "POST",
         fmt::format("https://kubernetes:{}/control/readyz?status=hang", b1_->port())},
        10s);
    ASSERT_EQ(r.output, "ok") << r.output;
    const auto t_hang = steady::now();
    // A probe that hangs takes its whole timeout and the next starts when it
    // ends: fall x max(interval, timeout), plus up to an interval before the first.
    const milliseconds bound = milliseconds(fall * std::max(interval, timeout) + interval + 3000) * slowdown;
    ASSERT_TRUE(wait_until([&] { return healthy("b1") == 0; }, bound)) << tail(apilb_->log());
    const double down_ms = ms_since(t_hang);
    EXPECT_TRUE(apilb_->wait_for_log("backend b1 (" + b1_->address() +
                                         ") is unhealthy after 2 consecutive "
                                         "failure(s): http_timeout",
                                     2s))
        << tail(apilb_->log());
    std::string served;
    for (int i = 0; i < 3; ++i) served += new_client_backend() + " ";
    EXPECT_EQ(served, "b3 b3 b3 ") << "new clients are not sent to the stalled backend";

    // A bulk transfer through apilb over the slow link: every byte back.
    const std::string body = random_bytes(256 * 1024, 15);
    std::string echoed, error;
    const auto t_bulk = steady::now();
    in_netns(segment_->ns("cl"), [&] { echoed = tls_echo(*tls_, lb_ip, port_, body, 60s, error); });
    const double bulk_ms = ms_since(t_bulk);
    EXPECT_EQ(echoed.size(), body.size()) << error;
    EXPECT_EQ(fnv1a(echoed.data(), echoed.size()), fnv1a(body.data(), body.size())) << "bytes changed on the way";
    EXPECT_EQ(healthy("b3"), 1) << "the slow backend stays healthy\n" << tail(apilb_->log());
    const double probe_failures = metric("apilb_backend_probe_failures_total{pool=\"cp\",backend=\"b3\"}");
    std::cout << fmt::format(
        "[ NETFAULT ] readyz stalls after the TLS handshake: b1 unhealthy (http_timeout) after {:.0f} ms (bound {} "
        "ms), new clients: {}\n"
        "[ NETFAULT ] slow link (200 ms, 5 % loss, 25 % reordered): 2 x {} KiB echoed in {:.0f} ms, hash equal: {}; "
        "b3 healthy={}, {:.0f} failed probe(s); link carried {} packets, dropped {}\n",
        down_ms, bound.count(), served, body.size() / 1024, bulk_ms, echoed == body, healthy("b3"), probe_failures,
        link.carried(), link.dropped());
}

// ---------------------------------------------------------------- case 4

TEST_F(NetFault, TwoThousandWatchesAllComeBackAfterTheApiserverRestarts) {
    constexpr std::size_t watches = 2000;
    constexpr int rate = 1000;
    start_apilb(
        fmt::format("      - {{name: b1, address: \"{}\"}}\n", b1_->address()),
        health(300, 300, 1, certs_) + fmt::format("    storm_control: {{new_per_second: {}, burst: 50}}\n", rate),
        "tcp: {keepalive_idle: 1s, keepalive_interval: 1s, keepalive_count: 2, user_timeout: 3s}\n");
    ASSERT_TRUE(wait_until([&] { return healthy("b1") == 1; }, 5s)) << apilb_->log();
    // An event every 10 s: the cost here is the handshakes, not the events.
    // An attempt waits 20 s (40 s with ASan) before it gives up: giving up
    // sooner only adds handshakes when the machine is slow.
    watch_fleet fleet(*tls_, segment_->ns("cl"), lb_ip, port_, watches, true, "/watch?interval_ms=10000",
                      20s * slowdown);
    const auto t_open = steady::now();
    ASSERT_TRUE(wait_until([&] { return fleet.open_count() == watches; }, 40s * slowdown))
        << fleet.open_count() << " open; " << fleet.last_error() << "\n"
        << tail(apilb_->log());
    const double open_ms = ms_since(t_open);
    const double delayed0 = metric("apilb_backend_storm_delayed_total{pool=\"cp\",backend=\"b1\"}");
    const auto ends0 = fleet.ends().size();

    const auto t_kill = steady::now();
    b1_->kill();
    // Every watch must end, and none by a timeout of the client's own or an
    // error: the apiserver's kernel closes them, apilb passes that on at once.
    // A watch that ended reconnects at once, and a reconnect that fails (no
    // backend is up) is an end too: count the watches that ended, not ends.
    const auto watches_ended = [&] {
        const auto ends = fleet.ends();
        std::vector<bool> seen(watches, false);
        std::size_t n = 0;
        for (std::size_t i = ends0; i < ends.size(); ++i) {
            if (ends[i].backend.empty() || seen[ends[i].conn]) continue;
            seen[ends[i].conn] = true;
            ++n;
        }
        return n;
    };
    ASSERT_TRUE(wait_until([&] { return watches_ended() == watches; }, 10s * slowdown))
        << watches_ended() << " of " << watches << " watches ended";
    double last_end = 0;
    std::map<std::string, int> kinds;
    {
        const auto ends = fleet.ends();
        std::vector<bool> seen(watches, false);
        for (std::size_t i = ends0; i < ends.size(); ++i) {
            if (ends[i].backend.empty() || seen[ends[i].conn]) continue;  // a failed reconnect, not a watch's end
            seen[ends[i].conn] = true;
            ++kinds[to_string(ends[i].kind)];
            last_end = std::max(last_end, ms_since(t_kill, ends[i].at));
        }
    }
    EXPECT_EQ(kinds["FIN"] + kinds["reset"], static_cast<int>(watches)) << "every watch ended at once";
    std::this_thread::sleep_for(1s);  // the apiserver is down for a second
    in_netns(segment_->ns("b1"), [&] { b1_->restart(); });
    const auto t_restart = steady::now();
    // Reconnecting costs what opening them did (the TLS handshakes, on a
    // loaded 2-core machine: 7-16 s plain, 31 s with ASan), with room, plus
    // the turns at `rate`, the clients' backoff (at most 3.2 s) and a margin.
    const milliseconds bound(static_cast<long>(open_ms * 1.5) + 1000 * static_cast<long>(watches) / rate + 3200 +
                             10000 * slowdown);
    const bool back = wait_until(
        [&] {
            if (fleet.open_count() != watches) return false;
            for (std::size_t i = 0; i < watches; ++i) {
                if (fleet.opened_at(i) < t_kill) return false;
            }
            return true;
        },
        bound);
    const double back_ms = ms_since(t_restart);
    EXPECT_TRUE(back) << fleet.open_count() << " of " << watches << " back; " << fleet.last_error() << "\n"
                      << tail(apilb_->log());
    const double delayed = metric("apilb_backend_storm_delayed_total{pool=\"cp\",backend=\"b1\"}") - delayed0;
    const double refused = metric("apilb_backend_storm_refused_total{pool=\"cp\",backend=\"b1\"}");
    EXPECT_GT(delayed, 0) << "storm control paced the reconnects";
    const std::string seen = counts_text(kinds);
    std::cout << fmt::format(
        "[ NETFAULT ] apiserver SIGKILLed under {} watches (opened in {:.0f} ms at {}/s): every watch ended within "
        "{:.0f} ms ({}); restarted after 1 s; all {} back {:.0f} ms after the restart (bound {} ms); "
        "storm_delayed +{:.0f}, storm_refused {:.0f}\n",
        watches, open_ms, rate, last_end, seen, watches, back_ms, bound.count(), delayed, refused);
    fleet.stop();
}

}  // namespace
}  // namespace apilb::test
