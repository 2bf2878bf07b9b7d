#include "standin_http.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cctype>
#include <charconv>
#include <memory>

namespace standin {

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// A malformed escape is kept as it is: the value then fails whatever check
// reads it, with the text the client sent.
std::string percent_decode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out += ' ';
        } else if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
            out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

X509* verified_peer(tls_stream& stream) {
    SSL* ssl = stream.native_handle();
    X509* cert = SSL_get0_peer_certificate(ssl);
    if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return nullptr;
    return cert;
}

}  // namespace

target::target(std::string_view t) {
    const auto q = t.find('?');
    path = t.substr(0, q);
    if (q == std::string_view::npos) return;
    auto rest = t.substr(q + 1);
    while (!rest.empty()) {
        const auto amp = rest.find('&');
        const auto part = rest.substr(0, amp);
        rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
        if (part.empty()) continue;
        const auto eq = part.find('=');
        if (eq == std::string_view::npos)
            query.emplace_back(percent_decode(part), std::string{});
        else
            query.emplace_back(percent_decode(part.substr(0, eq)), percent_decode(part.substr(eq + 1)));
    }
}

std::optional<std::string_view> target::param(std::string_view key) const {
    for (const auto& [k, v] : query)
        if (k == key) return std::string_view{v};
    return std::nullopt;
}

std::optional<std::uint64_t> parse_u64(std::string_view s) {
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
    return v;
}

std::string peer_subject(tls_stream& stream) {
    X509* cert = verified_peer(stream);
    if (cert == nullptr) return {};
    std::unique_ptr<BIO, decltype(&BIO_free)> bio{BIO_new(BIO_s_mem()), &BIO_free};
    if (!bio) return {};
    if (X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) < 0) return {};
    char* data = nullptr;
    const long len = BIO_get_mem_data(bio.get(), &data);
    return len > 0 ? std::string(data, static_cast<std::size_t>(len)) : std::string{};
}

std::string peer_common_name(tls_stream& stream) {
    X509* cert = verified_peer(stream);
    if (cert == nullptr) return {};
    char cn[256];
    const int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    return n > 0 ? std::string(cn, static_cast<std::size_t>(n)) : std::string{};
}

std::string peer_serial(tls_stream& stream) {
    X509* cert = verified_peer(stream);
    if (cert == nullptr) return {};
    BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), nullptr);
    if (bn == nullptr) return {};
    char* hex = BN_bn2hex(bn);
    std::string out = hex != nullptr ? hex : "";
    OPENSSL_free(hex);
    BN_free(bn);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

response make_response(http::status status, unsigned version, bool keep_alive, std::string body,
                       std::string_view content_type, const server_state& state) {
    response res{status, version};
    set_common_headers(res, state);
    res.set(http::field::content_type, content_type);
    res.set("X-Content-Type-Options", "nosniff");
    res.keep_alive(keep_alive);
    res.body() = std::move(body);
    res.prepare_payload();
    return res;
}

net::awaitable<bool> write_stream_header(tls_stream& stream, const request& req, const server_state& state) {
    http::response<http::empty_body> res{http::status::ok, req.version()};
    set_common_headers(res, state);
    res.set(http::field::content_type, "application/json");
    res.keep_alive(req.keep_alive());
    res.chunked(true);
    http::response_serializer<http::empty_body> sr{res};
    beast::get_lowest_layer(stream).expires_after(write_timeout);
    auto [ec, n] = co_await http::async_write_header(stream, sr, net::as_tuple(net::use_awaitable));
    co_return !ec;
}

net::awaitable<bool> write_chunk(tls_stream& stream, std::string_view data) {
    beast::get_lowest_layer(stream).expires_after(write_timeout);
    auto [ec, n] = co_await net::async_write(stream, http::make_chunk(net::buffer(data.data(), data.size())),
                                             net::as_tuple(net::use_awaitable));
    co_return !ec;
}

net::awaitable<bool> write_last_chunk(tls_stream& stream) {
    beast::get_lowest_layer(stream).expires_after(write_timeout);
    auto [ec, n] = co_await net::async_write(stream, http::make_chunk_last(), net::as_tuple(net::use_awaitable));
    co_return !ec;
}

}  // namespace standin
