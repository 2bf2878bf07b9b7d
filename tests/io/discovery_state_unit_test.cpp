// Discovery's last-known-good file: written atomically, read back, and a
// corrupt, foreign, too old or unreadable file ignored with a reason.
#include "apilb/control/discovery_state.hpp"

#include <gtest/gtest.h>

#include "apilb/core/file_read.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace apilb {
namespace {

using namespace std::chrono_literals;
using sys_clock = std::chrono::system_clock;

class DiscoveryState : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("apilb-discovery-state-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
        path_ = (dir_ / "state.json").string();
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    static discovery_state three(sys_clock::time_point at) {
        return {.pool = "cp",
                .written_at = std::chrono::time_point_cast<std::chrono::seconds>(at),
                .endpoints = {{"192.0.2.11", 6443, true, true, false},
                              {"2001:db8::12", 6443, true, true, false},
                              {"192.0.2.13", 6443, true, true, true}}};
    }
    std::optional<discovery_state> load(std::string& why, sys_clock::time_point now = sys_clock::now()) {
        return load_discovery_state(path_, "cp", 24h, now, why);
    }

    std::filesystem::path dir_;
    std::string path_;
};

TEST_F(DiscoveryState, WhatIsSavedIsLoaded) {
    const auto now = sys_clock::now();
    ASSERT_EQ(save_discovery_state(path_, three(now)), "");
    EXPECT_FALSE(std::filesystem::exists(path_ + ".tmp"));
    std::string why;
    auto s = load(why, now + 1h);
    ASSERT_TRUE(s) << why;
    EXPECT_EQ(s->pool, "cp");
    EXPECT_EQ(s->written_at, three(now).written_at);
    EXPECT_EQ(s->endpoints, three(now).endpoints);
}

TEST_F(DiscoveryState, ASaveReplacesTheWholeFile) {
    // A long file, then a short one: nothing of the first may remain.
    auto big = three(sys_clock::now());
    for (int i = 20; i < 60; ++i) big.endpoints.push_back({"198.51.100." + std::to_string(i), 6443, true, true, false});
    ASSERT_EQ(save_discovery_state(path_, big), "");
    auto small = three(sys_clock::now());
    small.endpoints.resize(1);
    ASSERT_EQ(save_discovery_state(path_, small), "");
    std::string why;
    auto s = load(why);
    ASSERT_TRUE(s) << why;
    EXPECT_EQ(s->endpoints.size(), 1u);
}

TEST_F(DiscoveryState, AFailedSaveLeavesTheOldFile) {
    ASSERT_EQ(save_discovery_state(path_, three(sys_clock::now())), "");
    // The temporary name is taken by a directory: the write fails before the rename.
    std::filesystem::create_directory(path_ + ".tmp");
    auto other = three(sys_clock::now());
    other.endpoints.resize(1);
    EXPECT_NE(save_discovery_state(path_, other), "");
    std::string why;
    auto s = load(why);
    ASSERT_TRUE(s) << why;
    EXPECT_EQ(s->endpoints.size(), 3u);
}

TEST_F(DiscoveryState, NoFileIsAFirstStartNotAProblem) {
    std::string why = "x";
    EXPECT_FALSE(load(why));
    EXPECT_EQ(why, "");
}

TEST_F(DiscoveryState, ACorruptFileIsIgnoredWithAReason) {
    const std::vector<std::pair<std::string, std::string>> bad{
        {"", "not JSON"},
        {"{\"version\":1,\"pool\":\"cp\",\"written_at\":1,\"endpoints\":[", "not JSON"},
        {"{\"version\":2}", "not version 1"},
        {"{\"version\":1,\"pool\":\"cp\",\"written_at\":\"now\",\"endpoints\":[]}", "wrong type"},
        {"{\"version\":1,\"pool\":\"cp\",\"written_at\":1,\"endpoints\":[{\"ip\":\"cp-1\",\"port\":6443,"
         "\"terminating\":false}]}",
         "not a numeric IP"},
        {std::string("\0\xff\xfe", 3), "not JSON"},
        // Found by the endpoint_slices fuzzer: seconds this far out overflowed
        // system_clock's nanoseconds (UBSan: signed integer overflow).
        {"{\"version\":1,\"pool\":\"cp\",\"written_at\":16108226668,\"endpoints\":[]}", "between 1970 and 2242"},
        {"{\"version\":1,\"pool\":\"cp\",\"written_at\":-1,\"endpoints\":[]}", "between 1970 and 2242"},
    };
    for (const auto& [text, reason] : bad) {
        std::ofstream(path_, std::ios::trunc) << text;
        std::string why;
        EXPECT_FALSE(load(why)) << text;
        EXPECT_NE(why.find(reason), std::string::npos) << text << " -> " << why;
        EXPECT_NE(why.find(path_), std::string::npos) << why;
    }
}

TEST_F(DiscoveryState, AnOldFileIsNotUsed) {
    const auto then = sys_clock::now() - 25h;
    ASSERT_EQ(save_discovery_state(path_, three(then)), "");
    std::string why;
    EXPECT_FALSE(load(why));
    EXPECT_NE(why.find("older than state_max_age"), std::string::npos) << why;
}

TEST_F(DiscoveryState, AFileFromFarInTheFutureIsNotUsed) {
    const auto now = sys_clock::now();
    ASSERT_EQ(save_discovery_state(path_, three(now + 25h)), "");
    std::string why;
    EXPECT_FALSE(load(why, now));
    EXPECT_NE(why.find("in the future"), std::string::npos) << why;
    // A little ahead (clocks of a pair differ) is fine.
    ASSERT_EQ(save_discovery_state(path_, three(now + 1min)), "");
    EXPECT_TRUE(load(why, now)) << why;
}

TEST_F(DiscoveryState, AnotherPoolsFileOrAnEmptySetIsNotUsed) {
    auto s = three(sys_clock::now());
    s.pool = "other";
    ASSERT_EQ(save_discovery_state(path_, s), "");
    std::string why;
    EXPECT_FALSE(load(why));
    EXPECT_NE(why.find("written for pool \"other\""), std::string::npos) << why;

    s.pool = "cp";
    s.endpoints.clear();
    ASSERT_EQ(save_discovery_state(path_, s), "");
    EXPECT_FALSE(load(why));
    EXPECT_NE(why.find("no apiserver"), std::string::npos) << why;
}

TEST_F(DiscoveryState, AFifoOrAHugeFileIsRefusedWithoutBlocking) {
    ASSERT_EQ(::mkfifo(path_.c_str(), 0600), 0);
    std::string why;
    EXPECT_FALSE(load(why));  // would block forever on a blocking open
    EXPECT_NE(why.find("FIFO"), std::string::npos) << why;
    std::filesystem::remove(path_);
    std::ofstream(path_) << std::string(max_state_file_bytes + 1, ' ');
    EXPECT_FALSE(load(why));
    EXPECT_NE(why.find("larger than"), std::string::npos) << why;
}

}  // namespace
}  // namespace apilb
