// How many CPUs this process may use, for `workers: 0`: the CPUs of its
// affinity mask (taskset, systemd CPUAffinity=, a cpuset), further bounded
// by its cgroup's CPU quota (a Kubernetes CPU limit, systemd CPUQuota=).
// std::thread::hardware_concurrency() counts every online CPU of the
// machine instead. Read where the config is loaded, never on the data path.
// Pure core: no Asio; reads files through read_regular_file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace apilb {

/// Largest /proc/self/cgroup or cgroup control file apilb reads (a real
/// one is a few hundred bytes).
constexpr std::size_t max_cgroup_file_bytes = std::size_t{64} << 10;

/// A cgroup's CPU bandwidth limit: `quota_us` of CPU time every `period_us`.
struct cpu_quota {
    std::uint64_t quota_us = 0;
    std::uint64_t period_us = 0;

    /// The CPUs it allows, rounded up: 1.5 gives 2, 0.5 gives 1.
    std::uint64_t whole_cpus() const;
    /// "1.5", "0.25", "2": the CPUs it allows, at most two decimals.
    std::string to_string() const;
};

/// The smallest CPU limit over a process's cgroup and its ancestors.
struct cgroup_cpu_limit {
    std::optional<cpu_quota> limit;  ///< nullopt = no limit
    std::string file;                ///< the file that set `limit`
    /// Files that could not be read or parsed, each counted as no limit:
    /// "/sys/fs/cgroup/a/cpu.max holds \"x\", expected ...; counted as no CPU limit".
    std::vector<std::string> warnings;
};

/// The CPU limit of the cgroup that the file `proc_cgroup` (laid out as
/// /proc/self/cgroup) names, with cgroup hierarchies mounted under
/// `cgroup_root` (/sys/fs/cgroup): cgroup v1's `cpu` controller
/// (`cpu.cfs_quota_us`, -1 = none, and `cpu.cfs_period_us`) when a line
/// names it, else cgroup v2's `0::` line (`cpu.max`: "max 100000",
/// "50000 100000"). A missing control file is no limit at that level (the
/// root and cgroups without the cpu controller have none).
cgroup_cpu_limit read_cgroup_cpu_limit(const std::string& proc_cgroup, const std::string& cgroup_root);

/// What `workers: 0` resolves to, and why.
struct cpu_budget {
    std::uint32_t affinity_cpus = 0;  ///< CPUs in the affinity mask; 0 = unknown
    std::uint32_t online_cpus = 0;    ///< the machine's, used when the mask is unknown
    cgroup_cpu_limit cgroup;
    std::vector<std::string> warnings;  ///< the cgroup's, and why the mask is unknown

    /// The worker count: the mask's CPUs (else the machine's), at most the
    /// quota rounded up, within 1..`max_workers`.
    std::uint32_t workers(std::uint32_t max_workers) const;
    /// "4 CPUs in the affinity mask, cgroup CPU limit 1.5 (/sys/fs/cgroup/cpu.max)".
    std::string describe() const;
};

/// The CPUs in the calling thread's affinity mask (sched_getaffinity, a
/// mask sized for the machine), or 0 with the reason in `error`.
std::uint32_t affinity_cpu_count(std::string& error);

/// This process's budget now: its affinity mask and the cgroup limit read
/// from `proc_cgroup` and `cgroup_root` (parameters for tests).
cpu_budget probe_cpu_budget(const std::string& proc_cgroup = "/proc/self/cgroup",
                            const std::string& cgroup_root = "/sys/fs/cgroup");

}  // namespace apilb
