// Fuzz target: a health probe's handling of the apiserver's answer, from
// bytes. They are read as the prober reads its connection (Beast's parser
// with the prober's limits, limit_probe_response), then judged by
// judge_probe_read, the function the prober calls. Asserted: a pass only for
// a complete response with the expected status and body text within the
// limits; 401/403 are auth_failed, never down; the detail, which goes into
// logs and the status page, is one bounded printable line; the failing
// /readyz?verbose checks are plausible names; the same bytes always give
// the same verdict.
//
// Input: byte 0 picks the health section (bit 0: expect_status 204 instead
// of 200; bit 1: expect_body "ok"), byte 1 the read chunk size, the rest is
// what the apiserver sends.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "apilb/control/probe_response.hpp"
#include "byte_stream.hpp"

namespace {

using namespace apilb;
namespace http = boost::beast::http;

void check(bool ok, const char* what, const check_result& r) {
    if (ok) return;
    std::fprintf(stderr, "probe_response_fuzz: %s: %s\n", what, r.describe().c_str());
    std::abort();
}

bool printable_line(std::string_view text) {
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) return false;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    health_config cfg;
    cfg.type = health_check_type::https;
    if ((data[0] & 1) != 0) cfg.expect_status = 204;
    if ((data[0] & 2) != 0) cfg.expect_body = "ok";
    fuzz::byte_stream stream(std::string_view(reinterpret_cast<const char*>(data) + 2, size - 2), 1 + data[1] % 64);
    boost::beast::flat_buffer buffer;
    probe_response_parser parser;
    limit_probe_response(parser);
    boost::system::error_code ec;
    http::read(stream, buffer, parser, ec);

    const check_result r = judge_probe_read(ec, parser, cfg);
    const check_result again = judge_probe_read(ec, parser, cfg);
    check(r.failure == again.failure && r.detail == again.detail, "a second call judged otherwise", r);
    check(printable_line(r.detail), "a detail with a control character", r);
    check(r.detail.size() < 8192, "an unbounded detail", r);
    switch (r.failure) {
    case check_failure::none:
    case check_failure::http_error:
    case check_failure::http_status:
    case check_failure::auth_failed:
    case check_failure::body_mismatch: break;
    default: check(false, "a failure layer a response cannot have", r);
    }
    if (ec) {
        check(r.failure == check_failure::http_error, "a failed read not judged http_error", r);
        return 0;
    }
    const auto& res = parser.get();
    check(parser.is_done(), "judged before the response was complete", r);
    check(res.body().size() <= probe_body_limit, "a body over the limit", r);
    const unsigned status = res.result_int();
    if (status == 401 || status == 403) check(r.failure == check_failure::auth_failed, "401/403 not auth_failed", r);
    if (r.passed()) {
        check(status == cfg.expect_status, "passed with another status", r);
        check(!cfg.expect_body || res.body().find(*cfg.expect_body) != std::string::npos,
              "passed without the expected body", r);
    }
    const auto names = failing_readyz_checks(res.body());
    check(names.size() <= 32, "more than 32 failing checks", r);
    for (const auto& n : names)
        check(!n.empty() && n.size() <= 128 && printable_line(n), "an implausible check name", r);
    return 0;
}
