// Fuzz target: the kubeconfig parser as discovery runs it. Bytes -> the
// YAML guard (yaml-cpp 0.7's endless loops are refused by a child, as apilb
// refuses them, and never reported here) -> parse_kubeconfig in this
// process (the coverage). A crash, a hang, a leak or any exception but
// config_load_error is a finding; so is an error that does not name the
// kubeconfig or spans lines, or credentials that break what the parser
// promises (a PEM both inline and as a file, a certificate without its key
// or a key without its certificate, no credential at all).
//
// The kubeconfig sits in a scratch directory holding `ca.crt`, `client.pem`
// and `token`, so relative file names in the seeds reach the file reads.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "apilb/core/file_read.hpp"
#include "apilb/core/kubeconfig.hpp"
#include "guard_hook.hpp"

namespace {

using namespace apilb;

std::string scratch_dir;
std::string kubeconfig_path;

void check(bool ok, const char* what, const std::string& detail) {
    if (ok) return;
    std::fprintf(stderr, "kubeconfig_fuzz: %s: %s\n", what, detail.c_str());
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    fuzz::become_guard_child_or_check_guard(*argc, *argv, "kubeconfig_fuzz");
    char dir[] = "/tmp/apilb-kubeconfig-fuzz.XXXXXX";
    if (::mkdtemp(dir) == nullptr) std::abort();
    scratch_dir = dir;
    kubeconfig_path = scratch_dir + "/kubelet.conf";
    for (const char* f : {"/ca.crt", "/client.pem", "/token"}) {
        std::ofstream(scratch_dir + f) << "-----BEGIN CERTIFICATE-----\n";
    }
    // The directory goes when the run ends, however it ends but SIGKILL.
    std::atexit([] {
        for (const char* f : {"/ca.crt", "/client.pem", "/token"}) ::unlink((scratch_dir + f).c_str());
        ::rmdir(scratch_dir.c_str());
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // discovery_client reads at most this much of the file.
    if (size > max_kubeconfig_bytes) return 0;
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        prove_yaml_parse_ends(kubeconfig_path, text);
    } catch (const config_load_error&) {
        return 0;  // refused by the guard, as apilb refuses it: yaml-cpp's own defect
    }
    kube_credentials k;
    try {
        k = parse_kubeconfig(text, kubeconfig_path);
    } catch (const config_load_error& e) {
        check(!e.errors().empty(), "config_load_error without an error", e.what());
        for (const auto& err : e.errors()) {
            const std::string line = err.to_string();
            check(err.file == kubeconfig_path, "error does not name the kubeconfig", line);
            check(!err.message.empty(), "error without a message", line);
            check(line.find_first_of("\r\n") == std::string::npos, "error spans lines", line);
        }
        return 0;
    }
    check(k.ca_pem.empty() || k.ca_file.empty(), "the CA both inline and as a file", text);
    check(k.cert_pem.empty() || k.cert_file.empty(), "the certificate both inline and as a file", text);
    check(k.key_pem.empty() || k.key_file.empty(), "the key both inline and as a file", text);
    const bool cert = !k.cert_pem.empty() || !k.cert_file.empty();
    const bool key = !k.key_pem.empty() || !k.key_file.empty();
    check(cert == key, "a certificate without its key, or a key without its certificate", text);
    check(cert || !k.token.empty() || !k.token_file.empty(), "loaded without a credential", text);
    for (const std::string* f : {&k.ca_file, &k.cert_file, &k.key_file, &k.token_file}) {
        check(f->empty() || f->front() == '/', "a file name left relative", *f);
    }
    return 0;
}
