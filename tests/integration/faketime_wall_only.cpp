// Preloaded ahead of libfaketime into apilb by Resfault.WallClockSteps*, so
// that only the wall clock is faked, as a real clock step (settimeofday, NTP)
// moves only CLOCK_REALTIME.
//
// libfaketime 0.9.10 (Debian 12) rewrites every TFD_TIMER_ABSTIME time given
// to timerfd_settime as a faked CLOCK_REALTIME time ("only CLOCK_REALTIME is
// handled", src/libfaketime.c), whatever the timerfd's clock and whatever
// FAKETIME_DONT_FAKE_MONOTONIC says. Asio's reactor arms its CLOCK_MONOTONIC
// timerfd with TFD_TIMER_ABSTIME and 1 ns when its first timer is already
// due; at an offset of +1 h libfaketime passes -3600 s, the kernel answers
// EINVAL, Asio ignores it, and the timerfd keeps its old time, up to the
// reactor's 5 min cap: every timer of that io_context stalls. apilb makes
// only CLOCK_MONOTONIC timerfds, which no clock step moves, so here their
// times go to the kernel as given.

#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

/// timerfd_settime(2) as the kernel has it: neither the new time nor the old one rewritten.
extern "C" int timerfd_settime(int fd, int flags, const itimerspec* new_value, itimerspec* old_value) noexcept {
    return static_cast<int>(::syscall(SYS_timerfd_settime, fd, flags, new_value, old_value));
}
