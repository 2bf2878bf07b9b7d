// The admin endpoint of the real binary: /livez, /readyz and /api/v1/status
// follow backend health; /metrics parses as Prometheus text 0.0.4 and counts
// real traffic; drain/enable/reload through the CLI with its exit codes; a
// bearer token guards POSTs; a non-loopback admin address needs a token;
// `apilb status` and the page show a pool's discovery beside its seed.
#include <gtest/gtest.h>

#include <filesystem>

#include <boost/json.hpp>

#include <fmt/format.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "harness.hpp"
#include "standin.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;
namespace json = boost::json;

using http_reply = http_answer;

/// One HTTP/1.1 request on a fresh connection; status 0 if it failed.
http_reply http(std::uint16_t port, const std::string& method, const std::string& path,
                const std::string& extra_headers = {}) {
    return http_exchange(port, method, path, extra_headers);
}

/// Polls GET `path` until `pred(reply)` holds (bounded).
bool wait_for(std::uint16_t port, const std::string& path, const std::function<bool(const http_reply&)>& pred,
              milliseconds timeout = milliseconds(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred(http(port, "GET", path))) return true;
        std::this_thread::sleep_for(milliseconds(50));
    }
    return false;
}

json::object backend_status(const std::string& status_body, const std::string& name) {
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
tcp_server::handler tagged_echo(std::string tag) {
    return [tag = std::move(tag), echo = echo_handler()](int& fd) {
        const std::string line = tag + "\n";
        if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) return;
        echo(fd);
    };
}

/// Connects through apilb, sends `payload`, returns the backend's tag.
std::string round_trip(std::uint16_t port, const std::string& payload) {
    client c;
    if (c.connect("127.0.0.1", port) != 0) return "connect failed";
    c.set_timeout(milliseconds(5000));
    const std::string tag = c.recv_exact(3);
    c.send_all(payload);
    const std::string echoed = c.recv_exact(payload.size());
    if (echoed != payload) return "echo mismatch";
    return tag.substr(0, 2);
}

std::string admin_config(std::uint16_t listen_port, const std::vector<std::string>& backends, std::uint16_t admin_port,
                         const std::string& admin_extra = {}) {
    std::string yaml = single_pool_config(
        listen_port, backends, "round-robin", 2,
        fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n{}", admin_port, admin_extra));
    // A fast tcp check so that health changes show within a second.
    const std::string anchor = "    balance: round-robin\n";
    yaml.replace(yaml.find(anchor), anchor.size(),
                 anchor + "    health: {type: tcp, interval: 100ms, timeout: 500ms, rise: 1, fall: 1}\n");
    return yaml;
}

// ---------------------------------------------------------------- Prometheus text format 0.0.4

struct metric_family {
    std::string type;
    bool help = false;
    std::vector<std::pair<std::map<std::string, std::string>, double>> samples;  // by sample name below
    std::map<std::string, std::vector<std::pair<std::map<std::string, std::string>, double>>> by_name;
};

/// Parses the exposition strictly; every problem is a test failure. Returns families by name.
void parse_exposition(const std::string& text, std::map<std::string, metric_family>& families) {
    const std::regex name_re("[a-zA-Z_:][a-zA-Z0-9_:]*");
    const std::regex label_name_re("[a-zA-Z_][a-zA-Z0-9_]*");
    std::istringstream in(text);
    std::string line;
    int n = 0;
    std::string current;  // the family whose TYPE came last
    EXPECT_TRUE(!text.empty() && text.back() == '\n') << "the exposition must end with a newline";
    while (std::getline(in, line)) {
        ++n;
        SCOPED_TRACE("line " + std::to_string(n) + ": " + line);
        EXPECT_FALSE(line.empty()) << "empty line";
        if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
            std::istringstream words(line.substr(7));
            std::string name, rest;
            words >> name;
            std::getline(words, rest);
            EXPECT_TRUE(std::regex_match(name, name_re)) << name;
            EXPECT_EQ(name.rfind("apilb_", 0), 0u) << "every name under apilb_";
            auto& f = families[name];
            if (line[2] == 'H') {
                EXPECT_FALSE(f.help) << "second HELP for " << name;
                f.help = true;
            } else {
                EXPECT_TRUE(f.type.empty()) << "second TYPE for " << name;
                EXPECT_TRUE(f.by_name.empty()) << "TYPE after samples of " << name;
                f.type = rest.empty() ? "" : rest.substr(1);
                EXPECT_TRUE(f.type == "counter" || f.type == "gauge" || f.type == "histogram") << f.type;
                if (f.type == "counter") {
                    EXPECT_TRUE(name.ends_with("_total")) << name << ": a counter ends in _total";
                }
                current = name;
            }
            continue;
        }
        ASSERT_NE(line[0], '#') << "unknown comment";
        // name{labels} value
        std::size_t i = 0;
        while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
        const std::string name = line.substr(0, i);
        ASSERT_TRUE(std::regex_match(name, name_re)) << name;
        std::map<std::string, std::string> labels;
        if (i < line.size() && line[i] == '{') {
            ++i;
            while (i < line.size() && line[i] != '}') {
                const auto eq = line.find('=', i);
                ASSERT_NE(eq, std::string::npos);
                const std::string lname = line.substr(i, eq - i);
                EXPECT_TRUE(std::regex_match(lname, label_name_re)) << lname;
                ASSERT_EQ(line[eq + 1], '"');
                std::string value;
                std::size_t j = eq + 2;
                for (; j < line.size() && line[j] != '"'; ++j) {
                    if (line[j] == '\\') {
                        ++j;
                        ASSERT_LT(j, line.size());
                        ASSERT_TRUE(line[j] == '\\' || line[j] == '"' || line[j] == 'n') << "bad escape";
                        value += line[j] == 'n' ? '\n' : line[j];
                    } else {
                        value += line[j];
                    }
                }
                ASSERT_LT(j, line.size()) << "unterminated label value";
                EXPECT_FALSE(labels.contains(lname)) << "repeated label " << lname;
                labels[lname] = value;
                i = j + 1;
                if (line[i] == ',') ++i;
            }
            ASSERT_LT(i, line.size());
            ++i;  // '}'
        }
        ASSERT_EQ(line[i], ' ');
        const std::string value_text = line.substr(i + 1);
        double value = 0;
        if (value_text == "+Inf") {
            value = HUGE_VAL;
        } else {
            std::size_t used = 0;
            value = std::stod(value_text, &used);
            EXPECT_EQ(used, value_text.size()) << "value " << value_text;
        }
        // The sample belongs to the family whose TYPE came last.
        std::string family = name;
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
            if (name.ends_with(suffix) && name.substr(0, name.size() - std::strlen(suffix)) == current)
                family = current;
        }
        ASSERT_EQ(family, current) << "sample without its TYPE right before";
        families[family].by_name[name].emplace_back(labels, value);
    }
    for (const auto& [name, f] : families) {
        EXPECT_TRUE(f.help) << name << " has no HELP";
        EXPECT_FALSE(f.type.empty()) << name << " has no TYPE";
        if (f.type != "histogram") continue;
        // Buckets cumulative, +Inf last and equal to _count; _sum present.
        const auto& buckets = f.by_name.at(name + "_bucket");
        std::map<std::string, std::vector<std::pair<double, double>>> series;  // labels without le -> (le, count)
        for (const auto& [labels, v] : buckets) {
            auto key = labels;
            const std::string le = key.at("le");
            key.erase("le");
            std::string k;
            for (const auto& [a, b] : key) k += a + "=" + b + ",";
            series[k].emplace_back(le == "+Inf" ? HUGE_VAL : std::stod(le), v);
        }
        EXPECT_EQ(series.size(), f.by_name.at(name + "_count").size());
        EXPECT_EQ(series.size(), f.by_name.at(name + "_sum").size());
        for (const auto& [k, points] : series) {
            for (std::size_t p = 1; p < points.size(); ++p) {
                EXPECT_LT(points[p - 1].first, points[p].first) << k << ": le in increasing order";
                EXPECT_LE(points[p - 1].second, points[p].second) << k << ": buckets are cumulative";
            }
            EXPECT_EQ(points.back().first, HUGE_VAL) << k << ": the last bucket is +Inf";
            bool matched = false;
            for (const auto& [labels, v] : f.by_name.at(name + "_count")) {
                std::string kk;
                for (const auto& [a, b] : labels) kk += a + "=" + b + ",";
                if (kk == k) {
                    EXPECT_EQ(v, points.back().second) << k << ": +Inf bucket equals _count";
                    matched = true;
                }
            }
            EXPECT_TRUE(matched) << k << " has no _count";
        }
    }
}

double value_of(const std::map<std::string, metric_family>& fams, const std::string& family, const std::string& sample,
                const std::map<std::string, std::string>& labels) {
    const auto f = fams.find(family);
    if (f == fams.end() || !f->second.by_name.contains(sample)) {
        ADD_FAILURE() << "no metric " << sample;
        return -1;
    }
    for (const auto& [l, v] : f->second.by_name.at(sample)) {
        if (l == labels) return v;
    }
    ADD_FAILURE() << "no sample of " << sample << " with those labels";
    return -1;
}

// ---------------------------------------------------------------- tests

TEST(AdminEndpoint, LivezReadyzAndStatusFollowBackendHealth) {
    temp_dir dir;
    auto b0 = std::make_unique<tcp_server>("127.0.0.1", tagged_echo("b0"));
    auto b1 = std::make_unique<tcp_server>("127.0.0.1", tagged_echo("b1"));
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, admin_config(port, {b0->address(), b1->address()}, admin), "127.0.0.1", port);

    const auto live = http(admin, "GET", "/livez");
    EXPECT_EQ(live.status, 200) << live.body;
    EXPECT_NE(live.body.find("2 of 2 worker(s) answered"), std::string::npos) << live.body;
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }))
        << http(admin, "GET", "/readyz").body;
    EXPECT_NE(http(admin, "GET", "/readyz").body.find("[+] pool p: 2 of 2 backend(s) healthy"), std::string::npos);

    auto status = http(admin, "GET", "/api/v1/status");
    ASSERT_EQ(status.status, 200);
    auto b = backend_status(status.body, "b1");
    EXPECT_EQ(b.at("state").as_string(), "up");
    EXPECT_EQ(b.at("address").as_string(), b1->address());

    // b1 stops listening: probes are refused, and the status says so. (The
    // first failing probe may instead see a reset, if its connect raced the
    // listener's close; the next ones are refused.)
    b1->stop();
    ASSERT_TRUE(wait_for(admin, "/api/v1/status", [](const http_reply& r) {
        if (r.status != 200) return false;
        const auto s = backend_status(r.body, "b1");
        return s.at("state").as_string() == "down" && s.at("last_probe").at("reason").as_string() == "tcp_refused";
    })) << http(admin, "GET", "/api/v1/status").body;
    b = backend_status(http(admin, "GET", "/api/v1/status").body, "b1");
    EXPECT_EQ(b.at("last_probe").at("reason").as_string(), "tcp_refused");
    EXPECT_FALSE(b.at("last_probe").at("passed").as_bool());
    EXPECT_GE(b.at("recent_changes").as_array().size(), 1u);
    EXPECT_EQ(http(admin, "GET", "/readyz").status, 200) << "b0 still serves the pool";

    // With no healthy backend apilb is not ready: keepalived and probes must see 503.
    b0->stop();
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 503; }));
    const auto not_ready = http(admin, "GET", "/readyz");
    EXPECT_NE(not_ready.body.find("[-] pool p: 0 of 2 backend(s) healthy"), std::string::npos) << not_ready.body;
    EXPECT_NE(not_ready.body.find("not ready: pool p has no healthy backend"), std::string::npos) << not_ready.body;
    EXPECT_EQ(http(admin, "GET", "/livez").status, 200) << "liveness is about apilb, not its backends";

    EXPECT_EQ(http(admin, "GET", "/nope").status, 404);
    EXPECT_EQ(http(admin, "POST", "/metrics").status, 405);
    const auto page = http(admin, "GET", "/");
    EXPECT_EQ(page.status, 200);
    EXPECT_NE(page.body.find("<title>apilb status</title>"), std::string::npos);
    EXPECT_EQ(page.body.find("http://"), std::string::npos) << "the page must reference no other host";
    EXPECT_EQ(page.body.find("https://"), std::string::npos) << "the page must reference no other host";
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminEndpoint, MetricsParseAndCountRealTraffic) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    tcp_server b1("127.0.0.1", tagged_echo("b1"));
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, admin_config(port, {b0.address(), b1.address()}, admin), "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));

    constexpr int sessions = 10;
    const std::string payload(1000, 'x');
    std::map<std::string, int> where;
    for (int i = 0; i < sessions; ++i) ++where[round_trip(port, payload)];
    EXPECT_EQ(where["b0"] + where["b1"], sessions);

    // Sessions end asynchronously after the client closes; wait until none is active.
    ASSERT_TRUE(wait_for(admin, "/metrics", [](const http_reply& r) {
        return r.body.find("\napilb_sessions_active 0\n") != std::string::npos;
    }));
    const auto m = http(admin, "GET", "/metrics");
    ASSERT_EQ(m.status, 200);
    std::map<std::string, metric_family> fams;
    parse_exposition(m.body, fams);
    // Prometheus's own linter, where Debian's prometheus package is installed
    // (it is not in scripts/install-deps.sh: the whole server comes with it).
    if (::access("/usr/bin/promtool", X_OK) == 0) {
        dir.write("metrics.txt", m.body);
        const auto lint = run_command(
            {"/bin/sh", "-c", "/usr/bin/promtool check metrics < " + dir.file("metrics.txt")});
        EXPECT_EQ(lint.exit_code, 0) << lint.output;
        EXPECT_EQ(lint.output, "") << "promtool has remarks";
    } else {
        std::cout << "promtool not installed: skipping `promtool check metrics` (the parser above still ran)\n";
    }
    if (HasFailure()) std::cerr << m.body;
    EXPECT_EQ(value_of(fams, "apilb_listener_connections_accepted_total", "apilb_listener_connections_accepted_total",
                       {{"listener", "front"}}),
              sessions);
    double total = 0, sent = 0, received = 0;
    for (const char* name : {"b0", "b1"}) {
        const std::map<std::string, std::string> l{{"pool", "p"}, {"backend", name}};
        total += value_of(fams, "apilb_backend_sessions_total", "apilb_backend_sessions_total", l);
        sent += value_of(fams, "apilb_backend_sent_bytes_total", "apilb_backend_sent_bytes_total", l);
        received += value_of(fams, "apilb_backend_received_bytes_total", "apilb_backend_received_bytes_total", l);
        EXPECT_EQ(value_of(fams, "apilb_backend_healthy", "apilb_backend_healthy", l), 1);
        EXPECT_EQ(value_of(fams, "apilb_backend_last_probe_success", "apilb_backend_last_probe_success", l), 1);
        auto lb = l;
        lb["le"] = "+Inf";
        EXPECT_GE(
            value_of(fams, "apilb_backend_probe_duration_seconds", "apilb_backend_probe_duration_seconds_bucket", lb),
            1);
    }
    EXPECT_EQ(total, sessions);
    EXPECT_EQ(sent, sessions * payload.size());
    EXPECT_EQ(received, sessions * (payload.size() + 3));
    EXPECT_EQ(value_of(fams, "apilb_ready", "apilb_ready", {}), 1);
    // Against the descriptors the kernel lists for the process (a scrape
    // holds one more, its own connection, which may or may not be counted).
    std::size_t listed = 0;
    for ([[maybe_unused]] const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(apilb.proc().pid()) + "/fd")) {
        ++listed;
    }
    EXPECT_GT(listed, 5u);
    EXPECT_NEAR(value_of(fams, "apilb_process_open_fds", "apilb_process_open_fds", {}), static_cast<double>(listed),
                2.0);
    EXPECT_GT(value_of(fams, "apilb_process_resident_memory_bytes", "apilb_process_resident_memory_bytes", {}), 1e6);

    // A connect refused by a backend is counted with its reason.
    b1.stop();
    b0.stop();
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    c.set_timeout(milliseconds(5000));
    int end = 0;
    c.recv_until_eof(end);
    ASSERT_TRUE(wait_for(admin, "/metrics", [](const http_reply& r) {
        return std::regex_search(r.body,
                                 std::regex("\napilb_backend_connect_failures_total\\{pool=\"p\",backend=\"b[01]\","
                                            "reason=\"refused\"\\} [1-9]"));
    })) << "no refused connect counted";
    EXPECT_EQ(apilb.terminate(), 0);
}

/// A backend's session and byte counters, from /metrics and from /api/v1/status.
struct backend_counts {
    double sessions = -1, sent = -1, received = -1;
    bool operator==(const backend_counts&) const = default;
};

backend_counts counts_in_metrics(std::uint16_t admin, const std::string& backend) {
    const auto m = http(admin, "GET", "/metrics");
    std::map<std::string, metric_family> fams;
    parse_exposition(m.body, fams);
    const std::map<std::string, std::string> l{{"pool", "p"}, {"backend", backend}};
    return {value_of(fams, "apilb_backend_sessions_total", "apilb_backend_sessions_total", l),
            value_of(fams, "apilb_backend_sent_bytes_total", "apilb_backend_sent_bytes_total", l),
            value_of(fams, "apilb_backend_received_bytes_total", "apilb_backend_received_bytes_total", l)};
}

backend_counts counts_in_status(std::uint16_t admin, const std::string& backend) {
    const auto b = backend_status(http(admin, "GET", "/api/v1/status").body, backend);
    if (b.empty()) return {};
    return {static_cast<double>(b.at("sessions_total").to_number<std::uint64_t>()),
            static_cast<double>(b.at("bytes_to_backend").to_number<std::uint64_t>()),
            static_cast<double>(b.at("bytes_from_backend").to_number<std::uint64_t>())};
}

/// Polls both until they show `want`; how long that took, or nullopt.
std::optional<milliseconds> wait_for_counts(std::uint16_t admin, const std::string& backend, const backend_counts& want,
                                            milliseconds timeout = milliseconds(5000)) {
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < t0 + timeout) {
        if (counts_in_metrics(admin, backend) == want && counts_in_status(admin, backend) == want) {
            return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0);
        }
        std::this_thread::sleep_for(milliseconds(50));
    }
    return std::nullopt;
}

TEST(AdminEndpoint, CountersMoveWhileASessionIsOpenAndAreExactAfterItCloses) {
    // A watch lasts hours: its session counts once connected and its bytes
    // show within a second or two, not when it ends (Prometheus rate()).
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, admin_config(port, {b0.address()}, admin), "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));

    client c;
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    c.set_timeout(milliseconds(5000));
    ASSERT_EQ(c.recv_exact(3), "b0\n");
    std::uint64_t sent = 0;
    for (std::size_t size : {10000u, 70000u}) {
        const std::string chunk = random_bytes(size, static_cast<std::uint32_t>(size));
        ASSERT_TRUE(c.send_all(chunk));
        ASSERT_EQ(c.recv_exact(chunk.size()), chunk);
        sent += chunk.size();
        const backend_counts want{1, static_cast<double>(sent), static_cast<double>(sent + 3)};
        const auto took = wait_for_counts(admin, "b0", want);
        EXPECT_TRUE(took) << "after " << sent << "B each way, with the session open: /metrics shows sessions "
                          << counts_in_metrics(admin, "b0").sessions << ", sent " << counts_in_metrics(admin, "b0").sent
                          << "; status shows sent " << counts_in_status(admin, "b0").sent;
        if (took) std::cout << "[ counters ] " << sent << "B each way visible after " << took->count() << "ms\n";
    }
    c.close();
    // Closed: the totals are exact, the last bytes counted once, and they
    // agree with the relay's own count in its log line.
    ASSERT_TRUE(wait_for(admin, "/metrics", [](const http_reply& r) {
        return r.body.find("\napilb_sessions_active 0\n") != std::string::npos;
    }));
    EXPECT_TRUE(apilb.wait_for_log(fmt::format("client_to_backend={}B backend_to_client={}B", sent, sent + 3)))
        << apilb.log();
    const backend_counts exact{1, static_cast<double>(sent), static_cast<double>(sent + 3)};
    EXPECT_TRUE(wait_for_counts(admin, "b0", exact, milliseconds(2500)));
    std::this_thread::sleep_for(milliseconds(1500));  // a worker tick after the close adds nothing
    EXPECT_EQ(counts_in_metrics(admin, "b0"), exact);
    EXPECT_EQ(counts_in_status(admin, "b0"), exact);
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminControl, DrainEnableReloadThroughTheCli) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    tcp_server b1("127.0.0.1", tagged_echo("b1"));
    const auto port = free_port();
    const auto admin = free_port();
    // The token file does not exist: apilb creates it, the CLI reads it.
    const std::string token_file = dir.file("admin-token");
    const std::string yaml = admin_config(port, {b0.address(), b1.address()}, admin,
                                          "  token_file: \"" + token_file + "\"\n");
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    const std::string bin = required_env("APILB_BIN");
    const std::string cfg = dir.file("apilb.yaml");

    auto r = run_command({bin, "drain", "p", "b0", "--config", cfg});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    for (int i = 0; i < 6; ++i) EXPECT_EQ(round_trip(port, "hello"), "b1") << "a drained backend gets no new session";
    r = run_command({bin, "status", "--admin", fmt::format("127.0.0.1:{}", admin)});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("drained(admin)"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("b1"), std::string::npos) << r.output;

    // A reload keeps the admin drain of a backend that is still there.
    r = run_command({bin, "reload", "--config", cfg});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(backend_status(http(admin, "GET", "/api/v1/status").body, "b0").at("drain_source").as_string(), "admin");
    for (int i = 0; i < 4; ++i) EXPECT_EQ(round_trip(port, "hello"), "b1");
    EXPECT_NE(http(admin, "GET", "/metrics").body.find("apilb_reloads_total{result=\"success\"} 1\n"),
              std::string::npos);

    r = run_command({bin, "enable", "p", "b0", "--config", cfg});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::set<std::string> seen;
    for (int i = 0; i < 6; ++i) seen.insert(round_trip(port, "hello"));
    EXPECT_TRUE(seen.contains("b0")) << "enabled again";

    // Exit codes a script can rely on.
    r = run_command({bin, "drain", "p", "nosuch", "--config", cfg});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("pool p has no backend nosuch"), std::string::npos) << r.output;
    r = run_command({bin, "drain", "nopool", "b0", "--config", cfg});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    r = run_command({bin, "drain", "p"});
    EXPECT_EQ(r.exit_code, 64) << r.output;
    r = run_command({bin, "status", "--admin", fmt::format("127.0.0.1:{}", free_port())});
    EXPECT_EQ(r.exit_code, 1) << r.output;

    // A broken file: the reload is refused, the CLI prints every error with
    // file:line:column, apilb serves on.
    const int lines = static_cast<int>(std::count(yaml.begin(), yaml.end(), '\n'));
    const std::size_t balance_at = yaml.find("balance: round-robin");
    const int balance_line = static_cast<int>(std::count(yaml.begin(), yaml.begin() + balance_at, '\n')) + 1;
    std::string broken = yaml;
    broken.replace(balance_at, std::string("balance: round-robin").size(), "balance: sideways");
    dir.write("apilb.yaml", broken + "bogus: 1\n");
    r = run_command({bin, "reload", "--admin", fmt::format("127.0.0.1:{}", admin), "--token-file", token_file});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: the configuration was rejected; the running one stays"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find(fmt::format("error: {}:{}:1: bogus", cfg, lines + 1)), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(fmt::format("error: {}:{}:", cfg, balance_line)), std::string::npos) << r.output;
    const std::string bearer = "Authorization: Bearer " + read_file(token_file).substr(0, 64) + "\r\n";
    const http_reply rejected = http(admin, "POST", "/api/v1/reload", bearer);
    EXPECT_EQ(rejected.status, 422);
    const json::value errors = json::parse(rejected.body).at("errors");
    ASSERT_EQ(errors.as_array().size(), 2u) << rejected.body;
    EXPECT_NE(rejected.body.find(fmt::format("\"{}:{}:1: bogus", cfg, lines + 1)), std::string::npos) << rejected.body;
    EXPECT_NE(http(admin, "GET", "/metrics").body.find("apilb_reloads_total{result=\"failure\"} 2\n"),
              std::string::npos);
    EXPECT_EQ(http(admin, "GET", "/livez").status, 200);
    // A page from another origin cannot drain a backend, token or not.
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain", "Origin: http://evil.example\r\n" + bearer).status,
              403);
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminControl, AReloadRejectedAfterLoadingSaysWhyOnce) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    tcp_server taken("127.0.0.1", [](int&) {});
    const auto port = free_port();
    const auto admin = free_port();
    const std::string token_file = dir.file("admin-token");
    const std::string yaml = admin_config(port, {b0.address()}, admin, "  token_file: \"" + token_file + "\"\n");
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    // The file loads; the new listener's port is taken: found after loading, by the listener check.
    const std::string front = fmt::format("  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n", port);
    std::string next = yaml;
    next.replace(next.find(front), front.size(),
                 front + fmt::format("  - {{name: api2, address: \"{}\", pool: p}}\n", taken.address()));
    dir.write("apilb.yaml", next);
    const auto r = run_command({required_env("APILB_BIN"), "reload", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    // Found before the bind by the listener check (another process holds it).
    EXPECT_NE(r.output.find(fmt::format("error: listener api2: {} is taken:", taken.address())), std::string::npos)
        << r.output;
    EXPECT_EQ(apilb.log().find("Address already in use: Address already in use"), std::string::npos) << apilb.log();
    EXPECT_EQ(round_trip(port, "hello"), "b0") << "the running config serves on";
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminControl, StatusColumnsFitLongPoolAndBackendNames) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    const auto port = free_port();
    const auto admin = free_port();
    // The docs' own pool name is 13 characters; this backend's is 22.
    std::string yaml = admin_config(port, {b0.address()}, admin);
    for (const auto& [from, to] :
         std::vector<std::pair<std::string, std::string>>{{"pool: p}", "pool: control-plane}"},
                                                          {"  - name: p\n", "  - name: control-plane\n"},
                                                          {"name: b0,", "name: apiserver-cp-1-east,"}}) {
        yaml.replace(yaml.find(from), from.size(), to);
    }
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    const auto r = run_command({required_env("APILB_BIN"), "status", "--admin", fmt::format("127.0.0.1:{}", admin)});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::istringstream lines(r.output);
    std::string summary, header, row;
    std::getline(lines, summary);
    std::getline(lines, header);
    std::getline(lines, row);
    // Every cell starts (or, for numbers, ends) under its heading.
    const auto at = [&](const char* heading) { return header.find(heading); };
    EXPECT_EQ(row.find("control-plane"), at("POOL")) << r.output;
    EXPECT_EQ(row.find("apiserver-cp-1-east"), at("BACKEND")) << r.output;
    EXPECT_EQ(row.find(" up ") + 1, at("STATE")) << r.output;
    const std::size_t active_end = at("ACTIVE") + 5;
    ASSERT_LT(active_end + 1, row.size()) << r.output;
    EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(row[active_end])) && row[active_end + 1] == ' ') << r.output;
    EXPECT_EQ(apilb.terminate(), 0);
}

TEST(AdminControl, TokenGuardsPostsAndNonLoopbackNeedsOne) {
    temp_dir dir;
    tcp_server b0("127.0.0.1", tagged_echo("b0"));
    dir.write("token", "s3cret-token\n");
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, admin_config(port, {b0.address()}, admin, "  token_file: \"" + dir.file("token") + "\"\n"),
                        "127.0.0.1", port);
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain").status, 401);
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain", "Authorization: Bearer wrong\r\n").status, 401);
    EXPECT_EQ(http(admin, "POST", "/api/v1/backends/p/b0/drain", "Authorization: Bearer s3cret-token\r\n").status, 200);
    EXPECT_EQ(http(admin, "GET", "/api/v1/status").status, 200) << "reading needs no token";
    // The CLI takes the token file from the config.
    const std::string bin = required_env("APILB_BIN");
    auto r = run_command({bin, "enable", "p", "b0", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(apilb.terminate(), 0);

    // Off the loopback, drain/reload would be open to the network: rejected.
    dir.write("open.yaml",
              single_pool_config(port, {b0.address()}, "round-robin", 1, "admin:\n  address: \"0.0.0.0:6445\"\n"));
    r = run_command({bin, "check-config", "--config", dir.file("open.yaml")});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("admin.address"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("token_file"), std::string::npos) << r.output;
}

TEST(AdminLogs, JsonLinesCarryStableFields) {
    temp_dir dir;
    auto b0 = std::make_unique<tcp_server>("127.0.0.1", tagged_echo("b0"));
    tcp_server b1("127.0.0.1", tagged_echo("b1"));
    const auto port = free_port();
    const auto admin = free_port();
    dir.write("token", "s3cret-token\n");
    std::string yaml = admin_config(port, {b0->address(), b1.address()}, admin,
                                    "  token_file: \"" + dir.file("token") + "\"\n");
    yaml.replace(yaml.find("log: {level: debug}"), std::string("log: {level: debug}").size(),
                 "log: {level: debug, format: json}");
    apilb_process apilb(dir, yaml, "127.0.0.1", port);
    ASSERT_TRUE(wait_for(admin, "/readyz", [](const http_reply& r) { return r.status == 200; }));
    {
        // A session through apilb, ended by the client: its closing line
        // names the pool, the backend and the client.
        client c;
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        ASSERT_TRUE(c.send_all("x"));
        c.set_timeout(2s);
        EXPECT_FALSE(c.recv_exact(3).empty());
        c.shutdown_write();
        int end = 0;
        c.recv_until_eof(end);
    }
    ASSERT_TRUE(apilb.wait_for_log(R"("event":"session_closed","pool":"p","backend":"b)")) << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log(R"("client":"127.0.0.1:)")) << apilb.log();
    ASSERT_EQ(http(admin, "POST", "/api/v1/backends/p/b1/drain", "Authorization: Bearer s3cret-token\r\n").status, 200);
    b0->stop();
    // Refused, or reset when a probe's connect raced the listener's close.
    ASSERT_TRUE(apilb.wait_for_log(R"("event":"backend_unhealthy","pool":"p","backend":"b0","reason":"tcp_)"))
        << apilb.log();
    const std::string log = apilb.log();
    EXPECT_TRUE(log.find(R"("backend":"b0","reason":"tcp_refused")") != std::string::npos ||
                log.find(R"("backend":"b0","reason":"tcp_error")") != std::string::npos)
        << log;
    EXPECT_TRUE(apilb.wait_for_log(R"("event":"backend_drained","pool":"p","backend":"b1","reason":"admin")"))
        << apilb.log();
    EXPECT_EQ(apilb.terminate(), 0);
    // Every line is one JSON object with ts, level and msg.
    std::istringstream lines(apilb.log());
    std::string line;
    int n = 0;
    while (std::getline(lines, line)) {
        boost::system::error_code ec;
        const json::value v = json::parse(line, ec);
        ASSERT_FALSE(ec) << "not JSON: " << line;
        EXPECT_TRUE(v.as_object().contains("ts") && v.as_object().contains("level") && v.as_object().contains("msg"))
            << line;
        ++n;
    }
    EXPECT_GT(n, 3);
}

/// What `apilb status` says about discovery, against the stand-in's
/// EndpointSlice API: the watch, the discovered set beside the seed (a
/// terminating apiserver marked), the state file; then, restarted with the
/// API gone, the set from the state file, marked in use.
TEST(AdminControl, StatusShowsDiscoveryBesideTheSeed) {
    temp_dir dir;
    const std::string certs = make_certs(dir);
    dir.write("kubeconfig", fmt::format("apiVersion: v1\nkind: Config\n"
                                        "clusters:\n- name: k\n  cluster:\n    server: https://192.0.2.1:6443\n"
                                        "    certificate-authority: {0}/ca.crt\n"
                                        "users:\n- name: u\n  user:\n    client-certificate: {0}/client.crt\n"
                                        "    client-key: {0}/client.key\n"
                                        "contexts:\n- name: c\n  context: {{cluster: k, user: u}}\n"
                                        "current-context: c\n",
                                        certs));
    const auto port = free_port();
    const auto admin = free_port();
    auto config = [&](const std::string& seed) {
        return fmt::format(
            "workers: 1\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
            "pools:\n  - name: p\n    backends:\n      - {{name: seed-1, address: \"{}\"}}\n"
            "    discovery:\n      kubeconfig: {}\n      state_file: {}\n"
            "admin: {{address: \"127.0.0.1:{}\"}}\n",
            port, seed, dir.file("kubeconfig"), dir.file("state.json"), admin);
    };
    const std::string bin = required_env("APILB_BIN");
    const std::string at = fmt::format("127.0.0.1:{}", admin);
    // `apilb status` until it says `text` (the watch moves between states).
    command_result r;
    auto status_until = [&](const std::string& text) {
        return wait_until(
            [&] {
                r = run_command({bin, "status", "--admin", at});
                return r.output.find(text) != std::string::npos;
            },
            milliseconds(20000));
    };
    std::uint16_t api_port = 0;
    {
        standin_process api(dir, certs, "127.0.0.2", "api", {"--client-ca", certs + "/ca.crt"});
        api_port = api.port();
        apilb_process lb(dir, config(api.address()), "127.0.0.1", port);
        ASSERT_EQ(api.request("PUT", "/control/slices/kubernetes",
                              R"({"endpoints":[{"addresses":["127.0.0.2"]},)"
                              R"({"addresses":["127.0.0.4"],"conditions":{"terminating":true}}]})")
                      .status,
                  200);
        const std::string both = fmt::format("127.0.0.2:{0}, 127.0.0.4:{0} (terminating)", api_port);
        ASSERT_TRUE(lb.wait_for_log("the API lists 2 apiserver(s): " + both, milliseconds(20000))) << lb.log();
        ASSERT_TRUE(status_until("DISCOVERY p: watch watching")) << r.output;
        EXPECT_EQ(r.exit_code, 0) << r.output;
        EXPECT_NE(r.output.find("  set from    the API\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  discovered  " + both + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  seed        seed-1 " + api.address() + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  state file  " + dir.file("state.json") + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find(", lists 1, relists 0,"), std::string::npos) << r.output;
        // The apiserver the watch runs through, and no error yet.
        EXPECT_NE(r.output.find("  api server  " + api.address() + "\n"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("  last error  none\n"), std::string::npos) << r.output;
        EXPECT_TRUE(std::regex_search(r.output, std::regex("last sync [0-9]+s ago"))) << r.output;
        // The same facts in the JSON the page renders, and the page renders them.
        const json::object d = json::parse(http(admin, "GET", "/api/v1/status").body).at("discovery").at(0).as_object();
        EXPECT_EQ(d.at("seed").at(0).at("name").as_string(), "seed-1");
        EXPECT_EQ(d.at("state_file").as_string(), dir.file("state.json"));
        EXPECT_EQ(d.at("lists").to_number<std::uint64_t>(), 1u);
        EXPECT_EQ(d.at("api_server").as_string(), api.address());
        EXPECT_EQ(d.at("last_error").as_string(), "");
        EXPECT_EQ(d.at("last_error_unix").to_number<std::int64_t>(), 0);
        EXPECT_NE(http(admin, "GET", "/").body.find("data-discovery"), std::string::npos);
        ASSERT_TRUE(wait_until([&] { return read_file(dir.file("state.json")).find("127.0.0.4") != std::string::npos; },
                               milliseconds(5000)));
    }
    // The API is gone (the seed's port refuses): the set comes from the state file.
    apilb_process lb(dir, config(fmt::format("127.0.0.2:{}", api_port)), "127.0.0.1", port);
    ASSERT_TRUE(lb.wait_for_log("last-known-good from " + dir.file("state.json"))) << lb.log();
    ASSERT_TRUE(status_until("DISCOVERY p: watch backoff")) << r.output << lb.log();
    EXPECT_NE(r.output.find("  set from    the state file (last-known-good"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("  state file  " + dir.file("state.json") + " (in use)\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("last sync never"), std::string::npos) << r.output;
    EXPECT_TRUE(std::regex_search(r.output, std::regex("errors [1-9]"))) << r.output;
    // Which apiserver it tried, and why that failed, on one line with its
    // age. The loop moves to the next address of the state file's set
    // (127.0.0.2, 127.0.0.4) after each failure.
    const std::string tried = fmt::format("127\\.0\\.0\\.[24]:{}", api_port);
    EXPECT_TRUE(std::regex_search(r.output, std::regex("\n  api server  " + tried + "\n"))) << r.output;
    EXPECT_TRUE(std::regex_search(
        r.output, std::regex("\n  last error  connect to " + tried + ": Connection refused \\([0-9]+s ago\\)\n")))
        << r.output;
    const json::object d = json::parse(http(admin, "GET", "/api/v1/status").body).at("discovery").at(0).as_object();
    EXPECT_TRUE(std::regex_match(std::string(d.at("api_server").as_string()), std::regex(tried))) << d;
    EXPECT_TRUE(std::regex_match(std::string(d.at("last_error").as_string()),
                                 std::regex("connect to " + tried + ": Connection refused")))
        << d;
    EXPECT_GT(d.at("last_error_unix").to_number<std::int64_t>(), 0);
}

/// The last error in the status is one line and bounded, whatever the
/// apiserver answered: here a 401 whose message the status quotes.
TEST(AdminControl, StatusShowsTheDiscoveryErrorOnOneBoundedLine) {
    temp_dir dir;
    const std::string certs = make_certs(dir);
    write_kubeconfig(dir, certs);
    standin_process api(dir, certs, "127.0.0.2", "api", {"--client-ca", certs + "/ca.crt"});
    ASSERT_EQ(api.request("POST", "/control/reject-credentials?on=true").status, 200);
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process lb(dir,
                     fmt::format("workers: 1\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
                                 "pools:\n  - name: p\n    backends:\n      - {{name: seed, address: \"{}\"}}\n"
                                 "    discovery:\n      kubeconfig: {}\n"
                                 "admin: {{address: \"127.0.0.1:{}\"}}\n",
                                 port, api.address(), dir.file("kubeconfig"), admin),
                     "127.0.0.1", port);
    json::object d;
    ASSERT_TRUE(wait_until(
        [&] {
            d = json::parse(http(admin, "GET", "/api/v1/status").body).at("discovery").at(0).as_object();
            return !d.at("last_error").as_string().empty();
        },
        milliseconds(20000)))
        << lb.log();
    const std::string e(d.at("last_error").as_string());
    EXPECT_EQ(e.rfind("credentials rejected (HTTP 401)", 0), 0u) << e;
    EXPECT_LE(e.size(), 300u) << e;
    EXPECT_EQ(e.find_first_of("\r\n\t"), std::string::npos) << e;
    EXPECT_EQ(d.at("api_server").as_string(), api.address());
    const auto r = run_command({required_env("APILB_BIN"), "status", "--admin", fmt::format("127.0.0.1:{}", admin)});
    EXPECT_NE(r.output.find("  last error  credentials rejected (HTTP 401)"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace apilb::test
