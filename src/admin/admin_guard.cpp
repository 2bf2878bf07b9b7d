#include "apilb/admin/admin_guard.hpp"

#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "apilb/core/file_read.hpp"

#include "apilb/admin/admin_server.hpp"

namespace apilb {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

/// How /proc/net/tcp prints an address: each 32-bit word of the address in
/// host byte order as %08X, then the port as %04X.
std::string proc_net_address(const asio::ip::address& a, unsigned short port) {
    std::string out;
    auto words = [&](const unsigned char* bytes, std::size_t n) {
        for (std::size_t i = 0; i < n; i += 4) {
            std::uint32_t w = 0;
            std::memcpy(&w, bytes + i, 4);
            out += fmt::format("{:08X}", w);
        }
    };
    if (a.is_v4()) {
        const auto b = a.to_v4().to_bytes();
        words(b.data(), b.size());
    } else {
        const auto b = a.to_v6().to_bytes();
        words(b.data(), b.size());
    }
    return out + fmt::format(":{:04X}", port);
}

/// A v4-mapped v6 address (a v4 client of a dual-stack socket) as v4: the
/// client's own socket is listed in /proc/net/tcp, not tcp6.
asio::ip::address unmapped(const asio::ip::address& a) {
    if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    return a;
}

}  // namespace

admin_token ensure_admin_token(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 || errno != ENOENT) {
        std::optional<std::string> token = read_admin_token(path);
        if (!token) {
            throw std::runtime_error("admin.token_file: " + path + " " +
                                     read_regular_file(path, max_token_bytes).error);
        }
        if (token->empty()) throw std::runtime_error("admin.token_file: " + path + " is empty");
        return {.token = std::move(*token), .created = false, .problem = {}};
    }
    unsigned char random[32];
    if (RAND_bytes(random, sizeof random) != 1) {
        return {.token = {}, .created = false, .problem = "no random bytes for a new token in " + path};
    }
    std::string token;
    for (const unsigned char c : random) token += fmt::format("{:02x}", c);
    // O_EXCL and O_NOFOLLOW: never write through a file or link someone else
    // put there; 0600 whatever the umask: only apilb's user (and root) read it.
    // Its directory too, if missing (/run/apilb on a node where nothing made
    // it yet, e.g. outside systemd's RuntimeDirectory): one level, 0700.
    const std::string dir = std::filesystem::path(path).parent_path().string();
    if (!dir.empty() && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        return {.token = {},
                .created = false,
                .problem = fmt::format("cannot create the token file's directory {}: {}", dir, std::strerror(errno))};
    }
    // Written whole under a name of its own, then linked to `path`: a reader
    // (the CLI, another apilb) never sees an empty or partial token, and a
    // full or failing disk leaves nothing at `path`. link(2), unlike
    // rename(2), never replaces a token someone created meanwhile.
    const std::string tmp = fmt::format("{}.{}.tmp", path, ::getpid());
    ::unlink(tmp.c_str());  // left by an earlier process of the same pid
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        return {.token = {},
                .created = false,
                .problem = fmt::format("cannot create the token file {}: {}", path, std::strerror(errno))};
    }
    const std::string text = token + "\n";
    const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
    int saved = errno;
    ::close(fd);
    if (!written) {
        ::unlink(tmp.c_str());
        return {.token = {},
                .created = false,
                .problem = fmt::format("cannot write the token file {}: {}", path, std::strerror(saved))};
    }
    const bool linked = ::link(tmp.c_str(), path.c_str()) == 0;
    saved = errno;
    ::unlink(tmp.c_str());
    if (!linked) {
        if (saved == EEXIST) return ensure_admin_token(path);  // created meanwhile: read that one
        return {.token = {},
                .created = false,
                .problem = fmt::format("cannot create the token file {}: {}", path, std::strerror(saved))};
    }
    return {.token = std::move(token), .created = true, .problem = {}};
}

std::vector<std::string> certificate_dns_names(ssl_ctx_st* ctx) {
    std::vector<std::string> names;
    X509* cert = ctx != nullptr ? SSL_CTX_get0_certificate(ctx) : nullptr;
    if (cert == nullptr) return names;
    auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    if (sans == nullptr) return names;
    for (int i = 0; i < sk_GENERAL_NAME_num(sans) && names.size() < 256; ++i) {
        const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
        if (n->type != GEN_DNS) continue;
        const auto* data = reinterpret_cast<const char*>(ASN1_STRING_get0_data(n->d.dNSName));
        names.push_back(lower(std::string_view(data, static_cast<std::size_t>(ASN1_STRING_length(n->d.dNSName)))));
    }
    GENERAL_NAMES_free(sans);
    return names;
}

std::optional<unsigned> loopback_peer_uid(const tcp::endpoint& peer, const tcp::endpoint& local) {
    const asio::ip::address pa = unmapped(peer.address());
    const asio::ip::address la = unmapped(local.address());
    if (!pa.is_loopback() || pa.is_v4() != la.is_v4()) return std::nullopt;
    // The client's socket: its local address is our peer, its remote ours.
    const std::string want_local = proc_net_address(pa, peer.port());
    const std::string want_remote = proc_net_address(la, local.port());
    // /proc/self/net: /proc/net is hidden under systemd's ProcSubset=pid.
    std::ifstream in(pa.is_v4() ? "/proc/self/net/tcp" : "/proc/self/net/tcp6");
    std::string line;
    // Bounded: a node with every client connected lists some 10^5 sockets.
    for (int n = 0; n < 200000 && std::getline(in, line); ++n) {
        char sl[16], loc[64], rem[64], st[8], queues[32], timer[32], retr[16];
        unsigned uid = 0;
        if (std::sscanf(line.c_str(), "%15s %63s %63s %7s %31s %31s %15s %u", sl, loc, rem, st, queues, timer, retr,
                        &uid) != 8) {
            continue;
        }
        if (want_local == loc && want_remote == rem) return uid;
    }
    return std::nullopt;
}

}  // namespace apilb
