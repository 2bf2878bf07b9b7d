#include "apilb/control/probe_response.hpp"

#include <boost/beast/http/error.hpp>

#include <fmt/format.h>

namespace apilb {

namespace http = boost::beast::http;

void limit_probe_response(probe_response_parser& parser) {
    parser.header_limit(probe_header_limit);
    parser.body_limit(probe_body_limit);
}

check_result judge_probe_read(const boost::beast::error_code& ec, const probe_response_parser& parser,
                              const health_config& cfg) {
    if (ec == http::error::body_limit) {
        return {check_failure::http_error, fmt::format("the response body is larger than {} bytes", probe_body_limit)};
    }
    if (ec == http::error::header_limit) {
        return {check_failure::http_error,
                fmt::format("the response header is larger than {} bytes", probe_header_limit)};
    }
    if (ec) return {check_failure::http_error, "reading the response to GET " + cfg.path + ": " + ec.message()};
    const auto& res = parser.get();
    return judge_http_response(res.result_int(), std::string_view(res.reason().data(), res.reason().size()), res.body(),
                               cfg);
}

}  // namespace apilb
