// `workers: 0` with the real apilb: it runs one worker per CPU it may use,
// not per CPU of the machine. Pinned to one CPU (taskset), it runs one; with
// the test's whole mask, one per CPU of it; in a cgroup with a quota of
// half a CPU (made here when cgroups are writable), one. A reload with the
// same budget warns nothing; one that finds another keeps the running count.
// The count and where it came from are in the start log and /api/v1/status.
#include <gtest/gtest.h>

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>

#include "admin_support.hpp"
#include "harness.hpp"

namespace apilb::test {
namespace {

/// The CPUs of this test's affinity mask (apilb inherits it).
std::vector<int> my_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    EXPECT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &set)) cpus.push_back(c);
    }
    return cpus;
}

/// A backend that accepts and holds each connection briefly.
tcp_server quiet_backend() {
    return tcp_server("127.0.0.1", [](int&) {});
}

/// Sends SIGHUP and waits for the reload's result line.
bool reload(apilb_process& lb) {
    lb.proc().signal(SIGHUP);
    return lb.wait_for_log("reload: config ", 20s);
}

TEST(WorkersAuto, PinnedToOneCpuRunsOneWorker) {
    const auto cpus = my_cpus();
    ASSERT_FALSE(cpus.empty());
    temp_dir dir;
    tcp_server backend = quiet_backend();
    const std::uint16_t port = free_port();
    const std::uint16_t admin = free_port();
    apilb_process lb(dir,
                     single_pool_config(port, {backend.address()}, "round-robin", 0,
                                        "admin:\n  address: \"127.0.0.1:" + std::to_string(admin) + "\"\n"),
                     "127.0.0.1", port, {}, {"/usr/bin/taskset", "-c", std::to_string(cpus.back())});
    EXPECT_TRUE(lb.wait_for_log("workers: 1 (auto: 1 CPU in the affinity mask)")) << lb.log();
    EXPECT_TRUE(lb.wait_for_log("apilb started: 1 worker(s)")) << lb.log();
    const auto status = http(admin, "GET", "/api/v1/status");
    ASSERT_EQ(status.status, 200) << status.body;
    const json::object st = json::parse(status.body).as_object();
    EXPECT_EQ(st.at("workers").as_int64(), 1) << status.body;
    EXPECT_EQ(st.at("workers_auto").as_string(), "1 CPU in the affinity mask") << status.body;

    // The same file, the same budget: nothing about workers to say.
    ASSERT_TRUE(reload(lb)) << lb.log();
    EXPECT_EQ(lb.log().find("reload: workers"), std::string::npos) << lb.log();
    EXPECT_EQ(lb.terminate(), 0);
}

TEST(WorkersAuto, TheWholeMaskRunsOneWorkerPerCpu) {
    const auto cpus = my_cpus();
    temp_dir dir;
    tcp_server backend = quiet_backend();
    const std::uint16_t port = free_port();
    apilb_process lb(dir, single_pool_config(port, {backend.address()}, "round-robin", 0), "127.0.0.1", port);
    const std::string n = std::to_string(cpus.size());
    const std::string mask = n + (cpus.size() == 1 ? " CPU" : " CPUs") + " in the affinity mask";
    ASSERT_TRUE(lb.wait_for_log(mask)) << lb.log();
    // A cgroup limit on the machine that runs the tests may bound it further.
    if (lb.log().find("cgroup CPU limit") == std::string::npos) {
        EXPECT_TRUE(lb.wait_for_log("workers: " + n + " (auto: " + mask + ")")) << lb.log();
    }
    EXPECT_EQ(lb.terminate(), 0);
}

TEST(WorkersAuto, SetInTheConfigSaysSo) {
    temp_dir dir;
    tcp_server backend = quiet_backend();
    const std::uint16_t port = free_port();
    apilb_process lb(dir, single_pool_config(port, {backend.address()}, "round-robin", 3), "127.0.0.1", port, {},
                     {"/usr/bin/taskset", "-c", std::to_string(my_cpus().front())});
    EXPECT_TRUE(lb.wait_for_log("workers: 3 (set in the config)")) << lb.log();
    EXPECT_EQ(lb.terminate(), 0);
}

/// A cpu cgroup of this test's own, removed when the object dies (its
/// processes must have exited by then). `error` says why none could be made.
class cpu_cgroup {
public:
    cpu_cgroup() {
        const std::string name = "/apilb-workers-test-" + std::to_string(::getpid());
        struct stat st {};
        if (::stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", &st) == 0) {
            v1_ = true;
            path_ = "/sys/fs/cgroup/cpu" + name;
        } else if (read_file("/sys/fs/cgroup/cgroup.subtree_control").find("cpu") != std::string::npos) {
            path_ = "/sys/fs/cgroup" + name;
        } else {
            error =
                "no writable cpu controller: neither /sys/fs/cgroup/cpu (v1) nor cpu in "
                "/sys/fs/cgroup/cgroup.subtree_control (v2)";
            return;
        }
        if (::mkdir(path_.c_str(), 0755) != 0) {
            error = "cannot make the cgroup " + path_ + ": " + std::strerror(errno);
            path_.clear();
        }
    }
    ~cpu_cgroup() {
        if (!path_.empty() && ::rmdir(path_.c_str()) != 0) {
            ADD_FAILURE() << "cannot remove " << path_ << ": " << std::strerror(errno);
        }
    }
    cpu_cgroup(const cpu_cgroup&) = delete;
    cpu_cgroup& operator=(const cpu_cgroup&) = delete;

    /// `quota_us` of CPU time every 100 ms.
    bool set_quota(unsigned quota_us) const {
        if (v1_)
            return write(path_ + "/cpu.cfs_period_us", "100000") &&
                   write(path_ + "/cpu.cfs_quota_us", std::to_string(quota_us));
        return write(path_ + "/cpu.max", std::to_string(quota_us) + " 100000");
    }
    /// Runs the command after it inside this cgroup.
    std::vector<std::string> prefix() const {
        return {"/bin/sh", "-c", "echo $$ > '" + path_ + "/cgroup.procs' && exec \"$@\"", "sh"};
    }
    std::string quota_file() const { return path_ + (v1_ ? "/cpu.cfs_quota_us" : "/cpu.max"); }

    std::string error;

private:
    static bool write(const std::string& file, const std::string& text) {
        std::ofstream out(file);
        out << text << std::flush;
        return static_cast<bool>(out);
    }
    bool v1_ = false;
    std::string path_;
};

TEST(WorkersAuto, ACgroupQuotaOfHalfACpuRunsOneWorker) {
    const auto cpus = my_cpus();
    if (cpus.size() < 2) GTEST_SKIP() << "one CPU: the mask alone gives one worker";
    const cpu_cgroup group;
    if (!group.error.empty()) GTEST_SKIP() << "cgroups are not writable here: " << group.error;
    ASSERT_TRUE(group.set_quota(50000));
    {
        temp_dir dir;
        tcp_server backend = quiet_backend();
        const std::uint16_t port = free_port();
        apilb_process lb(dir, single_pool_config(port, {backend.address()}, "round-robin", 0), "127.0.0.1", port, {},
                         group.prefix());
        EXPECT_TRUE(lb.wait_for_log("workers: 1 (auto: " + std::to_string(cpus.size()) +
                                    " CPUs in the affinity mask, cgroup CPU limit 0.5 (" + group.quota_file() + "))"))
            << lb.log();

        // 1.5 CPUs now: a reload finds 2 and keeps the running 1.
        ASSERT_TRUE(group.set_quota(150000));
        ASSERT_TRUE(reload(lb)) << lb.log();
        EXPECT_TRUE(lb.wait_for_log("reload: workers 1->2 (auto: " + std::to_string(cpus.size()) +
                                    " CPUs in the affinity mask, cgroup CPU limit 1.5 (" + group.quota_file() +
                                    ")) changed: applies only when apilb is restarted"))
            << lb.log();
        EXPECT_EQ(lb.terminate(), 0);
    }
}

}  // namespace
}  // namespace apilb::test
