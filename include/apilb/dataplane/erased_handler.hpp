// A move-only completion handler behind one virtual call.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace apilb {

/// Holds any completion handler callable as `void(Args...)`, as
/// asio::any_completion_handler does; Boost 1.81's cannot be moved (its
/// converting constructor wraps another any_completion_handler recursively).
/// One heap allocation per handler stored.
template <typename... Args>
class erased_handler {
public:
    erased_handler() = default;
    template <typename Handler>
    requires(!std::is_same_v<std::decay_t<Handler>, erased_handler>) explicit erased_handler(Handler&& h)
        : impl_(new impl<std::decay_t<Handler>>(std::forward<Handler>(h))) {}

    explicit operator bool() const noexcept { return impl_ != nullptr; }

    /// Calls the handler once. It is released first, so the call may destroy
    /// whatever held this erased_handler.
    void operator()(Args... args) {
        auto held = std::move(impl_);
        held->call(std::forward<Args>(args)...);
    }

private:
    struct base {
        virtual ~base() = default;
        virtual void call(Args... args) = 0;
    };
    template <typename Handler>
    struct impl final : base {
        explicit impl(Handler&& h) : handler(std::move(h)) {}
        explicit impl(const Handler& h) : handler(h) {}
        void call(Args... args) override { std::move(handler)(std::forward<Args>(args)...); }
        Handler handler;
    };
    std::unique_ptr<base> impl_;
};

}  // namespace apilb
