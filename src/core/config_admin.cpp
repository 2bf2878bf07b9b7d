// The top-level `admin` section: where the admin HTTP endpoint listens and
// what protects it: a bearer token for state-changing requests, HTTPS, and
// client certificates. Part of the loader (see loader.hpp).
#include "apilb/core/file_read.hpp"
#include "apilb/core/loader.hpp"
#include "apilb/core/pem_check.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace apilb::config_detail {
namespace {

constexpr std::array<std::string_view, 4> admin_keys{"address", "token_file", "tls", "host_names"};
constexpr std::array<std::string_view, 4> tls_keys{"cert_file", "key_file", "client_ca_file", "client_auth"};
constexpr std::array<choice<admin_client_auth>, 2> client_auth_choices{{
    {"changes", admin_client_auth::changes},
    {"all", admin_client_auth::all},
}};

bool is_loopback(const socket_address& a) { return a.is_v6 ? a.ip == "::1" : a.ip.rfind("127.", 0) == 0; }

}  // namespace

void loader::read_admin_tls(const field& f, admin_tls_config& t) {
    auto m = open_mapping(f, tls_keys, false);
    if (!m) return;
    const bool has_cert = require(*m, "cert_file");
    const bool has_key = require(*m, "key_file");
    std::string cert_pem;
    std::string key_pem;
    const bool cert_read = read_file_path(*m, "cert_file", max_pem_bytes, t.cert_file, &cert_pem);
    const bool key_read = read_file_path(*m, "key_file", max_pem_bytes, t.key_file, &key_pem);
    if (has_cert && has_key && cert_read && key_read) {
        // The files are read again when the server builds its TLS context
        // (and on every reload): this catches a wrong file before that.
        const key_pair_check check = check_key_pair(t.cert_file, cert_pem, t.key_file, key_pem);
        const field* cf = m->find("cert_file");
        const field* kf = m->find("key_file");
        if (!check.cert_problem.empty()) error(cf->mark, cf->path, check.cert_problem);
        if (!check.key_problem.empty()) error(kf->mark, kf->path, check.key_problem);
        if (!check.cert_warning.empty()) warning(cf->mark, cf->path, check.cert_warning);
    }
    std::string ca_pem;
    if (read_file_path(*m, "client_ca_file", max_pem_bytes, t.client_ca_file, &ca_pem) && !t.client_ca_file.empty()) {
        if (auto problem = ca_bundle_problem(t.client_ca_file, ca_pem); !problem.empty()) {
            const field* af = m->find("client_ca_file");
            error(af->mark, af->path, problem);
        }
    }
    if (const field* a = m->find("client_auth")) {
        read_choice(*m, "client_auth", client_auth_choices, t.client_auth);
        if (m->find("client_ca_file") == nullptr) {
            error(a->mark, a->path,
                  "client_auth needs client_ca_file: without a CA to verify them, apilb asks for no client "
                  "certificates");
        }
    }
}

void loader::read_admin_token_file(const mapping& m, std::string& out) {
    const field* f = m.find("token_file");
    if (f == nullptr) return;
    auto text = scalar(*f, "the path of a file");
    if (!text) return;
    if (text->empty() || text->front() != '/') {
        error(f->mark, f->path, "expected an absolute path, found " + quote(*text));
        return;
    }
    // A missing file is fine: apilb creates it (0600) at start. One that
    // exists is read by apilb's own user, which need not be who checks.
    struct stat st {};
    if (::stat(text->c_str(), &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            error(f->mark, f->path, quote(*text) + " is not a regular file");
            return;
        }
        if (static_cast<std::size_t>(st.st_size) > max_token_bytes) {
            error(f->mark, f->path, quote(*text) + " is larger than " + describe_size(max_token_bytes));
            return;
        }
    } else if (errno == ENOENT) {
        // apilb creates the file, and its directory if that is missing, at
        // start; only a missing grandparent is sure to fail.
        const std::filesystem::path dir = std::filesystem::path(*text).parent_path();
        const std::string up = dir.parent_path().string();
        if (::stat(dir.c_str(), &st) != 0 && (::stat(up.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))) {
            warning(f->mark, f->path,
                    quote(*text) + " does not exist and neither does " + quote(up) +
                        ": apilb cannot create the token, and refuses drain, enable and reload");
        }
    }
    out = *text;
}

void loader::read_admin_host_names(const field& f, std::vector<std::string>& out) {
    auto items = open_sequence(f, "host_names");
    if (!items) return;
    for (const auto& item : *items) {
        auto text = scalar(item, "a DNS name");
        if (!text) continue;
        std::string name = *text;
        std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
        const std::string_view rest = std::string_view(name).substr(name.rfind("*.", 0) == 0 ? 2 : 0);
        const bool ok = !rest.empty() && rest.size() <= 253 && rest.front() != '.' && rest.back() != '.' &&
                        std::all_of(rest.begin(), rest.end(), [](char c) {
                            return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
                        });
        if (!ok) {
            error(item.mark, item.path,
                  "expected a DNS name such as apilb.example.com or *.example.com (no port, no scheme), found " +
                      quote(*text));
            continue;
        }
        out.push_back(std::move(name));
    }
}

void loader::read_admin(const field& f, admin_config& a) {
    auto m = open_mapping(f, admin_keys, true);
    if (!m) return;
    a.address = {.ip = "127.0.0.1", .port = 6445, .is_v6 = false};
    const site address = read_address(*m, "address", false, a.address);
    read_admin_token_file(*m, a.token_file);
    if (const field* hf = m->find("host_names")) read_admin_host_names(*hf, a.host_names);
    const field* tf = m->find("tls");
    if (tf != nullptr) read_admin_tls(*tf, a.tls.emplace());
    const bool client_certs = tf != nullptr && tf->node.IsMap() && tf->node["client_ca_file"];
    // Anyone who can reach the endpoint could drain every backend or reload:
    // off the loopback that needs a credential.
    const bool off_loopback = (address.ok || m->find("address") == nullptr) && !is_loopback(a.address);
    const field* af = m->find("address");
    if (off_loopback && a.token_file.empty() && !client_certs) {
        error(af != nullptr ? af->mark : m->mark, af != nullptr ? af->path : m->path,
              "the admin endpoint on " + quote(a.address.to_string()) +
                  " is reachable from other hosts, but nothing protects drain, enable and reload; set "
                  "admin.token_file (a bearer token), admin.tls.client_ca_file (client certificates), or bind a "
                  "loopback address such as 127.0.0.1");
    } else if (off_loopback && tf == nullptr) {
        warning(af != nullptr ? af->mark : m->mark, af != nullptr ? af->path : m->path,
                "the admin endpoint on " + quote(a.address.to_string()) +
                    " speaks plain HTTP: the bearer token crosses the network in clear text; set admin.tls");
    }
}

}  // namespace apilb::config_detail
