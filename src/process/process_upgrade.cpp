// The upgrade (SIGUSR2, docs/upgrade.md "Zero-drop upgrade"): the old
// process starts the new binary and hands it the listening sockets over the
// handover channel; the new one receives them before it builds its process
// and says ready once it serves. Rollback is the default: nothing in the old
// process changes until `ready` has arrived.
#include <boost/asio/post.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "apilb/admin/admin_server.hpp"
#include "apilb/control/yaml_guard.hpp"
#include "apilb/core/thread_role.hpp"
#include "apilb/dataplane/socket_options.hpp"
#include "apilb/dataplane/worker.hpp"
#include "apilb/process/process.hpp"
#include "apilb/process/upgrade_bgp.hpp"

extern char** environ;

namespace apilb {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;
using handover::frame_type;
using handover::handover_error;

namespace {

/// From SIGUSR2 to `ready`: the new binary loads its config, binds, and
/// runs its first health round (at most health.timeout) in this time.
/// APILB_UPGRADE_DEADLINE_MS (100..600000) replaces it, for tests only.
std::chrono::milliseconds upgrade_deadline() {
    if (const auto ms = handover::test_hook("APILB_UPGRADE_DEADLINE_MS"); ms && *ms >= 100 && *ms <= 600'000)
        return std::chrono::milliseconds(*ms);
    return std::chrono::seconds(60);
}
/// The descriptor number the new process finds its end of the channel at.
constexpr int child_channel_fd = 3;

/// The binary to start: the path this one was started from, which after a
/// package upgrade holds the new file (/proc/self/exe then ends in
/// " (deleted)"). APILB_UPGRADE_BINARY replaces it, for tests only.
std::string new_binary_path() {
    if (const char* forced = std::getenv("APILB_UPGRADE_BINARY"); forced != nullptr && *forced != '\0') return forced;
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) throw handover_error(fmt::format("readlink /proc/self/exe: {}", std::strerror(errno)));
    std::string path(buf, static_cast<std::size_t>(n));
    constexpr std::string_view deleted = " (deleted)";
    if (path.ends_with(deleted)) path.resize(path.size() - deleted.size());
    return path;
}

/// The first word of /proc/self/cmdline (at most 4 KiB); nullopt if unreadable.
std::optional<std::string> own_argv0() {
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    std::string first;
    if (!std::getline(in, first, '\0') || first.empty() || first.size() > 4096) return std::nullopt;
    return first;
}

/// Starts `binary run --config <config_path>` with `child_end` as
/// descriptor 3 and APILB_HANDOVER_FD=3, and no other descriptor past
/// stderr; stdout and stderr are shared, so its log goes where this one's goes.
pid_t spawn_new_binary(const std::string& binary, const std::string& config_path, int child_end) {
    std::vector<std::string> env_text;
    const std::string channel_prefix = std::string(handover::channel_env) + "=";
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        if (std::string_view(*e).starts_with(channel_prefix)) continue;
        // systemd's WATCHDOG_PID names this process: the new one would take
        // the watchdog for someone else's and never feed it, and systemd
        // kills the unit WatchdogSec after the MAINPID= hand-over. Without
        // it, WATCHDOG_USEC holds for whoever reads it.
        if (std::string_view(*e).starts_with("WATCHDOG_PID=")) continue;
        env_text.emplace_back(*e);
    }
    env_text.push_back(fmt::format("{}={}", handover::channel_env, child_channel_fd));
    std::vector<char*> envp;
    for (auto& e : env_text) envp.push_back(e.data());
    envp.push_back(nullptr);
    // argv[0] as this process was given it: keepalived's track_process
    // matches the command line exactly (docs/vip.md), and the new process
    // must match from its start for keepalived to count it before this
    // one ends (docs/upgrade.md, "With a vrrp section").
    std::string a0 = own_argv0().value_or(binary), a1 = "run", a2 = "--config", a3 = config_path;
    char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), nullptr};

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    // dup2 onto another number clears close-on-exec on the copy; the caller
    // made sure child_end is not 3 already.
    posix_spawn_file_actions_adddup2(&actions, child_end, child_channel_fd);
    // Nothing else: Asio opens its sockets (admin connections, probes)
    // without close-on-exec, and a copy held by the new process would keep
    // a connection this one closes open (its client never sees the end).
    posix_spawn_file_actions_addclosefrom_np(&actions, child_channel_fd + 1);
    set_default_signals(attr);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, binary.c_str(), &actions, &attr, argv, envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throw handover_error(fmt::format("cannot start {}: {}", binary, std::strerror(rc)));
    return pid;
}

/// Sessions a worker hands over in one pass: a pass walks the worker's
/// session list once on its thread, so this bounds what one pass costs the
/// worker's other sessions.
constexpr std::size_t sessions_per_pass = 256;
/// How long the session phase goes on taking sessions that had bytes in
/// flight, or were still connecting, at an earlier pass; those still busy
/// or connecting then stay here (kept).
constexpr std::chrono::seconds session_phase_limit{5};

/// What one worker's pass gave: its quiet sessions, how many it is still
/// quiescing, how many it keeps, how many are still connecting.
struct pass_result {
    std::vector<handed_session> sessions;
    std::size_t busy = 0;
    std::size_t kept = 0;
    std::size_t connecting = 0;
};

/// One worker's pass (worker::hand_over_sessions), waited for until
/// `deadline`. A pass that comes back later than that gives its sessions
/// back to the worker it came from, so that none is lost.
pass_result take_sessions(worker& w, std::uint64_t phase, clock_type::time_point deadline) {
    struct shared {
        std::mutex m;
        bool abandoned = false;
        std::promise<pass_result> result;
    };
    auto state = std::make_shared<shared>();
    auto future = state->result.get_future();
    w.hand_over_sessions(
        sessions_per_pass, phase,
        [state, &w](std::vector<handed_session> got, std::size_t busy, std::size_t kept, std::size_t connecting) {
            std::lock_guard lock(state->m);
            if (state->abandoned) {
                for (auto& h : got) w.adopt_session(std::move(h.record), h.client_fd, h.backend_fd);
                return;
            }
            state->result.set_value({std::move(got), busy, kept, connecting});
        });
    if (future.wait_until(deadline) != std::future_status::ready) {
        std::lock_guard lock(state->m);
        if (future.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
            state->abandoned = true;
            throw handover_error("a worker did not hand over its sessions in time");
        }
    }
    return future.get();
}

/// For tests only (APILB_UPGRADE_TEST_FAIL_SEND_AT): the session frame, 1
/// for the first, whose send fails as if the new binary had died; 0: none.
std::size_t failing_send_at() {
    return static_cast<std::size_t>(handover::test_hook("APILB_UPGRADE_TEST_FAIL_SEND_AT").value_or(0));
}

/// At `ready`: every worker stops taking clients from its listening
/// sockets and keeps them open (worker::hold_accepting); the new process
/// serves their queues, and the session phase's list only shrinks.
void hold_accepting(const std::vector<worker*>& workers) {
    for (worker* w : workers) w->hold_accepting();
}

/// A rollback after `ready`: every worker accepts again at once; what the
/// kernel queued meanwhile on the shared sockets waits there for it.
void resume_accepting(const std::vector<worker*>& workers) {
    for (worker* w : workers) w->resume_accepting();
}

/// For tests only (APILB_UPGRADE_TEST_SESSIONS_END_DELAY_MS, at most 5 s):
/// how long the old process waits between its last pass and sessions_end,
/// as a loaded machine might; a client it accepted meanwhile would stay.
std::chrono::milliseconds sessions_end_delay() {
    return std::chrono::milliseconds(
        std::min(handover::test_hook("APILB_UPGRADE_TEST_SESSIONS_END_DELAY_MS").value_or(0), 5000));
}

/// The old side's session phase (docs/upgrade.md "Sessions"): passes over
/// the workers, each handing over its quiet sessions (and quiescing its busy
/// ones for a later pass), sent one frame each, until a pass finds none
/// quiescing and none connecting (the workers accept no more: held at
/// `ready`), or session_phase_limit; then sessions_end and the new
/// process's count of what it took. Until that count has come, every
/// session sent is still in `sent` (its descriptors open here); on success
/// they are closed (the new process holds the sockets now) and the number
/// of sessions kept here is returned. On failure `sent` keeps them, for the
/// caller to take back once the new process is dead. Either way every
/// session still quiesced reads again when it returns. `before_end` runs
/// right before sessions_end (the bgp agent's handover).
std::size_t send_sessions(int channel, const std::vector<worker*>& workers, std::vector<handed_session>& sent,
                          clock_type::time_point deadline, const std::function<void()>& before_end) {
    struct end_phase {
        const std::vector<worker*>& workers;
        ~end_phase() {
            for (worker* w : workers) w->end_session_phase();
        }
    } ending{workers};
    const auto started = clock_type::now();
    const auto phase = static_cast<std::uint64_t>(started.time_since_epoch().count());
    const auto phase_end = std::min(deadline, started + session_phase_limit);
    const std::size_t fail_at = failing_send_at();
    std::size_t busy = 0, kept = 0, connecting = 0;
    for (;;) {
        std::size_t got = 0;
        bool full = false;
        busy = 0;
        kept = 0;
        connecting = 0;
        for (worker* w : workers) {
            pass_result pass = take_sessions(*w, phase, deadline);
            full = full || pass.sessions.size() >= sessions_per_pass;
            busy += pass.busy;
            kept += pass.kept;
            connecting += pass.connecting;
            got += pass.sessions.size();
            // The whole batch is out of its worker now: every session of it
            // goes into `sent` before the first frame, so that a send that
            // fails half-way (the new binary died) leaves none of them
            // orphaned; the caller takes back all of `sent`.
            const std::size_t first = sent.size();
            for (auto& h : pass.sessions) sent.push_back(std::move(h));
            for (std::size_t i = first; i < sent.size(); ++i) {
                if (i + 1 == fail_at) throw handover_error("send: failed (APILB_UPGRADE_TEST_FAIL_SEND_AT)");
                const int fds[2] = {sent[i].client_fd, sent[i].backend_fd};
                handover::send_frame(channel, frame_type::session, handover::encode_session(sent[i].record), fds,
                                     deadline);
            }
        }
        if ((!full && busy == 0 && connecting == 0) || clock_type::now() >= phase_end) break;
        // Only quiescing or connecting sessions left: give their bytes a
        // moment to go out, their connects a moment to finish.
        if (got == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (connecting > 0)
        spdlog::warn("upgrade: {} session(s) still connecting at the phase's end stay here", connecting);
    if (const auto delay = sessions_end_delay(); delay.count() > 0) {
        // Said, so that a test can kill this process in the gap (docs/upgrade.md, "If the old process dies").
        spdlog::info("upgrade: every session sent; sessions_end in {}ms (APILB_UPGRADE_TEST_SESSIONS_END_DELAY_MS)",
                     delay.count());
        std::this_thread::sleep_for(delay);
    }
    before_end();
    handover::send_frame(channel, frame_type::sessions_end, std::to_string(sent.size()), {}, deadline);
    const handover::frame taken = handover::receive_frame(channel, deadline);
    if (taken.type == frame_type::abort) throw handover_error("the new binary aborted: " + taken.payload);
    if (taken.type != frame_type::sessions_taken) throw handover_error("expected sessions_taken");
    const int count = handover::parse_number(taken.payload, "sessions_taken count");
    if (static_cast<std::size_t>(count) != sent.size()) {
        throw handover_error(fmt::format("the new binary took {} of {} session(s)", count, sent.size()));
    }
    for (const auto& h : sent) {
        // A plain close: the new process holds the sockets, nothing is sent.
        ::close(h.client_fd);
        ::close(h.backend_fd);
    }
    return kept + busy + connecting;  // those still quiescing read again here
}

/// The count an `*_end` frame `f` says (the frames of `what` the old process
/// sent) must be the `frames` that came; throws handover_error if not.
void expect_count(const handover::frame& f, int frames, const char* what) {
    const int said = handover::parse_number(f.payload, "end count");
    if (said != frames) {
        throw handover_error(fmt::format("the old process said {} {} frame(s), {} came", said, what, frames));
    }
}

/// Whether the old process of an upgrade (this one's parent, `old_pid`) has
/// died: this process is reparented then. A dying process closes its
/// descriptors before it is reaped, so an end of the channel may come a
/// moment before that: wait up to a second for it.
bool old_process_died(pid_t old_pid) {
    for (int i = 0; i < 100; ++i) {
        if (::getppid() != old_pid) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

/// How the new process ended, or that it still runs.
std::string reap(pid_t pid, bool kill_it) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    std::string how;
    if (r == 0 && kill_it) {
        ::kill(pid, SIGKILL);
        how = "killed it; ";
        r = ::waitpid(pid, &status, 0);
    }
    if (r != pid) return how + "it still runs";
    if (WIFEXITED(status)) return how + fmt::format("it exited with status {}", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return how + fmt::format("it died of signal {}", WTERMSIG(status));
    return how + "it ended";
}

}  // namespace

struct process::upgrade_run {
    pid_t pid = -1;
    int channel = -1;  ///< this side's end; closed by the control thread after the join
    std::thread thread;
};

upgrade_start process::start_upgrade(std::function<void(const upgrade_outcome&)> done) {
    APILB_ASSERT_ROLE(control);
    auto refuse = [&](const std::string& why, bool conflict) {
        spdlog::error("upgrade refused: {}; still serving", why);
        stats_.upgrade_failures_total.fetch_add(1, std::memory_order_relaxed);
        return upgrade_start{.refused = why, .conflict = conflict, .new_pid = 0};
    };
    if (draining_) return refuse("apilb is stopping", true);
    if (upgrade_) return refuse(fmt::format("an upgrade to pid {} is in progress", upgrade_->pid), true);
    if (waiting_upgrade_) return refuse("an upgrade is in progress (it waits for a reload's apply to end)", true);

    // The workers would not all serve the snapshot the new process reads:
    // wait for them (upgrade_wait.cpp).
    if (reloads_applying_ > 0) return wait_for_reload(std::move(done));

    // keepalived's keeper (vrrp, upgrade_vip.cpp), sent first of all as
    // child frames; a bgp section's children go right before sessions_end
    // (upgrade_bgp.cpp).
    std::optional<handed_children> vip_kept;
    try {
        vip_kept = vip_children();
    } catch (const std::system_error& e) {
        return refuse(e.what(), false);
    }
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        return refuse(fmt::format("socketpair: {}", std::strerror(errno)), false);
    }
    int child_end = sv[1];
    if (child_end == child_channel_fd) {
        child_end = ::fcntl(sv[1], F_DUPFD_CLOEXEC, child_channel_fd + 1);
        ::close(sv[1]);
    }
    auto run = std::make_shared<upgrade_run>();
    run->channel = sv[0];
    std::string binary;
    try {
        binary = new_binary_path();
        if (child_end < 0) throw handover_error(fmt::format("fcntl: {}", std::strerror(errno)));
        run->pid = spawn_new_binary(binary, snap_->cfg->source, child_end);
    } catch (const handover_error& e) {
        if (child_end >= 0) ::close(child_end);
        ::close(run->channel);
        return refuse(e.what(), false);
    }
    ::close(child_end);
    spdlog::info("upgrade: started {} as pid {}; handing over the listeners when it says hello", binary, run->pid);

    // Duplicated here, on the control thread that owns the admin endpoint.
    handover::owned_fds admin_fd;
    std::string admin_address;
    if (admin_ && snap_->cfg->admin) {
        const int fd = ::fcntl(admin_->native_listener(), F_DUPFD_CLOEXEC, 3);
        if (fd >= 0) {
            admin_fd.push_back(fd);
            admin_address = snap_->cfg->admin->address.to_string();
        }
    }
    std::vector<worker*> workers;
    for (auto& w : workers_) workers.push_back(w.get());
    // The health view and counters as they are now, read here on the control
    // thread (the probe records are its own); the counters' final values go
    // after the sessions, from the snapshot, which no reload replaces meanwhile.
    std::vector<std::string> first_state = handover::encode_state(state_lines(*snap_, stats_, health_.get()));
    upgrade_ = run;
    // The waits (up to upgrade_deadline) run on their own thread, so probes,
    // the admin endpoint and the watchdog go on meanwhile. It touches nothing
    // of the process but the workers' share_listeners (posted) and posts its
    // outcome back to the control thread.
    const pid_t new_pid = run->pid;
    run->thread = std::thread([this, run, workers, admin_fd = std::move(admin_fd), admin_address,
                               first_state = std::move(first_state), vip_kept = std::move(vip_kept), snap = snap_,
                               done = std::move(done)]() mutable {
        const auto deadline = clock_type::now() + upgrade_deadline();
        std::string failure;
        std::vector<handed_session> sent;  // the session phase's, still open here until taken
        std::size_t kept = 0;
        bool held = false;        // the workers hold their accepts (from `ready`)
        bool bgp_frozen = false;  // the bgp agent is handed over (upgrade_bgp.cpp)
        auto phase_started = clock_type::now();
        try {
            handover::frame hello;
            try {
                hello = handover::receive_frame(run->channel, deadline);
            } catch (const handover::version_skew_error& e) {
                // A version skew shows here first: tell the new one why.
                try {
                    handover::send_frame(run->channel, frame_type::abort, e.what(), {},
                                         clock_type::now() + std::chrono::seconds(1));
                } catch (const handover_error&) {}
                throw;
            }
            if (hello.type == frame_type::abort) throw handover_error("the new binary aborted: " + hello.payload);
            if (hello.type != frame_type::hello) throw handover_error("expected hello first");
            const auto [pid, version] = handover::parse_hello(hello.payload);
            spdlog::info("upgrade: pid {} (apilb {}) speaks protocol {}", pid, version, handover::protocol_version);

            if (vip_kept) {
                handover::send_children(run->channel, *vip_kept, deadline);
                vip_kept.reset();  // our duplicates: the new process holds its own now
            }

            // Every worker's listening sockets, duplicated on its own thread.
            std::map<std::string, handover::owned_fds> by_address;
            for (worker* w : workers) {
                auto got = std::make_shared<std::promise<std::vector<worker::shared_listener>>>();
                auto future = got->get_future();
                w->share_listeners([got](std::vector<worker::shared_listener> l) { got->set_value(std::move(l)); });
                if (future.wait_until(deadline) != std::future_status::ready) {
                    throw handover_error("a worker did not lend its listening sockets in time");
                }
                for (const auto& l : future.get()) by_address[l.address].push_back(l.fd);
            }
            int frames = 0;
            for (const auto& [address, fds] : by_address) {
                const std::vector<int>& all = fds.get();
                for (std::size_t at = 0; at < all.size(); at += handover::max_frame_fds) {
                    const std::size_t n = std::min(handover::max_frame_fds, all.size() - at);
                    handover::send_frame(run->channel, frame_type::listener, "data " + address,
                                         std::span<const int>(all.data() + at, n), deadline);
                    ++frames;
                }
            }
            if (!admin_fd.empty()) {
                handover::send_frame(run->channel, frame_type::listener, "admin " + admin_address, admin_fd.get(),
                                     deadline);
                ++frames;
            }
            handover::send_state(run->channel, first_state, deadline);
            handover::send_frame(run->channel, frame_type::listeners_end, std::to_string(frames), {}, deadline);
            by_address.clear();  // our duplicates; the workers keep accepting on theirs
            admin_fd.reset();

            const handover::frame ready = handover::receive_frame(run->channel, deadline);
            if (ready.type == frame_type::abort) throw handover_error("the new binary aborted: " + ready.payload);
            if (ready.type != frame_type::ready) throw handover_error("expected ready");
            handover::parse_number(ready.payload, "ready pid");
            // The new process serves the same sockets: from here every
            // client is its own, and this process's list only shrinks.
            hold_accepting(workers);
            held = true;
            phase_started = clock_type::now();
            kept = send_sessions(run->channel, workers, sent, deadline,
                                 [&] { hand_over_bgp(run->channel, deadline, bgp_frozen); });
        } catch (const std::exception& e) {
            failure = e.what();
        }
        const auto phase_ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - phase_started);
        if (!failure.empty()) {
            failure += " (" + reap(run->pid, true) + ")";
            if (held) resume_accepting(workers);
            // The new process is dead: the sessions sent to it are ours again.
            for (std::size_t i = 0; i < sent.size(); ++i) {
                workers[i % workers.size()]->adopt_session(std::move(sent[i].record), sent[i].client_fd,
                                                           sent[i].backend_fd);
            }
            if (!sent.empty()) failure += fmt::format("; took back {} session(s)", sent.size());
        } else {
            stats_.sessions_handed_over_total.fetch_add(sent.size(), std::memory_order_relaxed);
            stats_.sessions_kept_total.fetch_add(kept, std::memory_order_relaxed);
            // Counted before the final counters go, so that the new process's
            // series include this upgrade.
            stats_.upgrades_total.fetch_add(1, std::memory_order_relaxed);
            send_final_state(run->channel, *snap, stats_, release_vip());
        }
        const std::size_t handed = failure.empty() ? sent.size() : 0;
        asio::post(control_, [this, run, failure, handed, kept, phase_ms, bgp_frozen, done = std::move(done)] {
            if (run->thread.joinable()) run->thread.join();
            // The new process is dead (killed above) or holds them now.
            if (bgp_frozen) end_bgp_handover(failure.empty());
            ::close(run->channel);
            run->channel = -1;
            if (upgrade_ == run) upgrade_.reset();
            const upgrade_outcome outcome{
                .failure = failure, .new_pid = run->pid, .handed_over = handed, .kept = kept, .phase = phase_ms};
            if (!failure.empty()) {
                spdlog::error("upgrade failed: {}; still serving", failure);
                stats_.upgrade_failures_total.fetch_add(1, std::memory_order_relaxed);
                if (done) done(outcome);
                return;
            }
            spdlog::info(
                "upgrade: pid {} serves; {} session(s) handed over in {}ms, {} kept here (bytes in flight not written "
                "out, or still connecting, in time); this process stops accepting and drains",
                run->pid, handed, phase_ms.count(), kept);
            // Said by the main PID too, so that systemd never sees it end
            // without a successor, whatever NotifyAccess says.
            notify_systemd(fmt::format("MAINPID={}", run->pid));
            // The caller hears it from this process, whose admin endpoint
            // answers that request and then closes (the new one accepts).
            if (done) done(outcome);
            if (admin_) admin_->retire();
            if (upgrade_handed_over_) upgrade_handed_over_();
        });
    });
    return upgrade_start{.refused = {}, .conflict = false, .new_pid = new_pid};
}

void process::end_upgrade() {
    if (!upgrade_) return;
    std::shared_ptr<upgrade_run> run = std::move(upgrade_);
    // The thread sees the end of the channel at once and decides: a new
    // binary that has not said ready is killed and reaped there.
    if (run->channel >= 0) ::shutdown(run->channel, SHUT_RDWR);
    if (run->thread.joinable()) run->thread.join();
    if (run->channel >= 0) ::close(run->channel);
    run->channel = -1;
}

void process::report_ready_to_old() {
    notify_systemd(fmt::format("MAINPID={}\nREADY=1", ::getpid()));
    try {
        handover::send_frame(handover_channel_, frame_type::ready, std::to_string(::getpid()), {},
                             clock_type::now() + std::chrono::seconds(5));
        spdlog::info("upgrade: ready sent to the old process; it stops accepting");
    } catch (const handover_error& e) {
        spdlog::warn("upgrade: could not tell the old process that this one serves: {}", e.what());
    }
    receive_sessions();
}

void process::receive_sessions() {
    const int channel = std::exchange(handover_channel_, -1);
    adopt_channel_ = channel;
    // For tests only: die after this many session frames (a successor that
    // fails in the session phase; docs/upgrade.md, rollback).
    const int die_after = handover::test_hook("APILB_UPGRADE_TEST_DIE_AFTER_SESSIONS").value_or(0);
    // For tests only: die on sessions_end, once the bgp agent came (a
    // successor that fails after the old process handed it over).
    const bool die_at_end = handover::test_hook("APILB_UPGRADE_TEST_DIE_AT_SESSIONS_END").value_or(0) == 1;
    std::vector<worker*> workers;
    for (auto& w : workers_) workers.push_back(w.get());
    // Its own thread: the receives block (bounded), workers adopt by message.
    const pid_t old_pid = ::getppid();  // it started this process
    adopt_thread_ = std::thread([this, channel, workers, die_after, die_at_end, old_pid] {
        const auto deadline = clock_type::now() + upgrade_deadline();
        int frames = 0;
        std::size_t refused = 0;
        // Set until sessions_taken went out: the VIP's side is still the old process's.
        auto bgp = std::make_shared<bgp_receipt>();
        try {
            while (true) {
                handover::frame f = handover::receive_frame(channel, deadline);
                if (f.type == frame_type::abort) throw handover_error("the old process aborted: " + f.payload);
                if (take_bgp_frame(f, *bgp)) continue;
                if (f.type == frame_type::sessions_end) {
                    expect_count(f, frames, "session");
                    if (die_at_end) {
                        spdlog::error("upgrade: dying at sessions_end (APILB_UPGRADE_TEST_DIE_AT_SESSIONS_END)");
                        std::_Exit(3);
                    }
                    handover::send_frame(channel, frame_type::sessions_taken, std::to_string(frames), {}, deadline);
                    // From here the old process lets go of the VIPs and FRR.
                    take_over_bgp(std::exchange(bgp, nullptr));
                    receive_final_state(channel);
                    break;
                }
                if (f.type != frame_type::session) throw handover_error("expected a session frame");
                ++frames;
                if (die_after > 0 && frames >= die_after) {
                    spdlog::error("upgrade: dying after {} session frame(s) (APILB_UPGRADE_TEST_DIE_AFTER_SESSIONS)",
                                  frames);
                    std::_Exit(3);
                }
                std::vector<int> fds = f.fds.release();
                try {
                    if (fds.size() != 2) throw handover_error(fmt::format("{} socket(s), not 2", fds.size()));
                    const session_record r = handover::parse_session(f.payload);
                    workers[static_cast<std::size_t>(frames) % workers.size()]->adopt_session(r, fds[0], fds[1]);
                } catch (const handover_error& e) {
                    // The old process lets go of it once we say taken: a
                    // plain close here would end the client's stream as if
                    // complete.
                    for (int fd : fds) close_with_reset(fd);
                    ++refused;
                    stats_.sessions_refused_total.fetch_add(1, std::memory_order_relaxed);
                    spdlog::warn("upgrade: session record refused: {}; both sides reset", e.what());
                }
            }
            spdlog::info("upgrade: {} session(s) came from the old process, {} refused", frames, refused);
        } catch (const std::exception& e) {
            spdlog::error("upgrade: the session handover ended early: {}", e.what());
            // Before sessions_taken the old process keeps (or takes back) the
            // VIPs, and kills this one; unless it died: then this one acts as
            // on a fresh start.
            if (bgp && (bgp_ || vrrp_) && old_process_died(old_pid)) take_over_from_dead_old();
        }
    });
}

void process::take_over_from_dead_old() {
    spdlog::warn(
        "upgrade: the old process died before it handed over the VIP's side; this process takes it over as on a "
        "fresh start");
    take_over_bgp(nullptr);
    // The keeper of keepalived came with the child frames (this process holds
    // its lifeline, so keepalived runs on): it is adopted, not restarted.
    asio::post(control_, [this] { take_over_vip({}); });
}

void process::end_session_receive() {
    if (!adopt_thread_.joinable()) return;
    // Wakes a receive in progress: it sees the end of the channel at once.
    if (adopt_channel_ >= 0) ::shutdown(adopt_channel_, SHUT_RDWR);
    adopt_thread_.join();
    if (adopt_channel_ >= 0) ::close(adopt_channel_);
    adopt_channel_ = -1;
}

inherited_sockets receive_inherited(int channel, const std::string& version, clock_type::time_point deadline) {
    inherited_sockets got;
    got.channel = channel;
    try {
        handover::check_peer(channel);
        handover::send_frame(channel, frame_type::hello, fmt::format("{} {}", ::getpid(), version), {}, deadline);
        int frames = 0, state_frames = 0;
        while (true) {
            handover::frame f = handover::receive_frame(channel, deadline);
            if (f.type == frame_type::abort) throw handover_error("the old process aborted: " + f.payload);
            if (f.type == frame_type::state) {
                if (++state_frames > handover::max_state_frames) throw handover_error("too many state frames");
                handover::take_state_frame(f, got.state, got.state_bad);
                continue;
            }
            if (f.type == frame_type::state_end) {
                expect_count(f, state_frames, "state");
                continue;
            }
            if (f.type == frame_type::child) {
                handover::take_child_frame(f, got.children);
                continue;
            }
            if (f.type == frame_type::listeners_end) {
                expect_count(f, frames, "listener");
                break;
            }
            if (f.type != frame_type::listener) throw handover_error("expected a listener frame");
            if (++frames > 4096) throw handover_error("more than 4096 listener frames");
            const handover::listener_entry e = handover::parse_listener(f.payload);
            if (e.kind == "admin") {
                if (!got.admin.empty() || f.fds.size() != 1) throw handover_error("admin: expected one socket, once");
                got.admin_address = e.address;
                got.admin = std::move(f.fds);
                continue;
            }
            handover::owned_fds& fds = got.data[e.address];
            for (int fd : f.fds.release()) fds.push_back(fd);
        }
    } catch (...) {
        ::close(channel);
        got.channel = -1;
        throw;
    }
    return got;
}

}  // namespace apilb
