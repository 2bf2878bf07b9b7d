// Fuzz target: how `workers: 0` reads its CPU limit (core/cpu_budget.hpp).
// The input is up to three parts split at NUL bytes: /proc/self/cgroup's
// text, then the text of every cgroup v2 `cpu.max` and v1
// `cpu.cfs_quota_us` of a scratch tree, then every v1 `cpu.cfs_period_us`.
// The tree has the levels a/ and a/b/ under a v2 root and under a v1 `cpu`
// mount, so a path the first part names can reach several levels. A crash,
// a hang, a leak or an exception is a finding; so is a limit that is not a
// positive quota over a positive period read from a file inside the tree,
// or a warning that is empty, spans lines or does not say what it counts.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "apilb/core/cpu_budget.hpp"

namespace {

using namespace apilb;

std::string scratch_dir;
std::string proc_cgroup;
std::string root;
std::vector<std::string> quota_files;
std::vector<std::string> period_files;
std::vector<std::string> dirs;

void check(bool ok, const char* what, const std::string& detail) {
    if (ok) return;
    std::fprintf(stderr, "cgroup_fuzz: %s: %s\n", what, detail.c_str());
    std::abort();
}

void write(const std::string& path, std::string_view text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(text.data(), static_cast<std::streamsize>(text.size()));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    char dir[] = "/tmp/apilb-cgroup-fuzz.XXXXXX";
    if (::mkdtemp(dir) == nullptr) std::abort();
    scratch_dir = dir;
    proc_cgroup = scratch_dir + "/self-cgroup";
    root = scratch_dir + "/root";
    for (const std::string& top : {root, root + "/cpu"}) {
        for (const std::string& d : {top, top + "/a", top + "/a/b"}) {
            dirs.push_back(d);
            ::mkdir(d.c_str(), 0700);
            if (top == root) {
                quota_files.push_back(d + "/cpu.max");
            } else {
                quota_files.push_back(d + "/cpu.cfs_quota_us");
                period_files.push_back(d + "/cpu.cfs_period_us");
            }
        }
    }
    // The tree goes when the run ends, however it ends but SIGKILL.
    std::atexit([] {
        ::unlink(proc_cgroup.c_str());
        for (const auto& f : quota_files) ::unlink(f.c_str());
        for (const auto& f : period_files) ::unlink(f.c_str());
        for (auto d = dirs.rbegin(); d != dirs.rend(); ++d) ::rmdir(d->c_str());
        ::rmdir(scratch_dir.c_str());
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > max_cgroup_file_bytes) return 0;
    std::string_view parts[3];
    std::string_view rest(reinterpret_cast<const char*>(data), size);
    for (int i = 0; i < 3; ++i) {
        const std::size_t nul = i == 2 ? std::string_view::npos : rest.find('\0');
        parts[i] = rest.substr(0, nul);
        rest = nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1);
    }
    write(proc_cgroup, parts[0]);
    for (const auto& f : quota_files) write(f, parts[1]);
    for (const auto& f : period_files) write(f, parts[2]);

    const cgroup_cpu_limit l = read_cgroup_cpu_limit(proc_cgroup, root);
    if (l.limit) {
        check(l.limit->quota_us > 0 && l.limit->period_us > 0, "a limit without a positive quota and period", l.file);
        check(l.limit->whole_cpus() >= 1, "a limit of no CPU", l.file);
        check(!l.limit->to_string().empty(), "a limit shown as nothing", l.file);
        check(l.file.rfind(root + "/", 0) == 0, "a limit read outside the tree", l.file);
    }
    for (const auto& w : l.warnings) {
        check(!w.empty(), "an empty warning", w);
        check(w.find_first_of("\r\n") == std::string::npos, "a warning that spans lines", w);
        check(w.ends_with("; counted as no CPU limit"), "a warning that does not say what it counts", w);
    }
    return 0;
}
