#include "apilb/core/pem_check.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <vector>

#include "apilb/core/pem_passphrase.hpp"

namespace apilb::config_detail {
namespace {

struct bio_free {
    void operator()(BIO* b) const { BIO_free(b); }
};
struct x509_free {
    void operator()(X509* x) const { X509_free(x); }
};
struct pkey_free {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using bio_ptr = std::unique_ptr<BIO, bio_free>;
using x509_ptr = std::unique_ptr<X509, x509_free>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;

/// OpenSSL's last error as text, and the queue emptied (it is per thread).
std::string last_ssl_error() {
    unsigned long code = 0;
    unsigned long last = 0;
    while ((code = ERR_get_error()) != 0) last = code;
    if (last == 0) return "unknown error";
    const char* reason = ERR_reason_error_string(last);
    return reason != nullptr ? reason : "error " + std::to_string(last);
}

/// A read-only BIO over `pem`, which must outlive it.
bio_ptr memory_bio(const std::string& pem) {
    return bio_ptr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

/// Every certificate in the file; `problem` says why there is none or why
/// one failed to parse.
std::vector<x509_ptr> read_certificates(const std::string& path, const std::string& pem, std::string& problem) {
    std::vector<x509_ptr> certs;
    ERR_clear_error();
    bio_ptr bio = memory_bio(pem);
    if (!bio) {
        problem = "cannot read " + path + ": " + last_ssl_error();
        return certs;
    }
    while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs.emplace_back(x);
    // The loop ends at the end of the file ("no start line") or on a block
    // that does not parse; only the second is a problem.
    const unsigned long err = ERR_peek_last_error();
    if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
    } else if (err != 0) {
        problem = "a certificate in " + path + " does not parse: " + last_ssl_error();
        certs.clear();
        return certs;
    }
    if (certs.empty()) problem = path + " holds no PEM certificate (-----BEGIN CERTIFICATE-----)";
    return certs;
}

}  // namespace

key_pair_check check_key_pair(const std::string& cert_file, const std::string& cert_pem, const std::string& key_file,
                              const std::string& key_pem) {
    key_pair_check result;
    const auto certs = read_certificates(cert_file, cert_pem, result.cert_problem);

    ERR_clear_error();
    bio_ptr bio = memory_bio(key_pem);
    pkey_ptr key;
    if (!bio) {
        result.key_problem = "cannot read " + key_file + ": " + last_ssl_error();
    } else {
        key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
        if (!key) {
            const std::string why = last_ssl_error();
            result.key_problem = key_file + " holds no usable PEM private key (" + why +
                                 "); an encrypted key is not supported: apilb cannot ask for a passphrase";
        }
    }
    if (certs.empty() || !key) return result;

    X509* leaf = certs.front().get();
    if (X509_check_private_key(leaf, key.get()) != 1) {
        ERR_clear_error();
        result.key_problem = "the key in " + key_file + " does not match the certificate in " + cert_file +
                             " (the first certificate there must be the server's own, its intermediates after it)";
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
        result.cert_warning = "the certificate in " + cert_file + " has expired: clients will refuse it";
    } else if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        result.cert_warning = "the certificate in " + cert_file + " is not valid yet: clients will refuse it";
    }
    return result;
}

std::string ca_bundle_problem(const std::string& ca_file, const std::string& pem) {
    std::string problem;
    read_certificates(ca_file, pem, problem);
    return problem;
}

}  // namespace apilb::config_detail
