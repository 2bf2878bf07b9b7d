// The admin endpoint's /metrics on the real binary: it parses strictly as
// Prometheus text 0.0.4 and counts real traffic; a backend's session and
// byte counters move while a session is open and are exact, in /metrics
// and /api/v1/status alike, once it closes.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "admin_support.hpp"
#include "harness.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;

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
    // relay.io as the start resolved it: the test setup's (harness.hpp).
    EXPECT_EQ(value_of(fams, "apilb_relay_io_uring", "apilb_relay_io_uring", {}),
              test_relay_io() == "io_uring" ? 1 : 0);
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


}  // namespace
}  // namespace apilb::test
