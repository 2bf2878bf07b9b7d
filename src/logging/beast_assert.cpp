// BOOST_ASSERT's handler for every layer from logging up (BOOST_ENABLE_ASSERT_HANDLER,
// src/meson.build): every assertion aborts, as assert() does, except one
// that is wrong in Boost 1.81. Beast's HTTP parser asserts `n >= 5` when a
// chunked body's last chunk ("0\r\n") arrived in one read and the next
// byte alone in another; the code after it handles that input correctly
// (returns need_more). Upstream fixed the assertion (boostorg/beast pull
// request 2861, Boost 1.86). Without this, any client of the admin
// endpoint, before any credential is checked, or an apiserver answering a
// probe, could abort apilb by splitting a chunked body so (found by the
// admin_request fuzz target).
#include <boost/version.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace boost {

namespace {

bool is_beast_1_81_chunk_assertion(const char* expr, const char* file) {
#if BOOST_VERSION < 108600
    const char* suffix = "boost/beast/http/impl/basic_parser.ipp";
    const std::size_t n = std::strlen(file), s = std::strlen(suffix);
    return std::strcmp(expr, "n >= 5") == 0 && n >= s && std::strcmp(file + n - s, suffix) == 0;
#else
    (void)expr;
    (void)file;
    return false;
#endif
}

}  // namespace

/// Called by a failed BOOST_ASSERT.
void assertion_failed(char const* expr, char const* function, char const* file, long line) {
    if (is_beast_1_81_chunk_assertion(expr, file)) return;
    std::fprintf(stderr, "%s:%ld: %s: Assertion `%s' failed.\n", file, line, function, expr);
    std::abort();
}

/// Called by a failed BOOST_ASSERT_MSG.
void assertion_failed_msg(char const* expr, char const* msg, char const* function, char const* file, long line) {
    std::fprintf(stderr, "%s:%ld: %s: Assertion `%s' failed: %s.\n", file, line, function, expr, msg);
    std::abort();
}

}  // namespace boost
