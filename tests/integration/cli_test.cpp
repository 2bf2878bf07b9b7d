// The command line: version, check-config, bgp-withdraw, and what run does with bad input.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <csignal>
#include <filesystem>
#include <regex>
#include <sstream>

#include "../io_uring_host.hpp"
#include "harness.hpp"
#include "standin.hpp"

namespace apilb::test {
namespace {

TEST(Cli, VersionPrintsTheVersion) {
    auto r = run_command({required_env("APILB_BIN"), "version"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.output.rfind("apilb ", 0), 0u) << r.output;
}

TEST(Cli, CheckConfigAcceptsTheShippedExample) {
    auto r = run_command({required_env("APILB_BIN"), "check-config", "--config",
                          required_env("APILB_SOURCE_ROOT") + "/conf/apilb.yaml"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(": ok"), std::string::npos) << r.output;
}

/// check-config resolves relay.io against the host as `run` does at start:
/// with io_uring refused (a seccomp filter, as a container runtime's
/// default profile), `auto` says it would run on epoll and why, and
/// `io_uring` by name is the config error `run` would stop on.
TEST(Cli, CheckConfigSaysWhichRelayEngineThisHostGives) {
    temp_dir dir;
    const std::string yaml = single_pool_config(6443, {"127.0.0.2:6443"}, "round-robin", 1, "relay: {io: ");
    dir.write("auto.yaml", yaml + "auto}\n");
    dir.write("epoll.yaml", yaml + "epoll}\n");
    dir.write("uring.yaml", yaml + "io_uring}\n");
    const std::string bin = required_env("APILB_BIN"), refuse = required_env("APILB_WITHOUT_IO_URING");
    auto r = run_command({bin, "check-config", "--config", dir.file("epoll.yaml")});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("; relay.io epoll: epoll)"), std::string::npos) << r.output;

    r = run_command({refuse, bin, "check-config", "--config", dir.file("auto.yaml")});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("; relay.io auto: epoll, io_uring unavailable here: io_uring_setup with "
                            "SINGLE_ISSUER|DEFER_TASKRUN failed: Operation not permitted)"),
              std::string::npos)
        << r.output;

    r = run_command({refuse, bin, "check-config", "--config", dir.file("uring.yaml")});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(dir.file("uring.yaml") + ":"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(": relay.io: io_uring was asked for but this host does not give it"), std::string::npos)
        << r.output;

    // Where the host gives it, both resolve to the ring.
    if (!io_uring_refused_here().empty()) GTEST_SKIP() << "this host refuses io_uring: " << io_uring_refused_here();
    for (const char* f : {"auto.yaml", "uring.yaml"}) {
        r = run_command({bin, "check-config", "--config", dir.file(f)});
        EXPECT_EQ(r.exit_code, 0) << r.output;
        EXPECT_NE(r.output.find(": io_uring)"), std::string::npos) << r.output;
    }
}

/// `text` with every `from` replaced by `to`; fails the test if `from` is absent.
std::string replace_all(std::string text, const std::string& from, const std::string& to) {
    EXPECT_NE(text.find(from), std::string::npos) << "the shipped file no longer holds " << from;
    for (auto p = text.find(from); p != std::string::npos; p = text.find(from, p + to.size())) {
        text.replace(p, from.size(), to);
    }
    return text;
}

/// The shipped node-local example, with its host paths and addresses moved
/// into a test directory, checks and serves: against the stand-in's API
/// with a kubeconfig shaped like the kubelet's after kubeadm join (the CA
/// inline, the client certificate and key in one PEM behind the
/// kubelet-client-current.pem link), it lists the slices through its seed,
/// probes the seed, creates the admin token, and relays.
TEST(Cli, NodeLocalExampleChecksAndFollowsTheApiWithAKubeletKubeconfig) {
    temp_dir dir;
    const std::string certs = make_certs(dir);
    const std::string pki = dir.file("kubelet-pki");
    std::filesystem::create_directories(pki);
    // The kubelet's certificate store writes the certificate, then the key.
    dir.write("kubelet-pki/kubelet-client-2026-01-01-00-00-00.pem",
              read_file(certs + "/client.crt") + read_file(certs + "/client.key"));
    std::filesystem::create_symlink(pki + "/kubelet-client-2026-01-01-00-00-00.pem",
                                    pki + "/kubelet-client-current.pem");
    write_kubelet_conf(dir, certs, pki);
    standin_process api(dir, certs, "127.0.0.2", "api", {"--client-ca", certs + "/ca.crt"});
    const auto port = free_port();
    const auto admin = free_port();
    std::string yaml = read_file(required_env("APILB_SOURCE_ROOT") + "/conf/node-local.yaml");
    yaml = replace_all(yaml, "\"127.0.0.1:7445\"", fmt::format("\"127.0.0.1:{}\"", port));
    yaml = replace_all(yaml, "\"127.0.0.1:7446\"", fmt::format("\"127.0.0.1:{}\"", admin));
    yaml = replace_all(yaml, "\"192.0.2.100:6443\"", "\"" + api.address() + "\"");
    yaml = replace_all(yaml, "/etc/kubernetes/kubelet.conf", dir.file("kubelet.conf"));
    yaml = replace_all(yaml, "/etc/kubernetes/pki/ca.crt", certs + "/ca.crt");
    yaml = replace_all(yaml, "/var/lib/apilb/", dir.file(""));
    yaml = replace_all(yaml, "/run/apilb/", dir.file(""));
    EXPECT_EQ(yaml.find("vrrp:"), std::string::npos) << "node-local has no VIP";
    dir.write("node-local.yaml", yaml);
    auto r = run_command({required_env("APILB_BIN"), "check-config", "--config", dir.file("node-local.yaml")});
    ASSERT_EQ(r.exit_code, 0) << r.output;

    apilb_process lb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(lb.wait_for_log("the API lists 1 apiserver(s): " + api.address(), 20s)) << lb.log();
    ASSERT_TRUE(wait_until([&] { return http_exchange(admin, "GET", "/readyz").status == 200; }, 20s)) << lb.log();
    EXPECT_TRUE(wait_until([&] { return !read_file(dir.file("node-local-admin-token")).empty(); }, 5s))
        << "the admin surface is authenticated: apilb creates its token";
    EXPECT_TRUE(wait_until(
        [&] { return read_file(dir.file("discovery-control-plane.json")).find("127.0.0.2") != std::string::npos; },
        5s));
    EXPECT_EQ(http_exchange(admin, "POST", "/api/v1/reload").status, 401) << "no token, no reload";
    // A client's bytes reach the apiserver through the listener (TLS end to end).
    r = run_command({"/usr/bin/curl", "-sS", "--max-time", "10", "--cacert", certs + "/ca.crt", "--resolve",
                     fmt::format("kubernetes:{}:127.0.0.1", port), fmt::format("https://kubernetes:{}/readyz", port)});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("ok"), std::string::npos) << r.output;
}

TEST(Cli, CheckConfigNamesFileLineAndKeyAndExitsTwo) {
    temp_dir dir;
    dir.write("bad.yaml", R"(listeners:
  - {name: a, address: "127.0.0.1:6443", pool: nowhere}
pools:
  - name: p
    balance: fastest
    backends:
      - {name: b, address: "127.0.0.2:6443"}
)");
    auto r = run_command({required_env("APILB_BIN"), "check-config", "--config", dir.file("bad.yaml")});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(dir.file("bad.yaml") + ":2:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("listeners[0].pool"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(dir.file("bad.yaml") + ":5:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("pools[0].balance"), std::string::npos) << r.output;
}

/// bgp-withdraw (the unit's ExecStopPost) loads the file as check-config
/// does: without a bgp section there is nothing to take off, and a bad file
/// is reported with its errors (exit 2); only the VIPs apilb marked with
/// its local routes (none on this host) are taken off then (bgp_test).
TEST(Cli, BgpWithdrawWithoutBgpSectionHasNothingToDoAndRefusesABadFile) {
    temp_dir dir;
    dir.write("plain.yaml", R"(listeners:
  - {name: a, address: "127.0.0.1:6443", pool: p}
pools:
  - name: p
    backends:
      - {name: b, address: "127.0.0.2:6443"}
)");
    auto plain = run_command({required_env("APILB_BIN"), "bgp-withdraw", "--config", dir.file("plain.yaml")});
    EXPECT_EQ(plain.exit_code, 0) << plain.output;
    EXPECT_NE(plain.output.find("no bgp section, nothing to withdraw"), std::string::npos) << plain.output;

    dir.write("bad.yaml", R"(listeners:
  - {name: a, address: "127.0.0.1:6443", pool: p}
pools:
  - name: p
    backends:
      - {name: b, address: "127.0.0.2:6443"}
bgp:
  local_as: 64512
  router_id: 198.18.20.11
  peers: [{address: 198.18.20.1, remote_as: 64500}]
  vips: [not-an-address]
)");
    auto bad = run_command({required_env("APILB_BIN"), "bgp-withdraw", "--config", dir.file("bad.yaml")});
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
    EXPECT_NE(bad.output.find(dir.file("bad.yaml") + ":11:"), std::string::npos) << bad.output;
    EXPECT_NE(bad.output.find("bgp.vips[0]"), std::string::npos) << bad.output;
}

TEST(Cli, RunRefusesAnInvalidConfigWithoutStarting) {
    temp_dir dir;
    dir.write("bad.yaml", "listeners: []\npools: []\n");
    auto r = run_command({required_env("APILB_BIN"), "run", "--config", dir.file("bad.yaml")});
    EXPECT_EQ(r.exit_code, 2) << r.output;
}

TEST(Cli, MissingConfigFileIsAClearError) {
    auto r = run_command({required_env("APILB_BIN"), "check-config", "--config", "/nonexistent/apilb.yaml"});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("/nonexistent/apilb.yaml"), std::string::npos) << r.output;
}

TEST(Cli, ListenerAddressInUseFailsWithTheListenerNamed) {
    tcp_server taken("127.0.0.1", [](int&) {});
    temp_dir dir;
    dir.write("c.yaml", fmt::format(R"(listeners:
  - {{name: busy, address: "{}", pool: p}}
pools:
  - name: p
    backends: [{{name: b, address: "127.0.0.2:6443"}}]
)",
                                    taken.address()));
    auto r = run_command({required_env("APILB_BIN"), "run", "--config", dir.file("c.yaml")}, 10s);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("listener busy"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("in use"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("in use: Address already in use"), std::string::npos) << "said once: " << r.output;
}

TEST(Cli, AdminAddressInUseIsSaidOnce) {
    tcp_server taken("127.0.0.1", [](int&) {});
    temp_dir dir;
    dir.write("c.yaml", single_pool_config(free_port(), {"127.0.0.2:6443"}, "round-robin", 1,
                                           fmt::format("admin: {{address: \"{}\"}}\n", taken.address())));
    auto r = run_command({required_env("APILB_BIN"), "run", "--config", dir.file("c.yaml")}, 10s);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("admin: cannot listen on " + taken.address() + ": Address already in use"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("Address already in use: Address already in use"), std::string::npos) << r.output;
}

TEST(Cli, UnknownSubcommandIsAUsageError) {
    auto r = run_command({required_env("APILB_BIN"), "frobnicate"});
    EXPECT_EQ(r.exit_code, 64) << r.output;
}

TEST(Cli, JsonLogsAreOneObjectPerLine) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir,
                        fmt::format(R"(listeners:
  - {{name: f, address: "127.0.0.1:{}", pool: p}}
pools:
  - name: p
    backends: [{{name: b, address: "{}"}}]
log: {{level: debug, format: json}}
)",
                                    port, echo.address()),
                        "127.0.0.1", port);
    {
        client c;
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        ASSERT_TRUE(c.send_all("quote\" and newline\n"));
        c.shutdown_write();
        int end = -1;
        c.recv_until_eof(end);
    }
    ASSERT_TRUE(apilb.wait_for_log("session closed"));
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
    // ts, level, then the stable fields a line may carry (docs/admin.md), then msg.
    const std::regex line(
        R"re(^\{"ts":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z","level":"(trace|debug|info|warning|error|critical)",("(event|pool|backend|client|reason)":"([^"\\]|\\.)*",)*"msg":"([^"\\]|\\.)*"\}$)re");
    std::istringstream in(apilb.log());
    std::string l;
    int n = 0;
    while (std::getline(in, l)) {
        EXPECT_TRUE(std::regex_match(l, line)) << l;
        ++n;
    }
    EXPECT_GE(n, 3);
}

TEST(Cli, SighupKeepsServing) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir,
                        fmt::format(R"(listeners:
  - {{name: f, address: "127.0.0.1:{}", pool: p}}
pools:
  - name: p
    backends: [{{name: b, address: "{}"}}]
)",
                                    port, echo.address()),
                        "127.0.0.1", port);
    apilb.proc().signal(SIGHUP);
    std::this_thread::sleep_for(200ms);
    EXPECT_TRUE(apilb.proc().running());
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(c.send_all("x"));
    EXPECT_EQ(c.recv_exact(1), "x");
    c.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

}  // namespace
}  // namespace apilb::test
