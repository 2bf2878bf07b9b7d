#include "apilb/core/kubeconfig.hpp"

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include <vector>

#include "apilb/core/file_read.hpp"

namespace apilb {
namespace {

/// `node[key]` when node is a mapping that has it, else an undefined node.
/// yaml-cpp throws when a missing key's result is asked anything but
/// IsDefined; this never does.
YAML::Node get(const YAML::Node& node, const char* key) {
    if (!node.IsDefined() || !node.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node v = node[key];
    return v.IsDefined() ? v : YAML::Node(YAML::NodeType::Undefined);
}

/// Collects the problems of one kubeconfig, each with its place.
struct checker {
    std::string path;
    std::vector<config_error> errors;

    void error(const YAML::Node& at, std::string key, std::string message) {
        // A kubeconfig's names and paths are quoted raw: keep each error one line.
        config_error e{.file = path,
                       .line = 0,
                       .column = 0,
                       .key_path = single_line(std::move(key)),
                       .message = single_line(std::move(message))};
        if (at.IsDefined() && !at.Mark().is_null()) {
            e.line = at.Mark().line + 1;
            e.column = at.Mark().column + 1;
        }
        errors.push_back(std::move(e));
    }

    /// A scalar under `node[key]`, "" when absent.
    std::string text(const YAML::Node& node, const char* key, const std::string& where) {
        const YAML::Node v = get(node, key);
        if (!v.IsDefined() || v.IsNull()) return {};
        if (!v.IsScalar()) {
            error(v, where + "." + key, "expected a string");
            return {};
        }
        return v.Scalar();
    }

    /// The item of `list` (clusters, users, contexts) whose name is `name`,
    /// and its index for messages.
    std::pair<YAML::Node, std::size_t> find(const YAML::Node& top, const char* list, const std::string& name) {
        const YAML::Node items = get(top, list);
        if (items.IsDefined() && items.IsSequence()) {
            for (std::size_t i = 0; i < items.size(); ++i) {
                const YAML::Node n = get(items[i], "name");
                if (n.IsDefined() && n.IsScalar() && n.Scalar() == name) {
                    return {items[i], i};
                }
            }
        }
        error(top, list, "no entry named \"" + name + "\"");
        return {YAML::Node(), 0};
    }

    /// `*-data`: base64 of a PEM.
    std::string decode(const YAML::Node& node, const char* key, const std::string& where) {
        const std::string b64 = text(node, key, where);
        if (b64.empty()) return {};
        std::string out(b64.size() / 4 * 3 + 3, '\0');
        const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                      reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
        // EVP_DecodeBlock takes '=' anywhere, as zero bits, and counts it in
        // the length: allow it only as the last one or two characters, so
        // that what is taken off below is padding and never more than n.
        const std::size_t first_pad = b64.find('=');
        const std::size_t pad = first_pad == std::string::npos ? 0 : b64.size() - first_pad;
        if (n < 0 || b64.size() % 4 != 0 || pad > 2 || b64.find_first_not_of('=', first_pad) != std::string::npos) {
            error(get(node, key), where + "." + key, "not base64");
            return {};
        }
        out.resize(static_cast<std::size_t>(n) - pad);
        return out;
    }

    /// A file the kubeconfig names, relative to the kubeconfig's directory.
    std::string file(const YAML::Node& node, const char* key, const std::string& where, std::size_t max) {
        std::string p = text(node, key, where);
        if (p.empty()) return {};
        if (p.front() != '/') {
            const auto slash = path.rfind('/');
            p = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + p;
        }
        if (file_contents f = read_regular_file(p, max); !f)
            error(get(node, key), where + "." + key, p + " " + f.error);
        return p;
    }
};

}  // namespace

namespace {

kube_credentials parse(const std::string& text, const std::string& path) {
    checker c{path, {}};
    kube_credentials k;
    YAML::Node top;
    try {
        top = YAML::Load(text);
    } catch (const YAML::Exception& e) {
        c.errors.push_back({.file = path,
                            .line = e.mark.is_null() ? 0 : e.mark.line + 1,
                            .column = e.mark.is_null() ? 0 : e.mark.column + 1,
                            .key_path = {},
                            .message = single_line("YAML syntax error: " + e.msg)});
        throw config_load_error(c.errors);
    }
    if (!top.IsMap()) {
        c.error(top, {}, "expected a kubeconfig (a mapping with clusters, users, contexts)");
        throw config_load_error(c.errors);
    }
    const std::string current = c.text(top, "current-context", "");
    if (current.empty()) {
        c.error(top, "current-context", "no current-context; expected the name of one of the contexts");
        throw config_load_error(c.errors);
    }
    auto [ctx, ci] = c.find(top, "contexts", current);
    if (!c.errors.empty()) throw config_load_error(c.errors);
    const std::string cwhere = "contexts[" + std::to_string(ci) + "].context";
    const std::string cluster_name = c.text(get(ctx, "context"), "cluster", cwhere);
    const std::string user_name = c.text(get(ctx, "context"), "user", cwhere);
    auto [cluster, cli] = c.find(top, "clusters", cluster_name);
    auto [user, ui] = c.find(top, "users", user_name);
    if (!c.errors.empty()) throw config_load_error(c.errors);

    const std::string cl = "clusters[" + std::to_string(cli) + "].cluster";
    const YAML::Node cn = get(cluster, "cluster");
    k.server = c.text(cn, "server", cl);
    k.ca_pem = c.decode(cn, "certificate-authority-data", cl);
    if (k.ca_pem.empty()) k.ca_file = c.file(cn, "certificate-authority", cl, max_pem_bytes);
    k.insecure_skip_verify = c.text(cn, "insecure-skip-tls-verify", cl) == "true";

    const std::string us = "users[" + std::to_string(ui) + "].user";
    const YAML::Node un = get(user, "user");
    k.cert_pem = c.decode(un, "client-certificate-data", us);
    if (k.cert_pem.empty()) k.cert_file = c.file(un, "client-certificate", us, max_pem_bytes);
    k.key_pem = c.decode(un, "client-key-data", us);
    if (k.key_pem.empty()) k.key_file = c.file(un, "client-key", us, max_pem_bytes);
    k.token = c.text(un, "token", us);
    if (k.token.empty()) k.token_file = c.file(un, "tokenFile", us, max_token_bytes);
    const bool has_cert = !k.cert_pem.empty() || !k.cert_file.empty();
    const bool has_key = !k.key_pem.empty() || !k.key_file.empty();
    if (has_cert != has_key) {
        c.error(un, us, "a client certificate needs its key and a key its certificate");
    } else if (!has_cert && k.token.empty() && k.token_file.empty()) {
        // exec and auth-provider plugins would run programs on the control thread.
        c.error(un, us,
                "no credentials apilb can use; expected client-certificate(-data) and client-key(-data), or "
                "token or tokenFile (exec and auth-provider plugins are not run)");
    }
    if (!c.errors.empty()) throw config_load_error(c.errors);
    return k;
}

}  // namespace

kube_credentials parse_kubeconfig(const std::string& text, const std::string& path) {
    try {
        return parse(text, path);
    } catch (const YAML::Exception& e) {
        // A shape get() does not foresee: still an error about the file, never a crash.
        throw config_load_error({{.file = path, .line = 0, .column = 0, .key_path = {}, .message = e.what()}});
    }
}

}  // namespace apilb
