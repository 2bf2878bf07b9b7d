// Network namespaces for multi-host tests: a private L2 segment (a bridge in
// its own namespace) with hosts attached by veth pairs, addresses from
// 198.18.0.0/15 only, never connected to the host's interfaces. Everything is
// removed by the destructor, also when a test fails half-way.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "harness.hpp"

namespace apilb::test {

/// A program on $PATH (or the usual sbin directories) as an absolute path; "" if absent.
std::string find_program(const std::string& name);

/// Runs `fn` on the calling thread inside namespace `ns` (a name under
/// /run/netns) and switches back; sockets made inside stay in `ns`. Throws
/// std::runtime_error if the namespace cannot be entered.
void in_netns(const std::string& ns, const std::function<void()>& fn);

/// Switches the calling thread into `ns` for good (for a thread of its own).
void enter_netns(const std::string& ns);

/// A TCP socket listening on `ip`, port 0, made inside namespace `ns`;
/// returns its descriptor and sets `port`. Throws std::runtime_error.
int listen_in_netns(const std::string& ns, const std::string& ip, int backlog, std::uint16_t& port);

/// One bridge namespace and hosts on it, named <prefix>-<host>.
class netns_segment {
public:
    /// `prefix` must be unique per run (include the PID).
    explicit netns_segment(std::string prefix);
    /// Deletes every namespace created (their veth ends go with them).
    ~netns_segment();
    netns_segment(const netns_segment&) = delete;
    netns_segment& operator=(const netns_segment&) = delete;

    /// Deletes namespaces named <prefix><pid>-* whose test process <pid> is
    /// gone (a run that crashed before its destructor ran).
    static void remove_orphans(const std::string& prefix);

    /// Why namespaces cannot be made here ("" when they can): tried once.
    static std::string unavailable_reason();

    /// Adds a host namespace with eth0 on the bridge and `addresses`
    /// ("198.18.0.11/24"); returns the namespace name. Throws on failure.
    std::string add_host(const std::string& host, const std::vector<std::string>& addresses);
    /// Adds a host namespace with only `lo` up, not on the bridge: the test
    /// links it itself (a TUN delay line, say). Returns the namespace name.
    std::string add_detached_host(const std::string& host);
    std::string ns(const std::string& host) const { return prefix_ + "-" + host; }
    /// `ip -n <ns(host)> args...`; throws with the output if it fails.
    void ip(const std::string& host, const std::vector<std::string>& args) const;
    /// The bridge namespace's port for `host` (to cut the host off from the segment).
    std::string bridge_port(const std::string& host) const { return "p-" + host; }
    std::string bridge_ns() const { return ns("br"); }

private:
    std::string prefix_;
    std::string ip_bin_;
    std::vector<std::string> created_;
};

}  // namespace apilb::test
