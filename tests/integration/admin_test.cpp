// The admin endpoint of the real binary: /livez, /readyz and /api/v1/status
// follow backend health (/metrics is admin_metrics_test's); drain/enable/reload through the CLI with its exit codes; a
// bearer token guards POSTs; a non-loopback admin address needs a token;
// `apilb status` and the page show a pool's discovery beside its seed.
#include <gtest/gtest.h>

#include <filesystem>

#include <boost/json.hpp>

#include <fmt/format.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "admin_support.hpp"
#include "harness.hpp"
#include "standin.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;

// ---------------------------------------------------------------- tests

TEST(AdminEndpoint, LivezReadyzAndStatusFollowBackendHealth) {
    temp_dir dir;
    auto b0 = std::make_unique<tcp_server>("127.0.0.1", tagged_echo("b0"));
    auto b1 = std::make_unique<tcp_server>("127.0.0.1", tagged_echo("b1"));
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, admin_config(port, {b0->address(), b1->address()}, admin), "127.0.0.1", port);

    const auto live = http(admin, "GET", "/livez");
    EXPECT_EQ(live.status, 200) << live.body;
    EXPECT_NE(live.body.find("2 of 2 worker(s) answered"), std::string::npos) << live.body;
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }))
        << http(admin, "GET", "/readyz").body;
    EXPECT_NE(http(admin, "GET", "/readyz").body.find("[+] pool p: 2 of 2 backend(s) healthy"), std::string::npos);

    auto status = http(admin, "GET", "/api/v1/status");
    ASSERT_EQ(status.status, 200);
    auto b = backend_status(status.body, "b1");
    EXPECT_EQ(b.at("state").as_string(), "up");
    EXPECT_EQ(b.at("address").as_string(), b1->address());

    // b1 stops listening: probes are refused, and the status says so. (The
    // first failing probe may instead see a reset, if its connect raced the
    // listener's close; the next ones are refused.)
    b1->stop();
    ASSERT_TRUE(wait_for(admin, "/api/v1/status", [](const http_reply& r) {
        if (r.status != 200) return false;
        const auto s = backend_status(r.body, "b1");
        return s.at("state").as_string() == "down" && s.at("last_probe").at("reason").as_string() == "tcp_refused";
    })) << http(admin, "GET", "/api/v1/status").body;
    b = backend_status(http(admin, "GET", "/api/v1/status").body, "b1");
    EXPECT_EQ(b.at("last_probe").at("reason").as_string(), "tcp_refused");
    EXPECT_FALSE(b.at("last_probe").at("passed").as_bool());
    EXPECT_GE(b.at("recent_changes").as_array().size(), 1u);
    EXPECT_EQ(http(admin, "GET", "/readyz").status, 200) << "b0 still serves the pool";

    // With no healthy backend apilb is not ready: keepalived and probes must see 503.
    b0->stop();
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 503; }));
    const auto not_ready = http(admin, "GET", "/readyz");
    EXPECT_NE(not_ready.body.find("[-] pool p: 0 of 2 backend(s) healthy"), std::string::npos) << not_ready.body;
    EXPECT_NE(not_ready.body.find("not ready: pool p has no healthy backend"), std::string::npos) << not_ready.body;
    EXPECT_EQ(http(admin, "GET", "/livez").status, 200) << "liveness is about apilb, not its backends";

    EXPECT_EQ(http(admin, "GET", "/nope").status, 404);
    EXPECT_EQ(http(admin, "POST", "/metrics").status, 405);
    const auto page = http(admin, "GET", "/");
    EXPECT_EQ(page.status, 200);
    EXPECT_NE(page.body.find("<title>apilb status</title>"), std::string::npos);
    EXPECT_EQ(page.body.find("http://"), std::string::npos) << "the page must reference no other host";
    EXPECT_EQ(page.body.find("https://"), std::string::npos) << "the page must reference no other host";
    EXPECT_EQ(apilb.terminate(), 0);
}


TEST(AdminControl, DrainEnableReloadThroughTheCli) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    tcp_server b1("127.0.0.1", tagged_echo("b1"));
    const auto port = free_port();
    const auto admin = free_port();
    // The token file does not exist: apilb creates it, the CLI reads it.
    const std::string token_file = dir.file("admin-token");
    const std::string yaml = admin_config(port, {b0.address(), b1.address()}, admin,
                                          "  token_file: \"" + token_file + "\"\n");
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    const std::string bin = required_env("APILB_BIN");
    const std::string cfg = dir.file("apilb.yaml");

    auto r = run_command({bin, "drain", "p", "b0", "--config", cfg});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    for (int i = 0; i < 6; ++i) EXPECT_EQ(round_trip(port, "hello"), "b1") << "a drained backend gets no new session";
    r = run_command({bin, "status", "--admin", fmt::format("127.0.0.1:{}", admin)});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("drained(admin)"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("b1"), std::string::npos) << r.output;

    // A reload keeps the admin drain of a backend that is still there.
    r = run_command({bin, "reload", "--config", cfg});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(backend_status(http(admin, "GET", "/api/v1/status").body, "b0").at("drain_source").as_string(), "admin");
    for (int i = 0; i < 4; ++i) EXPECT_EQ(round_trip(port, "hello"), "b1");
    EXPECT_NE(http(admin, "GET", "/metrics").body.find("apilb_reloads_total{result=\"success\"} 1\n"),
              std::string::npos);

    r = run_command({bin, "enable", "p", "b0", "--config", cfg});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::set<std::string> seen;
    for (int i = 0; i < 6; ++i) seen.insert(round_trip(port, "hello"));
    EXPECT_TRUE(seen.contains("b0")) << "enabled again";

    // Exit codes a script can rely on.
    r = run_command({bin, "drain", "p", "nosuch", "--config", cfg});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("pool p has no backend nosuch"), std::string::npos) << r.output;
    r = run_command({bin, "drain", "nopool", "b0", "--config", cfg});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    r = run_command({bin, "drain", "p"});
    EXPECT_EQ(r.exit_code, 64) << r.output;
    r = run_command({bin, "status", "--admin", fmt::format("127.0.0.1:{}", free_port())});
    EXPECT_EQ(r.exit_code, 1) << r.output;

    // A broken file: the reload is refused, the CLI prints every error with
    // file:line:column, apilb serves on.
    const int lines = static_cast<int>(std::count(yaml.begin(), yaml.end(), '\n'));
    const std::size_t balance_at = yaml.find("balance: round-robin");
    const int balance_line = static_cast<int>(std::count(yaml.begin(), yaml.begin() + balance_at, '\n')) + 1;
    std::string broken = yaml;
    broken.replace(balance_at, std::string("balance: round-robin").size(), "balance: sideways");
    dir.write("apilb.yaml", broken + "bogus: 1\n");
    r = run_command({bin, "reload", "--admin", fmt::format("127.0.0.1:{}", admin), "--token-file", token_file});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: the configuration was rejected; the running one stays"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find(fmt::format("error: {}:{}:1: bogus", cfg, lines + 1)), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(fmt::format("error: {}:{}:", cfg, balance_line)), std::string::npos) << r.output;
    const std::string bearer = "Authorization: Bearer " + read_file(token_file).substr(0, 64) + "\r\n";
    const http_reply rejected = http(admin, "POST", "/api/v1/reload", bearer);
    EXPECT_EQ(rejected.status, 422);
    const json::value errors = json::parse(rejected.body).at("errors");
    ASSERT_EQ(errors.as_array().size(), 2u) << rejected.body;
    EXPECT_NE(rejected.body.find(fmt::format("\"{}:{}:1: bogus", cfg, lines + 1)), std::string::npos) << rejected.body;
    EXPECT_NE(http(admin, "GET", "/metrics").body.find("apilb_reloads_total{result=\"failure\"} 2\n"),
              std::string::npos);
    EXPECT_EQ(http(admin, "GET", "/livez").status, 200);
    // A page from another origin cannot drain a backend, token or not.
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain", "Origin: http://evil.example\r\n" + bearer).status,
              403);
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminControl, AReloadRejectedAfterLoadingSaysWhyOnce) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    tcp_server taken("127.0.0.1", [](int&) {});
    const auto port = free_port();
    const auto admin = free_port();
    const std::string token_file = dir.file("admin-token");
    const std::string yaml = admin_config(port, {b0.address()}, admin, "  token_file: \"" + token_file + "\"\n");
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    // The file loads; the new listener's port is taken: found after loading, by the listener check.
    const std::string front = fmt::format("  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n", port);
    std::string next = yaml;
    next.replace(next.find(front), front.size(),
                 front + fmt::format("  - {{name: api2, address: \"{}\", pool: p}}\n", taken.address()));
    dir.write("apilb.yaml", next);
    const auto r = run_command({required_env("APILB_BIN"), "reload", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    // Found before the bind by the listener check (another process holds it).
    EXPECT_NE(r.output.find(fmt::format("error: listener api2: {} is taken:", taken.address())), std::string::npos)
        << r.output;
    EXPECT_EQ(apilb.log().find("Address already in use: Address already in use"), std::string::npos) << apilb.log();
    EXPECT_EQ(round_trip(port, "hello"), "b0") << "the running config serves on";
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminControl, StatusColumnsFitLongPoolAndBackendNames) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    const auto port = free_port();
    const auto admin = free_port();
    // The docs' own pool name is 13 characters; this backend's is 22.
    std::string yaml = admin_config(port, {b0.address()}, admin);
    for (const auto& [from, to] :
         std::vector<std::pair<std::string, std::string>>{{"pool: p}", "pool: control-plane}"},
                                                          {"  - name: p\n", "  - name: control-plane\n"},
                                                          {"name: b0,", "name: apiserver-cp-1-east,"}}) {
        yaml.replace(yaml.find(from), from.size(), to);
    }
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    const auto r = run_command({required_env("APILB_BIN"), "status", "--admin", fmt::format("127.0.0.1:{}", admin)});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::istringstream lines(r.output);
    std::string summary, header, row;
    std::getline(lines, summary);
    std::getline(lines, header);
    std::getline(lines, row);
    // Every cell starts (or, for numbers, ends) under its heading.
    const auto at = [&](const char* heading) { return header.find(heading); };
    EXPECT_EQ(row.find("control-plane"), at("POOL")) << r.output;
    EXPECT_EQ(row.find("apiserver-cp-1-east"), at("BACKEND")) << r.output;
    EXPECT_EQ(row.find(" up ") + 1, at("STATE")) << r.output;
    const std::size_t active_end = at("ACTIVE") + 5;
    ASSERT_LT(active_end + 1, row.size()) << r.output;
    EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(row[active_end])) && row[active_end + 1] == ' ') << r.output;
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminControl, TokenGuardsPostsAndNonLoopbackNeedsOne) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    dir.write("token", "s3cret-token\n");
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, admin_config(port, {b0.address()}, admin, "  token_file: \"" + dir.file("token") + "\"\n"),
                        "127.0.0.1", port);
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain").status, 401);
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain", "Authorization: Bearer wrong\r\n").status, 401);
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain", "Authorization: Bearer s3cret-token\r\n").status, 200);
    EXPECT_EQ(http(admin, "GET", "/api/v1/status").status, 200) << "reading needs no token";
    // The CLI takes the token file from the config.
    const std::string bin = required_env("APILB_BIN");
    auto r = run_command({bin, "enable", "p", "b0", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(apilb.terminate(), 0);

    // Off the loopback, drain/reload would be open to the network: rejected.
    dir.write("open.yaml",
              single_pool_config(port, {b0.address()}, "round-robin", 1, "admin:\n  address: \"0.0.0.0:6445\"\n"));
    r = run_command({bin, "check-config", "--config", dir.file("open.yaml")});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("admin.address"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("token_file"), std::string::npos) << r.output;
}

TEST(AdminLogs, JsonLinesCarryStableFields) {
    temp_dir dir;
    auto b0 = std::make_unique<tcp_server>("127.0.0.1", tagged_echo("b0"));
    tcp_server b1("127.0.0.1", tagged_echo("b1"));
    const auto port = free_port();
    const auto admin = free_port();
    dir.write("token", "s3cret-token\n");
    std::string yaml = admin_config(port, {b0->address(), b1.address()}, admin,
                                    "  token_file: \"" + dir.file("token") + "\"\n");
    yaml.replace(yaml.find("log: {level: debug}"), std::string("log: {level: debug}").size(),
                 "log: {level: debug, format: json}");
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    {
        // A session through apilb, ended by the client: its closing line
        // names the pool, the backend and the client.
        client c;
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        ASSERT_TRUE(c.send_all("x"));
        c.set_timeout(2s);
        EXPECT_FALSE(c.recv_exact(3).empty());
        c.shutdown_write();
        int end = 0;
        c.recv_until_eof(end);
    }
    ASSERT_TRUE(apilb.wait_for_log(R"("event":"session_closed","pool":"p","backend":"b)")) << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(R"("client":"127.0.0.1:)")) << apilb.log();
    ASSERT_EQ(http(admin, "POST", "/api/v1/backends/p/b1/drain", "Authorization: Bearer s3cret-token\r\n").status, 200);
    b0->stop();
    // Refused, or reset when a probe's connect raced the listener's close.
    ASSERT_TRUE(apilb.wait_for_log(R"("event":"backend_unhealthy","pool":"p","backend":"b0","reason":"tcp_)"))
        << apilb.log();
    const std::string log = apilb.log();
    EXPECT_TRUE(log.find(R"("backend":"b0","reason":"tcp_refused")") != std::string::npos ||
                log.find(R"("backend":"b0","reason":"tcp_error")") != std::string::npos)
        << log;
    EXPECT_TRUE(apilb.wait_for_log(R"("event":"backend_drained","pool":"p","backend":"b1","reason":"admin")"))
        << apilb.log();
    EXPECT_EQ(apilb.terminate(), 0);
    // Every line is one JSON object with ts, level and msg.
    std::istringstream lines(apilb.log());
    std::string line;
    int n = 0;
    while (std::getline(lines, line)) {
        boost::system::error_code ec;
        const json::value v = json::parse(line, ec);
        ASSERT_FALSE(ec) << "not JSON: " << line;
        EXPECT_TRUE(v.as_object().contains("ts") && v.as_object().contains("level") && v.as_object().contains("msg"))
            << line;
        ++n;
    }
    EXPECT_GT(n, 3);
}

/// What `apilb status` says about discovery, against the stand-in's
/// EndpointSlice API: the watch, the discovered set beside the seed (a
/// terminating apiserver marked), the state file; then, restarted with the
/// API gone, the set from the state file, marked in use.
TEST(AdminControl, StatusShowsDiscoveryBesideTheSeed) {
    temp_dir dir;
    const std::string certs = make_certs(dir);
    dir.write("kubeconfig", fmt::format("apiVersion: v1\nkind: Config\n"
                                        "clusters:\n- name: k\n  cluster:\n    server: https://192.0.2.1:6443\n"
                                        "    certificate-authority: {0}/ca.crt\n"
                                        "users:\n- name: u\n  user:\n    client-certificate: {0}/client.crt\n"
                                        "    client-key: {0}/client.key\n"
                                        "contexts:\n- name: c\n  context: {{cluster: k, user: u}}\n"
                                        "current-context: c\n",
                                        certs));
    const auto port = free_port();
    const auto admin = free_port();
    auto config = [&](const std::string& seed) {
        return fmt::format(
            "workers: 1\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
            "pools:\n  - name: p\n    backends:\n      - {{name: seed-1, address: \"{}\"}}\n"
            "    discovery:\n      kubeconfig: {}\n      state_file: {}\n"
            "admin: {{address: \"127.0.0.1:{}\"}}\n",
            port, seed, dir.file("kubeconfig"), dir.file("state.json"), admin);
    };
    const std::string bin = required_env("APILB_BIN");
    const std::string at = fmt::format("127.0.0.1:{}", admin);
    // `apilb status` until it says `text` (the watch moves between states).
    command_result r;
    auto status_until = [&](const std::string& text) {
        return wait_until(
            [&] {
                r = run_command({bin, "status", "--admin", at});
                return r.output.find(text) != std::string::npos;
            },
            milliseconds(20000));
    };
    std::uint16_t api_port = 0;
    {
        standin_process api(dir, certs, "127.0.0.2", "api", {"--client-ca", certs + "/ca.crt"});
        api_port = api.port();
        apilb_process lb(dir, config(api.address()), "127.0.0.1", port);
        ASSERT_EQ(api.request("PUT", "/control/slices/kubernetes",
                              R"({"endpoints":[{"addresses":["127.0.0.2"]},)"
                              R"({"addresses":["127.0.0.4"],"conditions":{"terminating":true}}]})")
                      .status,
                  200);
        const std::string both = fmt::format("127.0.0.2:{0}, 127.0.0.4:{0} (terminating)", api_port);
        ASSERT_TRUE(lb.wait_for_log("the API lists 2 apiserver(s): " + both, milliseconds(20000))) << lb.log();
        ASSERT_TRUE(status_until("DISCOVERY p: watch watching")) << r.output;
        EXPECT_EQ(r.exit_code, 0) << r.output;
        EXPECT_NE(r.output.find("  set from    the API\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  discovered  " + both + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  seed        seed-1 " + api.address() + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  state file  " + dir.file("state.json") + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find(", lists 1, relists 0,"), std::string::npos) << r.output;
        // The apiserver the watch runs through, and no error yet.
        EXPECT_NE(r.output.find("  api server  " + api.address() + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  last error  none\n"), std::string::npos) << r.output;
        EXPECT_TRUE(std::regex_search(r.output, std::regex("last sync [0-9]+s ago"))) << r.output;
        // The same facts in the JSON the page renders, and the page renders them.
        const json::object d = json::parse(http(admin, "GET", "/api/v1/status").body).at("discovery").at(0).as_object();
        EXPECT_EQ(d.at("seed").at(0).at("name").as_string(), "seed-1");
        EXPECT_EQ(d.at("state_file").as_string(), dir.file("state.json"));
        EXPECT_EQ(d.at("lists").to_number<std::uint64_t>(), 1u);
        EXPECT_EQ(d.at("api_server").as_string(), api.address());
        EXPECT_EQ(d.at("last_error").as_string(), "");
        EXPECT_EQ(d.at("last_error_unix").to_number<std::int64_t>(), 0);
        EXPECT_NE(http(admin, "GET", "/").body.find("data-discovery"), std::string::npos);
        ASSERT_TRUE(wait_until([&] { return read_file(dir.file("state.json")).find("127.0.0.4") != std::string::npos; },
                               milliseconds(5000)));
    }
    // The API is gone (the seed's port refuses): the set comes from the state file.
    apilb_process lb(dir, config(fmt::format("127.0.0.2:{}", api_port)), "127.0.0.1", port);
    ASSERT_TRUE(lb.wait_for_log("last-known-good from " + dir.file("state.json"))) << lb.log();
    ASSERT_TRUE(status_until("DISCOVERY p: watch backoff")) << r.output << lb.log();
    EXPECT_NE(r.output.find("  set from    the state file (last-known-good"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("  state file  " + dir.file("state.json") + " (in use)\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("last sync never"), std::string::npos) << r.output;
    EXPECT_TRUE(std::regex_search(r.output, std::regex("errors [1-9]"))) << r.output;
    // Which apiserver it tried, and why that failed, on one line with its
    // age. The loop moves to the next address of the state file's set
    // (127.0.0.2, 127.0.0.4) after each failure.
    const std::string tried = fmt::format("127\\.0\\.0\\.[24]:{}", api_port);
    EXPECT_TRUE(std::regex_search(r.output, std::regex("\n  api server  " + tried + "\n"))) << r.output;
    EXPECT_TRUE(std::regex_search(
        r.output, std::regex("\n  last error  connect to " + tried + ": Connection refused \\([0-9]+s ago\\)\n")))
        << r.output;
    const json::object d = json::parse(http(admin, "GET", "/api/v1/status").body).at("discovery").at(0).as_object();
    EXPECT_TRUE(std::regex_match(std::string(d.at("api_server").as_string()), std::regex(tried))) << d;
    EXPECT_TRUE(std::regex_match(std::string(d.at("last_error").as_string()),
                                 std::regex("connect to " + tried + ": Connection refused")))
        << d;
    EXPECT_GT(d.at("last_error_unix").to_number<std::int64_t>(), 0);
}

/// The last error in the status is one line and bounded, whatever the
/// apiserver answered: here a 401 whose message the status quotes.
TEST(AdminControl, StatusShowsTheDiscoveryErrorOnOneBoundedLine) {
    temp_dir dir;
    const std::string certs = make_certs(dir);
    write_kubeconfig(dir, certs);
    standin_process api(dir, certs, "127.0.0.2", "api", {"--client-ca", certs + "/ca.crt"});
    ASSERT_EQ(api.request("POST", "/control/reject-credentials?on=true").status, 200);
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process lb(dir,
                     fmt::format("workers: 1\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
                                 "pools:\n  - name: p\n    backends:\n      - {{name: seed, address: \"{}\"}}\n"
                                 "    discovery:\n      kubeconfig: {}\n"
                                 "admin: {{address: \"127.0.0.1:{}\"}}\n",
                                 port, api.address(), dir.file("kubeconfig"), admin),
                     "127.0.0.1", port);
    json::object d;
    ASSERT_TRUE(wait_until(
        [&] {
            d = json::parse(http(admin, "GET", "/api/v1/status").body).at("discovery").at(0).as_object();
            return !d.at("last_error").as_string().empty();
        },
        milliseconds(20000)))
        << lb.log();
    const std::string e(d.at("last_error").as_string());
    EXPECT_EQ(e.rfind("credentials rejected (HTTP 401)", 0), 0u) << e;
    EXPECT_LE(e.size(), 300u) << e;
    EXPECT_EQ(e.find_first_of("\r\n\t"), std::string::npos) << e;
    EXPECT_EQ(d.at("api_server").as_string(), api.address());
    const auto r = run_command({required_env("APILB_BIN"), "status", "--admin", fmt::format("127.0.0.1:{}", admin)});
    EXPECT_NE(r.output.find("  last error  credentials rejected (HTTP 401)"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace apilb::test
