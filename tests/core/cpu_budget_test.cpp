// The CPU budget behind `workers: 0`: the cgroup CPU limit read from real
// files laid out like /proc/self/cgroup and /sys/fs/cgroup in a scratch
// directory (v2 cpu.max at several levels, v1 cfs files), files that are
// bad or missing, and the count that the mask and the limit give.
#include "apilb/core/cpu_budget.hpp"

#include <gtest/gtest.h>

#include "config_test_util.hpp"

namespace apilb::test {
namespace {

/// A /proc/self/cgroup and a /sys/fs/cgroup in a scratch directory.
struct cgroup_tree {
    scratch dir;
    std::string proc() const { return dir.path("proc-self-cgroup"); }
    std::string root() const { return dir.path("sys/fs/cgroup"); }
    void self(const std::string& text) const { dir.file("proc-self-cgroup", text); }
    void put(const std::string& name, const std::string& text) const { dir.file("sys/fs/cgroup/" + name, text); }
    cgroup_cpu_limit read() const { return read_cgroup_cpu_limit(proc(), root()); }
};

std::string all(const std::vector<std::string>& lines) {
    std::string s;
    for (const auto& l : lines) s += l + "\n";
    return s;
}

/// The one warning of a read that found no limit.
std::string the_warning(const cgroup_cpu_limit& l) {
    EXPECT_FALSE(l.limit);
    EXPECT_EQ(l.warnings.size(), 1u) << all(l.warnings);
    return l.warnings.empty() ? std::string() : l.warnings[0];
}

TEST(CgroupV2, TheSmallestLimitOverTheCgroupAndItsAncestors) {
    cgroup_tree t;
    t.self("0::/a/b\n");
    t.put("cpu.stat", "");  // the root has no cpu.max
    t.put("a/cpu.max", "150000 100000\n");
    t.put("a/b/cpu.max", "max 100000\n");
    const auto l = t.read();
    ASSERT_TRUE(l.limit) << all(l.warnings);
    EXPECT_EQ(l.limit->quota_us, 150000u);
    EXPECT_EQ(l.limit->whole_cpus(), 2u);
    EXPECT_EQ(l.limit->to_string(), "1.5");
    EXPECT_EQ(l.file, t.root() + "/a/cpu.max");
    EXPECT_TRUE(l.warnings.empty()) << all(l.warnings);

    t.put("a/b/cpu.max", "50000 100000\n");  // the deeper one is now smaller
    const auto deeper = t.read();
    ASSERT_TRUE(deeper.limit);
    EXPECT_EQ(deeper.limit->to_string(), "0.5");
    EXPECT_EQ(deeper.limit->whole_cpus(), 1u);
    EXPECT_EQ(deeper.file, t.root() + "/a/b/cpu.max");
}

TEST(CgroupV2, MaxEverywhereIsNoLimit) {
    cgroup_tree t;
    t.self("0::/a/b\n");
    t.put("a/cpu.max", "max 100000\n");
    t.put("a/b/cpu.max", "max 100000\n");
    const auto l = t.read();
    EXPECT_FALSE(l.limit);
    EXPECT_TRUE(l.warnings.empty()) << all(l.warnings);
}

TEST(CgroupV2, AMissingCpuMaxIsNoLimitThereAndNoWarning) {
    cgroup_tree t;
    t.self("0::/a/b\n");
    t.put("a/b/cpu.max", "250000 100000\n");  // "a" has no cpu controller
    const auto l = t.read();
    ASSERT_TRUE(l.limit);
    EXPECT_EQ(l.limit->whole_cpus(), 3u);
    EXPECT_EQ(l.limit->to_string(), "2.5");
    EXPECT_TRUE(l.warnings.empty()) << all(l.warnings);
}

TEST(CgroupV2, BadContentsCountAsNoLimitThereWithAWarning) {
    for (const char* bad : {"", "max\n", "50000\n", "fifty 100000\n", "50000 0\n", "0 100000\n", "-1 100000\n",
                            "50000 100000 7\n", "50000  100000\n"}) {
        cgroup_tree t;
        t.self("0::/a\n");
        t.put("cpu.max", "300000 100000\n");
        t.put("a/cpu.max", bad);
        const auto l = t.read();
        ASSERT_TRUE(l.limit) << bad;  // the root's still counts
        EXPECT_EQ(l.limit->whole_cpus(), 3u) << bad;
        ASSERT_EQ(l.warnings.size(), 1u) << bad << all(l.warnings);
        EXPECT_CONTAINS(l.warnings[0], t.root() + "/a/cpu.max holds");
        EXPECT_CONTAINS(l.warnings[0], "expected \"max PERIOD\" or \"QUOTA PERIOD\" in microseconds");
        EXPECT_CONTAINS(l.warnings[0], "counted as no CPU limit");
    }
}

TEST(CgroupV2, AFileThatIsNotRegularIsRefusedWithoutBlocking) {
    cgroup_tree t;
    t.self("0::/a\n");
    t.put("a/x", "");
    t.dir.fifo("sys/fs/cgroup/a/cpu.max");
    const auto l = t.read();
    EXPECT_CONTAINS(the_warning(l), "cpu.max is a FIFO, expected a regular file; counted as no CPU limit");
}

TEST(CgroupV2, AnOversizedFileIsRefused) {
    cgroup_tree t;
    t.self("0::/\n");
    t.put("cpu.max", std::string(max_cgroup_file_bytes + 1, '1'));
    const auto l = t.read();
    EXPECT_CONTAINS(the_warning(l), "cpu.max is larger than 64 KiB; counted as no CPU limit");
}

TEST(CgroupV2, AMountThatShowsOnlyTheProcessSubtree) {
    // A container without a cgroup namespace: /proc/self/cgroup names the
    // host's path, the mount's top is the container's own cgroup.
    cgroup_tree t;
    t.self("0::/kubepods/pod1/c1\n");
    t.put("cpu.max", "200000 100000\n");
    const auto l = t.read();
    ASSERT_TRUE(l.limit) << all(l.warnings);
    EXPECT_EQ(l.limit->whole_cpus(), 2u);
    EXPECT_EQ(l.file, t.root() + "/cpu.max");
}

TEST(CgroupV2, APathWithDotDotIsNotFollowed) {
    cgroup_tree t;
    t.self("0::/a/../b\n");
    t.put("cpu.max", "100000 100000\n");
    const auto l = t.read();
    EXPECT_CONTAINS(the_warning(l), "holds \"..\"; counted as no CPU limit");
}

TEST(CgroupProcSelf, AMissingFileIsNoLimitWithAWarning) {
    cgroup_tree t;
    t.put("cpu.max", "100000 100000\n");
    const auto l = t.read();
    EXPECT_CONTAINS(the_warning(l), t.proc() + " cannot be read: No such file or directory; counted as no CPU limit");
}

TEST(CgroupV1, TheCpuCpuacctLineAndTheCfsFiles) {
    cgroup_tree t;
    // Hybrid: the v1 cpu controller wins over the v2 line.
    t.self("9:name=systemd:/x\n4:cpu,cpuacct:/kubepods/pod1\n2:memory:/m\n0::/x\n");
    t.put("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    t.put("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    t.put("cpu,cpuacct/kubepods/cpu.cfs_quota_us", "-1\n");
    t.put("cpu,cpuacct/kubepods/cpu.cfs_period_us", "100000\n");
    t.put("cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us", "50000\n");
    t.put("cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us", "100000\n");
    t.put("cpu.max", "10000 100000\n");  // must not be read: v1 has the controller
    const auto l = t.read();
    ASSERT_TRUE(l.limit) << all(l.warnings);
    EXPECT_EQ(l.limit->to_string(), "0.5");
    EXPECT_EQ(l.limit->whole_cpus(), 1u);
    EXPECT_EQ(l.file, t.root() + "/cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us");
    EXPECT_TRUE(l.warnings.empty()) << all(l.warnings);
}

TEST(CgroupV1, ACpuOnlyMountAndMinusOneEverywhere) {
    cgroup_tree t;
    t.self("1:cpu:/a\n0::/\n");
    t.put("cpu/cpu.cfs_quota_us", "-1\n");
    t.put("cpu/cpu.cfs_period_us", "100000\n");
    t.put("cpu/a/cpu.cfs_quota_us", "-1\n");
    t.put("cpu/a/cpu.cfs_period_us", "100000\n");
    auto l = t.read();
    EXPECT_FALSE(l.limit);
    EXPECT_TRUE(l.warnings.empty()) << all(l.warnings);

    t.put("cpu/a/cpu.cfs_quota_us", "150000\n");
    t.put("cpu/a/cpu.cfs_period_us", "50000\n");
    l = t.read();
    ASSERT_TRUE(l.limit);
    EXPECT_EQ(l.limit->to_string(), "3");
}

TEST(CgroupV1, BadQuotaOrPeriodWarns) {
    cgroup_tree t;
    t.self("1:cpu:/a\n");
    t.put("cpu/a/cpu.cfs_quota_us", "lots\n");
    t.put("cpu/a/cpu.cfs_period_us", "100000\n");
    auto l = t.read();
    EXPECT_CONTAINS(the_warning(l), "cpu.cfs_quota_us holds \"lots\", expected -1 or a quota in microseconds");

    t.put("cpu/a/cpu.cfs_quota_us", "50000\n");
    t.put("cpu/a/cpu.cfs_period_us", "0\n");
    l = t.read();
    EXPECT_CONTAINS(the_warning(l), "cpu.cfs_period_us holds \"0\", expected a period in microseconds");
}

TEST(CgroupV1, NoMountForTheCpuController) {
    cgroup_tree t;
    t.self("3:cpu,cpuacct:/a\n");
    t.put("memory/x", "");
    const auto l = t.read();
    EXPECT_CONTAINS(the_warning(l), "the cgroup v1 cpu controller is not mounted");
}

TEST(CpuBudget, TheMaskBoundedByTheLimitRoundedUp) {
    cpu_budget b{.affinity_cpus = 4, .online_cpus = 8, .cgroup = {}, .warnings = {}};
    EXPECT_EQ(b.workers(256), 4u);
    EXPECT_EQ(b.describe(), "4 CPUs in the affinity mask");
    b.cgroup.limit = cpu_quota{.quota_us = 150000, .period_us = 100000};
    b.cgroup.file = "/sys/fs/cgroup/cpu.max";
    EXPECT_EQ(b.workers(256), 2u);
    EXPECT_EQ(b.describe(), "4 CPUs in the affinity mask, cgroup CPU limit 1.5 (/sys/fs/cgroup/cpu.max)");
    b.cgroup.limit = cpu_quota{.quota_us = 1000, .period_us = 1000000};
    EXPECT_EQ(b.workers(256), 1u);
    EXPECT_EQ(b.cgroup.limit->to_string(), "0.01");
    b.cgroup.limit = cpu_quota{.quota_us = 1000000, .period_us = 1000};  // 1000 CPUs
    EXPECT_EQ(b.workers(256), 4u);
    b.affinity_cpus = 0;  // unknown: the machine's
    b.cgroup.limit.reset();
    EXPECT_EQ(b.workers(256), 8u);
    EXPECT_EQ(b.describe(), "8 CPUs online (the affinity mask is unknown)");
    b.affinity_cpus = 1000;
    EXPECT_EQ(b.workers(256), 256u);
    b.affinity_cpus = 1;
    EXPECT_EQ(b.describe(), "1 CPU in the affinity mask");
}

TEST(CpuBudget, TheMaskIsThisThreadsAffinity) {
    std::string why;
    cpu_set_t mine;
    CPU_ZERO(&mine);
    ASSERT_EQ(::sched_getaffinity(0, sizeof mine, &mine), 0);
    EXPECT_EQ(affinity_cpu_count(why), static_cast<std::uint32_t>(CPU_COUNT(&mine))) << why;

    // One CPU of the mask, then back.
    int first = 0;
    while (!CPU_ISSET(first, &mine)) ++first;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    ASSERT_EQ(::sched_setaffinity(0, sizeof one, &one), 0);
    EXPECT_EQ(affinity_cpu_count(why), 1u) << why;
    ASSERT_EQ(::sched_setaffinity(0, sizeof mine, &mine), 0);
}

}  // namespace
}  // namespace apilb::test
