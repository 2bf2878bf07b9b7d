// Which of apilb's threads is running, so that a function that belongs to one
// thread can say so in code and not only in a comment (Envoy's
// ASSERT_IS_MAIN_OR_TEST_THREAD). Each thread apilb starts names its role
// first thing; APILB_ASSERT_ROLE aborts, naming the function and the caller's
// role, when another apilb thread calls. A thread apilb did not start (a
// test's own) has no role and passes every check, so unit tests may drive
// control and worker code from one thread. docs/reliability.md, "Thread roles".
#pragma once

#include <cstdint>

namespace apilb {

/// The job of a thread apilb started; `none` for every other thread.
enum class thread_role : std::uint8_t { none, control, worker, log_writer };

/// "control", "worker", "log writer", "none".
const char* to_string(thread_role role) noexcept;

/// Names the calling thread's role (and, for a worker, its index) for the
/// checks below. Called once, first thing, by the thread that takes the role.
void set_thread_role(thread_role role, std::uint32_t index = 0) noexcept;

namespace detail {
/// The calling thread's role: trivially initialised, so reading it is one
/// thread-local load (no wrapper call).
extern constinit thread_local thread_role current_role;
/// Writes "apilb: <function> (<file>:<line>) must run on the <wanted> thread;
/// called on <actual>" to stderr and aborts.
[[noreturn]] void wrong_thread_role(thread_role wanted, const char* function, const char* file, int line) noexcept;
}  // namespace detail

/// The calling thread's role (none if it never named one).
inline thread_role current_thread_role() noexcept { return detail::current_role; }

}  // namespace apilb

/// Aborts unless the calling thread has role `role` (an enumerator of
/// apilb::thread_role: control, worker, log_writer) or none. On wherever
/// assert() is (not with NDEBUG): the shipped .deb (buildtype plain) and the
/// default debugoptimized build check the control plane's functions.
#ifdef NDEBUG
#define APILB_ASSERT_ROLE(role) static_cast<void>(0)
#else
#define APILB_ASSERT_ROLE(role)                                          \
    (::apilb::detail::current_role == ::apilb::thread_role::role ||      \
             ::apilb::detail::current_role == ::apilb::thread_role::none \
         ? static_cast<void>(0)                                          \
         : ::apilb::detail::wrong_thread_role(::apilb::thread_role::role, __PRETTY_FUNCTION__, __FILE__, __LINE__))
#endif

/// APILB_ASSERT_ROLE for the data path (functions a worker runs per session
/// or per operation): checked only where the build exists to find bugs, an
/// unoptimised (debug) or ASan/TSan build; free in every optimised one. The
/// compiler's own macros decide, so no build option changes every object.
#if !defined(NDEBUG) && (!defined(__OPTIMIZE__) || defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__))
#define APILB_DATA_PATH_CHECKS 1
#endif
#ifdef APILB_DATA_PATH_CHECKS
#define APILB_ASSERT_DATA_PATH_ROLE(role) APILB_ASSERT_ROLE(role)
#else
#define APILB_ASSERT_DATA_PATH_ROLE(role) static_cast<void>(0)
#endif
