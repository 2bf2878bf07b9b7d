#include "netns.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>

namespace apilb::test {

std::string find_program(const std::string& name) {
    std::string path = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "";
    path += ":/usr/sbin:/sbin:/usr/bin:/bin";
    std::stringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
        if (dir.empty()) continue;
        const std::string candidate = dir + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return {};
}

namespace {

int open_ns(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    return fd;
}

void switch_to(int fd, const std::string& what) {
    if (::setns(fd, CLONE_NEWNET) != 0) {
        const int err = errno;
        ::close(fd);
        throw std::runtime_error("setns " + what + ": " + std::strerror(err));
    }
    ::close(fd);
}

}  // namespace

void enter_netns(const std::string& ns) { switch_to(open_ns("/run/netns/" + ns), ns); }

void in_netns(const std::string& ns, const std::function<void()>& fn) {
    const int home = open_ns("/proc/thread-self/ns/net");
    try {
        enter_netns(ns);
    } catch (...) {
        ::close(home);
        throw;
    }
    try {
        fn();
    } catch (...) {
        switch_to(home, "back");
        throw;
    }
    switch_to(home, "back");
}

std::string netns_segment::unavailable_reason() {
    static const std::string reason = [] {
        const std::string ip = find_program("ip");
        if (ip.empty()) return std::string("the ip command (iproute2) is not installed");
        const std::string name = "apilb-probe-" + std::to_string(::getpid());
        auto add = run_command({ip, "netns", "add", name}, 10s);
        if (add.exit_code != 0) return "cannot create a network namespace (`ip netns add`): " + add.output;
        auto veth = run_command({ip, "-n", name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"},
                                10s);
        auto bridge = run_command({ip, "-n", name, "link", "add", "br0", "type", "bridge"}, 10s);
        run_command({ip, "netns", "del", name}, 10s);
        if (veth.exit_code != 0) return "cannot create a veth pair in a namespace: " + veth.output;
        if (bridge.exit_code != 0) return "cannot create a bridge in a namespace: " + bridge.output;
        return std::string();
    }();
    return reason;
}

void netns_segment::remove_orphans(const std::string& prefix) {
    std::error_code ec;
    const std::string ip = find_program("ip");
    std::vector<std::string> orphans;
    for (auto it = std::filesystem::directory_iterator("/run/netns", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!name.starts_with(prefix)) continue;
        const std::string rest = name.substr(prefix.size());
        const auto dash = rest.find('-');
        if (dash == std::string::npos || dash == 0 ||
            rest.substr(0, dash).find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        const std::string pid = rest.substr(0, dash);
        if (!std::filesystem::exists("/proc/" + pid)) orphans.push_back(name);
    }
    for (const auto& name : orphans) run_command({ip, "netns", "del", name}, 10s);
}

netns_segment::netns_segment(std::string prefix) : prefix_(std::move(prefix)), ip_bin_(find_program("ip")) {
    auto r = run_command({ip_bin_, "netns", "add", bridge_ns()}, 10s);
    if (r.exit_code != 0) throw std::runtime_error("ip netns add " + bridge_ns() + ": " + r.output);
    created_.push_back(bridge_ns());
    ip("br", {"link", "add", "br0", "type", "bridge"});
    ip("br", {"link", "set", "br0", "up"});
}

netns_segment::~netns_segment() {
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) {
        auto r = run_command({ip_bin_, "netns", "del", *it}, 10s);
        if (r.exit_code != 0) ADD_FAILURE() << "cannot remove namespace " << *it << ": " << r.output;
    }
}

void netns_segment::ip(const std::string& host, const std::vector<std::string>& args) const {
    std::vector<std::string> argv{ip_bin_, "-n", ns(host)};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run_command(argv, 10s);
    if (r.exit_code != 0) {
        std::string line;
        for (const auto& a : argv) line += a + " ";
        throw std::runtime_error(line + "failed: " + r.output);
    }
}

std::string netns_segment::add_detached_host(const std::string& host) {
    auto r = run_command({ip_bin_, "netns", "add", ns(host)}, 10s);
    if (r.exit_code != 0) throw std::runtime_error("ip netns add " + ns(host) + ": " + r.output);
    created_.push_back(ns(host));
    ip(host, {"link", "set", "lo", "up"});
    return ns(host);
}

std::string netns_segment::add_host(const std::string& host, const std::vector<std::string>& addresses) {
    add_detached_host(host);
    // Both ends are made inside namespaces: nothing ever touches the host's links.
    ip("br", {"link", "add", bridge_port(host), "type", "veth", "peer", "name", "eth0", "netns", ns(host)});
    ip("br", {"link", "set", bridge_port(host), "master", "br0", "up"});
    for (const auto& a : addresses) ip(host, {"addr", "add", a, "dev", "eth0"});
    ip(host, {"link", "set", "eth0", "up"});
    return ns(host);
}

int listen_in_netns(const std::string& ns, const std::string& ip, int backlog, std::uint16_t& port) {
    int fd = -1;
    in_netns(ns, [&] {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        const int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, backlog) != 0) {
            const std::string why = std::strerror(errno);
            if (fd >= 0) ::close(fd);
            throw std::runtime_error("listen on " + ip + " in " + ns + ": " + why);
        }
        socklen_t len = sizeof sa;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
        port = ntohs(sa.sin_port);
    });
    return fd;
}

}  // namespace apilb::test
