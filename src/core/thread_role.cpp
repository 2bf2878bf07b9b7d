#include "apilb/core/thread_role.hpp"

#include <cstdio>
#include <cstdlib>

namespace apilb {

namespace detail {
constinit thread_local thread_role current_role = thread_role::none;
}  // namespace detail

namespace {
/// A worker's index, only for the message when a check fails.
constinit thread_local std::uint32_t current_index = 0;
}  // namespace

const char* to_string(thread_role role) noexcept {
    switch (role) {
    case thread_role::none: return "none";
    case thread_role::control: return "control";
    case thread_role::worker: return "worker";
    case thread_role::log_writer: return "log writer";
    }
    return "?";
}

void set_thread_role(thread_role role, std::uint32_t index) noexcept {
    detail::current_role = role;
    current_index = index;
}

namespace detail {

void wrong_thread_role(thread_role wanted, const char* function, const char* file, int line) noexcept {
    // stderr, not the log: the log sink is asynchronous and abort() would
    // lose the line; systemd keeps stderr in the journal.
    if (current_role == thread_role::worker) {
        std::fprintf(stderr, "apilb: %s (%s:%d) must run on the %s thread; called on worker %u\n", function, file, line,
                     to_string(wanted), current_index);
    } else {
        std::fprintf(stderr, "apilb: %s (%s:%d) must run on the %s thread; called on the %s thread\n", function, file,
                     line, to_string(wanted), to_string(current_role));
    }
    std::fflush(stderr);
    std::abort();
}

}  // namespace detail

}  // namespace apilb
