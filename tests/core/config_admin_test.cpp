// The `admin` section: HTTPS with client certificates, the checks of its PEM
// files at load (so check-config reports a bad key with file, line and key),
// what protects an address off the loopback, and that TLS settings wait for
// a restart. Certificates come from tests/tools/mkcerts.sh, made per test.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "apilb/core/config_diff.hpp"
#include "config_test_util.hpp"

namespace apilb {
namespace {

using test::errors_of;

class AdminConfig : public ::testing::Test {
protected:
    /// One PKI for the suite: making it takes a second of openssl.
    static void SetUpTestSuite() {
        const char* root = std::getenv("APILB_SOURCE_ROOT");
        ASSERT_TRUE(root != nullptr && *root != '\0') << "APILB_SOURCE_ROOT is not set (meson test sets it)";
        dir_ = std::filesystem::temp_directory_path() / ("apilb-admin-config-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir_);
        const std::string mk = "/bin/bash " + std::string(root) + "/tests/tools/mkcerts.sh " + dir_.string();
        ASSERT_EQ(std::system(mk.c_str()), 0) << mk;
        std::ofstream(dir_ / "token") << "s3cret\n";
        std::ofstream(dir_ / "garbage.pem") << "not a certificate\n";
    }
    static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
    void SetUp() override { ASSERT_TRUE(std::filesystem::exists(dir_ / "server.crt")) << "no test PKI"; }

    std::string file(const char* name) const { return (dir_ / name).string(); }

    /// The minimal file with `admin` (top level) added at line 7.
    static std::string with_admin(const std::string& admin) {
        return "listeners:\n"
               "  - {name: apiserver, address: \"127.0.0.1:6443\", pool: cp}\n"
               "pools:\n"
               "  - name: cp\n"
               "    backends:\n"
               "      - {name: cp-1, address: \"192.0.2.11:6443\"}\n" +
               admin;
    }

    /// admin with tls at line 9: cert_file line 10, key_file line 11, then `more`.
    std::string with_tls(const std::string& cert, const std::string& key, const std::string& more = {},
                         const std::string& address = "127.0.0.1:6445") const {
        return with_admin(
            "admin:\n"
            "  address: \"" +
            address +
            "\"\n"
            "  tls:\n"
            "    cert_file: " +
            cert +
            "\n"
            "    key_file: " +
            key + "\n" + more);
    }

    static inline std::filesystem::path dir_;
};

TEST_F(AdminConfig, TlsWithCertificateAndKeyLoads) {
    auto c = parse_config(with_tls(file("server.crt"), file("server.key")), "t");
    ASSERT_TRUE(c->admin);
    ASSERT_TRUE(c->admin->tls);
    EXPECT_EQ(c->admin->tls->cert_file, file("server.crt"));
    EXPECT_EQ(c->admin->tls->key_file, file("server.key"));
    EXPECT_TRUE(c->admin->tls->client_ca_file.empty());
    EXPECT_EQ(c->admin->tls->client_auth, admin_client_auth::changes);
    EXPECT_TRUE(c->warnings.empty());
}

TEST_F(AdminConfig, WithoutTlsThereIsNone) {
    auto c = parse_config(with_admin("admin: {}\n"), "t");
    ASSERT_TRUE(c->admin);
    EXPECT_FALSE(c->admin->tls);
}

TEST_F(AdminConfig, ClientCaAndClientAuthAll) {
    auto c = parse_config(with_tls(file("server.crt"), file("server.key"),
                                   "    client_ca_file: " + file("ca.crt") + "\n    client_auth: all\n"),
                          "t");
    ASSERT_TRUE(c->admin && c->admin->tls);
    EXPECT_EQ(c->admin->tls->client_ca_file, file("ca.crt"));
    EXPECT_EQ(c->admin->tls->client_auth, admin_client_auth::all);
}

TEST_F(AdminConfig, AMissingCertificateFileNamesFileLineAndKey) {
    auto errors = errors_of(with_tls(file("nosuch.crt"), file("server.key")));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].file, "test.yaml");
    EXPECT_EQ(errors[0].line, 10);
    EXPECT_EQ(errors[0].key_path, "admin.tls.cert_file");
    EXPECT_CONTAINS(errors[0].message, "cannot be read: No such file or directory");
    EXPECT_CONTAINS(errors[0].message, "nosuch.crt");
    EXPECT_CONTAINS(errors[0].to_string(), "test.yaml:10:");
}

TEST_F(AdminConfig, AKeyOfAnotherCertificateIsRejected) {
    auto errors = errors_of(with_tls(file("server.crt"), file("client.key")));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].line, 11);
    EXPECT_EQ(errors[0].key_path, "admin.tls.key_file");
    EXPECT_CONTAINS(errors[0].message, "does not match the certificate in " + file("server.crt"));
}

TEST_F(AdminConfig, AKeyWhereTheCertificateShouldBeIsRejected) {
    auto errors = errors_of(with_tls(file("server.key"), file("server.key")));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.tls.cert_file");
    EXPECT_CONTAINS(errors[0].message, "no PEM certificate");
}

TEST_F(AdminConfig, ACertificateWhereTheKeyShouldBeIsRejected) {
    auto errors = errors_of(with_tls(file("server.crt"), file("server.crt")));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.tls.key_file");
    EXPECT_CONTAINS(errors[0].message, "no usable PEM private key");
}

TEST_F(AdminConfig, AnEncryptedKeyIsRejected) {
    const std::string enc = file("encrypted.key");
    const std::string cmd = "openssl pkey -in " + file("server.key") + " -aes256 -passout pass:x -out " + enc;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    auto errors = errors_of(with_tls(file("server.crt"), enc));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.tls.key_file");
    EXPECT_CONTAINS(errors[0].message, "encrypted");
}

TEST_F(AdminConfig, AClientCaThatIsNoCertificateIsRejected) {
    auto errors = errors_of(
        with_tls(file("server.crt"), file("server.key"), "    client_ca_file: " + file("garbage.pem") + "\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].line, 12);
    EXPECT_EQ(errors[0].key_path, "admin.tls.client_ca_file");
    EXPECT_CONTAINS(errors[0].message, "no PEM certificate");
    errors = errors_of(
        with_tls(file("server.crt"), file("server.key"), "    client_ca_file: " + file("nosuch-ca.crt") + "\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.tls.client_ca_file");
    EXPECT_CONTAINS(errors[0].message, "cannot be read: No such file or directory");
}

TEST_F(AdminConfig, AClientCaWithoutCertificateAndKeyIsRejected) {
    // Client certificates are part of TLS: a client CA alone is no server identity.
    auto errors = errors_of(with_admin("admin:\n  tls:\n    client_ca_file: " + file("ca.crt") + "\n"));
    ASSERT_EQ(errors.size(), 2u);
    for (const auto& e : errors) {
        EXPECT_EQ(e.line, 9);
        EXPECT_EQ(e.key_path, "admin.tls");
    }
    EXPECT_CONTAINS(errors[0].message, "\"cert_file\" is missing");
    EXPECT_CONTAINS(errors[1].message, "\"key_file\" is missing");
    // At the admin level it is an unknown key, with the way to the right place.
    errors = errors_of(with_admin("admin:\n  client_ca_file: " + file("ca.crt") + "\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.client_ca_file");
    EXPECT_CONTAINS(errors[0].message, "tls");
}

TEST_F(AdminConfig, ClientAuthNeedsAClientCa) {
    auto errors = errors_of(with_tls(file("server.crt"), file("server.key"), "    client_auth: all\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].line, 12);
    EXPECT_EQ(errors[0].key_path, "admin.tls.client_auth");
    EXPECT_CONTAINS(errors[0].message, "client_ca_file");
    errors = errors_of(with_tls(file("server.crt"), file("server.key"),
                                "    client_ca_file: " + file("ca.crt") + "\n    client_auth: everything\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.tls.client_auth");
    EXPECT_CONTAINS(errors[0].message, "expected one of: changes, all");
}

TEST_F(AdminConfig, OffTheLoopbackClientCertificatesOrATokenProtectChanges) {
    // Client certificates alone protect the POSTs.
    auto c = parse_config(with_tls(file("server.crt"), file("server.key"),
                                   "    client_ca_file: " + file("ca.crt") + "\n", "192.0.2.10:6445"),
                          "t");
    EXPECT_TRUE(c->warnings.empty());
    // TLS without client certificates or a token protects nothing.
    auto errors = errors_of(with_tls(file("server.crt"), file("server.key"), {}, "192.0.2.10:6445"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.address");
    EXPECT_CONTAINS(errors[0].message, "admin.tls.client_ca_file");
    EXPECT_CONTAINS(errors[0].message, "admin.token_file");
    // A token without TLS loads, with a word about the clear text.
    c = parse_config(with_admin("admin:\n  address: \"192.0.2.10:6445\"\n  token_file: " + file("token") + "\n"), "t");
    ASSERT_EQ(c->warnings.size(), 1u);
    EXPECT_EQ(c->warnings[0].key_path, "admin.address");
    EXPECT_CONTAINS(c->warnings[0].message, "clear text");
}

TEST_F(AdminConfig, AMissingTokenFileLoadsForApilbCreatesItAndItsDirectoryButNoMore) {
    auto c = parse_config(with_admin("admin:\n  token_file: " + file("not-yet") + "\n"), "t");
    ASSERT_TRUE(c->admin);
    EXPECT_EQ(c->admin->token_file, file("not-yet"));
    EXPECT_TRUE(c->warnings.empty());
    // Its directory missing: apilb creates that one level (/run/apilb outside systemd).
    c = parse_config(with_admin("admin:\n  token_file: " + file("new-dir/admin-token") + "\n"), "t");
    EXPECT_TRUE(c->warnings.empty()) << c->warnings.front().message;
    // Two levels missing: apilb could not create it; said at load.
    c = parse_config(with_admin("admin:\n  token_file: /nonexistent-dir/sub/admin-token\n"), "t");
    ASSERT_EQ(c->warnings.size(), 1u);
    EXPECT_EQ(c->warnings[0].key_path, "admin.token_file");
    EXPECT_CONTAINS(c->warnings[0].message, "refuses drain, enable and reload");
    auto errors = errors_of(with_admin("admin:\n  token_file: " + dir_.string() + "\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].line, 8);
    EXPECT_CONTAINS(errors[0].message, "is not a regular file");
    errors = errors_of(with_admin("admin:\n  token_file: relative/token\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_CONTAINS(errors[0].message, "expected an absolute path");
}

TEST_F(AdminConfig, HostNamesAreDnsNames) {
    auto c = parse_config(with_admin("admin:\n  host_names: [LB-1.Example.com, \"*.lb.example\"]\n"), "t");
    ASSERT_TRUE(c->admin);
    EXPECT_EQ(c->admin->host_names, (std::vector<std::string>{"lb-1.example.com", "*.lb.example"}));
    auto errors = errors_of(with_admin("admin:\n  host_names: [\"http://lb.example:6445\"]\n"));
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].key_path, "admin.host_names[0]");
    EXPECT_CONTAINS(errors[0].message, "expected a DNS name");
}

TEST_F(AdminConfig, TlsChangesWaitForARestart) {
    auto plain = parse_config(with_admin("admin: {}\n"), "a");
    auto tls = parse_config(with_tls(file("server.crt"), file("server.key")), "b");
    auto tls_ca = parse_config(
        with_tls(file("server.crt"), file("server.key"), "    client_ca_file: " + file("ca.crt") + "\n"), "c");
    auto tls_again = parse_config(with_tls(file("server.crt"), file("server.key")), "d");
    EXPECT_EQ(diff_configs(*plain, *tls).restart_only, std::vector<std::string>{"admin"});
    EXPECT_EQ(diff_configs(*tls, *tls_ca).restart_only, std::vector<std::string>{"admin"});
    // The same files: nothing to restart for (the server re-reads them on reload).
    EXPECT_TRUE(diff_configs(*tls, *tls_again).restart_only.empty());
    EXPECT_EQ(keep_restart_only(*tls, *tls_ca).admin->tls->client_ca_file, "");
}

}  // namespace
}  // namespace apilb
