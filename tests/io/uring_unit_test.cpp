#include "apilb/dataplane/uring.hpp"

#include <gtest/gtest.h>

#include <liburing.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "../io_uring_host.hpp"
#include "../refuse_io_uring.hpp"

namespace apilb {
namespace {

std::shared_ptr<const config> with_io(const std::string& io) {
    return parse_config(R"(listeners:
  - {name: front, address: "127.0.0.1:6443", pool: p}
pools:
  - name: p
    health: {type: none}
    backends:
      - {name: b0, address: "127.0.0.2:6443"}
relay:
  mode: copy
  io: )" + io + "\n",
                        "apilb.yaml");
}

/// Runs `fn` in a child process with io_uring refused (seccomp, as a
/// container runtime's profile) and returns what it wrote.
template <typename Fn>
std::string without_io_uring(Fn fn) {
    int fds[2];
    if (::pipe(fds) != 0) return "pipe failed";
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::close(fds[0]);
        std::string out = apilb::test::refuse_io_uring() ? fn() : std::string("no seccomp");
        (void)!::write(fds[1], out.data(), out.size());
        ::_exit(0);
    }
    ::close(fds[1]);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return out;
}

TEST(Uring, TheProbeFindsIoUringOnThisHost) {
    APILB_SKIP_WITHOUT_IO_URING();
    // Debian 12's kernel (6.1) and later have every operation the workers
    // use; the tests of relay.io: io_uring need it.
    EXPECT_EQ(io_uring_unavailable(), "");
    const relay_io_choice c = choose_relay_io(*with_io("auto"));
    EXPECT_TRUE(c.io_uring);
    EXPECT_EQ(c.reason, "");
    EXPECT_TRUE(choose_relay_io(*with_io("io_uring")).io_uring);
    EXPECT_FALSE(choose_relay_io(*with_io("epoll")).io_uring);
}

TEST(Uring, RefusedBySeccompTheProbeSaysWhyAndAutoFallsBackToEpoll) {
    EXPECT_EQ(without_io_uring([] { return io_uring_unavailable(); }),
              "io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN failed: Operation not permitted");
    EXPECT_EQ(without_io_uring([] {
                  const relay_io_choice c = choose_relay_io(*with_io("auto"));
                  return std::string(c.io_uring ? "io_uring" : "epoll") + ": " + c.reason;
              }),
              "epoll: io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN failed: Operation not permitted");
    // Asked for by name, what the host refuses is a config error at start,
    // pointing at the key.
    EXPECT_EQ(without_io_uring([] {
                  try {
                      choose_relay_io(*with_io("io_uring"));
                      return std::string("chosen");
                  } catch (const config_load_error& e) {
                      return std::string(e.what());
                  }
              }),
              "apilb.yaml:10:7: relay.io: io_uring was asked for but this host does not give it: io_uring_setup "
              "with SINGLE_ISSUER|DEFER_TASKRUN failed: Operation not permitted; expected auto or epoll here (or "
              "allow io_uring: seccomp profile, kernel.io_uring_disabled)");
    // epoll asks the kernel nothing.
    EXPECT_EQ(without_io_uring([] { return std::string(choose_relay_io(*with_io("epoll")).io_uring ? "1" : "0"); }),
              "0");
}

TEST(Uring, MadeOnOneThreadItSubmitsFromTheThreadThatEnablesIt) {
    APILB_SKIP_WITHOUT_IO_URING();
    // Workers are made on the control thread and run on their own: with
    // SINGLE_ISSUER only the enabling thread may submit.
    uring ring(8);
    int result = -1;
    std::thread t([&] {
        ring.enable();
        ::io_uring_prep_nop(ring.sqe());
        if (::io_uring_submit_and_wait(&ring.get(), 1) < 0) return;
        ::io_uring_cqe* cqe = nullptr;
        if (::io_uring_peek_cqe(&ring.get(), &cqe) == 0) {
            result = cqe->res;
            ::io_uring_cqe_seen(&ring.get(), cqe);
        }
    });
    t.join();
    EXPECT_EQ(result, 0);
}

TEST(Uring, SqeSubmitsWhatIsQueuedWhenTheQueueIsFull) {
    APILB_SKIP_WITHOUT_IO_URING();
    uring ring(4);
    ring.enable();
    for (int i = 0; i < 6; ++i) {
        ::io_uring_sqe* s = ring.sqe();
        ASSERT_NE(s, nullptr);
        ::io_uring_prep_nop(s);
    }
    ASSERT_GE(::io_uring_submit_and_wait(&ring.get(), 6), 0);
    EXPECT_EQ(::io_uring_cq_ready(&ring.get()), 6u);
}

TEST(Uring, ForgetFdKeepsQueuedEntriesOffTheNextSocketWithTheSameNumber) {
    APILB_SKIP_WITHOUT_IO_URING();
    // A socket closed by close(2) while a recv for it waits in the queue:
    // its number goes to the next socket made, and the kernel would look
    // the number up only at the next submission.
    uring ring(8);
    ring.enable();
    int a[2], b[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    char into_a[8], into_b[8];
    ::io_uring_sqe* s = ring.sqe();
    ::io_uring_prep_recv(s, a[0], into_a, sizeof into_a, 0);
    ::io_uring_sqe_set_data64(s, 1);
    s = ring.sqe();
    ::io_uring_prep_recv(s, b[0], into_b, sizeof into_b, 0);
    ::io_uring_sqe_set_data64(s, 2);
    EXPECT_EQ(ring.forget_fd(a[0]), 1u);
    const int number = a[0];
    ::close(a[0]);
    ::close(a[1]);
    int c[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, c), 0);
    ASSERT_EQ(c[0], number);  // the lowest free number: the closed one's
    ASSERT_EQ(::write(c[1], "secret", 6), 6);
    ASSERT_EQ(::write(b[1], "hello", 5), 5);
    ASSERT_GE(::io_uring_submit_and_wait(&ring.get(), 2), 0);
    int results[3] = {0, 0, 0};
    unsigned head, seen = 0;
    ::io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring.get(), head, cqe) {
        results[::io_uring_cqe_get_data64(cqe)] = cqe->res;
        ++seen;
    }
    ::io_uring_cq_advance(&ring.get(), seen);
    EXPECT_EQ(results[1], -EBADF);
    EXPECT_EQ(results[2], 5);
    // The new socket's bytes are still where its owner will read them.
    char got[8];
    EXPECT_EQ(::recv(c[0], got, sizeof got, MSG_DONTWAIT), 6);
    // Nothing queued, nothing to forget.
    EXPECT_EQ(ring.forget_fd(b[0]), 0u);
    for (int fd : {b[0], b[1], c[0], c[1]}) ::close(fd);
}

}  // namespace
}  // namespace apilb
