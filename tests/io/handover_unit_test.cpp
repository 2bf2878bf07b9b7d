// The upgrade handover channel over a real socketpair: frames, descriptors,
// and every way a frame can be bad, with the descriptors it carried closed;
// the child frames (a lifeline, keepers' pidfds) with real processes, and
// the bgp section check of an upgrade.
#include "apilb/process/handover.hpp"

#include "apilb/process/handover_children.hpp"
#include "apilb/process/handover_state.hpp"
#include "apilb/process/upgrade_bgp.hpp"

#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

namespace apilb::handover {
namespace {

using clock_type = std::chrono::steady_clock;

clock_type::time_point in(std::chrono::milliseconds ms) { return clock_type::now() + ms; }

/// The process's open descriptors, counted in /proc/self/fd.
int open_fds() {
    int n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) return -1;
    while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    return n - 1;  // the directory's own descriptor
}

struct channel {
    int a = -1, b = -1;
    channel() {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0) {
            a = sv[0];
            b = sv[1];
        }
    }
    ~channel() {
        if (a >= 0) ::close(a);
        if (b >= 0) ::close(b);
    }
};

/// Sends raw bytes with `fds` as one message, bypassing send_frame's checks.
void send_raw(int sock, const std::string& bytes, const std::vector<int>& fds) {
    send_message(sock, bytes, fds, in(std::chrono::seconds(5)));
}

/// `n` pipe ends to send; closed by the caller.
std::vector<int> some_fds(int n) {
    std::vector<int> fds;
    for (int i = 0; i < n; ++i) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) break;
        ::close(p[1]);
        fds.push_back(p[0]);
    }
    return fds;
}

void close_all(const std::vector<int>& fds) {
    for (int fd : fds) ::close(fd);
}

std::string error_of(int sock, std::chrono::milliseconds wait) {
    try {
        receive_frame(sock, in(wait));
    } catch (const handover_error& e) {
        return e.what();
    }
    return "";
}

TEST(HandoverFrame, RoundTripCarriesPayloadAndDescriptors) {
    channel ch;
    const std::vector<int> fds = some_fds(3);
    ASSERT_EQ(fds.size(), 3u);
    send_frame(ch.a, frame_type::listener, "data 127.0.0.1:6443", fds, in(std::chrono::seconds(5)));
    frame f = receive_frame(ch.b, in(std::chrono::seconds(5)));
    EXPECT_EQ(f.type, frame_type::listener);
    EXPECT_EQ(f.payload, "data 127.0.0.1:6443");
    ASSERT_EQ(f.fds.size(), 3u);
    for (int fd : f.fds.get()) {
        struct stat st {};
        ASSERT_EQ(::fstat(fd, &st), 0);
        EXPECT_TRUE(S_ISFIFO(st.st_mode));
        EXPECT_TRUE(::fcntl(fd, F_GETFD) & FD_CLOEXEC) << "received without MSG_CMSG_CLOEXEC";
    }
    const listener_entry e = parse_listener(f.payload);
    EXPECT_EQ(e.kind, "data");
    EXPECT_EQ(e.address, "127.0.0.1:6443");
    close_all(fds);
}

TEST(HandoverFrame, EncodeDecodeAndHello) {
    const std::string bytes = encode_frame(frame_type::hello, "1234 0.2.0");
    EXPECT_EQ(bytes.size(), header_bytes + 10);
    const frame_view v = decode_frame(bytes);
    EXPECT_EQ(v.type, frame_type::hello);
    const auto [pid, version] = parse_hello(v.payload);
    EXPECT_EQ(pid, 1234);
    EXPECT_EQ(version, "0.2.0");
    EXPECT_THROW(parse_hello("x 0.2.0"), handover_error);
    EXPECT_THROW(parse_listener("tcp 127.0.0.1:1"), handover_error);
    EXPECT_THROW(parse_number("-1", "count"), handover_error);
}

TEST(HandoverFrame, TruncatedFrameIsRefusedAndItsDescriptorsClosed) {
    channel ch;
    const int before = open_fds();
    const std::vector<int> fds = some_fds(2);
    std::string bytes = encode_frame(frame_type::listener, "data 127.0.0.1:6443");
    bytes.resize(bytes.size() - 5);  // the length says 5 more bytes than come
    send_raw(ch.a, bytes, fds);
    close_all(fds);
    const std::string err = error_of(ch.b, std::chrono::seconds(5));
    EXPECT_NE(err.find("truncated"), std::string::npos) << err;
    EXPECT_EQ(open_fds(), before) << "descriptors of a refused frame leaked";
    bytes.resize(7);  // shorter than a header
    send_raw(ch.a, bytes, {});
    EXPECT_NE(error_of(ch.b, std::chrono::seconds(5)).find("shorter than"), std::string::npos);
}

TEST(HandoverFrame, OversizedFrameIsRefused) {
    channel ch;
    // The socket's buffer must hold the message for the kernel to take it.
    const int size = 1 << 20;
    ::setsockopt(ch.a, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(ch.b, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    const int before = open_fds();
    const std::vector<int> fds = some_fds(1);
    send_raw(ch.a, encode_frame(frame_type::listener, std::string(max_frame_bytes, 'x')), fds);
    close_all(fds);
    const std::string err = error_of(ch.b, std::chrono::seconds(5));
    EXPECT_NE(err.find("over the limit"), std::string::npos) << err;
    EXPECT_EQ(open_fds(), before);
    EXPECT_THROW(
        send_frame(ch.a, frame_type::abort, std::string(max_frame_bytes, 'x'), {}, in(std::chrono::seconds(1))),
        handover_error);
}

TEST(HandoverFrame, WrongVersionIsRefusedNamingBoth) {
    channel ch;
    const int before = open_fds();
    const std::vector<int> fds = some_fds(1);
    // A release of the previous protocol is refused at its first frame.
    send_raw(ch.a, encode_frame(frame_type::listener, "data 127.0.0.1:1", protocol_version - 1), fds);
    close_all(fds);
    const std::string err = error_of(ch.b, std::chrono::seconds(5));
    const std::string want = "protocol version " + std::to_string(protocol_version - 1) +
                             " from the peer, this side speaks " + std::to_string(protocol_version);
    EXPECT_NE(err.find(want), std::string::npos) << err;
    EXPECT_EQ(open_fds(), before);
    EXPECT_THROW(decode_frame(std::string("XLBH") + encode_frame(frame_type::hello, "1 x").substr(4)), handover_error);
}

TEST(HandoverFrame, TooManyDescriptorsAreRefusedAndClosed) {
    channel ch;
    const int before = open_fds();
    // More than the receiver's control buffer holds: MSG_CTRUNC.
    std::vector<int> fds = some_fds(static_cast<int>(max_frame_fds) + 8);
    ASSERT_EQ(fds.size(), max_frame_fds + 8);
    send_raw(ch.a, encode_frame(frame_type::listener, "data 127.0.0.1:1"), fds);
    EXPECT_NE(error_of(ch.b, std::chrono::seconds(5)).find("more than 64 descriptors"), std::string::npos);
    // Descriptors on a frame that may carry none.
    send_raw(ch.a, encode_frame(frame_type::ready, "1"), {fds[0], fds[1]});
    EXPECT_NE(error_of(ch.b, std::chrono::seconds(5)).find("may carry 0"), std::string::npos);
    close_all(fds);
    EXPECT_EQ(open_fds(), before);
    EXPECT_THROW(send_frame(ch.a, frame_type::hello, "1 x", std::vector<int>{0}, in(std::chrono::seconds(1))),
                 handover_error);
}

TEST(HandoverFrame, SilentPeerTimesOutWithinTheDeadline) {
    channel ch;
    const auto start = clock_type::now();
    const std::string err = error_of(ch.b, std::chrono::milliseconds(200));
    EXPECT_NE(err.find("timed out"), std::string::npos) << err;
    EXPECT_GE(clock_type::now() - start, std::chrono::milliseconds(190));
    EXPECT_LT(clock_type::now() - start, std::chrono::seconds(30));
}

TEST(HandoverFrame, PeerThatStopsMidSequenceIsSeenAsClosed) {
    channel ch;
    // The peer sends its first frame, then exits before the second.
    std::thread peer([&] {
        send_frame(ch.a, frame_type::hello, "1 x", {}, in(std::chrono::seconds(5)));
        ::close(ch.a);
        ch.a = -1;
    });
    peer.join();
    EXPECT_EQ(receive_frame(ch.b, in(std::chrono::seconds(5))).type, frame_type::hello);
    EXPECT_NE(error_of(ch.b, std::chrono::seconds(5)).find("closed the channel"), std::string::npos);
}

session_record sample_record() {
    return {.listener = "127.0.0.1:6443",
            .pool = "apiservers",
            .backend = "cp1",
            .backend_address = "10.0.0.1:6443",
            .bytes_to_backend = 1234,
            .bytes_from_backend = 18'446'744'073'709'551'615ull,
            .age_ms = 3'600'000,
            .client_fin = true,
            .backend_fin = false};
}

TEST(HandoverSession, RecordRoundTripsWithItsTwoSockets) {
    channel ch;
    const int before = open_fds();
    const std::vector<int> fds = some_fds(2);
    send_frame(ch.a, frame_type::session, encode_session(sample_record()), fds, in(std::chrono::seconds(5)));
    close_all(fds);
    frame f = receive_frame(ch.b, in(std::chrono::seconds(5)));
    ASSERT_EQ(f.type, frame_type::session);
    EXPECT_EQ(f.fds.size(), 2u);
    const session_record r = parse_session(f.payload);
    const session_record want = sample_record();
    EXPECT_EQ(r.listener, want.listener);
    EXPECT_EQ(r.pool, want.pool);
    EXPECT_EQ(r.backend, want.backend);
    EXPECT_EQ(r.backend_address, want.backend_address);
    EXPECT_EQ(r.bytes_to_backend, want.bytes_to_backend);
    EXPECT_EQ(r.bytes_from_backend, want.bytes_from_backend);
    EXPECT_EQ(r.age_ms, want.age_ms);
    EXPECT_TRUE(r.client_fin);
    EXPECT_FALSE(r.backend_fin);
    f.fds.reset();
    EXPECT_EQ(open_fds(), before);
}

TEST(HandoverSession, BadRecordsAreRefusedSayingWhy) {
    auto error_of_record = [](const std::string& payload) -> std::string {
        try {
            parse_session(payload);
        } catch (const handover_error& e) {
            return e.what();
        }
        return "accepted";
    };
    std::string good = encode_session(sample_record());
    EXPECT_NE(error_of_record("v2" + good.substr(2)).find("session record version \"v2\", this side reads v1"),
              std::string::npos);
    EXPECT_NE(error_of_record(good + std::string(max_session_record_bytes, 'x')).find("over the limit of 1024"),
              std::string::npos);
    std::string bad = good;
    bad.replace(bad.find("to=1234"), 7, "to=12x4");
    EXPECT_NE(error_of_record(bad).find("to must be a decimal number"), std::string::npos);
    bad = good;
    bad.replace(bad.find("pool="), 5, "poll=");
    EXPECT_NE(error_of_record(bad).find("expected pool=<value>"), std::string::npos);
    bad = good;
    bad.replace(bad.find("client_fin=1"), 12, "client_fin=2");
    EXPECT_NE(error_of_record(bad).find("client_fin must be 0 or 1"), std::string::npos);
    EXPECT_NE(error_of_record(good + " extra=1").find("unexpected bytes"), std::string::npos);
    EXPECT_NE(error_of_record(good.substr(0, good.find(" backend_fin"))).find("expected backend_fin"),
              std::string::npos);
    EXPECT_NE(error_of_record("").find("session record version"), std::string::npos);
    // A session frame carries its two sockets and no more.
    EXPECT_EQ(fds_allowed(frame_type::session), 2u);
    channel ch;
    const int before = open_fds();
    const std::vector<int> three = some_fds(3);
    send_raw(ch.a, encode_frame(frame_type::session, good), three);
    close_all(three);
    EXPECT_NE(error_of(ch.b, std::chrono::seconds(5)).find("may carry 2"), std::string::npos);
    EXPECT_EQ(open_fds(), before);
}

TEST(HandoverFrame, PeerIsThisUser) {
    channel ch;
    EXPECT_EQ(check_peer(ch.a), ::getpid());
}

TEST(HandoverState, LinesGoAcrossFramesAndComeBackAsTheyWere) {
    std::vector<state_line> lines;
    for (int i = 0; i < 3000; ++i) {
        state_line l{.kind = "backend", .fields = {}};
        l.add("pool", "p").add("backend", "b" + std::to_string(i)).add("address", "127.0.0.1:6443");
        l.add("sessions_total", std::uint64_t{18446744073709551615ULL});
        lines.push_back(std::move(l));
    }
    lines.push_back(state_line{.kind = "toolong", .fields = {{"x", std::string(max_state_line_bytes, 'x')}}});
    std::size_t dropped = 0;
    const auto payloads = encode_state(lines, &dropped);
    EXPECT_EQ(dropped, 1u);
    ASSERT_GT(payloads.size(), 1u) << "3000 lines need more than one 64 KiB frame";
    std::vector<state_line> back;
    for (const auto& p : payloads) {
        EXPECT_LE(p.size() + header_bytes, max_frame_bytes);
        for (auto& l : parse_state(p)) back.push_back(std::move(l));
    }
    ASSERT_EQ(back.size(), 3000u);
    EXPECT_EQ(back[2999].text("backend"), "b2999");
    EXPECT_EQ(back[0].number("sessions_total"), 18446744073709551615ULL);
    EXPECT_EQ(back[0].find("unknown"), nullptr) << "an unknown key is absent, not an error";
    EXPECT_THROW(back[0].number("pool"), handover_error);
    EXPECT_THROW(back[0].flag("sessions_total"), handover_error);
}

TEST(HandoverState, BadPayloadsAreRefusedWithTheReason) {
    EXPECT_THROW(parse_state("v2\nprocess a=1\n"), handover_error) << "another record version";
    EXPECT_THROW(parse_state("v1\nprocess a=1"), handover_error) << "no newline";
    EXPECT_THROW(parse_state("v1\nprocess a\n"), handover_error) << "not key=value";
    EXPECT_THROW(parse_state("v1\na=1 b=2\n"), handover_error) << "no kind";
    EXPECT_THROW(parse_state("v1\n\n"), handover_error) << "empty line";
    EXPECT_THROW(parse_state("v1\nk " + std::string(max_state_line_bytes, 'x') + "=1\n"), handover_error);
    EXPECT_EQ(parse_state("v1\n").size(), 0u);
}

/// The read end of a lifeline whose write ends are all closed.
bool hung_up(int read_fd) {
    pollfd p{read_fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & POLLHUP) != 0;
}

TEST(HandoverChildren, LifelineAndPidfdsMoveAndStillTellTheTruth) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::pause();
        ::_exit(0);
    }
    handed_children sent;
    sent.group = "frr";
    sent.line = lifeline::make();
    const int pidfd = open_pidfd(child);
    ASSERT_GE(pidfd, 0);
    sent.children.push_back({.name = "bgpd", .pid = child, .daemon = -1, .pidfd = pidfd});
    channel ch;
    send_children(ch.a, sent, in(std::chrono::seconds(5)));
    std::vector<handed_children> groups;
    for (int i = 0; i < 2; ++i) {
        frame f = receive_frame(ch.b, in(std::chrono::seconds(5)));
        ASSERT_EQ(f.type, frame_type::child);
        take_child_frame(f, groups);
    }
    ASSERT_EQ(groups.size(), 1u);
    handed_children& got = groups.front();
    EXPECT_EQ(got.group, "frr");
    ASSERT_TRUE(got.line.valid());
    ASSERT_EQ(got.children.size(), 1u);
    EXPECT_EQ(got.children[0].name, "bgpd");
    EXPECT_EQ(got.children[0].pid, child);
    EXPECT_EQ(got.children[0].daemon, -1);

    // The lifeline holds while either side holds a write end; the read end
    // (a keeper's) hangs up once both are gone.
    const int keeper_end = got.line.read_fd();
    sent.line.reset();
    EXPECT_FALSE(hung_up(keeper_end)) << "the received write end keeps it";
    lifeline kept(::dup(keeper_end), -1);
    got.line.reset();
    EXPECT_TRUE(hung_up(kept.read_fd())) << "no write end is left";

    // The received pidfd names the child: alive, signalled through it, ended.
    EXPECT_FALSE(pidfd_ended(got.children[0].pidfd));
    EXPECT_EQ(pidfd_signal(got.children[0].pidfd, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status));
    EXPECT_TRUE(pidfd_ended(got.children[0].pidfd));
}

TEST(HandoverChildren, BadChildFramesAreRefusedWithTheirDescriptorsClosed) {
    channel ch;
    const int before = open_fds();
    auto refused = [&](const std::string& line, int fds) {
        std::vector<int> mine;
        for (int i = 0; i < fds; ++i) {
            int p[2];
            if (::pipe2(p, O_CLOEXEC) == 0) {
                ::close(p[1]);
                mine.push_back(p[0]);
            }
        }
        send_frame(ch.a, frame_type::child, "v1\n" + line + "\n", mine, in(std::chrono::seconds(5)));
        for (int fd : mine) ::close(fd);
        frame f = receive_frame(ch.b, in(std::chrono::seconds(5)));
        std::vector<handed_children> groups;
        try {
            take_child_frame(f, groups);
        } catch (const handover_error& e) {
            return std::string(e.what());
        }
        return std::string("taken");
    };
    EXPECT_NE(refused("lifeline group=frr", 1).find("two descriptors"), std::string::npos);
    EXPECT_NE(refused("child group=frr name=bgpd pid=12 daemon=13", 2).find("one pidfd"), std::string::npos);
    EXPECT_NE(refused("child group=frr name=bg/pd pid=12 daemon=13", 1).find("short word"), std::string::npos);
    EXPECT_NE(refused("child group=frr name=bgpd pid=0 daemon=13", 1).find("not a pid"), std::string::npos);
    EXPECT_NE(refused("child group=frr name=bgpd daemon=13", 1).find("no pid="), std::string::npos);
    EXPECT_NE(refused("keeper group=frr", 1).find("unknown kind"), std::string::npos);
    EXPECT_EQ(open_fds(), before) << "a refused frame's descriptors stayed open";
}

TEST(UpgradeBgpSection, OnlyTheSameSectionTakesTheAnnouncementOver) {
    bgp_config b;
    b.local_as = 64512;
    b.router_id = "198.18.0.1";
    bgp_peer p;
    p.address = "198.18.0.2";
    p.remote_as = 64500;
    p.bfd = true;
    b.peers.push_back(p);
    b.vips.push_back({.ip = "198.18.1.100"});
    const std::vector<state_line> old{bgp_section_line(b)};
    EXPECT_EQ(bgp_section_mismatch(old, b), "");
    bgp_config wait = b;
    wait.withdraw_wait = std::chrono::seconds(5);  // only this process's own SIGTERM
    EXPECT_EQ(bgp_section_mismatch(old, wait), "");
    bgp_config vips = b;
    vips.vips.push_back({.ip = "198.18.1.101"});
    EXPECT_NE(bgp_section_mismatch(old, vips).find("the bgp section differs"), std::string::npos);
    bgp_config peer = b;
    peer.peers[0].bfd_multiplier = 5;
    EXPECT_NE(bgp_section_mismatch(old, peer), "");
    EXPECT_NE(bgp_section_mismatch(old, std::nullopt).find("no longer has"), std::string::npos);
    EXPECT_NE(bgp_section_mismatch({bgp_section_line(std::nullopt)}, b).find("now has a bgp section"),
              std::string::npos);
    EXPECT_EQ(bgp_section_mismatch({bgp_section_line(std::nullopt)}, std::nullopt), "");
}

TEST(HandoverChildren, KeepalivedsKeeperAndFrrsComeAsSeparateGroups) {
    // A node with a vrrp and a bgp section hands both over on one channel.
    handed_children keepalived;
    keepalived.group = "keepalived";
    keepalived.line = lifeline::make();
    const std::vector<int> k = some_fds(1);
    ASSERT_EQ(k.size(), 1u);
    keepalived.children.push_back({.name = "keepalived", .pid = 4242, .daemon = -1, .pidfd = k[0]});
    handed_children frr;
    frr.group = "frr";
    frr.line = lifeline::make();
    channel ch;
    send_children(ch.a, keepalived, in(std::chrono::seconds(5)));
    send_children(ch.a, frr, in(std::chrono::seconds(5)));
    std::vector<handed_children> groups;
    for (int i = 0; i < 3; ++i) {
        frame f = receive_frame(ch.b, in(std::chrono::seconds(5)));
        ASSERT_EQ(f.type, frame_type::child);
        take_child_frame(f, groups);
        EXPECT_TRUE(f.fds.empty()) << "the group owns them now";
    }
    ASSERT_EQ(groups.size(), 2u);
    EXPECT_EQ(groups[0].group, "keepalived");
    EXPECT_TRUE(groups[0].line.valid());
    ASSERT_EQ(groups[0].children.size(), 1u);
    EXPECT_EQ(groups[0].children[0].name, "keepalived");
    EXPECT_EQ(groups[0].children[0].pid, 4242);
    EXPECT_GE(groups[0].children[0].pidfd, 0);
    EXPECT_EQ(groups[1].group, "frr");
    EXPECT_TRUE(groups[1].line.valid());
    EXPECT_TRUE(groups[1].children.empty());

    // A second lifeline for a group is refused, its descriptors closed.
    const int before = open_fds();
    send_children(ch.a, keepalived, in(std::chrono::seconds(5)));
    {
        frame again = receive_frame(ch.b, in(std::chrono::seconds(5)));
        EXPECT_THROW(take_child_frame(again, groups), handover_error);
        receive_frame(ch.b, in(std::chrono::seconds(5)));  // the child frame that followed, closed
    }
    EXPECT_EQ(open_fds(), before) << "the refused lifeline's descriptors stayed open";
}

}  // namespace
}  // namespace apilb::handover
