// Fuzz target: the admin endpoint's handling of a request, from bytes. The
// bytes are read as admin_server reads a connection (Beast's parser with
// the server's header and body limits, requests one after another), and
// each request goes through decide_admin_request, the function the server
// itself calls. Asserted for every request: a state change (reload, drain,
// enable) is never let through without every credential the set-up asks
// for, nor with a foreign Origin; a GET route is only served to GET; the
// same request always gets the same decision.
//
// Input: byte 0 picks the set-up (bits 0-1: token only, client CA only,
// both, neither; bit 2: HTTPS; bit 3: a verified client certificate), byte 1
// the read chunk size, the rest is what the client sends.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "apilb/admin/admin_request.hpp"
#include "byte_stream.hpp"

namespace {

using namespace apilb;
namespace http = boost::beast::http;

const std::string fuzz_token = "0123456789abcdef-fuzz-token";

void check(bool ok, const char* what, const admin_request& req) {
    if (ok) return;
    std::fprintf(stderr, "admin_request_fuzz: %s: %s %s\n", what, std::string(req.method_string()).c_str(),
                 std::string(req.target()).c_str());
    std::abort();
}

admin_access access_for(std::uint8_t setup) {
    admin_access a;
    a.token_file = "/run/apilb/admin-token";
    a.tls = (setup & 4) != 0;
    const unsigned kind = setup & 3;
    if (kind == 0 || kind == 2) a.token = fuzz_token;
    if (kind == 1 || kind == 2) {
        a.tls = true;
        a.client_ca = true;
    }
    // As admin_server sets it when nothing authenticates a POST.
    if (a.token.empty() && !a.client_ca) a.post_disabled = "drain, enable and reload are disabled";
    a.host_names = {"localhost", "apilb.example", "*.lb.example"};
    return a;
}

bool same(const admin_decision& a, const admin_decision& b) {
    if (a.refusal.has_value() != b.refusal.has_value()) return false;
    if (a.refusal && (a.refusal->status != b.refusal->status || a.refusal->content_type != b.refusal->content_type ||
                      a.refusal->body != b.refusal->body)) {
        return false;
    }
    return a.route == b.route && a.auth_failure == b.auth_failure && a.pool == b.pool && a.backend == b.backend &&
           a.drain == b.drain && a.wait == b.wait;
}

void check_decision(const admin_request& req, const admin_access& access, bool verified) {
    const admin_decision d = decide_admin_request(req, access, verified);
    check(same(d, decide_admin_request(req, access, verified)), "a second call decided otherwise", req);
    std::string path(req.target());
    if (const auto q = path.find('?'); q != std::string::npos) path.resize(q);
    if (d.refusal) {
        const unsigned status = static_cast<unsigned>(d.refusal->status);
        check(status >= 400 && status < 500, "a refusal that is not 4xx", req);
        check(d.refusal->body.size() < 2048, "an unbounded refusal body", req);
        check(d.auth_failure.empty() || req.method() == http::verb::post, "an auth failure for a non-POST", req);
        return;
    }
    check(d.auth_failure.empty(), "an auth failure that was let through", req);
    if (d.route != admin_route::reload && d.route != admin_route::upgrade && d.route != admin_route::backend) {
        check(req.method() == http::verb::get, "a GET route served to another method", req);
        return;
    }
    // A state change: every credential the set-up asks for, exactly.
    check(req.method() == http::verb::post, "a state change by another method than POST", req);
    check(access.post_disabled.empty(), "a POST through while POSTs are disabled", req);
    check(!access.token.empty() || access.client_ca, "a POST through without any credential configured", req);
    check(!access.client_ca || verified, "a POST through without the client certificate", req);
    check(access.token.empty() || req[http::field::authorization] == "Bearer " + access.token,
          "a POST through without the bearer token", req);
    const auto origin = req[http::field::origin];
    check(origin.empty() || origin == (access.tls ? "https://" : "http://") + std::string(req[http::field::host]),
          "a cross-origin POST through", req);
    if (d.route == admin_route::reload) {
        check(path == "/api/v1/reload", "reload on another path", req);
    } else if (d.route == admin_route::upgrade) {
        check(path == "/api/v1/upgrade", "upgrade on another path", req);
    } else {
        check(d.pool.find('/') == std::string::npos && d.backend.find('/') == std::string::npos,
              "a backend path part holding a slash", req);
        check(path == "/api/v1/backends/" + d.pool + "/" + d.backend + (d.drain ? "/drain" : "/enable"),
              "a backend action that is not the path's", req);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const admin_access access = access_for(data[0]);
    const bool verified = (data[0] & 8) != 0 && access.client_ca;
    fuzz::byte_stream stream(std::string_view(reinterpret_cast<const char*>(data) + 2, size - 2), 1 + data[1] % 64);
    boost::beast::flat_buffer buffer;
    // As admin_server::serve_requests: requests one after another on one
    // connection until one fails to parse; bounded by the input's size.
    for (int n = 0; n < 64; ++n) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(admin_header_limit);
        parser.body_limit(admin_body_limit);
        boost::system::error_code ec;
        http::read(stream, buffer, parser, ec);
        if (ec) break;
        check_decision(parser.get(), access, verified);
    }
    return 0;
}
