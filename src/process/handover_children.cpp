#include "apilb/process/handover_children.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "apilb/process/handover_state.hpp"

namespace apilb::handover {

namespace {

/// A group or name: a short word of the supervisor's own (letters, digits, '-', '_').
const std::string& checked_word(const state_line& l, std::string_view key) {
    const std::string& v = l.text(key);
    const bool ok = !v.empty() && v.size() <= 32 && std::all_of(v.begin(), v.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    });
    if (!ok) throw handover_error(fmt::format("child frame: {}= must be a short word", key));
    return v;
}

pid_t checked_pid(const state_line& l, std::string_view key, bool may_be_unknown) {
    if (may_be_unknown && l.text(key) == "-1") return -1;
    const std::uint64_t v = l.number(key);
    if (v == 0 || v > static_cast<std::uint64_t>(std::numeric_limits<pid_t>::max())) {
        throw handover_error(fmt::format("child frame: {}= is not a pid", key));
    }
    return static_cast<pid_t>(v);
}

}  // namespace

void send_children(int channel, const handed_children& children, std::chrono::steady_clock::time_point deadline) {
    state_line line{.kind = "lifeline", .fields = {}};
    line.add("group", children.group);
    const int ends[2] = {children.line.read_fd(), children.line.write_fd()};
    send_frame(channel, frame_type::child, encode_state({line}).front(), ends, deadline);
    for (const auto& c : children.children) {
        state_line l{.kind = "child", .fields = {}};
        l.add("group", children.group)
            .add("name", c.name)
            .add("pid", std::to_string(c.pid))
            .add("daemon", std::to_string(c.daemon));
        const int fd[1] = {c.pidfd};
        send_frame(channel, frame_type::child, encode_state({l}).front(), fd, deadline);
    }
}

void take_child_frame(frame& f, std::vector<handed_children>& groups) {
    std::vector<int> fds = f.fds.release();
    owned_fds guard;  // closes them unless taken
    for (int fd : fds) guard.push_back(fd);
    const std::vector<state_line> lines = parse_state(f.payload);
    if (lines.size() != 1) throw handover_error("child frame: expected one line");
    const state_line& l = lines.front();
    const std::string& group = checked_word(l, "group");
    auto it = std::find_if(groups.begin(), groups.end(), [&](const handed_children& g) { return g.group == group; });
    if (it == groups.end()) {
        if (groups.size() >= 8) throw handover_error("child frame: more than 8 groups");
        groups.emplace_back().group = group;
        it = groups.end() - 1;
    }
    if (l.kind == "lifeline") {
        if (fds.size() != 2 || it->line.valid())
            throw handover_error("child frame: a lifeline is two descriptors, once");
        it->line = lifeline(fds[0], fds[1]);
    } else if (l.kind == "child") {
        if (fds.size() != 1) throw handover_error("child frame: a child is one pidfd");
        if (it->children.size() >= 64) throw handover_error("child frame: more than 64 children in a group");
        it->children.push_back({.name = checked_word(l, "name"),
                                .pid = checked_pid(l, "pid", false),
                                .daemon = checked_pid(l, "daemon", true),
                                .pidfd = fds[0]});
    } else {
        throw handover_error("child frame: unknown kind " + l.kind.substr(0, 32));
    }
    guard.release();
}

}  // namespace apilb::handover
