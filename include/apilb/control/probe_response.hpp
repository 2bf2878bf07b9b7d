// Reading a health probe's HTTP response: the parser's limits and the
// verdict once the read ended. No socket, no TLS: the prober
// (apilb/prober.hpp) reads into the parser and calls judge_probe_read; the
// probe fuzz target (tests/fuzz/probe_response_fuzz.cpp) feeds it bytes.
#pragma once

#include <boost/beast/core/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <cstdint>

#include "apilb/core/config.hpp"
#include "apilb/core/health.hpp"

namespace apilb {

/// Header and body limits of a probe's response: a readyz?verbose answer is
/// a few KiB; anything much larger is not a health endpoint.
inline constexpr std::uint32_t probe_header_limit = 16 * 1024;
inline constexpr std::uint32_t probe_body_limit = 64 * 1024;

/// The parser a probe reads its response with.
using probe_response_parser = boost::beast::http::response_parser<boost::beast::http::string_body>;

/// Sets probe_header_limit and probe_body_limit on a fresh parser.
void limit_probe_response(probe_response_parser& parser);

/// The verdict on a response whose read ended with `ec` (a timeout or a TLS
/// error the prober words itself, before this): a malformed, cut or
/// oversized response is http_error, else judge_http_response. The detail
/// is one printable line.
check_result judge_probe_read(const boost::beast::error_code& ec, const probe_response_parser& parser,
                              const health_config& cfg);

}  // namespace apilb
