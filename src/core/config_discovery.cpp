// A pool's `discovery` section: how apilb reaches the API to follow the
// `kubernetes` EndpointSlices, and how cautiously it applies what it learns.
// Part of the loader (see loader.hpp).
#include <sys/stat.h>

#include <algorithm>

#include "apilb/core/file_read.hpp"
#include "apilb/core/loader.hpp"

namespace apilb::config_detail {
namespace {

constexpr std::array<std::string_view, 11> discovery_keys{
    "namespace",  "service",       "kubeconfig",   "in_cluster",      "ca_file",     "server_name",
    "state_file", "state_max_age", "grace_period", "change_interval", "idle_timeout"};

/// Why `text` cannot be a namespace or service name (an RFC 1123 label, as
/// Kubernetes requires of both), or "".
std::string label_problem(const std::string& text) {
    if (text.empty() || text.size() > 63) return "expected 1 to 63 characters";
    const auto ok = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; };
    if (!std::all_of(text.begin(), text.end(), ok)) return "expected lower-case letters, digits and \"-\"";
    if (text.front() == '-' || text.back() == '-') return "a name cannot start or end with \"-\"";
    return {};
}

/// The directory part of `path` ("." for a bare name).
std::string directory_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

void loader::read_discovery(const field& f, discovery_config& d) {
    auto m = open_mapping(f, discovery_keys, true);
    if (!m) return;
    for (const auto key : {"namespace", "service"}) {
        const field* n = m->find(key);
        std::string text;
        if (n == nullptr || !read_text(*m, key, "a Kubernetes name such as \"default\"", text)) continue;
        if (auto problem = label_problem(text); !problem.empty()) {
            error(n->mark, n->path, "invalid name " + quote(text) + ": " + problem);
        } else {
            (std::string_view(key) == "namespace" ? d.namespace_name : d.service) = text;
        }
    }

    read_bool(*m, "in_cluster", d.in_cluster);
    const field* kubeconfig = m->find("kubeconfig");
    if (kubeconfig != nullptr && d.in_cluster) {
        error(kubeconfig->mark, kubeconfig->path,
              "kubeconfig and in_cluster: true are both set; expected one way to authenticate");
    } else if (kubeconfig == nullptr && !d.in_cluster) {
        error(m->mark, m->path,
              "no way to authenticate to the API; expected \"kubeconfig: PATH\" (a client certificate or "
              "token, and the cluster CA) or \"in_cluster: true\" (the pod's service account)");
    }
    // The kubeconfig's contents are checked when discovery starts: it is
    // YAML of its own, parsed behind the guard (apilb/yaml_guard.hpp).
    read_file_path(*m, "kubeconfig", max_kubeconfig_bytes, d.kubeconfig);
    read_file_path(*m, "ca_file", max_pem_bytes, d.ca_file);
    if (d.in_cluster) {
        for (const char* path : {in_cluster_token_file, in_cluster_ca_file}) {
            if (!d.ca_file.empty() && std::string_view(path) == in_cluster_ca_file) continue;
            if (file_contents file = read_regular_file(path, max_pem_bytes); !file) {
                const field* ic = m->find("in_cluster");
                error(ic->mark, ic->path, "in_cluster: true, but " + quote(path) + " " + file.error);
            }
        }
    }
    if (const field* s = m->find("server_name")) {
        std::string name;
        if (read_text(*m, "server_name", "the name in the apiserver's certificate", name)) {
            if (name.empty() || name.size() > 253 || name.find_first_of(" /\\\n\t") != std::string::npos) {
                error(s->mark, s->path, "invalid server name " + quote(name) + "; expected a DNS name or an IP");
            } else {
                d.server_name = name;
            }
        }
    }
    if (const field* s = m->find("state_file")) {
        std::string path;
        if (read_text(*m, "state_file", "the path of a file apilb writes", path)) {
            struct stat st {};
            const std::string dir = directory_of(path);
            if (path.empty() || path.back() == '/') {
                error(s->mark, s->path, "expected the path of a file; found " + quote(path));
            } else if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
                // Written later, at the first change: a typo must fail now.
                error(s->mark, s->path, "the directory " + quote(dir) + " of the state file does not exist");
            } else {
                d.state_file = path;
            }
        }
    }
    read_duration(*m, "state_max_age", {.min = 1min, .max = 8760h, .range = "1m..8760h"}, d.state_max_age);
    read_duration(*m, "grace_period", {.min = 0ms, .max = 24h, .zero_allowed = true, .range = "0..24h"},
                  d.grace_period);
    read_duration(*m, "change_interval", {.min = 0ms, .max = 1h, .zero_allowed = true, .range = "0..1h"},
                  d.change_interval);
    read_duration(*m, "idle_timeout", {.min = 5s, .max = 1h, .range = "5s..1h"}, d.idle_timeout);
}

}  // namespace apilb::config_detail
