#include "apilb/dataplane/poll_timer.hpp"

#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <system_error>
#include <utility>

namespace apilb {

using boost::system::error_code;

// steady_clock is CLOCK_MONOTONIC on Linux (libstdc++), the timerfd's clock.
poll_timer::poll_timer(poller& p) : fd_(p) {
    const int fd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) throw std::system_error(errno, std::system_category(), "timerfd_create");
    if (const error_code ec = fd_.adopt(fd)) {
        throw std::system_error(ec.value(), std::system_category(), "adding a timerfd to the epoll set");
    }
}

void poll_timer::wait_until(std::chrono::steady_clock::time_point at, poll_socket::callback fn, void* arg) noexcept {
    const bool pending = fn_ != nullptr;
    fn_ = fn;
    arg_ = arg;
    // A relative time: libfaketime 0.9.10 (which the wall-clock test
    // preloads) rewrites absolute timerfd times as wall-clock ones, even
    // CLOCK_MONOTONIC ones. Asio's reactor sets its own timerfd absolute
    // (1 ns) for a time already come; the test therefore keeps libfaketime
    // off timerfd_settime (tests/integration/faketime_wall_only.cpp).
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(at - std::chrono::steady_clock::now()).count();
    itimerspec spec{};
    // A zero it_value would disarm the timer: a time already come is 1 ns.
    spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    if (ns <= 0) spec.it_value = {0, 1};
    // Cannot fail on a valid timerfd and a valid time; should it, the wait
    // below still ends with the next close or cancel rather than never.
    ::timerfd_settime(fd_.native_handle(), 0, &spec, nullptr);
    // A pending wait is moved by the settime alone: an edge of the old time
    // queued meanwhile finds the timerfd unexpired (on_ready) and waits on.
    if (!pending) fd_.wait(poll_socket::wait_type::read, &poll_timer::on_ready, this);
}

void poll_timer::cancel() noexcept {
    itimerspec off{};
    ::timerfd_settime(fd_.native_handle(), 0, &off, nullptr);
    fd_.cancel();
}

void poll_timer::on_ready(void* self, const error_code& ec) {
    auto& t = *static_cast<poll_timer*>(self);
    if (!ec) {
        std::uint64_t expirations = 0;
        if (::read(t.fd_.native_handle(), &expirations, sizeof expirations) < 0) {
            // An edge from an expiry before the last timerfd_settime (which
            // clears it): not this wait's time yet.
            t.fd_.wait(poll_socket::wait_type::read, &poll_timer::on_ready, self);
            return;
        }
    }
    std::exchange(t.fn_, nullptr)(t.arg_, ec);
}

}  // namespace apilb
