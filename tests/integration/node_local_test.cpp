// The node-local mode end to end, with the real binary running the shipped
// conf/node-local.yaml (addresses and paths moved to a temp dir, grace_period
// shortened) and a kubeconfig shaped like kubeadm's kubelet.conf whose client
// certificate is made at test time: started with only the seed, it follows
// the control plane as it grows and shrinks, survives a SIGKILL while the API
// is unavailable and the set changes, serving from its last-known-good set,
// and follows the change once the API is back; and it takes a rotated
// kubelet client certificate into use at the next connect of its watch.
//
// The apiservers are one stand-in process with one listener per apiserver on
// 127.0.0.2-5 (--also-listen), sharing one store of API objects as
// apiservers share etcd; each answers its own /readyz and names itself in
// X-Standin-Name.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <string>

#include "harness.hpp"
#include "standin.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
    for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
        text.replace(at, from.size(), to);
    }
    return text;
}

/// A metric's value in a /metrics text ("" when absent).
std::string metric(const std::string& text, const std::string& name_and_labels) {
    const auto p = text.find("\n" + name_and_labels + " ");
    if (p == std::string::npos) return {};
    const auto start = p + name_and_labels.size() + 2;
    return text.substr(start, text.find('\n', start) - start);
}

long long ms(steady::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

class NodeLocal : public ::testing::Test {
protected:
    void SetUp() override {
        certs_ = make_certs(node_);
        pki_ = node_.file("kubelet-pki");
        std::filesystem::create_directories(pki_);
        serial_ = issue_kubelet_certificate("kubelet-client-2026-01-01-00-00-00.pem");
        std::filesystem::create_symlink(pki_ + "/kubelet-client-2026-01-01-00-00-00.pem",
                                        pki_ + "/kubelet-client-current.pem");
        write_kubelet_conf(node_, certs_, pki_);
        tls_.emplace(certs_ + "/ca.crt");
        port_ = free_port();
        admin_ = free_port();
    }

    /// A kubelet client certificate and its key in one PEM, `file` in the
    /// kubelet's pki directory, signed by the cluster CA now; its serial in hex.
    std::string issue_kubelet_certificate(const std::string& file) {
        const std::string serial = fmt::format("{:x}", 0x4b0100 + ++issued_);
        const std::string base = node_.file("issue");
        node_.write("issue.ext", "keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n");
        for (const std::vector<std::string>& argv : std::vector<std::vector<std::string>>{
                 {"/usr/bin/openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                  base + ".key"},
                 {"/usr/bin/openssl", "req", "-new", "-key", base + ".key", "-subj",
                  "/O=system:nodes/CN=system:node:worker-1", "-out", base + ".csr"},
                 {"/usr/bin/openssl", "x509", "-req", "-in", base + ".csr", "-CA", certs_ + "/ca.crt", "-CAkey",
                  certs_ + "/ca.key", "-set_serial", "0x" + serial, "-days", "1", "-sha256", "-extfile", base + ".ext",
                  "-out", base + ".crt"}}) {
            auto r = run_command(argv);
            EXPECT_EQ(r.exit_code, 0) << argv[1] << ": " << r.output;
        }
        // As the kubelet's certificate store writes it: the certificate, then the key.
        node_.write("kubelet-pki/" + file, read_file(base + ".crt") + read_file(base + ".key"));
        return serial;
    }

    /// conf/node-local.yaml as shipped, its addresses and paths moved here;
    /// grace_period shortened so that a removal shows within the test.
    std::string config() const {
        std::string yaml = read_file(required_env("APILB_SOURCE_ROOT") + "/conf/node-local.yaml");
        yaml = replace_all(yaml, "\"127.0.0.1:7445\"", fmt::format("\"127.0.0.1:{}\"", port_));
        yaml = replace_all(yaml, "\"127.0.0.1:7446\"", fmt::format("\"127.0.0.1:{}\"", admin_));
        yaml = replace_all(yaml, "\"192.0.2.100:6443\"", "\"" + api_->address() + "\"");
        yaml = replace_all(yaml, "/etc/kubernetes/kubelet.conf", node_.file("kubelet.conf"));
        yaml = replace_all(yaml, "/etc/kubernetes/pki/ca.crt", certs_ + "/ca.crt");
        yaml = replace_all(yaml, "/var/lib/apilb/", node_.file(""));
        yaml = replace_all(yaml, "/run/apilb/", node_.file(""));
        yaml = replace_all(yaml, "grace_period: 5m", "grace_period: 1s");
        return yaml;
    }

    /// The stand-in apiservers cp1 (the seed, 127.0.0.2) .. cp4 (127.0.0.5).
    void start_apiservers() {
        api_.emplace(node_, certs_, "127.0.0.2", "cp1",
                     std::vector<std::string>{"--client-ca", certs_ + "/ca.crt", "--also-listen", "127.0.0.3=cp2",
                                              "--also-listen", "127.0.0.4=cp3", "--also-listen", "127.0.0.5=cp4"});
    }
    /// The `kubernetes` slice lists cp`ns`.
    void list(std::initializer_list<int> ns) {
        std::string eps;
        for (int n : ns) eps += fmt::format(R"({}{{"addresses":["127.0.0.{}"]}})", eps.empty() ? "" : ",", n + 1);
        auto r = api_->request("PUT", "/control/slices/kubernetes", R"({"endpoints":[)" + eps + "]}");
        ASSERT_EQ(r.status, 200) << r.body;
    }
    std::string cp(int n) const { return fmt::format("127.0.0.{}:{}", n + 1, api_->port()); }

    std::string one_session() const { return session_sampler(*tls_, port_).one(); }
    std::map<std::string, int> sessions(int n) const { return session_sampler(*tls_, port_).many(n); }
    bool reaches(const std::string& name, std::chrono::milliseconds t = 20s) const {
        return session_sampler(*tls_, port_).reaches(name, t);
    }
    std::string status() const { return http_exchange(admin_, "GET", "/api/v1/status").body; }
    std::string metrics() const { return http_exchange(admin_, "GET", "/metrics").body; }
    /// Whether the pools section of the status names backend `address`.
    bool has_backend(const std::string& address) const {
        const std::string s = status();
        const auto pools = s.find(R"("pools":[)");
        return pools != std::string::npos && s.find(R"({"name":")" + address + '"', pools) != std::string::npos;
    }
    /// Whether backend `address` in the pools section shows `fragment`, or is not there at all.
    bool backend_shows_or_gone(const std::string& address, const std::string& fragment) const {
        const std::string s = status();
        const auto pools = s.find(R"("pools":[)");
        const auto at = pools == std::string::npos ? pools : s.find(R"("address":")" + address + '"', pools);
        if (at == std::string::npos) return pools != std::string::npos;
        return s.find(fragment, at) < s.find(R"({"name":")", at);
    }
    std::string state_file() const { return read_file(node_.file("discovery-control-plane.json")); }

    temp_dir node_;  ///< the node: kubelet pki, kubelet.conf, the state file
    std::string certs_;
    std::string pki_;
    std::string serial_;
    int issued_ = 0;
    std::optional<tls_client_context> tls_;
    std::optional<standin_process> api_;
    std::uint16_t port_ = 0;
    std::uint16_t admin_ = 0;
};

TEST_F(NodeLocal, FollowsTheControlPlaneAndSurvivesARestartWhileTheApiIsDown) {
    start_apiservers();
    list({1, 2, 3});
    // Each apilb run has its own directory for its config and log; the
    // node's directory (state file, kubelet.conf) outlives both.
    auto run_dir = std::make_unique<temp_dir>();
    const auto t_start = steady::now();
    auto lb = std::make_unique<apilb_process>(*run_dir, config(), "127.0.0.1", port_);
    ASSERT_TRUE(reaches("cp2")) << lb->log();
    ASSERT_TRUE(reaches("cp3")) << lb->log();
    std::printf("start with only the seed -> sessions on the discovered cp2 and cp3: %lld ms\n",
                ms(steady::now() - t_start));

    // Grows: a 4th apiserver; sessions reach it once its probe passed.
    auto t0 = steady::now();
    list({1, 2, 3, 4});
    ASSERT_TRUE(reaches("cp4")) << lb->log();
    const auto grow_ms = ms(steady::now() - t0);
    std::printf("slice change (4th apiserver) -> first session on it: %lld ms\n", grow_ms);
    RecordProperty("slice_change_to_first_session_ms", static_cast<int>(grow_ms));

    // Shrinks: cp3 leaves the list (it still passes its probes: it stays
    // for grace_period, then is drained) and gets no new session.
    t0 = steady::now();
    list({1, 2, 4});
    ASSERT_TRUE(wait_until([&] { return !has_backend(cp(3)); }, 20s)) << status() << lb->log();
    std::printf("slice change (cp3 removed) -> cp3 out of the pool: %lld ms (grace_period 1s)\n",
                ms(steady::now() - t0));
    auto seen = sessions(12);
    EXPECT_EQ(seen.count("cp3"), 0u) << lb->log();
    EXPECT_GT(seen["cp1"] + seen["cp2"] + seen["cp4"], 0);
    ASSERT_TRUE(wait_until(
        [&] {
            const auto s = state_file();
            return s.find("127.0.0.5") != std::string::npos && s.find("127.0.0.4") == std::string::npos;
        },
        5s))
        << state_file();

    // SIGKILL; while apilb is down the API becomes unavailable (503 to
    // every API request, /readyz still answered) and the control plane
    // changes: cp1, the seed, is being retired (its /readyz fails and it
    // leaves the list) and cp3 comes back.
    lb->proc().signal(SIGKILL);
    ASSERT_TRUE(lb->proc().wait(5s).has_value());
    lb.reset();
    ASSERT_EQ(api_->request("POST", "/control/unavailable?on=true").status, 200);
    ASSERT_TRUE(api_->set_readyz("fail"));
    list({2, 3, 4});

    run_dir = std::make_unique<temp_dir>();
    t0 = steady::now();
    lb = std::make_unique<apilb_process>(*run_dir, config(), "127.0.0.1", port_);
    ASSERT_TRUE(wait_until([&] { return !one_session().empty(); }, 20s, 50ms)) << lb->log();
    std::printf("restart with the API unavailable -> serving from the last-known-good set: %lld ms\n",
                ms(steady::now() - t0));
    // Serving from the last-known-good set (cp2, cp4), not the seed alone
    // (which fails its probes now, and takes no session once they say so);
    // the status says so.
    ASSERT_TRUE(wait_until([&] { return backend_shows_or_gone(cp(1), R"("state":"down")"); }, 20s)) << status();
    seen = sessions(12);
    EXPECT_EQ(seen.count("cp1") + seen.count("cp3") + seen.count(""), 0u) << lb->log();
    EXPECT_GT(seen["cp2"] + seen["cp4"], 0) << lb->log();
    EXPECT_TRUE(lb->wait_for_log("last-known-good from " + node_.file("discovery-control-plane.json"))) << lb->log();
    EXPECT_NE(status().find(R"("source":"state_file")"), std::string::npos) << status();
    EXPECT_TRUE(wait_until([&] { return status().find("HTTP 503") != std::string::npos; }, 10s)) << status();
    const auto cli = run_command({required_env("APILB_BIN"), "status", "--admin", fmt::format("127.0.0.1:{}", admin_)});
    EXPECT_NE(cli.output.find("  set from    the state file (last-known-good"), std::string::npos) << cli.output;

    // The API is back: apilb follows the change made while it was down.
    t0 = steady::now();
    ASSERT_EQ(api_->request("POST", "/control/unavailable?on=false").status, 200);
    ASSERT_TRUE(reaches("cp3", 30s)) << lb->log();
    std::printf("API back -> the change made while down followed (first session on cp3): %lld ms\n",
                ms(steady::now() - t0));
    EXPECT_TRUE(wait_until([&] { return status().find(R"("source":"api")") != std::string::npos; }, 5s)) << status();
    EXPECT_TRUE(wait_until([&] { return !has_backend(cp(1)); }, 10s)) << status();
}

TEST_F(NodeLocal, ARotatedKubeletCertificateIsUsedAtTheNextConnectOfTheWatch) {
    start_apiservers();
    temp_dir run_dir;
    apilb_process lb(run_dir, config(), "127.0.0.1", port_);
    const std::string watching = R"(apilb_discovery_watch_state{pool="control-plane",state="watching"})";
    ASSERT_TRUE(wait_until([&] { return metric(metrics(), watching) == "1"; }, 20s)) << lb.log();

    // A rotation half done (the link points at a file with no key): the
    // credentials in use stay, the watch reconnects with them.
    node_.write("kubelet-pki/kubelet-client-broken.pem", read_file(certs_ + "/client.crt"));
    const std::string link = pki_ + "/kubelet-client-current.pem";
    auto repoint = [&](const std::string& file) {
        std::filesystem::create_symlink(pki_ + "/" + file, link + ".tmp");
        std::filesystem::rename(link + ".tmp", link);  // atomic, as the kubelet's certificate store does
    };
    repoint("kubelet-client-broken.pem");
    ASSERT_EQ(api_->request("POST", "/control/break-watches?how=close").status, 200);
    ASSERT_TRUE(lb.wait_for_log("the credentials changed but cannot be used, keeping the previous ones", 20s))
        << lb.log();
    EXPECT_TRUE(wait_until(
        [&] { return metric(metrics(), R"(apilb_discovery_credential_errors_total{pool="control-plane"})") >= "1"; },
        5s));
    ASSERT_TRUE(wait_until([&] { return metric(metrics(), watching) == "1"; }, 20s)) << lb.log();

    // The kubelet rotates: a new certificate and key, the link moved, the
    // old file removed, and the old certificate revoked at the apiserver
    // (which ends the open watch).
    const std::string old_serial = serial_;
    issue_kubelet_certificate("kubelet-client-2026-01-02-00-00-00.pem");
    repoint("kubelet-client-2026-01-02-00-00-00.pem");
    std::filesystem::remove(pki_ + "/kubelet-client-2026-01-01-00-00-00.pem");
    ASSERT_EQ(api_->request("POST", "/control/revoke?serial=" + old_serial).status, 200);
    ASSERT_TRUE(lb.wait_for_log("the credentials changed; the next connect uses the new ones", 20s)) << lb.log();
    // The watch runs again with the new certificate: a change reaches apilb.
    list({1, 2});
    ASSERT_TRUE(lb.wait_for_log("the API lists 2 apiserver(s)", 20s)) << lb.log();
    EXPECT_EQ(metric(metrics(), R"(apilb_discovery_credential_reloads_total{pool="control-plane"})"), "1");
    EXPECT_EQ(metric(metrics(), watching), "1") << lb.log();
}

}  // namespace
}  // namespace apilb::test
