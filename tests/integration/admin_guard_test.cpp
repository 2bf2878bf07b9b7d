// What guards the admin endpoint of the real binary (issue 14, items 5-7):
// state changes need a credential in every configuration, the token file is
// created 0600 at first start, an unprivileged local user is refused, logged
// and counted while root's CLI on the node just works; a flood of idle or
// slow connections cannot make /livez fail; a Host that is not ours (DNS
// rebinding) is refused. curl and setpriv are the independent peers.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <sys/resource.h>
#include <sys/stat.h>

#include <memory>
#include <regex>
#include <thread>

#include "harness.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

/// One request on a fresh connection from `source_ip` with `host` as Host.
http_answer request(std::uint16_t port, const std::string& method, const std::string& path,
                    const std::string& extra_headers = {}, const std::string& host = "127.0.0.1",
                    const std::string& source_ip = "127.0.0.1") {
    return http_exchange(port, method, path, extra_headers, host, source_ip);
}

/// The value of an unlabelled sample in /metrics, or -1.
double metric(std::uint16_t port, const std::string& name) {
    const std::string text = request(port, "GET", "/metrics").body;
    std::smatch m;
    if (std::regex_search(text, m, std::regex("\n" + name + " ([0-9.e+]+)\n"))) return std::stod(m[1]);
    return -1;
}

bool wait_for_livez(std::uint16_t port) {
    const auto deadline = steady::now() + 10s;
    while (steady::now() < deadline) {
        if (request(port, "GET", "/livez").status == 200) return true;
        std::this_thread::sleep_for(milliseconds(50));
    }
    return false;
}

/// One backend and apilb with an admin endpoint on 127.0.0.1:`admin`, its
/// section extended by `admin_extra`.
class AdminGuard : public ::testing::Test {
protected:
    std::unique_ptr<apilb_process> start(const std::string& admin_extra) {
        auto p = std::make_unique<apilb_process>(
            dir,
            single_pool_config(port, {b0.address()}, "round-robin", 1,
                               fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n{}", admin, admin_extra)),
            "127.0.0.1", port);
        EXPECT_TRUE(wait_for_livez(admin)) << p->log();
        return p;
    }

    temp_dir dir;
    tcp_server b0{"127.0.0.1", echo_handler()};
    std::uint16_t port = free_port();
    std::uint16_t admin = free_port();
};

TEST_F(AdminGuard, UnprivilegedUserIsRefusedAndCountedRootCliWorksTokenFileIsCreated0600) {
    // Neither the file nor its directory is there (/run/apilb outside
    // systemd): apilb creates both.
    const std::string token_file = dir.file("run/admin-token");
    auto running = start("  token_file: \"" + token_file + "\"\n");
    apilb_process& apilb = *running;
    struct stat st {};
    ASSERT_EQ(::stat(token_file.c_str(), &st), 0) << apilb.log();
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    ASSERT_EQ(::stat(dir.file("run").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
    EXPECT_EQ(read_file(token_file).size(), 65u) << "64 hex digits and a newline";
    EXPECT_TRUE(apilb.wait_for_log("admin: created the token file " + token_file)) << apilb.log();

    // User nobody on the node, as any hostNetwork pod could be: refused.
    const std::string url = fmt::format("http://127.0.0.1:{}/api/v1/backends/p/b0/drain", admin);
    auto r = run_command({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/curl",
                          "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "status=%{http_code}\n", "-X", "POST",
                          url});
    EXPECT_NE(r.output.find("status=401"), std::string::npos) << r.output;
    EXPECT_EQ(metric(admin, "apilb_admin_auth_failures_total"), 1);
    EXPECT_TRUE(apilb.wait_for_log("(uid 65534) refused (401)")) << apilb.log();
    EXPECT_EQ(request(admin, "GET", "/api/v1/status").body.find("\"drain\":true"), std::string::npos)
        << "nothing was drained";

    // Root's CLI on the node: no flags beyond the config.
    const std::string bin = required_env("APILB_BIN");
    r = run_command({bin, "drain", "p", "b0", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(apilb.wait_for_log("admin: backend p/b0 drained")) << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log("(asked by 127.0.0.1:")) << apilb.log();
    EXPECT_NE(apilb.log().find(" (uid 0))"), std::string::npos) << apilb.log();
    EXPECT_EQ(metric(admin, "apilb_admin_auth_failures_total"), 1);
    EXPECT_EQ(apilb.terminate(), 0);

    // Restarted, it reads the token it made instead of making another.
    const std::string token = read_file(token_file);
    apilb_process again(dir, read_file(dir.file("apilb.yaml")), "127.0.0.1", port);
    ASSERT_TRUE(wait_for_livez(admin));
    EXPECT_EQ(read_file(token_file), token);
    r = run_command({bin, "enable", "p", "b0", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(again.terminate(), 0);
}

TEST_F(AdminGuard, WithoutACredentialStateChangesAreRefused) {
    auto running = start("");
    apilb_process& apilb = *running;
    for (const char* path : {"/api/v1/backends/p/b0/drain", "/api/v1/reload"}) {
        const auto r = request(admin, "POST", path);
        EXPECT_EQ(r.status, 403) << path;
        EXPECT_NE(r.body.find("no credential is configured; set admin.token_file"), std::string::npos) << r.body;
    }
    EXPECT_EQ(metric(admin, "apilb_admin_auth_failures_total"), 2);
    EXPECT_EQ(request(admin, "GET", "/api/v1/status").status, 200) << "reading needs nothing";
    const auto r = run_command({required_env("APILB_BIN"), "drain", "p", "b0", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("admin.token_file"), std::string::npos) << r.output;
    EXPECT_EQ(apilb.terminate(), 0);
}

/// Raises the soft descriptor limit to `want` (the hard limit is 20 000 here).
bool raise_fd_limit(rlim_t want) {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
    if (rl.rlim_cur >= want) return true;
    if (rl.rlim_max < want) return false;
    rl.rlim_cur = want;
    return ::setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

/// Whether the server closed `c` within `timeout` (EOF or reset).
bool closed_within(client& c, milliseconds timeout) {
    c.set_timeout(milliseconds(200));
    const auto deadline = steady::now() + timeout;
    char buf[256];
    while (steady::now() < deadline) {
        const long n = c.recv_some(buf, sizeof buf);
        if (n == 0 || (n < 0 && n != -EAGAIN && n != -EWOULDBLOCK)) return true;
    }
    return false;
}

TEST_F(AdminGuard, LivezAnswersThroughAThousandIdleConnectionsAndIdleOnesTimeOut) {
    ASSERT_TRUE(raise_fd_limit(4096));
    auto running = start("");
    apilb_process& apilb = *running;

    // 1 000 connections that never send a byte: half from 127.0.0.1 (kubelet's
    // own address), the rest from five other loopback addresses.
    std::vector<client> idle;
    idle.reserve(1000);
    for (int i = 0; i < 1000; ++i) {
        const std::string source = i % 2 == 0 ? "127.0.0.1" : fmt::format("127.0.0.{}", 2 + (i / 2) % 5);
        client c;
        ASSERT_TRUE(c.bind(source));
        ASSERT_EQ(c.connect("127.0.0.1", admin), 0) << "connection " << i;
        idle.push_back(std::move(c));
    }
    // A fresh probe, as kubelet makes one, from 127.0.0.1 and from another address.
    for (const char* source : {"127.0.0.1", "127.0.0.4"}) {
        const auto t0 = steady::now();
        const auto r = request(admin, "GET", "/livez", {}, "127.0.0.1", source);
        const auto took = std::chrono::duration_cast<milliseconds>(steady::now() - t0);
        EXPECT_EQ(r.status, 200) << source << ": " << r.body;
        // /livez waits up to 1 s for the workers; the rest is slack for a loaded machine.
        EXPECT_LT(took.count(), 3000) << source;
        std::cout << "/livez from " << source << " through 1000 idle connections: " << took.count() << "ms\n";
    }
    EXPECT_GT(metric(admin, "apilb_admin_connections_evicted_total"), 900);

    // An idle connection is closed at the request timeout (5 s).
    client quiet;
    ASSERT_EQ(quiet.connect("127.0.0.1", admin), 0);
    auto t_idle = steady::now();
    EXPECT_TRUE(closed_within(quiet, milliseconds(15000))) << "an idle connection outlived its timeout";
    const auto idle_for = std::chrono::duration_cast<milliseconds>(steady::now() - t_idle);
    EXPECT_GE(idle_for.count(), 4000) << "closed before its timeout";
    std::cout << "idle connection closed after " << idle_for.count() << "ms\n";
    idle.clear();

    // A slow client (a header byte every 300 ms) is cut off at the same
    // deadline, not kept alive by its trickle.
    client slow;
    ASSERT_EQ(slow.connect("127.0.0.1", admin), 0);
    slow.set_timeout(milliseconds(300));
    const std::string head = "GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + std::string(200, 'a');
    const auto t0 = steady::now();
    bool cut = false;
    for (std::size_t i = 0; i < head.size() && steady::now() - t0 < 15s; ++i) {
        if (!slow.send_all(head.substr(i, 1))) {
            cut = true;
            break;
        }
        char buf[64];
        const long n = slow.recv_some(buf, sizeof buf);
        if (n == 0 || (n < 0 && n != -EAGAIN && n != -EWOULDBLOCK)) {
            cut = true;
            break;
        }
    }
    const auto took = std::chrono::duration_cast<milliseconds>(steady::now() - t0);
    EXPECT_TRUE(cut) << "a slowloris client kept its connection for " << took.count() << "ms";
    EXPECT_GE(took.count(), 4000) << "cut off before its deadline";
    std::cout << "slow client cut off after " << took.count() << "ms\n";
    EXPECT_EQ(request(admin, "GET", "/livez").status, 200);
    EXPECT_EQ(apilb.terminate(), 0);
}

/// curl reaching the admin endpoint under `name` (resolved to 127.0.0.1 by
/// curl itself, as a rebinding DNS would): the status, or 0.
int curl_as(const std::string& name, std::uint16_t admin, const std::string& method, const std::string& path,
            const std::vector<std::string>& headers = {}) {
    std::vector<std::string> argv{"/usr/bin/curl",
                                  "-sS",
                                  "--max-time",
                                  "10",
                                  "-o",
                                  "/dev/null",
                                  "-w",
                                  "status=%{http_code}\n",
                                  "-X",
                                  method,
                                  "--resolve",
                                  fmt::format("{}:{}:127.0.0.1", name, admin)};
    for (const auto& h : headers) argv.insert(argv.end(), {"-H", h});
    argv.push_back(fmt::format("http://{}:{}{}", name, admin, path));
    const auto r = run_command(argv, 20s);
    std::smatch m;
    return std::regex_search(r.output, m, std::regex("status=([0-9]{3})")) ? std::stoi(m[1]) : 0;
}

TEST_F(AdminGuard, ANameThatIsNotOursIsRefusedAgainstDnsRebinding) {
    dir.write("token", "s3cret-token\n");
    auto running = start(fmt::format("  token_file: \"{}\"\n  host_names: [apilb.example.com]\n", dir.file("token")));
    apilb_process& apilb = *running;
    const std::string bearer = "Authorization: Bearer s3cret-token";
    // A page on evil.example, its name rebound to 127.0.0.1: its own origin.
    const std::string origin = fmt::format("Origin: http://evil.example:{}", admin);
    EXPECT_EQ(curl_as("evil.example", admin, "GET", "/api/v1/status"), 421);
    EXPECT_EQ(curl_as("evil.example", admin, "GET", "/"), 421);
    EXPECT_EQ(curl_as("evil.example", admin, "POST", "/api/v1/backends/p/b0/drain", {origin}), 421);
    EXPECT_EQ(curl_as("evil.example", admin, "POST", "/api/v1/backends/p/b0/drain", {origin, bearer}), 421);
    // Ours: the address, localhost, a configured name.
    EXPECT_EQ(curl_as("localhost", admin, "GET", "/api/v1/status"), 200);
    EXPECT_EQ(curl_as("apilb.example.com", admin, "GET", "/api/v1/status"), 200);
    EXPECT_EQ(request(admin, "GET", "/api/v1/status").status, 200);
    EXPECT_EQ(curl_as("localhost", admin, "POST", "/api/v1/backends/p/b0/drain",
                      {fmt::format("Origin: http://localhost:{}", admin), bearer}),
              200);
    // Probes answer whatever the name (they reveal nothing).
    EXPECT_EQ(curl_as("evil.example", admin, "GET", "/livez"), 200);
    EXPECT_EQ(apilb.terminate(), 0);
}

// Found by the admin_request fuzz target: Boost 1.81's HTTP parser asserted
// on an empty chunked body whose "0\r\n" came in one read and the next byte
// alone in another, and the assertion aborted apilb (asserts are on in the
// shipped build) for any client, before any credential was checked.
TEST_F(AdminGuard, AChunkedBodySplitByteByByteCannotAbortApilb) {
    auto running = start("");
    apilb_process& apilb = *running;
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", admin), 0);
    c.set_timeout(10s);
    const std::vector<std::string> parts = {
        "POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", "\r", "\n"};
    for (const auto& part : parts) {
        ASSERT_TRUE(c.send_all(part));
        // Not a timing assertion: a pause so that apilb reads each part on
        // its own, as a client that sends them apart makes it.
        std::this_thread::sleep_for(milliseconds(300));
    }
    const std::string answer = c.recv_exact(12);
    EXPECT_EQ(answer, "HTTP/1.1 403") << apilb.log();
    EXPECT_EQ(request(admin, "GET", "/livez").status, 200) << apilb.log();
    EXPECT_EQ(apilb.terminate(), 0) << apilb.log();
}

}  // namespace
}  // namespace apilb::test
