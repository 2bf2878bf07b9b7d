#include "apilb/control/tls_files.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

#include <fmt/format.h>

#include <memory>
#include <stdexcept>

#include "apilb/core/file_read.hpp"

namespace apilb {
namespace {

struct bio_free {
    void operator()(BIO* b) const { BIO_free(b); }
};
using bio_ptr = std::unique_ptr<BIO, bio_free>;

/// The file's bytes; throws naming `what` and the file if it is not a
/// regular file within the limit.
std::string read_pem(const std::string& what, const std::string& path) {
    file_contents file = read_regular_file(path, max_pem_bytes);
    if (!file) throw std::runtime_error(fmt::format("{}: {} {}", what, path, file.error));
    return std::move(file.bytes);
}

[[noreturn]] void fail(const std::string& what, const std::string& path) {
    throw std::runtime_error(fmt::format("{}: cannot load {}: {}", what, path, ssl_errors()));
}

/// A read-only BIO over `pem`, which must outlive it.
bio_ptr memory_bio(const std::string& pem) {
    return bio_ptr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

/// True if the last error is only the end of the PEM blocks (and clears it).
bool at_end_of_pem() {
    const unsigned long err = ERR_peek_last_error();
    if (err == 0) return true;
    if (ERR_GET_LIB(err) != ERR_LIB_PEM || ERR_GET_REASON(err) != PEM_R_NO_START_LINE) return false;
    ERR_clear_error();
    return true;
}

}  // namespace

std::string ssl_errors() {
    std::string text;
    while (const unsigned long code = ERR_get_error()) {
        if (!text.empty()) text += "; ";
        const char* reason = ERR_reason_error_string(code);
        text += reason != nullptr ? reason : "error " + std::to_string(code);
    }
    return text.empty() ? "unknown error" : text;
}

void load_ca_file(SSL_CTX* ctx, const std::string& what, const std::string& path, bool request_names) {
    load_ca_pem(ctx, what, path, read_pem(what, path), request_names);
}

void load_ca_pem(SSL_CTX* ctx, const std::string& what, const std::string& path, const std::string& pem,
                 bool request_names) {
    ERR_clear_error();
    bio_ptr bio = memory_bio(pem);
    if (!bio) fail(what, path);
    STACK_OF(X509_INFO)* infos = PEM_X509_INFO_read_bio(bio.get(), nullptr, nullptr, nullptr);
    if (infos == nullptr) fail(what, path);
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    int certs = 0;
    bool ok = true;
    for (int i = 0; i < sk_X509_INFO_num(infos) && ok; ++i) {
        const X509_INFO* info = sk_X509_INFO_value(infos, i);
        if (info->x509 != nullptr) {
            ok = X509_STORE_add_cert(store, info->x509) == 1 &&
                 (!request_names || SSL_CTX_add_client_CA(ctx, info->x509) == 1);
            ++certs;
        }
        if (ok && info->crl != nullptr) ok = X509_STORE_add_crl(store, info->crl) == 1;
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    if (!ok) fail(what, path);
    if (certs == 0) {
        throw std::runtime_error(
            fmt::format("{}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", what, path));
    }
}

void load_certificate_chain_file(SSL_CTX* ctx, const std::string& what, const std::string& path) {
    load_certificate_chain_pem(ctx, what, path, read_pem(what, path));
}

void load_certificate_chain_pem(SSL_CTX* ctx, const std::string& what, const std::string& path,
                                const std::string& pem) {
    ERR_clear_error();
    bio_ptr bio = memory_bio(pem);
    if (!bio) fail(what, path);
    pem_password_cb* cb = SSL_CTX_get_default_passwd_cb(ctx);
    void* userdata = SSL_CTX_get_default_passwd_cb_userdata(ctx);
    // As SSL_CTX_use_certificate_chain_file: the leaf with its trust
    // settings (the _AUX form), then every intermediate.
    X509* leaf = PEM_read_bio_X509_AUX(bio.get(), nullptr, cb, userdata);
    if (leaf == nullptr) fail(what, path);
    const int used = SSL_CTX_use_certificate(ctx, leaf);
    X509_free(leaf);
    if (used != 1 || SSL_CTX_clear_chain_certs(ctx) != 1) fail(what, path);
    while (X509* ca = PEM_read_bio_X509(bio.get(), nullptr, cb, userdata)) {
        if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
            X509_free(ca);
            fail(what, path);
        }
    }
    if (!at_end_of_pem()) fail(what, path);
}

void load_private_key_file(SSL_CTX* ctx, const std::string& what, const std::string& path) {
    load_private_key_pem(ctx, what, path, read_pem(what, path));
}

void load_private_key_pem(SSL_CTX* ctx, const std::string& what, const std::string& path, const std::string& pem) {
    ERR_clear_error();
    bio_ptr bio = memory_bio(pem);
    if (!bio) fail(what, path);
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, SSL_CTX_get_default_passwd_cb(ctx),
                                            SSL_CTX_get_default_passwd_cb_userdata(ctx));
    if (key == nullptr) fail(what, path);
    const int used = SSL_CTX_use_PrivateKey(ctx, key);
    EVP_PKEY_free(key);
    if (used != 1) fail(what, path);
}

void set_client_defaults(SSL_CTX* ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_ALL | SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1);
    SSL_CTX_set_default_passwd_cb(ctx, [](char*, int, int, void*) { return -1; });
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
}

bool set_server_name(SSL* ssl, const std::string& name, bool verify) {
    unsigned char buf[16];
    const bool ip = ::inet_pton(AF_INET, name.c_str(), buf) == 1 || ::inet_pton(AF_INET6, name.c_str(), buf) == 1;
    if (!ip) SSL_set_tlsext_host_name(ssl, name.c_str());
    if (verify) {
        X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
        if (ip) {
            X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
        } else {
            X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
        }
    }
    return ip;
}

}  // namespace apilb
