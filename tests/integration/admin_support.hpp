// What the admin endpoint tests share: requests to the endpoint, a
// backend's entry in /api/v1/status, backends that tag their echo with
// their name, and a config with an admin address and a fast health check.
#pragma once

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <fmt/format.h>

#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace apilb::test {

namespace json = boost::json;

using http_reply = http_answer;

/// One HTTP/1.1 request on a fresh connection; status 0 if it failed.
inline http_reply http(std::uint16_t port, const std::string& method, const std::string& path,
                       const std::string& extra_headers = {}) {
    return http_exchange(port, method, path, extra_headers);
}

/// Polls GET `path` until `pred(reply)` holds (bounded).
inline bool wait_for(std::uint16_t port, const std::string& path, const std::function<bool(const http_reply&)>& pred,
                     std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred(http(port, "GET", path))) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
}

inline json::object backend_status(const std::string& status_body, const std::string& name) {
    const json::value v = json::parse(status_body);
    for (const auto& p : v.at("pools").as_array()) {
        for (const auto& b : p.at("backends").as_array()) {
            if (b.at("name").as_string() == name) return b.as_object();
        }
    }
    ADD_FAILURE() << "no backend " << name << " in " << status_body;
    return {};
}

/// Echo after a tag line naming the backend, so a client knows where it went.
inline tcp_server::handler tagged_echo(std::string tag) {
    return [tag = std::move(tag), echo = echo_handler()](int& fd) {
        const std::string line = tag + "\n";
        if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) return;
        echo(fd);
    };
}

/// Connects through apilb, sends `payload`, returns the backend's tag.
inline std::string round_trip(std::uint16_t port, const std::string& payload) {
    client c;
    if (c.connect("127.0.0.1", port) != 0) return "connect failed";
    c.set_timeout(std::chrono::milliseconds(5000));
    const std::string tag = c.recv_exact(3);
    c.send_all(payload);
    const std::string echoed = c.recv_exact(payload.size());
    if (echoed != payload) return "echo mismatch";
    return tag.substr(0, 2);
}

inline std::string admin_config(std::uint16_t listen_port, const std::vector<std::string>& backends,
                                std::uint16_t admin_port, const std::string& admin_extra = {}) {
    std::string yaml = single_pool_config(
        listen_port, backends, "round-robin", 2,
        fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n{}", admin_port, admin_extra));
    // A fast tcp check so that health changes show within a second.
    const std::string anchor = "    balance: round-robin\n";
    yaml.replace(yaml.find(anchor), anchor.size(),
                 anchor + "    health: {type: tcp, interval: 100ms, timeout: 500ms, rise: 1, fall: 1}\n");
    return yaml;
}

}  // namespace apilb::test
