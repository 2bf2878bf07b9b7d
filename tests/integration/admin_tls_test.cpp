// The admin endpoint over HTTPS, against the real binary with a PKI made at
// test time (tests/tools/mkcerts.sh): GETs over TLS, client certificates
// guarding POSTs (client_auth: changes) or everything (all), a certificate
// from another CA and plain HTTP cut off at the handshake and counted, the
// CLI verifying the server and presenting its certificate, and a reload
// re-reading rotated certificate files. curl is the independent peer.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <csignal>
#include <filesystem>
#include <regex>
#include <thread>

#include "harness.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;

/// The test PKI: ca, server, client; other-ca and other-client (untrusted).
std::string make_pki(const temp_dir& dir, const std::string& name) {
    const std::string certs = dir.file(name);
    const auto r = run_command({"/bin/bash", required_env("APILB_MKCERTS"), certs}, 60s);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return certs;
}

struct curl_reply {
    int exit_code = -1;
    int status = 0;  ///< 0: no HTTP response (curl says "000")
    std::string body;
    std::string output;  ///< curl's stderr and the status line
};

/// One request with the real curl; `args` are the TLS options.
curl_reply curl(const temp_dir& dir, const std::string& method, const std::string& url,
                const std::vector<std::string>& args) {
    const std::string body_file = dir.file("curl-body");
    std::filesystem::remove(body_file);
    std::vector<std::string> argv{"/usr/bin/curl", "-sS", "--max-time", "10", "-X",
                                  method,          "-o",  body_file,    "-w", "\nstatus=%{http_code}\n"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back(url);
    const auto r = run_command(argv, 20s);
    curl_reply c{.exit_code = r.exit_code, .status = 0, .body = {}, .output = r.output};
    std::smatch m;
    if (std::regex_search(r.output, m, std::regex("status=([0-9]{3})"))) c.status = std::stoi(m[1]);
    if (std::filesystem::exists(body_file)) c.body = read_file(body_file);
    return c;
}

/// The value of an unlabelled sample in the exposition, or -1.
double metric(const std::string& exposition, const std::string& name) {
    std::smatch m;
    if (std::regex_search(exposition, m, std::regex("\n" + name + " ([0-9.e+]+)\n"))) return std::stod(m[1]);
    return -1;
}

/// apilb_admin_tls_handshake_failures_total now, read over HTTPS (which
/// itself adds nothing); -1 if it cannot be read.
double handshake_failures(const temp_dir& dir, const std::string& base, const std::vector<std::string>& args) {
    const auto r = curl(dir, "GET", base + "/metrics", args);
    return r.status == 200 ? metric(r.body, "apilb_admin_tls_handshake_failures_total") : -1;
}

/// A pool over `backend` and an admin endpoint on 127.0.0.1:`admin` with `admin_extra`.
std::string tls_config(std::uint16_t port, const std::string& backend, std::uint16_t admin,
                       const std::string& admin_extra) {
    return single_pool_config(port, {backend}, "round-robin", 1,
                              fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n{}", admin, admin_extra));
}

std::string tls_section(const std::string& certs, const std::string& more = {}) {
    return fmt::format("  tls:\n    cert_file: \"{0}/server.crt\"\n    key_file: \"{0}/server.key\"\n{1}", certs, more);
}

std::vector<std::string> trust(const std::string& certs) { return {"--cacert", certs + "/ca.crt"}; }
std::vector<std::string> with_cert(const std::string& certs, const std::string& who) {
    return {"--cacert", certs + "/ca.crt", "--cert", certs + "/" + who + ".crt", "--key", certs + "/" + who + ".key"};
}

/// Polls GET /readyz over HTTPS until it answers 200 (bounded).
bool wait_ready(const temp_dir& dir, const std::string& base, const std::vector<std::string>& args) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
        if (curl(dir, "GET", base + "/readyz", args).status == 200) return true;
        std::this_thread::sleep_for(milliseconds(100));
    }
    return false;
}

TEST(AdminTls, HttpsServesGetsAndClientCertificatesGuardPosts) {
    temp_dir dir;
    const std::string certs = make_pki(dir, "pki");
    tcp_server b0("127.0.0.1", echo_handler());
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir,
                        tls_config(port, b0.address(), admin,
                                   tls_section(certs, fmt::format("    client_ca_file: \"{}/ca.crt\"\n", certs))),
                        "127.0.0.1", port);
    const std::string base = fmt::format("https://127.0.0.1:{}", admin);
    ASSERT_TRUE(wait_ready(dir, base, trust(certs))) << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("admin: listening on https://127.0.0.1:{}", admin))) << apilb.log();

    EXPECT_EQ(handshake_failures(dir, base, trust(certs)), 0);

    // GETs need no client certificate with client_auth: changes.
    auto r = curl(dir, "GET", base + "/readyz", trust(certs));
    EXPECT_EQ(r.status, 200) << r.output;
    EXPECT_NE(r.body.find("ready"), std::string::npos) << r.body;
    // The server's certificate is checked by curl: an unrelated CA fails
    // (and curl's alert ends the server's handshake too).
    r = curl(dir, "GET", base + "/readyz", {"--cacert", certs + "/other-ca.crt"});
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(handshake_failures(dir, base, trust(certs)), 1);

    // A POST without a client certificate: a clear 403.
    r = curl(dir, "POST", base + "/api/v1/backends/p/b0/drain", trust(certs));
    EXPECT_EQ(r.status, 403) << r.output;
    EXPECT_NE(r.body.find("client certificate"), std::string::npos) << r.body;
    // A certificate from another CA: refused at the handshake.
    r = curl(
        dir, "POST", base + "/api/v1/backends/p/b0/drain",
        {"--cacert", certs + "/ca.crt", "--cert", certs + "/other-client.crt", "--key", certs + "/other-client.key"});
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(handshake_failures(dir, base, trust(certs)), 2);
    EXPECT_NE(curl(dir, "GET", base + "/api/v1/status", trust(certs)).body.find("\"drain\":false"), std::string::npos)
        << "nothing was drained yet";
    // With the right certificate the drain happens.
    r = curl(dir, "POST", base + "/api/v1/backends/p/b0/drain", with_cert(certs, "client"));
    EXPECT_EQ(r.status, 200) << r.output;
    EXPECT_NE(r.body.find("drained"), std::string::npos) << r.body;
    EXPECT_NE(curl(dir, "GET", base + "/api/v1/status", trust(certs)).body.find("\"drain_source\":\"admin\""),
              std::string::npos);

    // Plain HTTP to the HTTPS port: no HTTP answer, the connection is closed.
    {
        client c;
        ASSERT_EQ(c.connect("127.0.0.1", admin), 0);
        c.set_timeout(milliseconds(5000));
        ASSERT_TRUE(c.send_all(fmt::format("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", admin)));
        int end = 0;
        const std::string got = c.recv_until_eof(end, 1 << 16);
        EXPECT_NE(end, EAGAIN) << "still open after 5s";
        EXPECT_EQ(got.find("HTTP/1."), std::string::npos) << got;
    }
    EXPECT_EQ(handshake_failures(dir, base, trust(certs)), 3);
    EXPECT_TRUE(apilb.wait_for_log("admin: TLS handshake with 127.0.0.1:")) << apilb.log();
    // And apilb serves on.
    EXPECT_EQ(curl(dir, "GET", base + "/livez", trust(certs)).status, 200);
    EXPECT_TRUE(apilb.proc().running());
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminTls, ClientAuthAllNeedsACertificateForEveryRequestAndTheTokenStillCounts) {
    temp_dir dir;
    const std::string certs = make_pki(dir, "pki");
    dir.write("token", "s3cret-token\n");
    tcp_server b0("127.0.0.1", echo_handler());
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(
        dir,
        tls_config(
            port, b0.address(), admin,
            fmt::format("  token_file: \"{}\"\n", dir.file("token")) +
                tls_section(certs, fmt::format("    client_ca_file: \"{}/ca.crt\"\n    client_auth: all\n", certs))),
        "127.0.0.1", port);
    const std::string base = fmt::format("https://127.0.0.1:{}", admin);
    ASSERT_TRUE(wait_ready(dir, base, with_cert(certs, "client"))) << apilb.log();

    // Without a certificate even a GET is refused, at the handshake.
    auto r = curl(dir, "GET", base + "/readyz", trust(certs));
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.status, 0) << r.output;
    r = curl(dir, "GET", base + "/metrics", with_cert(certs, "client"));
    ASSERT_EQ(r.status, 200) << r.output;
    EXPECT_EQ(metric(r.body, "apilb_admin_tls_handshake_failures_total"), 1) << r.body;

    // Both credentials for a change: the certificate alone is not enough.
    r = curl(dir, "POST", base + "/api/v1/backends/p/b0/drain", with_cert(certs, "client"));
    EXPECT_EQ(r.status, 401) << r.output;
    auto args = with_cert(certs, "client");
    args.insert(args.end(), {"-H", "Authorization: Bearer s3cret-token"});
    r = curl(dir, "POST", base + "/api/v1/backends/p/b0/drain", args);
    EXPECT_EQ(r.status, 200) << r.output;
    // A browser on this origin may POST; another origin may not (CSRF).
    auto same_origin = args;
    same_origin.insert(same_origin.end(), {"-H", fmt::format("Origin: {}", base)});
    EXPECT_EQ(curl(dir, "POST", base + "/api/v1/backends/p/b0/enable", same_origin).status, 200);
    auto other_origin = args;
    other_origin.insert(other_origin.end(), {"-H", fmt::format("Origin: http://127.0.0.1:{}", admin)});
    EXPECT_EQ(curl(dir, "POST", base + "/api/v1/backends/p/b0/enable", other_origin).status, 403);
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminTls, TheCliVerifiesTheServerAndPresentsItsCertificate) {
    temp_dir dir;
    const std::string certs = make_pki(dir, "pki");
    tcp_server b0("127.0.0.1", echo_handler());
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir,
                        tls_config(port, b0.address(), admin,
                                   tls_section(certs, fmt::format("    client_ca_file: \"{}/ca.crt\"\n", certs))),
                        "127.0.0.1", port);
    const std::string base = fmt::format("https://127.0.0.1:{}", admin);
    ASSERT_TRUE(wait_ready(dir, base, trust(certs))) << apilb.log();
    const std::string bin = required_env("APILB_BIN");
    const std::string cfg = dir.file("apilb.yaml");
    const std::string client_crt = certs + "/client.crt";
    const std::string client_key = certs + "/client.key";

    // From the config: HTTPS, the server checked against its own cert_file.
    auto r = run_command({bin, "status", "--config", cfg});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("b0"), std::string::npos) << r.output;
    // A change without a client certificate: refused, exit 1, and why.
    r = run_command({bin, "drain", "p", "b0", "--config", cfg});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("client certificate"), std::string::npos) << r.output;
    r = run_command({bin, "drain", "p", "b0", "--config", cfg, "--cert", client_crt, "--key", client_key});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("p/b0: drained"), std::string::npos) << r.output;
    // Exit code 2 still means an unknown backend over HTTPS.
    r = run_command({bin, "enable", "p", "nosuch", "--config", cfg, "--cert", client_crt, "--key", client_key});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    // A client certificate from another CA: the server refuses the connection.
    r = run_command({bin, "enable", "p", "b0", "--config", cfg, "--cert", certs + "/other-client.crt", "--key",
                     certs + "/other-client.key"});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("refused"), std::string::npos) << r.output;

    // --admin with https:// and --cacert.
    r = run_command({bin, "enable", "p", "b0", "--admin", base, "--cacert", certs + "/ca.crt", "--cert", client_crt,
                     "--key", client_key});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    // A bare address with --cacert means HTTPS.
    r = run_command({bin, "status", "--admin", fmt::format("127.0.0.1:{}", admin), "--cacert", certs + "/ca.crt"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    // The server's certificate does not verify against another CA: exit 1, said clearly.
    r = run_command({bin, "status", "--admin", base, "--cacert", certs + "/other-ca.crt"});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("certificate failed verification"), std::string::npos) << r.output;
    // Nor for a name it was not issued for.
    r = run_command({bin, "status", "--admin", base, "--cacert", certs + "/ca.crt", "--server-name", "apilb.example"});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("not issued for apilb.example"), std::string::npos) << r.output;
    // Plain HTTP to the HTTPS endpoint: no answer, and a hint.
    r = run_command({bin, "status", "--admin", fmt::format("http://127.0.0.1:{}", admin)});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("HTTPS"), std::string::npos) << r.output;
    // Bad command lines.
    r = run_command({bin, "status", "--config", cfg, "--cert", client_crt});
    EXPECT_EQ(r.exit_code, 64) << r.output;
    r = run_command(
        {bin, "status", "--admin", fmt::format("http://127.0.0.1:{}", admin), "--cacert", certs + "/ca.crt"});
    EXPECT_EQ(r.exit_code, 64) << r.output;
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminTls, AReloadRereadsRotatedCertificateFiles) {
    temp_dir dir;
    const std::string certs = make_pki(dir, "pki");
    const std::string next = make_pki(dir, "next");  // a new CA and server certificate
    tcp_server b0("127.0.0.1", echo_handler());
    const auto port = free_port();
    const auto admin = free_port();
    // The client CA is a copy, so the rotation below changes only the server's files.
    std::filesystem::copy_file(certs + "/ca.crt", dir.file("client-ca.crt"));
    apilb_process apilb(
        dir,
        tls_config(port, b0.address(), admin,
                   tls_section(certs, fmt::format("    client_ca_file: \"{}\"\n", dir.file("client-ca.crt")))),
        "127.0.0.1", port);
    const std::string base = fmt::format("https://127.0.0.1:{}", admin);
    ASSERT_TRUE(wait_ready(dir, base, trust(certs))) << apilb.log();
    std::filesystem::copy_file(certs + "/ca.crt", dir.file("old-ca.crt"));

    // New files on disk: the server still presents the old certificate.
    for (const char* f : {"server.crt", "server.key"}) {
        std::filesystem::copy_file(next + "/" + f, certs + "/" + f, std::filesystem::copy_options::overwrite_existing);
    }
    EXPECT_EQ(curl(dir, "GET", base + "/readyz", {"--cacert", next + "/ca.crt"}).status, 0);
    EXPECT_EQ(curl(dir, "GET", base + "/readyz", {"--cacert", dir.file("old-ca.crt")}).status, 200);

    // The CLI from the config pins the certificate now on disk, which the
    // server does not present yet: refused, with the way out.
    const std::string bin = required_env("APILB_BIN");
    auto st = run_command({bin, "status", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(st.exit_code, 1) << st.output;
    EXPECT_NE(st.output.find("systemctl reload apilb"), std::string::npos) << st.output;

    // POST /api/v1/reload (through the CLI, trusting the old CA): new certificate.
    auto r = run_command({bin, "reload", "--admin", base, "--cacert", dir.file("old-ca.crt"), "--cert",
                          certs + "/client.crt", "--key", certs + "/client.key"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(apilb.wait_for_log("admin: TLS files re-read: new connections get the certificate")) << apilb.log();
    EXPECT_EQ(curl(dir, "GET", base + "/readyz", {"--cacert", next + "/ca.crt"}).status, 200);
    EXPECT_EQ(curl(dir, "GET", base + "/readyz", {"--cacert", dir.file("old-ca.crt")}).status, 0);

    // A key that does not match: the reload is rejected, the running certificate stays.
    std::filesystem::copy_file(certs + "/client.key", certs + "/server.key",
                               std::filesystem::copy_options::overwrite_existing);
    apilb.proc().signal(SIGHUP);
    EXPECT_TRUE(apilb.wait_for_log("admin.tls.key_file")) << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log("reload failed")) << apilb.log();
    EXPECT_EQ(curl(dir, "GET", base + "/readyz", {"--cacert", next + "/ca.crt"}).status, 200);
    EXPECT_EQ(apilb.terminate(), 0);
}

}  // namespace
}  // namespace apilb::test
