// The thread-role checks (include/apilb/thread_role.hpp): a function that
// belongs to one thread aborts, naming itself and the caller, when another of
// apilb's threads calls it, and passes on its own thread and on a thread
// apilb did not start. The facility is core's; its placements are the I/O
// layer's, so both are checked here.
#include "apilb/core/thread_role.hpp"

#include <gtest/gtest.h>

#include <boost/asio/ip/tcp.hpp>

#include <thread>

#include "apilb/control/listener_check.hpp"

namespace apilb {
namespace {

void control_only() { APILB_ASSERT_ROLE(control); }
void worker_only() { APILB_ASSERT_ROLE(worker); }
void data_path_only() { APILB_ASSERT_DATA_PATH_ROLE(worker); }

/// Runs `fn` on a new thread that has named itself `role` (worker 3).
template <class Fn>
void on_thread(thread_role role, Fn fn) {
    std::thread t([&] {
        set_thread_role(role, 3);
        fn();
    });
    t.join();
}

class ThreadRole : public ::testing::Test {
protected:
    void SetUp() override {
#ifdef NDEBUG
        GTEST_SKIP() << "role checks are compiled out with NDEBUG";
#endif
        // The checks fire on threads the test starts: re-run the test binary
        // for each death rather than fork a process that has threads.
        GTEST_FLAG_SET(death_test_style, "threadsafe");
    }
};

TEST_F(ThreadRole, PassesOnItsOwnThreadAndOnAThreadApilbDidNotStart) {
    EXPECT_EQ(current_thread_role(), thread_role::none);
    control_only();
    worker_only();
    on_thread(thread_role::control, [] {
        EXPECT_EQ(current_thread_role(), thread_role::control);
        control_only();
    });
    on_thread(thread_role::worker, [] {
        worker_only();
        data_path_only();
    });
}

TEST_F(ThreadRole, AbortsNamingTheFunctionAndTheCallersRole) {
    EXPECT_DEATH(on_thread(thread_role::worker, [] { control_only(); }),
                 "control_only\\(\\) .*thread_role_unit_test.cpp:[0-9]+\\) must run on the control thread; "
                 "called on worker 3");
    EXPECT_DEATH(on_thread(thread_role::log_writer, [] { worker_only(); }),
                 "worker_only\\(\\) .* must run on the worker thread; called on the log writer thread");
    EXPECT_DEATH(on_thread(thread_role::control, [] { worker_only(); }),
                 "must run on the worker thread; called on the control thread");
}

TEST_F(ThreadRole, DataPathChecksOnlyInDebugAndSanitizerBuilds) {
#ifdef APILB_DATA_PATH_CHECKS
    EXPECT_DEATH(on_thread(thread_role::control, [] { data_path_only(); }),
                 "data_path_only\\(\\) .* must run on the worker thread; called on the control thread");
#else
    on_thread(thread_role::control, [] { data_path_only(); });  // compiled out: no cost, no check
#endif
}

TEST_F(ThreadRole, AControlThreadFunctionOfTheIoLayerChecksItsCaller) {
    const boost::asio::ip::tcp::endpoint ep(boost::asio::ip::make_address("127.0.0.1"), 0);
    on_thread(thread_role::control, [&] { refuse_foreign_listener("api", ep); });
    EXPECT_DEATH(on_thread(thread_role::worker, [&] { refuse_foreign_listener("api", ep); }),
                 "refuse_foreign_listener\\(.* must run on the control thread; called on worker 3");
}

}  // namespace
}  // namespace apilb
