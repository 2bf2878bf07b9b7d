// The `vrrp` section: defaults, every field, and what is rejected.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config_test_util.hpp"

namespace apilb {
namespace {

using namespace std::chrono_literals;
using test::errors_of;

/// The minimal file with `vrrp` (top level) added; the section starts at line 6.
std::string with_vrrp(const std::string& vrrp) {
    return "listeners:\n"
           "  - {name: apiserver, address: \"198.18.0.100:6443\", pool: cp}\n"
           "pools:\n"
           "  - name: cp\n"
           "    backends: [{name: cp-1, address: \"192.0.2.11:6443\"}]\n" +
           vrrp;
}

/// The single error of `text`, as one line.
std::string error_of(const std::string& text) {
    auto errors = errors_of(text);
    std::string all;
    for (const auto& e : errors) all += e.to_string() + "\n";
    EXPECT_EQ(errors.size(), 1u) << all;
    return errors.empty() ? "" : errors.front().to_string();
}

TEST(ConfigVrrp, AbsentSectionMeansNoVip) { EXPECT_FALSE(parse_config(with_vrrp(""), "test.yaml")->vrrp); }

TEST(ConfigVrrp, MinimalSectionTakesDefaults) {
    auto cfg = parse_config(with_vrrp("vrrp:\n  interface: eth0\n  virtual_router_id: 51\n  vips: [198.18.0.100]\n"),
                            "test.yaml");
    ASSERT_TRUE(cfg->vrrp);
    const auto& v = *cfg->vrrp;
    EXPECT_EQ(v.interface, "eth0");
    EXPECT_EQ(v.virtual_router_id, 51u);
    EXPECT_EQ(v.priority, 100u);
    EXPECT_EQ(v.router_id, "apilb-51-100");
    EXPECT_TRUE(v.peers.empty());  // multicast
    EXPECT_FALSE(v.unicast_src_ip);
    ASSERT_EQ(v.vips.size(), 1u);
    EXPECT_EQ(v.vips[0].ip, "198.18.0.100");
    EXPECT_EQ(v.vips[0].prefix, 32u);
    EXPECT_EQ(v.advert_interval, 1s);
    EXPECT_TRUE(v.preempt);
    EXPECT_EQ(v.preempt_delay, 0ms);
    EXPECT_TRUE(v.track_process);
    EXPECT_EQ(v.handoff_timeout, 2s);
    EXPECT_EQ(v.track_file(), "/run/apilb/vrrp-fault");
    EXPECT_EQ(v.notify_fifo(), "/run/apilb/vrrp-notify.fifo");
}

TEST(ConfigVrrp, EveryFieldIsRead) {
    auto cfg = parse_config(with_vrrp("vrrp:\n"
                                      "  interface: ens3\n"
                                      "  virtual_router_id: 7\n"
                                      "  priority: 150\n"
                                      "  router_id: node-a\n"
                                      "  unicast_src_ip: 198.18.0.11\n"
                                      "  peers: [198.18.0.12, 198.18.0.13]\n"
                                      "  vips: [\"198.18.0.100/24\", \"2001:DB8:0::100/64\"]\n"
                                      "  advert_interval: 100ms\n"
                                      "  preempt: true\n"
                                      "  preempt_delay: 5s\n"
                                      "  state_dir: /var/run/apilb-a/\n"
                                      "  track_process: false\n"
                                      "  handoff_timeout: 500ms\n"),
                            "test.yaml");
    const auto& v = *cfg->vrrp;
    EXPECT_EQ(v.interface, "ens3");
    EXPECT_EQ(v.virtual_router_id, 7u);
    EXPECT_EQ(v.priority, 150u);
    EXPECT_EQ(v.router_id, "node-a");
    EXPECT_EQ(v.unicast_src_ip, "198.18.0.11");
    EXPECT_EQ(v.peers, (std::vector<std::string>{"198.18.0.12", "198.18.0.13"}));
    ASSERT_EQ(v.vips.size(), 2u);
    EXPECT_EQ(v.vips[1].ip, "2001:db8::100");  // canonical
    EXPECT_EQ(v.vips[1].prefix, 64u);
    EXPECT_TRUE(v.vips[1].is_v6);
    EXPECT_EQ(v.advert_interval, 100ms);
    EXPECT_EQ(v.preempt_delay, 5s);
    EXPECT_EQ(v.state_dir, "/var/run/apilb-a");
    EXPECT_FALSE(v.track_process);
    EXPECT_EQ(v.handoff_timeout, 500ms);
}

TEST(ConfigVrrp, ManagedKeepalivedStopsWithApilbInsteadOfTrackingIt) {
    const std::string head = "vrrp:\n  interface: eth0\n  virtual_router_id: 1\n  vips: [198.18.0.100]\n";
    auto cfg = parse_config(with_vrrp(head + "  manage: true\n  keepalived_path: /opt/k/keepalived\n"), "test.yaml");
    EXPECT_TRUE(cfg->vrrp->manage);
    EXPECT_EQ(cfg->vrrp->keepalived_path, "/opt/k/keepalived");
    EXPECT_FALSE(cfg->vrrp->track_process);
    EXPECT_TRUE(cfg->warnings.empty());

    cfg = parse_config(with_vrrp(head + "  manage: true\n  track_process: true\n"), "test.yaml");
    EXPECT_FALSE(cfg->vrrp->track_process);
    ASSERT_EQ(cfg->warnings.size(), 1u);
    EXPECT_NE(cfg->warnings[0].to_string().find("vrrp.track_process: ignored with manage: true"), std::string::npos);

    cfg = parse_config(with_vrrp(head + "  keepalived_path: /usr/sbin/keepalived\n"), "test.yaml");
    ASSERT_EQ(cfg->warnings.size(), 1u);
    EXPECT_NE(cfg->warnings[0].message.find("only with manage: true"), std::string::npos);

    EXPECT_NE(error_of(with_vrrp(head + "  manage: true\n  keepalived_path: keepalived\n")).find("absolute path"),
              std::string::npos);
}

TEST(ConfigVrrp, RequiredKeysAreNamed) {
    auto errors = errors_of(with_vrrp("vrrp:\n  priority: 100\n"));
    std::string all;
    for (const auto& e : errors) all += e.to_string() + "\n";
    EXPECT_NE(all.find("\"interface\" is missing"), std::string::npos) << all;
    EXPECT_NE(all.find("\"virtual_router_id\" is missing"), std::string::npos) << all;
    EXPECT_NE(all.find("\"vips\" is missing"), std::string::npos) << all;
}

TEST(ConfigVrrp, BadInterfaceNamesAreRejected) {
    const std::string head = "vrrp:\n  virtual_router_id: 1\n  vips: [198.18.0.100]\n  interface: ";
    EXPECT_NE(error_of(with_vrrp(head + "averyveryverylongname\n"))
                  .find("test.yaml:9:14: vrrp.interface: invalid "
                        "interface name \"averyveryverylongname\": "
                        "longer than 15 characters"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "eth0:1\n")).find("an alias label like eth0:1"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "\"eth 0\"\n")).find("invalid interface name"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "a/b\n")).find("holds \"/\""), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "lo\n")).find("cannot run VRRP on the loopback interface"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "\"\"\n")).find("the name is empty"), std::string::npos);
}

TEST(ConfigVrrp, PriorityAndRouterIdRanges) {
    const std::string head = "vrrp:\n  interface: eth0\n  vips: [198.18.0.100]\n";
    EXPECT_NE(error_of(with_vrrp(head + "  virtual_router_id: 1\n  priority: 255\n"))
                  .find("vrrp.priority: 255 is out of range; expected 1..254"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  virtual_router_id: 1\n  priority: 0\n")).find("expected 1..254"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  virtual_router_id: 256\n")).find("expected 1..255"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  virtual_router_id: 0\n")).find("expected 1..255"), std::string::npos);
}

TEST(ConfigVrrp, RealtimePriorityIsOffByDefaultAndASchedRrPriority) {
    const std::string head = "vrrp:\n  interface: eth0\n  virtual_router_id: 1\n  vips: [198.18.0.100]\n";
    EXPECT_EQ(parse_config(with_vrrp(head), "test.yaml")->vrrp->realtime_priority, 0u);
    EXPECT_EQ(parse_config(with_vrrp(head + "  realtime_priority: 99\n"), "test.yaml")->vrrp->realtime_priority, 99u);
    // The section starts at line 6; the key is its fifth line.
    EXPECT_NE(error_of(with_vrrp(head + "  realtime_priority: 100\n"))
                  .find("test.yaml:10:22: vrrp.realtime_priority: 100 is out of range; expected 0..99"),
              std::string::npos)
        << error_of(with_vrrp(head + "  realtime_priority: 100\n"));
}

TEST(ConfigVrrp, OverlappingVipsAreRejected) {
    const std::string head = "vrrp:\n  interface: eth0\n  virtual_router_id: 1\n";
    EXPECT_NE(error_of(with_vrrp(head + "  vips: [\"198.18.0.100/24\", 198.18.0.100]\n"))
                  .find("vrrp.vips[1]: VIP \"198.18.0.100\" overlaps vrrp.vips[0]"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  vips: [\"2001:db8::1\", \"2001:DB8:0:0::1/64\"]\n")).find("overlaps"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  unicast_src_ip: 198.18.0.11\n  peers: [198.18.0.12]\n"
                                        "  vips: [198.18.0.12]\n"))
                  .find("is also a node's own address (in peers)"),
              std::string::npos);
}

TEST(ConfigVrrp, BadVipsAreRejected) {
    const std::string head = "vrrp:\n  interface: eth0\n  virtual_router_id: 1\n  vips: ";
    EXPECT_NE(error_of(with_vrrp(head + "[\"198.18.0.100/33\"]\n")).find("prefix /33 is out of range 1..32"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "[\"198.18.0.100/\"]\n")).find("invalid prefix length"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "[api.example.com]\n")).find("is not a numeric IPv4 or IPv6 address"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "[0.0.0.0]\n")).find("unspecified"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "[]\n")).find("no vips are defined"), std::string::npos);
}

TEST(ConfigVrrp, PeersAreCheckedAgainstEachOther) {
    const std::string head = "vrrp:\n  interface: eth0\n  virtual_router_id: 1\n  vips: [198.18.0.100]\n";
    EXPECT_NE(error_of(with_vrrp(head + "  peers: [198.18.0.12, 198.18.0.12]\n")).find("duplicate peer"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  unicast_src_ip: 198.18.0.11\n  peers: [\"2001:db8::2\"]\n"))
                  .find("VRRP talks to its peers over one family"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  unicast_src_ip: 198.18.0.11\n  peers: [198.18.0.11]\n"))
                  .find("this node's own unicast_src_ip"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  peers: [\"198.18.0.12:112\"]\n")).find("no port"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  unicast_src_ip: 198.18.0.11\n")).find("there are no peers"),
              std::string::npos);
}

TEST(ConfigVrrp, IntervalsAndPreempt) {
    const std::string head = "vrrp:\n  interface: eth0\n  virtual_router_id: 1\n  vips: [198.18.0.100]\n";
    EXPECT_NE(error_of(with_vrrp(head + "  advert_interval: 105ms\n")).find("multiple of 10ms"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  advert_interval: 5ms\n")).find("expected 10ms..40s"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  advert_interval: 41s\n")).find("expected 10ms..40s"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  preempt: false\n  preempt_delay: 5s\n")).find("needs preempt: true"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  preempt: yes\n")).find("YAML 1.1"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  state_dir: run/apilb\n")).find("expected an absolute path"),
              std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  state_dir: \"/run/a b\"\n")).find("invalid state_dir"), std::string::npos);
    EXPECT_NE(error_of(with_vrrp(head + "  prempt: true\n")).find("did you mean \"preempt\"?"), std::string::npos);
    auto cfg = parse_config(with_vrrp(head + "  preempt: false\n  advert_interval: 10ms\n"), "test.yaml");
    EXPECT_FALSE(cfg->vrrp->preempt);
    EXPECT_EQ(cfg->vrrp->advert_interval, 10ms);
}

}  // namespace
}  // namespace apilb
