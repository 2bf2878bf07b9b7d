// Fuzz target: the config loader as the product runs it. Bytes -> the YAML
// guard (a child process under the same limits as apilb's, so yaml-cpp
// 0.7's known endless loops are refused there, as in production, and never
// reported here) -> only if the guard lets them through, parse_config in
// this process (the coverage). A crash, a hang or a leak in our loader is a
// finding; so is an error message that spans lines or does not name the
// file, or a loaded config that breaks what the loader promises.
//
// Input: YAML. The text "@DIR@" is replaced by a scratch directory holding
// a matching certificate and key (cert.pem, key.pem, also a CA), so seeds
// reach the admin TLS section's PEM checks; everything after a line
// "#fuzz-pem" is written to @DIR@/fuzz.pem first, so the PEM bytes are
// fuzzed too.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "apilb/control/yaml_guard.hpp"
#include "apilb/core/config.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb/core/frr_conf.hpp"
#include "apilb/core/keepalived_conf.hpp"
#include "guard_hook.hpp"

namespace {

using namespace apilb;

const std::string source_name = "fuzz.yaml";
std::string scratch_dir;

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
    if (!out) {
        std::fprintf(stderr, "config_fuzz: cannot write %s\n", path.c_str());
        std::abort();
    }
}

/// A self-signed P-256 certificate and its key, as PEM files in `dir`.
void make_key_pair(const std::string& dir) {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* cert = X509_new();
    if (key == nullptr || cert == nullptr) std::abort();
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600L * 24 * 365 * 10);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("apilb-fuzz"), -1, -1,
                               0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    if (X509_sign(cert, key, EVP_sha256()) == 0) std::abort();
    auto pem = [](auto write) {
        BIO* bio = BIO_new(BIO_s_mem());
        write(bio);
        char* data = nullptr;
        const long n = BIO_get_mem_data(bio, &data);
        std::string out(data, static_cast<std::size_t>(n));
        BIO_free(bio);
        return out;
    };
    const std::string cert_pem = pem([&](BIO* b) { PEM_write_bio_X509(b, cert); });
    write_file(dir + "/cert.pem", cert_pem);
    write_file(dir + "/ca.pem", cert_pem);
    write_file(dir + "/key.pem",
               pem([&](BIO* b) { PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr); }));
    X509_free(cert);
    EVP_PKEY_free(key);
}

void replace_all(std::string& text, std::string_view from, const std::string& to) {
    for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
        text.replace(at, from.size(), to);
    }
}

void check(bool ok, const char* what, const std::string& detail) {
    if (ok) return;
    std::fprintf(stderr, "config_fuzz: %s: %s\n", what, detail.c_str());
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    fuzz::become_guard_child_or_check_guard(*argc, *argv, "config_fuzz");
    char dir[] = "/tmp/apilb-config-fuzz.XXXXXX";
    if (::mkdtemp(dir) == nullptr) std::abort();
    scratch_dir = dir;
    make_key_pair(scratch_dir);
    // The directory goes when the run ends, however it ends but SIGKILL.
    std::atexit([] {
        for (const char* f : {"/cert.pem", "/key.pem", "/ca.pem", "/fuzz.pem"}) ::unlink((scratch_dir + f).c_str());
        ::rmdir(scratch_dir.c_str());
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // read_config_file refuses larger files before the guard sees them.
    if (size > max_config_bytes) return 0;
    std::string text(reinterpret_cast<const char*>(data), size);
    if (const auto pem = text.find("\n#fuzz-pem"); pem != std::string::npos) {
        const auto eol = text.find('\n', pem + 1);
        write_file(scratch_dir + "/fuzz.pem", eol == std::string::npos ? "" : text.substr(eol + 1));
        text.resize(pem + 1);
    }
    replace_all(text, "@DIR@", scratch_dir);

    try {
        prove_yaml_parse_ends(source_name, text);
    } catch (const config_load_error& e) {
        // Refused by the guard, as apilb refuses it: yaml-cpp's own defect.
        check(e.errors().size() == 1 && e.errors()[0].file == source_name, "guard refusal", e.what());
        return 0;
    }
    std::shared_ptr<const config> cfg;
    try {
        cfg = parse_config(text, source_name);
    } catch (const config_load_error& e) {
        check(!e.errors().empty(), "config_load_error without an error", e.what());
        for (const auto& err : e.errors()) {
            const std::string line = err.to_string();
            check(err.file == source_name, "error does not name the file", line);
            check(!err.message.empty(), "error without a message", line);
            check(line.find_first_of("\r\n") == std::string::npos, "error spans lines", line);
        }
        return 0;
    }
    check(!cfg->listeners.empty() && !cfg->pools.empty(), "loaded without listeners or pools", text);
    check(cfg->workers > 0, "workers left unresolved", text);
    for (const auto& l : cfg->listeners) (void)cfg->pool(l.pool);  // throws if the reference is dangling
    for (const auto& p : cfg->pools) {
        check(!p.backends.empty(), "pool without backends", p.name);
        check(p.connect_attempts > 0, "connect_attempts left unresolved", p.name);
    }
    for (const auto& w : cfg->warnings) {
        check(w.to_string().find_first_of("\r\n") == std::string::npos, "warning spans lines", w.to_string());
    }
    // A loaded vrrp section always renders (tests/fuzz/keepalived_conf_fuzz.cpp checks what).
    if (cfg->vrrp) (void)render_keepalived_conf(*cfg, {.config_path = "/etc/apilb/apilb.yaml"});
    // A loaded bgp section renders too (tests/fuzz/frr_conf_fuzz.cpp checks
    // what); a password file is read by the caller, so peers with one are not rendered here.
    if (cfg->bgp && std::all_of(cfg->bgp->peers.begin(), cfg->bgp->peers.end(),
                                [](const auto& p) { return p.password_file.empty(); })) {
        (void)render_frr_conf(*cfg, {});
    }
    return 0;
}
