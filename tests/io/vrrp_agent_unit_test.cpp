// The small pure-ish parts of the VIP agent: notify FIFO lines, the atomic
// track-file write, and VIP removal refusing an interface that is not there.
#include "apilb/vip/vrrp_agent.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "apilb/vip/vip_address.hpp"

namespace apilb {
namespace {

TEST(VrrpNotifyLine, InstanceStatesAreRead) {
    EXPECT_EQ(parse_notify_line("INSTANCE \"VI_APILB\" MASTER 150"), vrrp_role::master);
    EXPECT_EQ(parse_notify_line("INSTANCE \"VI_APILB\" BACKUP 100"), vrrp_role::backup);
    EXPECT_EQ(parse_notify_line("INSTANCE \"VI_APILB\" FAULT 0"), vrrp_role::fault);
    EXPECT_EQ(parse_notify_line("INSTANCE \"VI_APILB\" STOP 0"), vrrp_role::stop);
}

TEST(VrrpNotifyLine, OtherLinesAreIgnored) {
    EXPECT_FALSE(parse_notify_line("GROUP \"G\" MASTER 0"));
    EXPECT_FALSE(parse_notify_line("INSTANCE \"VI_APILB\" DELETED 0"));
    EXPECT_FALSE(parse_notify_line("INSTANCE"));
    EXPECT_FALSE(parse_notify_line(""));
    EXPECT_FALSE(parse_notify_line(std::string(4096, 'x')));
}

TEST(VrrpTrackFile, WriteReplacesTheWholeFile) {
    const auto dir = std::filesystem::temp_directory_path() / ("apilb-track-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "vrrp-fault").string();
    std::ofstream(path) << "something much longer than one digit\n";
    ASSERT_FALSE(write_file_atomically(path, "1\n"));
    std::stringstream text;
    text << std::ifstream(path).rdbuf();
    EXPECT_EQ(text.str(), "1\n");
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
    // A directory that is not there is an error, not a crash or a silent success.
    EXPECT_TRUE(write_file_atomically((dir / "missing" / "f").string(), "0\n"));
    std::filesystem::remove_all(dir);
}

TEST(VrrpVipAddress, UnknownInterfaceIsAnError) {
    const auto ec = remove_vip("nosuchif9", vrrp_vip{.ip = "198.18.0.100", .prefix = 24, .is_v6 = false});
    EXPECT_TRUE(ec);
}

}  // namespace
}  // namespace apilb
