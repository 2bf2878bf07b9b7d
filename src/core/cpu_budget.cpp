#include "apilb/core/cpu_budget.hpp"

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <memory>
#include <string_view>
#include <thread>

#include "apilb/core/file_read.hpp"

namespace apilb {
namespace {

/// Deeper cgroup paths are not followed (systemd and the kubelet nest
/// about six levels); each level costs a file read or two.
constexpr std::size_t max_cgroup_depth = 64;

const std::string no_limit = "; counted as no CPU limit";

bool is_directory(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

/// The text as a one-line quote for a message, cut short.
std::string quoted(std::string_view text) {
    constexpr std::size_t max_shown = 40;
    std::string out = "\"";
    for (std::size_t i = 0; i < text.size() && i < max_shown; ++i) {
        const char c = text[i];
        if (c == '\n') {
            out += "\\n";
        } else {
            out += static_cast<unsigned char>(c) < 0x20 || c == '"' ? '?' : c;
        }
    }
    return out + (text.size() > max_shown ? "...\"" : "\"");
}

/// A positive decimal integer, the whole of `text`.
std::optional<std::uint64_t> positive(std::string_view text) {
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc{} || end != text.data() + text.size() || v == 0) return std::nullopt;
    return v;
}

/// The file's one line without its newline, or nullopt with a warning.
std::optional<std::string> read_line(const std::string& path, std::vector<std::string>& warnings) {
    file_contents file = read_regular_file(path, max_cgroup_file_bytes);
    if (!file) {
        warnings.push_back(path + " " + file.error + no_limit);
        return std::nullopt;
    }
    std::string& text = file.bytes;
    if (!text.empty() && text.back() == '\n') text.pop_back();
    return std::move(text);
}

/// One level's limit: nullopt = none there.
using level_reader = std::optional<cpu_quota> (*)(const std::string& dir, std::vector<std::string>& warnings,
                                                  std::string& file);

/// cgroup v2: "max 100000" or "50000 100000".
std::optional<cpu_quota> read_cpu_max(const std::string& dir, std::vector<std::string>& warnings, std::string& file) {
    file = dir + "/cpu.max";
    if (!exists(file)) return std::nullopt;
    const auto text = read_line(file, warnings);
    if (!text) return std::nullopt;
    const std::size_t space = text->find(' ');
    const std::string_view quota = std::string_view(*text).substr(0, space);
    const auto period = space == std::string::npos ? std::nullopt : positive(std::string_view(*text).substr(space + 1));
    if (period && quota == "max") return std::nullopt;
    const auto q = positive(quota);
    if (!period || !q) {
        warnings.push_back(file + " holds " + quoted(*text) +
                           ", expected \"max PERIOD\" or \"QUOTA PERIOD\" in microseconds" + no_limit);
        return std::nullopt;
    }
    return cpu_quota{.quota_us = *q, .period_us = *period};
}

/// cgroup v1: cpu.cfs_quota_us (-1 = none) every cpu.cfs_period_us.
std::optional<cpu_quota> read_cfs(const std::string& dir, std::vector<std::string>& warnings, std::string& file) {
    file = dir + "/cpu.cfs_quota_us";
    if (!exists(file)) return std::nullopt;
    const auto quota = read_line(file, warnings);
    if (!quota || *quota == "-1") return std::nullopt;
    const auto q = positive(*quota);
    if (!q) {
        warnings.push_back(file + " holds " + quoted(*quota) + ", expected -1 or a quota in microseconds" + no_limit);
        return std::nullopt;
    }
    const std::string period_file = dir + "/cpu.cfs_period_us";
    const auto period = read_line(period_file, warnings);
    if (!period) return std::nullopt;
    const auto p = positive(*period);
    if (!p) {
        warnings.push_back(period_file + " holds " + quoted(*period) + ", expected a period in microseconds" +
                           no_limit);
        return std::nullopt;
    }
    return cpu_quota{.quota_us = *q, .period_us = *p};
}

bool less_cpus(const cpu_quota& a, const cpu_quota& b) {
    // long double: exact for the kernel's values (quota < 2^44, period <= 10^6).
    return static_cast<long double>(a.quota_us) * b.period_us < static_cast<long double>(b.quota_us) * a.period_us;
}

/// The smallest limit from the cgroup at `path` up to the top of `mount`.
void walk(const std::string& mount, std::string_view path, level_reader read, cgroup_cpu_limit& out) {
    std::vector<std::string_view> parts;
    for (std::size_t start = 0; start <= path.size();) {
        const std::size_t slash = std::min(path.find('/', start), path.size());
        const std::string_view part = path.substr(start, slash - start);
        if (part == "." || part == "..") {
            out.warnings.push_back("the cgroup path " + quoted(path) + " holds \"" + std::string(part) + "\"" +
                                   no_limit);
            return;
        }
        if (!part.empty()) parts.push_back(part);
        start = slash + 1;
    }
    if (parts.size() > max_cgroup_depth) {
        out.warnings.push_back("the cgroup path " + quoted(path) + " is deeper than " +
                               std::to_string(max_cgroup_depth) + " levels" + no_limit);
        return;
    }
    // The path is relative to the hierarchy's root, but the mount can show
    // only a subtree: a container without a cgroup namespace sees its own
    // cgroup at the mount's top. Drop leading components until it exists.
    auto dir_of = [&](std::size_t from, std::size_t to) {
        std::string dir = mount;
        for (std::size_t i = from; i < to; ++i) dir += "/" + std::string(parts[i]);
        return dir;
    };
    std::size_t first = 0;
    while (first < parts.size() && !is_directory(dir_of(first, parts.size()))) ++first;
    for (std::size_t end = parts.size() + 1; end-- > first;) {
        std::string file;
        const auto level = read(dir_of(first, end), out.warnings, file);
        if (level && (!out.limit || less_cpus(*level, *out.limit))) {
            out.limit = level;
            out.file = file;
        }
    }
}

struct mask_deleter {
    void operator()(cpu_set_t* set) const { CPU_FREE(set); }
};

}  // namespace

std::uint64_t cpu_quota::whole_cpus() const {
    return std::max<std::uint64_t>(1, quota_us / period_us + (quota_us % period_us != 0 ? 1 : 0));
}

std::string cpu_quota::to_string() const {
    const auto hundredths = static_cast<std::uint64_t>(
        std::llround(static_cast<long double>(quota_us) * 100 / static_cast<long double>(period_us)));
    if (hundredths == 0) return "0.01";  // the kernel's smallest, 1 ms per second, shown as what it rounds to
    std::string s = std::to_string(hundredths / 100);
    if (const std::uint64_t frac = hundredths % 100; frac != 0) {
        s += "." + std::to_string(frac / 10);
        if (frac % 10 != 0) s += std::to_string(frac % 10);
    }
    return s;
}

cgroup_cpu_limit read_cgroup_cpu_limit(const std::string& proc_cgroup, const std::string& cgroup_root) {
    cgroup_cpu_limit out;
    file_contents file = read_regular_file(proc_cgroup, max_cgroup_file_bytes);
    if (!file) {
        out.warnings.push_back(proc_cgroup + " " + file.error + no_limit);
        return out;
    }
    // "ID:CONTROLLERS:PATH" per hierarchy; v1's cpu controller wins over
    // the v2 line, which on a hybrid system (v1 cpu) has no cpu controller.
    std::optional<std::string_view> v2_path;
    const std::string_view text = file.bytes;
    for (std::size_t start = 0; start < text.size();) {
        const std::size_t newline = std::min(text.find('\n', start), text.size());
        const std::string_view line = text.substr(start, newline - start);
        start = newline + 1;
        const std::size_t c1 = line.find(':');
        const std::size_t c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
        if (c2 == std::string_view::npos) continue;
        const std::string_view controllers = line.substr(c1 + 1, c2 - c1 - 1);
        const std::string_view path = line.substr(c2 + 1);
        if (line.substr(0, c1) == "0" && controllers.empty()) {
            v2_path = path;
            continue;
        }
        bool cpu = false;
        for (std::size_t s = 0; s <= controllers.size();) {
            const std::size_t comma = std::min(controllers.find(',', s), controllers.size());
            cpu = cpu || controllers.substr(s, comma - s) == "cpu";
            s = comma + 1;
        }
        if (!cpu) continue;
        // Mounted as "cpu,cpuacct" (with a "cpu" symlink) or as "cpu".
        std::string mount = cgroup_root + "/" + std::string(controllers);
        if (!is_directory(mount)) mount = cgroup_root + "/cpu";
        if (!is_directory(mount)) {
            out.warnings.push_back("the cgroup v1 cpu controller is not mounted at " + cgroup_root + "/" +
                                   std::string(controllers) + " or " + mount + no_limit);
            return out;
        }
        walk(mount, path, read_cfs, out);
        return out;
    }
    if (v2_path) walk(cgroup_root, *v2_path, read_cpu_max, out);
    return out;
}

std::uint32_t affinity_cpu_count(std::string& error) {
    // The mask must hold the kernel's every possible CPU or the call fails
    // with EINVAL: start at glibc's cpu_set_t (1024) and double.
    for (int cpus = CPU_SETSIZE; cpus <= (1 << 20); cpus *= 2) {
        const std::unique_ptr<cpu_set_t, mask_deleter> set(CPU_ALLOC(cpus));
        if (!set) {
            error = "no memory for a mask of " + std::to_string(cpus) + " CPUs";
            return 0;
        }
        const std::size_t size = CPU_ALLOC_SIZE(cpus);
        CPU_ZERO_S(size, set.get());
        if (::sched_getaffinity(0, size, set.get()) == 0)
            return static_cast<std::uint32_t>(CPU_COUNT_S(size, set.get()));
        if (errno != EINVAL) {
            error = std::string("sched_getaffinity failed: ") + std::strerror(errno);
            return 0;
        }
    }
    error = "sched_getaffinity refused a mask of 1048576 CPUs";
    return 0;
}

std::uint32_t cpu_budget::workers(std::uint32_t max_workers) const {
    std::uint64_t n = affinity_cpus != 0 ? affinity_cpus : online_cpus;
    if (cgroup.limit) n = std::min(n, cgroup.limit->whole_cpus());
    return static_cast<std::uint32_t>(std::clamp<std::uint64_t>(n, 1, max_workers));
}

std::string cpu_budget::describe() const {
    auto cpus = [](std::uint32_t n) { return std::to_string(n) + (n == 1 ? " CPU" : " CPUs"); };
    std::string s = affinity_cpus != 0 ? cpus(affinity_cpus) + " in the affinity mask"
                                       : cpus(online_cpus) + " online (the affinity mask is unknown)";
    if (cgroup.limit) s += ", cgroup CPU limit " + cgroup.limit->to_string() + " (" + cgroup.file + ")";
    return s;
}

cpu_budget probe_cpu_budget(const std::string& proc_cgroup, const std::string& cgroup_root) {
    cpu_budget b;
    std::string why;
    b.affinity_cpus = affinity_cpu_count(why);
    b.online_cpus = std::thread::hardware_concurrency();
    if (b.affinity_cpus == 0)
        b.warnings.push_back("the CPU affinity mask is unknown (" + why + "); counted as all CPUs");
    b.cgroup = read_cgroup_cpu_limit(proc_cgroup, cgroup_root);
    b.warnings.insert(b.warnings.end(), b.cgroup.warnings.begin(), b.cgroup.warnings.end());
    return b;
}

}  // namespace apilb
