#include "apilb/vip/frr_query.hpp"

#include <boost/asio/as_tuple.hpp>
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

namespace {

/// What the timer and the reader share: the timer may fire after the
/// coroutine moved on, so it holds its own reference.
struct child_run {
    pid_t pid = -1;
    bool finished = false;
    bool timed_out = false;
};

std::string describe(int status) {
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("was killed by signal ") + ::strsignal(WTERMSIG(status));
    return "stopped";
}

}  // namespace

asio::awaitable<command_outcome> run_bounded(asio::io_context& io, std::vector<std::string> argv,
                                             std::size_t max_output, std::chrono::milliseconds timeout) {
    command_outcome out;
    std::array<int, 2> pipe_fds{-1, -1};
    if (argv.empty() || ::pipe2(pipe_fds.data(), O_CLOEXEC) != 0) {
        out.error = std::string("cannot make a pipe: ") + std::strerror(errno);
        co_return out;
    }
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawnattr_init(&attributes);
    ::posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    ::posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
    ::posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
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
    ::close(pipe_fds[1]);
    if (spawned != 0) {
        ::close(pipe_fds[0]);
        out.error = "cannot start " + argv[0] + ": " + std::strerror(spawned);
        co_return out;
    }

    asio::posix::stream_descriptor reader(io, pipe_fds[0]);
    asio::steady_timer deadline(io);
    deadline.expires_after(timeout);
    deadline.async_wait([run, &reader](boost::system::error_code ec) {
        if (ec || run->finished) return;
        run->timed_out = true;
        ::kill(run->pid, SIGKILL);
        boost::system::error_code ignored;
        reader.cancel(ignored);
    });
    std::array<char, 16384> chunk{};
    bool too_long = false;
    for (;;) {
        auto [ec, n] = co_await reader.async_read_some(asio::buffer(chunk), asio::as_tuple(asio::use_awaitable));
        out.output.append(chunk.data(), n);
        if (out.output.size() > max_output) {
            too_long = true;
            out.output.resize(max_output);
            ::kill(run->pid, SIGKILL);
            break;
        }
        if (ec) break;  // end of file, or cancelled by the deadline
    }
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
