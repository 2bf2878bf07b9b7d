// The `bgp` section: defaults, every field, and what is rejected with the
// file, line, key and what was expected.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "config_test_util.hpp"

namespace apilb {
namespace {

using namespace std::chrono_literals;
using test::all_messages;
using test::errors_of;
using test::expect_one;

/// The minimal file (10 lines) with a `bgp` section from line 11.
std::string with_bgp(const std::string& bgp) { return test::minimal + bgp; }

/// A section with one peer; `extra` is appended to the section (indented 2).
std::string one_peer(const std::string& extra = "") {
    return with_bgp(
        "bgp:\n"                                           // 11
        "  local_as: 64512\n"                              // 12
        "  router_id: 198.18.0.11\n"                       // 13
        "  peers:\n"                                       // 14
        "    - {address: 198.18.1.1, remote_as: 64500}\n"  // 15
        "  vips: [198.18.0.100]\n" +                       // 16
        extra);                                            // 17..
}

/// A scratch file removed at the end of the test.
struct temp_file {
    std::string path;
    explicit temp_file(const std::string& bytes) {
        path = (std::filesystem::temp_directory_path() /
                ("apilb-bgp-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++)))
                   .string();
        std::ofstream(path, std::ios::binary) << bytes;
    }
    ~temp_file() { std::remove(path.c_str()); }
    static int& counter() {
        static int n = 0;
        return n;
    }
};

TEST(ConfigBgp, AbsentSectionMeansNoBgp) { EXPECT_FALSE(parse_config(test::minimal, "test.yaml")->bgp); }

TEST(ConfigBgp, MinimalSectionTakesDefaultsWithoutWarnings) {
    auto cfg = parse_config(one_peer(), "test.yaml");
    ASSERT_TRUE(cfg->bgp);
    const auto& b = *cfg->bgp;
    EXPECT_EQ(b.local_as, 64512u);
    EXPECT_EQ(b.router_id, "198.18.0.11");
    ASSERT_EQ(b.peers.size(), 1u);
    EXPECT_EQ(b.peers[0].address, "198.18.1.1");
    EXPECT_EQ(b.peers[0].remote_as, 64500u);
    EXPECT_FALSE(b.peers[0].bfd);
    EXPECT_EQ(b.peers[0].bfd_interval, 100ms);
    EXPECT_EQ(b.peers[0].bfd_multiplier, 3u);
    EXPECT_TRUE(b.peers[0].password_file.empty());
    ASSERT_EQ(b.vips.size(), 1u);
    EXPECT_EQ(b.vips[0].ip, "198.18.0.100");
    EXPECT_TRUE(b.communities.empty());
    EXPECT_FALSE(b.med);
    EXPECT_FALSE(b.manage);
    EXPECT_EQ(b.frr_config, "/etc/frr/frr.conf");
    EXPECT_EQ(b.interface, "lo");
    EXPECT_EQ(b.withdraw_wait, 2000ms);
    EXPECT_EQ(b.vtysh_path, "/usr/bin/vtysh");
    EXPECT_EQ(b.vty_socket_dir, "");
    // apilb withdraws the VIPs itself now: nothing left to warn about.
    EXPECT_TRUE(cfg->warnings.empty()) << all_messages(cfg->warnings);
}

TEST(ConfigBgp, ManagedFrrGetsADirectoryOfItsOwn) {
    // issue 20: manage: true is accepted; FRR's sockets go where only apilb's FRR is.
    auto cfg = parse_config(one_peer("  manage: true\n"), "test.yaml");
    EXPECT_TRUE(cfg->bgp->manage);
    EXPECT_EQ(cfg->bgp->vty_socket_dir, "/run/apilb/frr");
    EXPECT_TRUE(cfg->warnings.empty()) << all_messages(cfg->warnings);
    cfg = parse_config(one_peer("  manage: true\n  vty_socket_dir: /run/apilb-frr/\n  frr_config: /etc/frr/x.conf\n"),
                       "test.yaml");
    EXPECT_EQ(cfg->bgp->vty_socket_dir, "/run/apilb-frr");
    ASSERT_EQ(cfg->warnings.size(), 1u);
    EXPECT_NE(all_messages(cfg->warnings).find("bgp.frr_config: ignored with manage: true"), std::string::npos)
        << all_messages(cfg->warnings);
}

TEST(ConfigBgp, EveryFieldIsRead) {
    temp_file password("s3cret-Key\n");
    auto cfg = parse_config(with_bgp("bgp:\n"
                                     "  local_as: 4200000000\n"
                                     "  router_id: 198.18.0.12\n"
                                     "  peers:\n"
                                     "    - address: 198.18.1.1\n"
                                     "      remote_as: 64500\n"
                                     "      password_file: " +
                                     password.path +
                                     "\n"
                                     "      bfd: true\n"
                                     "      bfd_interval: 300ms\n"
                                     "      bfd_multiplier: 5\n"
                                     "    - {address: \"2001:DB8::1\", remote_as: 64501, bfd: true}\n"
                                     "  vips: [198.18.0.100/32, \"2001:db8:0::100/128\"]\n"
                                     "  communities: [\"64512:100\", no-export]\n"
                                     "  med: 50\n"
                                     "  manage: false\n"
                                     "  frr_config: /etc/frr/apilb.conf\n"
                                     "  interface: apilb-vip\n"
                                     "  withdraw_wait: 500ms\n"
                                     "  vtysh_path: /opt/frr/bin/vtysh\n"
                                     "  vty_socket_dir: /run/frr-apilb\n"),
                            "test.yaml");
    const auto& b = *cfg->bgp;
    EXPECT_EQ(b.local_as, 4200000000u);
    ASSERT_EQ(b.peers.size(), 2u);
    EXPECT_EQ(b.peers[0].password_file, password.path);
    EXPECT_TRUE(b.peers[0].bfd);
    EXPECT_EQ(b.peers[0].bfd_interval, 300ms);
    EXPECT_EQ(b.peers[0].bfd_multiplier, 5u);
    EXPECT_EQ(b.peers[1].address, "2001:db8::1");  // canonical
    EXPECT_TRUE(b.peers[1].is_v6);
    ASSERT_EQ(b.vips.size(), 2u);
    EXPECT_EQ(b.vips[1].ip, "2001:db8::100");
    EXPECT_TRUE(b.vips[1].is_v6);
    EXPECT_EQ(b.communities, (std::vector<std::string>{"64512:100", "no-export"}));
    EXPECT_EQ(b.med, 50u);
    EXPECT_EQ(b.frr_config, "/etc/frr/apilb.conf");
    EXPECT_EQ(b.interface, "apilb-vip");
    EXPECT_EQ(b.withdraw_wait, 500ms);
    EXPECT_EQ(b.vtysh_path, "/opt/frr/bin/vtysh");
    EXPECT_EQ(b.vty_socket_dir, "/run/frr-apilb");
}

TEST(ConfigBgp, BgpAndVrrpTogetherNameBothLines) {
    auto errors = errors_of(test::minimal +
                            "vrrp:\n  interface: eth0\n  virtual_router_id: 1\n  vips: [198.18.0.100]\n" +  // 11-14
                            "bgp:\n  local_as: 1\n  router_id: 198.18.0.11\n"                               // 15-17
                            "  peers: [{address: 198.18.1.1, remote_as: 2}]\n  vips: [198.18.0.101]\n");
    ASSERT_EQ(errors.size(), 1u) << all_messages(errors);
    // Lines where the sections' mappings start, as for every section error.
    EXPECT_EQ(errors[0].line, 16);
    EXPECT_EQ(errors[0].key_path, "bgp");
    EXPECT_CONTAINS(errors[0].message, "bgp and vrrp (line 12) are both set");
}

TEST(ConfigBgp, RequiredKeysAreNamed) {
    const std::string all = all_messages(errors_of(with_bgp("bgp:\n  med: 1\n")));
    for (const char* key : {"local_as", "router_id", "peers", "vips"}) {
        EXPECT_CONTAINS(all, std::string("\"") + key + "\" is missing");
    }
    const std::string peer = all_messages(errors_of(
        with_bgp("bgp:\n  local_as: 1\n  router_id: 198.18.0.11\n  peers: [{bfd: true}]\n  vips: [198.18.0.100]\n")));
    EXPECT_CONTAINS(peer, "\"address\" is missing");
    EXPECT_CONTAINS(peer, "\"remote_as\" is missing");
}

TEST(ConfigBgp, BadValuesNameLineKeyAndExpectation) {
    const std::string head = "bgp:\n  local_as: 64512\n  router_id: 198.18.0.11\n";  // 11-13
    const std::string peers = "  peers: [{address: 198.18.1.1, remote_as: 64500}]\n";
    const std::string vips = "  vips: [198.18.0.100]\n";
    expect_one(with_bgp("bgp:\n  local_as: 0\n  router_id: 198.18.0.11\n" + peers + vips), 12, "bgp.local_as",
               "out of range; expected 1..4294967295");
    expect_one(with_bgp("bgp:\n  local_as: 4294967296\n  router_id: 198.18.0.11\n" + peers + vips), 12, "bgp.local_as",
               "out of range");
    expect_one(with_bgp("bgp:\n  local_as: 1\n  router_id: \"2001:db8::1\"\n" + peers + vips), 13, "bgp.router_id",
               "expected a non-zero IPv4 address");
    expect_one(with_bgp("bgp:\n  local_as: 1\n  router_id: 0.0.0.0\n" + peers + vips), 13, "bgp.router_id",
               "non-zero IPv4");
    expect_one(with_bgp(head + "  peers: [{address: \"198.18.1.1:179\", remote_as: 1}]\n" + vips), 14,
               "bgp.peers[0].address", "not a numeric IPv4 or IPv6 address");
    expect_one(
        with_bgp(head + "  peers: [{address: 198.18.1.1, remote_as: 1}, {address: 198.18.1.1, remote_as: 2}]\n" + vips),
        14, "bgp.peers[1]", "duplicate peer \"198.18.1.1\"; already bgp.peers[0]");
    expect_one(with_bgp(head + "  peers: [{address: 198.18.1.1, remote_as: 1, bfd_multiplier: 1, bfd: true}]\n" + vips),
               14, "bgp.peers[0].bfd_multiplier", "expected 2..255");
    expect_one(with_bgp(head + "  peers: [{address: 198.18.1.1, remote_as: 1, bfd_interval: 5ms, bfd: true}]\n" + vips),
               14, "bgp.peers[0].bfd_interval", "10ms..60s");
    expect_one(with_bgp(head + peers + "  vips: [198.18.0.0/24]\n"), 15, "bgp.vips[0]",
               "announced as a host route; expected /32");
    expect_one(with_bgp(head + peers + "  vips: [\"2001:db8::100/64\"]\n"), 15, "bgp.vips[0]", "/128");
    expect_one(with_bgp(head + peers + "  vips: [198.18.1.1]\n"), 15, "bgp.vips[0]", "is also bgp.peers[0]");
    expect_one(with_bgp(head + peers + "  vips: [198.18.0.100, 198.18.0.100/32]\n"), 15, "bgp.vips[1]",
               "is also bgp.vips[0]");
    expect_one(with_bgp(head + peers + "  vips: [\"2001:db8::100\"]\n"), 15, "bgp.vips[0]", "IPv6 but no peer is");
    expect_one(with_bgp(head + peers + vips + "  communities: [\"65536:1\"]\n"), 16, "bgp.communities[0]",
               "both parts 0..65535");
    expect_one(with_bgp(head + peers + vips + "  communities: [\"1:2 no-export\"]\n"), 16, "bgp.communities[0]",
               "invalid community");
    expect_one(with_bgp(head + peers + vips + "  med: -1\n"), 16, "bgp.med", "out of range");
    expect_one(with_bgp(head + peers + vips + "  manage: true\n  vty_socket_dir: /run/frr/\n"), 17,
               "bgp.vty_socket_dir", "the host's FRR directory");
    expect_one(with_bgp(head + peers + vips + "  manage: true\n  vty_socket_dir: /var/run/frr\n"), 17,
               "bgp.vty_socket_dir", "the host's FRR directory");
    expect_one(with_bgp(head + peers + vips + "  manage: true\n  vty_socket_dir: \"/run/my frr\"\n"), 17,
               "bgp.vty_socket_dir", "without blanks");
    expect_one(with_bgp(head + peers + vips + "  manage: true\n  vty_socket_dir: /" + std::string(95, 'd') + "\n"), 17,
               "bgp.vty_socket_dir", "at most 90 characters");
    expect_one(with_bgp(head + peers + vips + "  frr_config: frr.conf\n"), 16, "bgp.frr_config", "absolute path");
    expect_one(with_bgp(head + peers + vips + "  bfd: true\n"), 16, "bgp.bfd", "unknown key");
    expect_one(with_bgp(head + peers + vips + "  interface: \"eth0:1\"\n"), 16, "bgp.interface",
               "invalid interface name \"eth0:1\"");
    expect_one(with_bgp(head + peers + vips + "  interface: averyveryverylongname\n"), 16, "bgp.interface", "IFNAMSIZ");
    expect_one(with_bgp(head + peers + vips + "  withdraw_wait: 2m\n"), 16, "bgp.withdraw_wait", "0..1m");
    expect_one(with_bgp(head + peers + vips + "  vtysh_path: vtysh\n"), 16, "bgp.vtysh_path",
               "absolute path such as \"/usr/bin/vtysh\"");
    expect_one(with_bgp(head + peers + vips + "  vty_socket_dir: run/frr\n"), 16, "bgp.vty_socket_dir",
               "absolute path");
}

TEST(ConfigBgp, EmptyListsAreRejected) {
    const std::string all = all_messages(
        errors_of(with_bgp("bgp:\n  local_as: 1\n  router_id: 198.18.0.11\n  peers: []\n  vips: []\n")));
    EXPECT_CONTAINS(all, "test.yaml:14:10: bgp.peers: no peers are defined");
    EXPECT_CONTAINS(all, "test.yaml:15:9: bgp.vips: no vips are defined");
}

TEST(ConfigBgp, PasswordStaysInItsFileAndMustBeOneWord) {
    const std::string head = "bgp:\n  local_as: 1\n  router_id: 198.18.0.11\n  vips: [198.18.0.100]\n";  // 11-14
    auto with_password = [&](const std::string& path) {
        return with_bgp(head + "  peers:\n    - {address: 198.18.1.1, remote_as: 2, password_file: \"" + path +
                        "\"}\n");
    };
    temp_file spaced("two words\n");
    auto e = test::only_error(with_password(spaced.path));
    EXPECT_EQ(e.line, 16);
    EXPECT_EQ(e.key_path, "bgp.peers[0].password_file");
    EXPECT_CONTAINS(e.message, "does not hold a usable password");
    EXPECT_EQ(e.message.find("two words"), std::string::npos) << "the secret must not be quoted: " << e.message;

    temp_file injected("pw\nneighbor 203.0.113.1 remote-as 666\n");
    EXPECT_CONTAINS(test::only_error(with_password(injected.path)).message, "line break");
    temp_file empty("\n");
    EXPECT_CONTAINS(test::only_error(with_password(empty.path)).message, "the file is empty");
    temp_file longer(std::string(81, 'k'));
    EXPECT_CONTAINS(test::only_error(with_password(longer.path)).message, "longer than 80");
    EXPECT_CONTAINS(test::only_error(with_password("/nonexistent/bgp-password")).message, "cannot be read");
    EXPECT_CONTAINS(test::only_error(with_password("/dev/zero")).message, "expected a regular file");
    // The secret written inline is not a key the section knows.
    EXPECT_CONTAINS(
        test::only_error(with_bgp(head + "  peers:\n    - {address: 198.18.1.1, remote_as: 2, password: x}\n")).message,
        "unknown key");
}

TEST(ConfigBgp, BfdTimersWithoutBfdAreWarnedAbout) {
    auto cfg = parse_config(with_bgp("bgp:\n  local_as: 1\n  router_id: 198.18.0.11\n  vips: [198.18.0.100]\n"
                                     "  peers: [{address: 198.18.1.1, remote_as: 2, bfd_interval: 50ms}]\n"),
                            "test.yaml");
    const auto* w = test::find_path(cfg->warnings, "bgp.peers[0].bfd_interval");
    ASSERT_NE(w, nullptr) << all_messages(cfg->warnings);
    EXPECT_CONTAINS(w->message, "only with bfd: true");
}

TEST(ConfigBgp, TheExampleSectionLoadsWhenUncommented) {
    const char* root = std::getenv("APILB_SOURCE_ROOT");
    if (root == nullptr || *root == '\0') GTEST_SKIP() << "APILB_SOURCE_ROOT is not set";
    std::ifstream in(std::string(root) + "/conf/apilb.yaml");
    ASSERT_TRUE(in) << "conf/apilb.yaml";
    // Uncomment as the example says ("# " goes from the block's lines).
    std::string text;
    bool in_block = false;
    bool found = false;
    for (std::string line; std::getline(in, line);) {
        if (line == "# bgp:") in_block = found = true;
        if (in_block && !line.starts_with("# bgp:") && !line.starts_with("#   ")) in_block = false;
        if (in_block) line.erase(0, 2);
        text += line + "\n";
    }
    ASSERT_TRUE(found) << "the example has no commented bgp section";
    temp_file password("example-password\n");
    const std::string example_path = "/etc/apilb/bgp-password";
    const auto at = text.find(example_path);
    ASSERT_NE(at, std::string::npos);
    text.replace(at, example_path.size(), password.path);
    try {
        auto c = parse_config(text, "apilb.yaml");
        ASSERT_TRUE(c->bgp);
        EXPECT_EQ(c->bgp->peers.size(), 1u);
        EXPECT_TRUE(c->bgp->peers[0].bfd);
        EXPECT_EQ(c->bgp->vips.size(), 1u);
    } catch (const config_load_error& e) {
        FAIL() << e.what() << "\n" << text;
    }
}

}  // namespace
}  // namespace apilb
