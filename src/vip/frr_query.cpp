#include "apilb/vip/frr_query.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

extern char** environ;

namespace apilb {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace boost::asio::experimental::awaitable_operators;

namespace {

/// What the timer and the reader share: the timer may fire after the
/// coroutine moved on, so it holds its own reference.
struct child_run {
    pid_t pid = -1;
    bool finished = false;
    bool timed_out = false;
    bool too_long = false;
};

/// Reads `pipe` to its end (or its cancellation by the deadline) into
/// `text`; past `max` bytes the text is cut there and the child killed.
asio::awaitable<void> read_to_end(asio::posix::stream_descriptor& pipe, std::string& text, std::size_t max,
                                  child_run& run) {
    std::array<char, 16384> chunk{};
    for (;;) {
        auto [ec, n] = co_await pipe.async_read_some(asio::buffer(chunk), asio::as_tuple(asio::use_awaitable));
        text.append(chunk.data(), n);
        if (text.size() > max) {
            run.too_long = true;
            text.resize(max);
            ::kill(run.pid, SIGKILL);
            co_return;
        }
        if (ec) co_return;  // end of file, or cancelled by the deadline
    }
}

std::string describe(int status) {
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("was killed by signal ") + ::strsignal(WTERMSIG(status));
    return "stopped";
}

}  // namespace

asio::awaitable<command_outcome> run_bounded(asio::io_context& io, std::vector<std::string> argv,
                                             std::size_t max_output, std::chrono::milliseconds timeout) {
    command_outcome out;
    // stdout and stderr apart: vtysh warns on stderr before its answer (an
    // unreadable /etc/frr/vtysh.conf, which is the rule for a member of
    // frrvty), and the answer must be parsed alone.
    std::array<int, 2> out_fds{-1, -1};
    std::array<int, 2> err_fds{-1, -1};
    if (argv.empty() || ::pipe2(out_fds.data(), O_CLOEXEC) != 0) {
        out.error = std::string("cannot make a pipe: ") + std::strerror(errno);
        co_return out;
    }
    if (::pipe2(err_fds.data(), O_CLOEXEC) != 0) {
        out.error = std::string("cannot make a pipe: ") + std::strerror(errno);
        ::close(out_fds[0]);
        ::close(out_fds[1]);
        co_return out;
    }
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawnattr_init(&attributes);
    ::posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    ::posix_spawn_file_actions_adddup2(&actions, out_fds[1], 1);
    ::posix_spawn_file_actions_adddup2(&actions, err_fds[1], 2);
    // apilb's sockets (listeners, sessions) must not live on in the child.
    ::posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    sigset_t none, all;
    ::sigemptyset(&none);
    ::sigfillset(&all);
    ::posix_spawnattr_setsigmask(&attributes, &none);
    ::posix_spawnattr_setsigdefault(&attributes, &all);
    ::posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    auto run = std::make_shared<child_run>();
    const int spawned = ::posix_spawn(&run->pid, args[0], &actions, &attributes, args.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
    ::posix_spawnattr_destroy(&attributes);
    ::close(out_fds[1]);
    ::close(err_fds[1]);
    if (spawned != 0) {
        ::close(out_fds[0]);
        ::close(err_fds[0]);
        out.error = "cannot start " + argv[0] + ": " + std::strerror(spawned);
        co_return out;
    }
    asio::posix::stream_descriptor out_reader(io, out_fds[0]);
    asio::posix::stream_descriptor err_reader(io, err_fds[0]);
    asio::steady_timer deadline(io);
    deadline.expires_after(timeout);
    deadline.async_wait([run, &out_reader, &err_reader](boost::system::error_code ec) {
        if (ec || run->finished) return;
        run->timed_out = true;
        ::kill(run->pid, SIGKILL);
        boost::system::error_code ignored;
        out_reader.cancel(ignored);
        err_reader.cancel(ignored);
    });
    co_await (read_to_end(out_reader, out.output, max_output, *run) &&
              read_to_end(err_reader, out.errors, max_output, *run));
    const bool too_long = run->too_long;
    run->finished = true;
    deadline.cancel();

    // The child closed its output: it ends within moments. Polled without
    // blocking the control thread; killed if it lingers.
    int status = 0;
    asio::steady_timer pause(io);
    // Bounded too: a child stuck in the kernel even after SIGKILL is left
    // as a zombie rather than holding this loop.
    for (int tries = 0; tries < 400; ++tries) {
        const pid_t r = ::waitpid(run->pid, &status, WNOHANG);
        if (r == run->pid || (r < 0 && errno != EINTR)) break;
        if (tries == 100) ::kill(run->pid, SIGKILL);  // 0.5 s after its output ended
        pause.expires_after(5ms);
        co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    if (run->timed_out) {
        out.error = "timed out after " + std::to_string(timeout.count()) + "ms";
    } else if (too_long) {
        out.error = "wrote more than " + std::to_string(max_output) + " bytes";
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        out.error = describe(status);
    } else {
        out.ok = true;
    }
    co_return out;
}

}  // namespace apilb
