// Resource and process faults against the real binary (issue 15, item 3b):
// descriptor exhaustion, memory pressure, a full or read-only filesystem
// under every file apilb writes, SIGSTOP/SIGCONT of apilb itself, and steps
// of the wall clock. Each case prints one line: what the client saw, what
// apilb logged and counted, and how long until it served again. The stalled
// log reader is LogStall.* in log_stall_test.cpp.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include "harness.hpp"
#include "standin.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

long since_ms(steady::time_point t0) { return std::chrono::duration_cast<milliseconds>(steady::now() - t0).count(); }

/// One GET to the admin endpoint (the harness's, bounded at 10 s; status 0
/// if nothing answered).
http_answer admin_get(std::uint16_t admin, const std::string& path) { return http_exchange(admin, "GET", path); }

/// A sample of /metrics (`name` with its labels, as printed), or -1.
double metric(std::uint16_t admin, const std::string& name) {
    const std::string text = admin_get(admin, "/metrics").body;
    const auto at = text.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + name.size() + 2));
}

/// User + system CPU seconds of process `pid` so far.
double cpu_seconds(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Fields after the command name (which may hold spaces) in parentheses.
    std::istringstream rest(text.substr(text.rfind(')') + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

/// The descriptor limit that leaves process `pid` exactly `room` free
/// descriptor numbers (new descriptors take the lowest free number below
/// the limit; those it has open above it stay open).
long limit_leaving(pid_t pid, int room) {
    std::vector<bool> used;
    for (const auto& e : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid))) {
        const auto fd = static_cast<std::size_t>(std::stoi(e.path().filename().string()));
        if (used.size() <= fd) used.resize(fd + 1);
        used[fd] = true;
    }
    long limit = 0;
    for (int free_below = 0; free_below < room; ++limit) {
        if (static_cast<std::size_t>(limit) >= used.size() || !used[static_cast<std::size_t>(limit)]) ++free_below;
    }
    return limit;
}

/// Sets the soft RLIMIT_NOFILE of a running process with util-linux prlimit.
void set_nofile(pid_t pid, long soft) {
    const auto r = run_command({"/usr/bin/prlimit", fmt::format("--pid={}", pid), fmt::format("--nofile={}:", soft)});
    ASSERT_EQ(r.exit_code, 0) << r.output;
}

/// What a client of apilb sees: "served" (its bytes echoed), "reset",
/// "closed" (a clean end), "timeout" (nothing within `timeout`), or "refused".
struct outcome {
    std::string what;
    long ms = 0;  ///< from connect to the outcome
};
outcome try_echo(client& c, std::uint16_t port, milliseconds timeout) {
    const auto t0 = steady::now();
    // On loopback the reset of a client accepted only to be reset can come
    // before connect() has returned.
    if (const int err = c.connect("127.0.0.1", port, timeout); err != 0) {
        return {err == ECONNRESET ? "reset" : err == ECONNREFUSED ? "refused" : std::strerror(err), since_ms(t0)};
    }
    c.set_timeout(timeout);
    if (!c.send_all("ping")) return {"reset", since_ms(t0)};
    char buf[4];
    std::size_t got = 0;
    while (got < 4) {
        const long n = c.recv_some(buf + got, 4 - got);
        if (n == 0) return {"closed", since_ms(t0)};
        if (n == -EAGAIN) return {"timeout", since_ms(t0)};
        if (n < 0) return {n == -ECONNRESET ? "reset" : "error", since_ms(t0)};
        got += static_cast<std::size_t>(n);
    }
    return {"served", since_ms(t0)};
}
outcome try_echo(std::uint16_t port, milliseconds timeout) {
    client c;
    return try_echo(c, port, timeout);
}

/// Polls until a new client is served; the milliseconds it took, or -1.
long until_served(std::uint16_t port, milliseconds limit = milliseconds(10000)) {
    const auto t0 = steady::now();
    while (steady::now() - t0 < limit) {
        if (try_echo(port, milliseconds(1000)).what == "served") return since_ms(t0);
        std::this_thread::sleep_for(milliseconds(20));
    }
    return -1;
}

/// True if every held session still echoes.
bool all_echo(std::vector<client>& held) {
    for (auto& c : held) {
        c.set_timeout(milliseconds(3000));
        if (!c.send_all("more") || c.recv_exact(4) != "more") return false;
    }
    return true;
}

std::size_t count_of(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

/// SIGTERM: apilb exits 0 in time; else the end of its log says where it was.
void expect_clean_exit(apilb_process& apilb) {
    const auto code = apilb.terminate();
    if (code == std::optional<int>(0)) return;
    const std::string log = apilb.log();
    ADD_FAILURE() << "exit " << (code ? std::to_string(*code) : "none within 15 s") << "; log ends:\n"
                  << log.substr(log.size() > 3000 ? log.size() - 3000 : 0);
}

std::string admin_section(std::uint16_t admin) { return fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n", admin); }

/// Sessions still open at SIGTERM are closed after 1 s, not the default drain time.
const std::string quick_drain = "timeouts: {drain: 1s}\n";

TEST(Resfault, DescriptorExhaustionKeepsSessionsResetsNewClientsAndRecoversAtOnce) {
    tcp_server backend("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(
        dir, single_pool_config(port, {backend.address()}, "round-robin", 1, admin_section(admin) + quick_drain),
        "127.0.0.1", port);
    const pid_t pid = apilb.proc().pid();
    std::vector<client> held(3);
    for (auto& c : held) ASSERT_EQ(try_echo(c, port, milliseconds(3000)).what, "served");

    // Room for a few more descriptors only; sessions take two each. Fill it.
    set_nofile(pid, limit_leaving(pid, 6));
    std::vector<client> fill;
    for (int i = 0; i < 20; ++i) {
        client c;
        if (try_echo(c, port, milliseconds(1500)).what != "served") break;
        fill.push_back(std::move(c));
    }
    ASSERT_LT(fill.size(), 20u) << "the descriptor limit did not bite";

    // Exhausted: new clients, while apilb's CPU time is measured.
    const double cpu0 = cpu_seconds(pid);
    const auto t0 = steady::now();
    std::vector<outcome> fresh;
    for (int i = 0; i < 4; ++i) fresh.push_back(try_echo(port, milliseconds(6000)));
    const http_answer livez = admin_get(admin, "/livez");
    const http_answer metrics = admin_get(admin, "/metrics");
    while (since_ms(t0) < 3000) std::this_thread::sleep_for(milliseconds(50));
    const double cpu = cpu_seconds(pid) - cpu0;
    const long exhausted_ms = since_ms(t0);
    const bool held_ok = all_echo(held);
    EXPECT_TRUE(held_ok) << "sessions open before the exhaustion must go on";
    long worst = 0;
    std::string seen;
    for (const auto& o : fresh) {
        seen += fmt::format("{}{}@{}ms", seen.empty() ? "" : " ", o.what, o.ms);
        worst = std::max(worst, o.ms);
        EXPECT_EQ(o.what, "reset") << "a new client must be reset, not left hanging";
    }
    EXPECT_LT(cpu, 0.5 * exhausted_ms / 1000.0) << "apilb spun on EMFILE";
    EXPECT_EQ(livez.status, 200) << "/livez under descriptor exhaustion";

    // Descriptors are free again: served at once.
    fill.clear();
    const long recovered = until_served(port);
    EXPECT_GE(recovered, 0);
    const double resets = metric(admin, "apilb_clients_reset_total{reason=\"no_descriptors\"}");
    const double errors = metric(admin, "apilb_resource_errors_total");
    const std::string log = apilb.log();
    const std::size_t lines = count_of(log, "Too many open files");
    EXPECT_GE(resets, static_cast<double>(fresh.size()));
    EXPECT_GE(errors, 1.0);
    EXPECT_GE(lines, 1u);
    // At most one a second from the worker and one from the admin endpoint.
    EXPECT_LE(lines, static_cast<std::size_t>(2 * exhausted_ms / 1000 + 4)) << "rate-limited";
    set_nofile(pid, 1024);
    std::cout << fmt::format(
        "[ RESULT  ] fds exhausted ({} sessions held): new clients {}; held sessions {}; "
        "/livez {} /metrics {}; apilb CPU {:.2f}s over {}ms; logged {} line(s), "
        "clients_reset{{no_descriptors}}={} resource_errors={}; served again {}ms after "
        "descriptors were freed\n",
        held.size() + fill.size(), seen, held_ok ? "echo" : "STOPPED", livez.status, metrics.status, cpu, exhausted_ms,
        lines, resets, errors, recovered);
    expect_clean_exit(apilb);
}

/// A field of /proc/PID/status in kB ("VmSize"), or 0.
long status_kb(pid_t pid, const std::string& field) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
    }
    return 0;
}

TEST(Resfault, AnAllocationThatFailsResetsItsClientAndNeverStopsServing) {
    if (apilb_sanitized()) {
        // TSan's allocator too: under it 400 sessions fitted below the limit.
        GTEST_SKIP() << "a sanitizer's allocator (ASan's, TSan's) maps its heap up front: "
                        "an address-space limit does not reach it";
    }
    // cgroup v1 on this machine has no memory.max to lower for one process
    // without a hierarchy of our own; RLIMIT_AS reaches malloc the same way:
    // an allocation that needs more address space fails (std::bad_alloc).
    tcp_server backend("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    // One malloc arena: a worker's allocations then need new address space
    // as soon as the heap's slack is used, instead of a 64 MiB arena of its own.
    apilb_process apilb(dir,
                        single_pool_config(port, {backend.address()}, "round-robin", 1,
                                           admin_section(admin) + quick_drain + "relay: {mode: copy}\n"),
                        "127.0.0.1", port, {}, {"/usr/bin/env", "MALLOC_ARENA_MAX=1"});
    const pid_t pid = apilb.proc().pid();
    std::vector<client> held(2);
    for (auto& c : held) ASSERT_EQ(try_echo(c, port, milliseconds(3000)).what, "served");
    ASSERT_EQ(admin_get(admin, "/livez").status, 200);

    // No address space beyond what apilb holds now.
    const long vm_kb = status_kb(pid, "VmSize");
    ASSERT_GT(vm_kb, 0);
    auto r = run_command({"/usr/bin/prlimit", fmt::format("--pid={}", pid), fmt::format("--as={}:", vm_kb * 1024)});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::vector<client> fill;
    std::string first_failure;
    for (int i = 0; i < 400 && first_failure.empty(); ++i) {
        client c;
        const outcome o = try_echo(c, port, milliseconds(2000));
        if (o.what == "served") {
            fill.push_back(std::move(c));
        } else {
            first_failure = fmt::format("{}@{}ms", o.what, o.ms);
        }
    }
    ASSERT_FALSE(first_failure.empty()) << "400 sessions fitted; the limit did not bite";
    const std::size_t fitted = fill.size();
    // A few more under the limit: each fails on its own, none takes apilb down.
    std::string more;
    for (int i = 0; i < 3; ++i) {
        const outcome o = try_echo(port, milliseconds(2000));
        more += fmt::format(" {}@{}ms", o.what, o.ms);
    }
    EXPECT_TRUE(apilb.proc().running()) << apilb.log();
    const bool held_ok = all_echo(held);
    EXPECT_TRUE(held_ok) << "sessions open before must go on";

    // The limit is lifted and some sessions end: new clients are served again.
    r = run_command({"/usr/bin/prlimit", fmt::format("--pid={}", pid), "--as=unlimited:unlimited"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    fill.clear();
    const long recovered = until_served(port, milliseconds(8000));
    EXPECT_GE(recovered, 0) << "apilb stopped serving after an allocation failed\n" << apilb.log();
    const double resets = metric(admin, "apilb_clients_reset_total{reason=\"no_memory\"}");
    const double errors = metric(admin, "apilb_resource_errors_total");
    const std::string log = apilb.log();
    EXPECT_EQ(log.find("accept loop failed"), std::string::npos) << log;
    EXPECT_EQ(admin_get(admin, "/livez").status, 200);
    std::cout << fmt::format(
        "[ RESULT  ] RLIMIT_AS at {} MiB: {} sessions fitted, then a new client saw {}, then{}; "
        "held sessions {}; logged {} line(s) saying so; clients_reset{{no_memory}}={} "
        "resource_errors={}; served again {}ms after the limit was lifted\n",
        vm_kb / 1024, fitted, first_failure, more, held_ok ? "echo" : "STOPPED",
        count_of(log, "bad_alloc") + count_of(log, "Cannot allocate memory"), resets, errors, recovered);
    expect_clean_exit(apilb);
}

/// Runs apilb in a mount namespace of its own in which `script` (sh) ran
/// first: the host sees none of its mounts, and they go with apilb.
std::vector<std::string> in_own_mounts(const std::string& script) {
    return {"/usr/bin/unshare",         "--mount", "--propagation", "private", "/bin/sh", "-c",
            script + " && exec \"$@\"", "sh"};
}

TEST(Resfault, AFullFilesystemUnderEveryFileApilbWritesIsSaidAndServingGoesOn) {
    tcp_server backend("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    const std::string full = dir.file("full");
    std::filesystem::create_directory(full);
    // apilb writes: the admin token file it creates, and with vrrp the track
    // file (and, with vrrp.manage, keepalived.conf) in vrrp.state_dir, plus
    // the notify FIFO there. A 16 KiB tmpfs, filled before apilb starts.
    const std::string yaml = single_pool_config(
        port, {backend.address()}, "round-robin", 1,
        fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n  token_file: {}/admin-token\n"
                    "vrrp:\n  interface: eth0\n  virtual_router_id: 51\n"
                    "  priority: 150\n  vips: [198.18.0.100/24]\n"
                    "  state_dir: {}/state\n",
                    admin, full, full));
    const std::string script = fmt::format(
        "mount -t tmpfs -o size=16k,mode=0755 apilb-full {0} && mkdir {0}/state && "
        "(dd if=/dev/zero of={0}/filler bs=4k count=64 2>/dev/null; true)",
        full);
    const auto t0 = steady::now();
    apilb_process apilb(dir, yaml, "127.0.0.1", port, {}, in_own_mounts(script));
    const long started_ms = since_ms(t0);
    const pid_t pid = apilb.proc().pid();
    const std::string token_error = fmt::format("cannot write the token file {}/admin-token: No space left on device",
                                                full);
    const std::string track_error = fmt::format(
        "vrrp: cannot write the track file {}/state/vrrp-fault: No space left on device", full);
    EXPECT_TRUE(apilb.wait_for_log(token_error)) << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(track_error)) << apilb.log();
    // Serving goes on; state changes are refused with the reason.
    EXPECT_EQ(try_echo(port, milliseconds(3000)).what, "served");
    EXPECT_EQ(admin_get(admin, "/livez").status, 200);
    const http_answer drain = http_exchange(admin, "POST", "/api/v1/backends/p/b0/drain");
    EXPECT_EQ(drain.status, 403) << drain.body;
    EXPECT_NE(drain.body.find("No space left on device"), std::string::npos) << drain.body;
    // Nothing half-written is left where a reader would take it.
    const std::string seen = fmt::format("/proc/{}/root{}", pid, full);
    EXPECT_FALSE(std::filesystem::exists(seen + "/admin-token"));
    EXPECT_FALSE(std::filesystem::exists(seen + "/state/vrrp-fault"));
    // A round that writes the track file again has its .tmp there from
    // open to unlink; one left behind is there at every look.
    std::string left;
    for (int look = 0; look < 5; ++look) {
        if (look > 0) std::this_thread::sleep_for(milliseconds(50));
        left.clear();
        for (const auto& e : std::filesystem::directory_iterator(seen + "/state"))
            left += " " + e.path().filename().string();
        if (left.find(".tmp") == std::string::npos) break;
    }
    EXPECT_EQ(left.find(".tmp"), std::string::npos) << left << " (at 5 looks 50 ms apart)";

    // Room again: the track file is written on the next round.
    const auto t1 = steady::now();
    std::filesystem::remove(seen + "/filler");
    bool written = false;
    while (!written && since_ms(t1) < 5000) {
        written = std::filesystem::exists(seen + "/state/vrrp-fault");
        if (!written) std::this_thread::sleep_for(milliseconds(10));
    }
    const long track_ms = since_ms(t1);
    EXPECT_TRUE(written) << apilb.log();
    const std::string log = apilb.log();
    EXPECT_LE(count_of(log, track_error), 2u) << "said once, then at most every 10 s";
    std::cout << fmt::format(
        "[ RESULT  ] full tmpfs: started in {}ms and served; /livez 200; POST {} ({}); logged "
        "\"{}\" and \"{}\" ({}x); no partial file; track file written {}ms after room was made\n",
        started_ms, drain.status, drain.body.substr(0, drain.body.find('\n')), token_error, track_error,
        count_of(log, track_error), track_ms);
    expect_clean_exit(apilb);
}

TEST(Resfault, AReadOnlyConfigDirectoryReloadsAndSaysTheTokenCannotBeCreated) {
    tcp_server a("127.0.0.2", echo_handler());
    tcp_server b("127.0.0.3", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    const std::string section = fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n  token_file: {}\n", admin,
                                            dir.file("admin-token"));
    // The whole directory read-only for apilb (a bind mount in its own namespace).
    const std::string script = fmt::format("mount --bind {0} {0} && mount -o remount,bind,ro {0}", dir.path());
    apilb_process apilb(dir, single_pool_config(port, {a.address()}, "round-robin", 1, section), "127.0.0.1", port, {},
                        in_own_mounts(script));
    const std::string token_error = fmt::format("cannot create the token file {}: Read-only file system",
                                                dir.file("admin-token"));
    EXPECT_TRUE(apilb.wait_for_log(token_error)) << apilb.log();
    EXPECT_EQ(try_echo(port, milliseconds(3000)).what, "served");

    // A reload reads the directory and needs to write nothing.
    dir.write("apilb.yaml", single_pool_config(port, {b.address()}, "round-robin", 1, section));
    const auto t0 = steady::now();
    apilb.proc().signal(SIGHUP);
    EXPECT_TRUE(apilb.wait_for_log("reload: config ")) << apilb.log();
    long moved = -1;
    while (moved < 0 && since_ms(t0) < 5000) {
        if (try_echo(port, milliseconds(2000)).what == "served" && b.accepted() > 0) moved = since_ms(t0);
    }
    EXPECT_GE(moved, 0) << "the reloaded backend was never used";
    EXPECT_EQ(metric(admin, "apilb_reloads_total{result=\"success\"}"), 1.0);
    EXPECT_FALSE(std::filesystem::exists(dir.file("admin-token")));
    std::cout << fmt::format(
        "[ RESULT  ] read-only config dir: logged \"{}\"; served; SIGHUP reload applied, new "
        "backend used {}ms after it\n",
        token_error, moved);
    expect_clean_exit(apilb);
}

TEST(Resfault, AFileSizeLimitFailsTheWriteNotTheProcess) {
    // RLIMIT_FSIZE below the size of apilb's log file (its stderr here): the
    // next line written to it is past the limit. The kernel then sends
    // SIGXFSZ, whose default action ends the process.
    tcp_server backend("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, single_pool_config(port, {backend.address()}, "round-robin", 1, admin_section(admin)),
                        "127.0.0.1", port);
    const pid_t pid = apilb.proc().pid();
    const auto r = run_command({"/usr/bin/prlimit", fmt::format("--pid={}", pid), "--fsize=1:"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    int served = 0;
    for (int i = 0; i < 5; ++i) served += try_echo(port, milliseconds(3000)).what == "served";  // debug lines each
    std::this_thread::sleep_for(milliseconds(200));                                             // the log writer's turn
    EXPECT_TRUE(apilb.proc().running()) << "apilb died writing its log past RLIMIT_FSIZE";
    EXPECT_EQ(served, 5);
    EXPECT_EQ(admin_get(admin, "/livez").status, 200);
    std::cout << fmt::format("[ RESULT  ] RLIMIT_FSIZE under the log file: {} of 5 sessions served, apilb {}\n", served,
                             apilb.proc().running() ? "running (its log writes fail with EFBIG)" : "DEAD");
    run_command({"/usr/bin/prlimit", fmt::format("--pid={}", pid), "--fsize=unlimited:"});
    expect_clean_exit(apilb);
}

TEST(Resfault, SigstopLongerThanTheProbeTimeoutMarksNoHealthyBackendDown) {
    temp_dir dir;
    const std::string certs = make_certs(dir);
    std::vector<std::unique_ptr<standin_process>> standins;
    std::string backends;
    for (int i = 0; i < 3; ++i) {
        standins.push_back(
            std::make_unique<standin_process>(dir, certs, fmt::format("127.0.0.{}", 2 + i), fmt::format("s{}", i)));
        backends += fmt::format("      - {{name: s{}, address: \"{}\"}}\n", i, standins.back()->address());
    }
    const auto port = free_port();
    const auto admin = free_port();
    // fall: 1, so that any probe counted as failed shows at once.
    const std::string yaml = fmt::format(
        "workers: 1\n{}listeners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
        "pools:\n  - name: p\n    backends:\n{}    health:\n      path: /readyz\n      interval: 200ms\n"
        "      timeout: 1s\n      rise: 1\n      fall: 1\n      slow_start: 0\n      tls: {{ca_file: {}/ca.crt}}\n"
        "log: {{level: debug}}\n{}",
        admin_section(admin), port, backends, certs, quick_drain);
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    tls_client_context tls(certs + "/ca.crt");
    auto via = [&](milliseconds timeout) {
        tls_session s(tls);
        std::string error;
        return s.open("127.0.0.1", port, "/version", timeout, error) ? s.backend() : std::string();
    };
    ASSERT_TRUE(apilb.wait_for_log("first check passed")) << apilb.log();
    ASSERT_NE(via(milliseconds(5000)), "");
    std::vector<std::unique_ptr<tls_session>> watches;
    for (int i = 0; i < 3; ++i) {
        auto w = std::make_unique<tls_session>(tls);
        std::string error;
        ASSERT_TRUE(w->open("127.0.0.1", port, "/watch?interval_ms=200", milliseconds(5000), error)) << error;
        watches.push_back(std::move(w));
    }

    // Probes in flight: the stand-ins stop answering for 400 ms (under the
    // 1 s probe timeout), so each has a probe waiting for its handshake.
    // Then apilb stops too, for 3 s (three probe timeouts, fifteen
    // intervals); the stand-ins go on and apilb goes on right after them.
    // Each probe's deadline has long passed when apilb runs again, while its
    // backend is answering: the deadline fires first.
    for (auto& s : standins) s->freeze();
    std::this_thread::sleep_for(milliseconds(400));
    apilb.proc().signal(SIGSTOP);
    std::this_thread::sleep_for(milliseconds(3000));
    const std::size_t before = apilb.log().size();
    for (auto& s : standins) s->thaw();
    apilb.proc().signal(SIGCONT);
    const auto t0 = steady::now();
    const std::string first = via(milliseconds(5000));
    const long first_ms = since_ms(t0);
    EXPECT_NE(first, "") << "a new client after SIGCONT";
    std::this_thread::sleep_for(milliseconds(1500));  // the probes that were due, and a few more
    const std::string after = apilb.log().substr(before);
    const std::size_t downs = count_of(after, " is unhealthy");
    EXPECT_EQ(downs, 0u) << after;
    int alive = 0;
    for (auto& w : watches) alive += !w->ended_within(milliseconds(50)) && !w->read_rest(milliseconds(600)).empty();
    EXPECT_EQ(alive, 3) << "watches open across the stop must go on";
    int healthy = 0;
    for (int i = 0; i < 3; ++i) {
        healthy += metric(admin, fmt::format("apilb_backend_healthy{{pool=\"p\",backend=\"s{}\"}}", i)) == 1.0;
    }
    EXPECT_EQ(healthy, 3);
    std::cout << fmt::format(
        "[ RESULT  ] SIGSTOP 3s with probes in flight: first new client served {}ms after "
        "SIGCONT (by {}); {} of 3 watches went on; {} backend(s) marked down; {} of 3 healthy; "
        "{} probe(s) retried as late\n",
        first_ms, first, alive, downs, healthy, count_of(after, "came too late"));
    expect_clean_exit(apilb);
}

TEST(Resfault, WallClockStepsFireAndStallNoTimer) {
    const std::string libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if (!std::filesystem::exists(libfaketime)) {
        GTEST_SKIP() << libfaketime << " is missing: install the Debian package faketime (scripts/install-deps.sh)";
    }
    tcp_server backend("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    // Only CLOCK_REALTIME moves (DONT_FAKE_MONOTONIC, and timerfd times
    // left alone by faketime_wall_only.cpp, preloaded first), read from the
    // file at every call (FAKETIME_NO_CACHE), so the test steps it while
    // apilb runs.
    dir.write("faketime", "+0\n");
    std::vector<std::string> env = {
        "/usr/bin/env", "LD_PRELOAD=" + required_env("APILB_FAKETIME_WALL_ONLY") + ":" + libfaketime,
        "FAKETIME_TIMESTAMP_FILE=" + dir.file("faketime"), "FAKETIME_NO_CACHE=1", "DONT_FAKE_MONOTONIC=1"};
    if (apilb_has_asan()) {
        const char* asan = std::getenv("ASAN_OPTIONS");
        env.push_back(std::string("ASAN_OPTIONS=") + (asan ? std::string(asan) + ":" : "") +
                      "verify_asan_link_order=0");
    }
    const std::string extra = admin_section(admin) + "timeouts: {idle: 2s, drain: 1s}\n";
    std::string yaml = single_pool_config(port, {backend.address()}, "round-robin", 1, extra);
    // The probes that must go on: pool q's, whose backend never completes a
    // connect, so each times out at 300 ms, after its next one was due
    // (every 200 ms). They are the control thread's only timers (pool p is
    // not probed), so each timeout leaves its timer queue empty, and then
    // the next probe's wait is for a time already come, which Asio's reactor
    // arms as an absolute timerfd time (TFD_TIMER_ABSTIME, 1 ns): the path
    // on which an absolute time that moved with the wall clock would stall
    // every control timer (what the TSan run met after slow probes).
    blackhole gone("127.0.0.3");
    yaml.replace(yaml.find("log:"), 0,
                 "  - name: q\n    backends:\n      - {name: g0, address: \"" + gone.address() +
                     "\"}\n    health: {type: tcp, interval: 200ms, timeout: 300ms, rise: 1, fall: 1}\n");
    apilb_process apilb(dir, yaml, "127.0.0.1", port, {}, env);
    const std::string probes = "apilb_backend_probe_duration_seconds_count{pool=\"q\",backend=\"g0\"}";
    const std::string stamp = "apilb_backend_last_probe_timestamp_seconds{pool=\"q\",backend=\"g0\"}";
    auto wall = [] {
        return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    };
    // The probe rate before any step, to compare with the rate after each.
    const double base0 = metric(admin, probes);
    const auto tb = steady::now();
    std::this_thread::sleep_for(milliseconds(1000));
    std::string line = fmt::format(" before: {:.0f} probes in {}ms;", metric(admin, probes) - base0, since_ms(tb));
    for (const auto& [text, offset] :
         std::vector<std::pair<std::string, double>>{{"+3600", 3600}, {"+0", 0}, {"-3600", -3600}}) {
        // An idle session (idle timeout 2 s) across the step.
        client idle;
        ASSERT_EQ(try_echo(idle, port, milliseconds(3000)).what, "served");
        const auto quiet_from = steady::now();
        // Its reset is awaited beside the probes, so that probes stalled for
        // 5 s do not show as an idle timeout fired late.
        idle.set_timeout(milliseconds(8000));
        auto reset = std::async(std::launch::async, [&idle, quiet_from] {
            char c;
            const long n = idle.recv_some(&c, 1);
            return std::pair{n, since_ms(quiet_from)};
        });
        const double probes_before = metric(admin, probes);
        dir.write("faketime", text + "\n");
        // Probes go on, and their wall-clock stamp shows the step.
        double probes_after = probes_before;
        double shown = 0;
        const auto t0 = steady::now();
        while (since_ms(t0) < 5000) {
            probes_after = metric(admin, probes);
            shown = metric(admin, stamp);
            if (probes_after >= probes_before + 3 && std::abs(shown - (wall() + offset)) < 60) break;
            std::this_thread::sleep_for(milliseconds(50));
        }
        const long probes_ms = since_ms(t0);
        EXPECT_GE(probes_after, probes_before + 3) << "probes stalled after a step to " << text;
        EXPECT_NEAR(shown, wall() + offset, 60) << "libfaketime did not move apilb's wall clock";
        EXPECT_EQ(try_echo(port, milliseconds(3000)).what, "served");
        // The idle session is closed 2 s after its last byte, not at the step, not never.
        const auto [n, closed_ms] = reset.get();
        EXPECT_EQ(n, -ECONNRESET) << "step " << text;
        EXPECT_GE(closed_ms, 1800) << "the idle timeout fired early at a step to " << text;
        EXPECT_LE(closed_ms, 5000) << "the idle timeout stalled at a step to " << text;
        line += fmt::format(" {}: probes +{:.0f} in {}ms, stamp off by {:.0f}s, idle session reset after {}ms;", text,
                            probes_after - probes_before, probes_ms, shown - wall(), closed_ms);
    }
    std::cout << fmt::format(
        "[ RESULT  ] wall clock stepped (libfaketime, monotonic untouched):{} served after "
        "each\n",
        line);
    expect_clean_exit(apilb);
}

}  // namespace
}  // namespace apilb::test
