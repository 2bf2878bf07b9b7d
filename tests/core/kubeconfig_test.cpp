// Credentials from a kubeconfig as kubeadm writes them (data inline, files
// beside it) and the errors for one discovery cannot use.
#include "apilb/core/kubeconfig.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "config_test_util.hpp"

namespace apilb {
namespace {

// "-----BEGIN CERTIFICATE-----\n" in base64, standing for a whole PEM.
constexpr const char* pem_b64 = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==";

std::string kubeconfig(const std::string& user) {
    return std::string("apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: ") +
           pem_b64 +
           "\n    server: https://192.0.2.10:6443\n  name: kubernetes\n"
           "contexts:\n- context:\n    cluster: kubernetes\n    user: node\n  name: node@kubernetes\n"
           "current-context: node@kubernetes\nusers:\n- name: node\n  user:\n" +
           user;  // the user's keys start at line 17
}

std::vector<config_error> errors_of(const std::string& text, const std::string& path = "/etc/k.conf") {
    try {
        parse_kubeconfig(text, path);
    } catch (const config_load_error& e) {
        return e.errors();
    }
    ADD_FAILURE() << "expected the kubeconfig to be refused";
    return {};
}

TEST(Kubeconfig, ReadsInlineCertificates) {
    auto k = parse_kubeconfig(
        kubeconfig(std::string("    client-certificate-data: ") + pem_b64 + "\n    client-key-data: " + pem_b64 + "\n"),
        "/etc/k.conf");
    EXPECT_EQ(k.server, "https://192.0.2.10:6443");
    EXPECT_EQ(k.ca_pem, "-----BEGIN CERTIFICATE-----\n");
    EXPECT_EQ(k.cert_pem, k.ca_pem);
    EXPECT_EQ(k.key_pem, k.ca_pem);
    EXPECT_FALSE(k.insecure_skip_verify);
}

TEST(Kubeconfig, ReadsFilesRelativeToTheKubeconfig) {
    const auto dir = std::filesystem::temp_directory_path() / ("apilb-kubeconfig-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "token") << "abc\n";
    auto k = parse_kubeconfig(kubeconfig("    tokenFile: token\n"), (dir / "k.conf").string());
    EXPECT_EQ(k.token_file, (dir / "token").string());
    std::filesystem::remove_all(dir);
}

TEST(Kubeconfig, NamesTheLineOfBadData) {
    auto e = errors_of(kubeconfig("    token: t\n    client-key-data: not*base64\n"));
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0].file, "/etc/k.conf");
    EXPECT_EQ(e[0].line, 18);
    EXPECT_EQ(e[0].key_path, "users[0].user.client-key-data");
    EXPECT_CONTAINS(e[0].message, "not base64");
}

// EVP_DecodeBlock takes '=' anywhere as zero bits: "====" decoded to three
// bytes, and taking its four '=' off as padding left -1 bytes, a std::string
// of SIZE_MAX (a length_error out of the parser, not a config error). Seen
// while writing kubeconfig_fuzz; tests/corpus/kubeconfig/crash-padding-only-data.
TEST(Kubeconfig, PaddingIsOnlyAtTheEndAndAtMostTwo) {
    for (const char* bad : {"====", "A===", "AAAA====", "AA=A", "=AAA", "AA==    "}) {
        const auto e = errors_of(kubeconfig(std::string("    token: t\n    client-key-data: \"") + bad + "\"\n"));
        ASSERT_EQ(e.size(), 1u) << bad;
        EXPECT_EQ(e[0].key_path, "users[0].user.client-key-data") << bad;
        EXPECT_CONTAINS(e[0].message, "not base64");
    }
    // One and two bytes: the padding is not part of the data.
    auto k = parse_kubeconfig(kubeconfig("    client-certificate-data: QQ==\n    client-key-data: QUI=\n"), "/k");
    EXPECT_EQ(k.cert_pem, "A");
    EXPECT_EQ(k.key_pem, "AB");
}

// Found by kubeconfig_fuzz (tests/corpus/kubeconfig/crash-yaml-error-line-
// break.conf): yaml-cpp's "unknown escape character: X" carries X raw, and
// a control character in an error forges or hides a log line.
TEST(Kubeconfig, RefusesWhatDiscoveryCannotUse) {
    EXPECT_CONTAINS(errors_of(kubeconfig("    exec: {command: aws}\n")).at(0).message, "exec and auth-provider");
    EXPECT_CONTAINS(errors_of(kubeconfig("    client-key: /nonexistent/key\n")).at(0).message, "cannot be read");
    EXPECT_CONTAINS(errors_of("current-context: x\n").at(0).message, "no entry named \"x\"");
    EXPECT_CONTAINS(errors_of("kind: Config\n").at(0).message, "no current-context");
    EXPECT_CONTAINS(errors_of("a: [").at(0).message, "YAML syntax error");
}

TEST(Kubeconfig, AnErrorStaysOneLineWhateverTheFileHolds) {
    // A context name, a file path and yaml-cpp's own syntax message all
    // quote the file's bytes; a line break or a terminal escape in a log
    // line would forge or hide lines.
    for (const std::string& text : {std::string("current-context: \"x\\ny\\e[2J\"\n"), std::string("\"a\\\x1b\": 1\n"),
                                    kubeconfig("    client-key: \"/nonexistent/\\r\\nkey\"\n")}) {
        const auto errors = errors_of(text);
        ASSERT_FALSE(errors.empty()) << text;
        for (const auto& e : errors) {
            EXPECT_EQ(e.to_string().find_first_of("\r\n\x1b"), std::string::npos) << e.to_string();
        }
    }
}

}  // namespace
}  // namespace apilb
