// Asking FRR about its BGP sessions: `vtysh -c 'show bgp neighbors json'`
// run as a child without a shell, its output and run time bounded; the
// answer's parse is in bgp_neighbors.hpp. Control thread (docs/bgp.md).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "apilb/vip/bgp_neighbors.hpp"

namespace apilb {

/// How a bounded command ended.
struct command_outcome {
    bool ok = false;     ///< ran to the end and exited 0
    std::string output;  ///< stdout, at most the bound: the answer
    std::string errors;  ///< stderr, at most the bound: warnings and why it failed
    std::string error;   ///< why not ok: "exited with status 1", "timed out after 2000ms", ...
};

/// Runs `argv` (argv[0] an absolute path) with stdin from /dev/null and
/// stdout and stderr captured apart. A child that writes more than `max_output` bytes to either
/// or runs longer than `timeout` is killed (SIGKILL, by its PID) and reaped.
/// Never throws; waits on `io` (the control context) without blocking it.
boost::asio::awaitable<command_outcome> run_bounded(boost::asio::io_context& io, std::vector<std::string> argv,
                                                    std::size_t max_output, std::chrono::milliseconds timeout);

}  // namespace apilb
