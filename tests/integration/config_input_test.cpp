// Hostile config input through the real binary: YAML on which yaml-cpp 0.7
// never returns (the seed corpus in tests/corpus/config), and special or
// oversized files wherever the config names a path. Every command answers
// within a bound, naming the file; a running apilb keeps its config, keeps
// serving and keeps answering /livez.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <future>
#include <iostream>

#include "harness.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;
using clock_type = std::chrono::steady_clock;

/// As apilb/yaml_guard.hpp: under ASan and TSan every budget is four times larger.
const int slowdown = apilb_sanitized() ? 4 : 1;
/// The guard's wall-clock deadline (yaml_guard_deadline): the latest a
/// runaway parse is refused. Its 500 ms CPU budget usually refuses it well
/// before, but a child starved of CPU takes longer to use the budget: with
/// tests running side by side on a loaded 2-core machine (load 21) a hang
/// file once needed 4.5 s of wall time.
const auto guard_deadline = 5s * slowdown;
/// What "answers at once" means here: within the guard's deadline, plus time
/// for the process to start and exit (under ASan on that loaded machine,
/// 7.5 s past the 20 s deadline). Without the fixes these commands never
/// answer (run_command kills them at the command timeout below).
const auto answer_bound = guard_deadline + 3s * slowdown;
const auto command_timeout = answer_bound + 4s * slowdown;

std::string bin() { return required_env("APILB_BIN"); }

/// The seed corpus's bad files, sorted: hang-*.yaml never finish in yaml-cpp
/// 0.7, error-*.yaml are refused (the fuzz seeds good-*, pem-* load).
std::vector<std::string> corpus() {
    std::vector<std::string> files;
    for (const auto& e :
         std::filesystem::directory_iterator(required_env("APILB_SOURCE_ROOT") + "/tests/corpus/config")) {
        const std::string name = e.path().filename().string();
        if (e.path().extension() == ".yaml" && (name.starts_with("hang-") || name.starts_with("error-"))) {
            files.push_back(e.path().string());
        }
    }
    std::sort(files.begin(), files.end());
    return files;
}

bool is_hang(const std::string& path) { return std::filesystem::path(path).filename().string().rfind("hang-", 0) == 0; }

struct timed_result {
    command_result r;
    milliseconds took{};
};

timed_result timed(const std::vector<std::string>& argv) {
    const auto started = clock_type::now();
    timed_result t{.r = run_command(argv, command_timeout), .took = {}};
    t.took = std::chrono::duration_cast<milliseconds>(clock_type::now() - started);
    return t;
}

/// curl's status code for `method` on the admin endpoint, or 0 if no answer within `max`.
int admin_status_code(std::uint16_t port, const std::string& method, const std::string& path,
                      const std::string& token = {}, int max_seconds = 5 * slowdown) {
    std::vector<std::string> argv{
        "/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", std::to_string(max_seconds), "-X",
        method};
    if (!token.empty()) {
        argv.push_back("-H");
        argv.push_back("Authorization: Bearer " + token);
    }
    argv.push_back("http://127.0.0.1:" + std::to_string(port) + path);
    const auto r = run_command(argv, std::chrono::seconds(max_seconds + 5));
    try {
        return std::stoi(r.output);
    } catch (const std::exception&) {
        return 0;
    }
}

std::size_t count(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
    return n;
}

void make_fifo(const std::string& path) {
    std::filesystem::remove(path);
    ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0) << path;
}

TEST(ConfigInput, CheckConfigRefusesEveryCorpusFileWithinTheBound) {
    const auto files = corpus();
    ASSERT_GE(files.size(), 9u);
    milliseconds slowest{};
    for (const auto& f : files) {
        const auto t = timed({bin(), "check-config", "--config", f});
        EXPECT_EQ(t.r.exit_code, 2) << f << "\n" << t.r.output;
        EXPECT_LT(t.took, answer_bound) << f;
        EXPECT_NE(t.r.output.find(f + ":"), std::string::npos) << t.r.output;
        if (is_hang(f)) {
            EXPECT_NE(t.r.output.find("did not finish within"), std::string::npos) << t.r.output;
        }
        slowest = std::max(slowest, t.took);
    }
    std::cout << "[ guard ] check-config of " << files.size() << " corpus files: slowest answer " << slowest.count()
              << "ms\n";
}

// Under valgrind /proc/self/exe names valgrind's tool binary, so a guard
// that spawned /proc/self/exe ran the tool, which exits 1, and no config
// loaded: the benchmark's callgrind run of apilb never started. The guard's
// child is started without valgrind (no --trace-children), so this costs
// little. Not in sanitizer builds: valgrind cannot run them.
TEST(ConfigInput, CheckConfigLoadsAGoodFileUnderValgrind) {
    if (apilb_sanitized()) GTEST_SKIP() << "valgrind cannot run a sanitizer build";
    const std::string valgrind = "/usr/bin/valgrind";
    if (::access(valgrind.c_str(), X_OK) != 0) GTEST_SKIP() << valgrind << " is not installed";
    temp_dir dir;
    dir.write("good.yaml", single_pool_config(free_port(), {"127.0.0.2:9"}, "round-robin", 1));
    const auto r = run_command(
        {valgrind, "--tool=none", "-q", bin(), "check-config", "--config", dir.file("good.yaml")}, 60s * slowdown);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output.find("exited with code"), std::string::npos) << r.output;
}

TEST(ConfigInput, RunRefusesTheIssueReproducersWithoutStarting) {
    for (const char* name : {"hang-comma.yaml", "hang-document-start-comma.yaml", "hang-directive-comma.yaml"}) {
        const std::string f = required_env("APILB_SOURCE_ROOT") + "/tests/corpus/config/" + name;
        const auto t = timed({bin(), "run", "--config", f});
        EXPECT_EQ(t.r.exit_code, 2) << f << "\n" << t.r.output;
        EXPECT_LT(t.took, answer_bound) << f;
        EXPECT_NE(t.r.output.find("did not finish within"), std::string::npos) << t.r.output;
    }
}

TEST(ConfigInput, CliFindingTheAdminEndpointInAHangingConfigAnswers) {
    const std::string f = required_env("APILB_SOURCE_ROOT") + "/tests/corpus/config/hang-comma.yaml";
    const auto t = timed({bin(), "status", "--config", f});
    EXPECT_NE(t.r.exit_code, 0) << t.r.output;
    EXPECT_NE(t.r.exit_code, -1) << "killed at the timeout: " << t.r.output;
    EXPECT_LT(t.took, answer_bound);
    EXPECT_NE(t.r.output.find("did not finish within"), std::string::npos) << t.r.output;
}

TEST(ConfigInput, SpecialAndOversizedConfigFilesAreRefusedAtOnce) {
    temp_dir dir;
    make_fifo(dir.file("fifo.yaml"));
    dir.write("big.yaml", std::string((256 << 10) + 1, '#'));
    const std::vector<std::pair<std::string, std::string>> cases{
        {dir.file("fifo.yaml"), "the file is a FIFO, expected a regular file"},
        {"/dev/zero", "the file is a character device, expected a regular file"},
        {dir.file("big.yaml"), "the file is larger than 256 KiB"},
    };
    for (const auto& [path, message] : cases) {
        for (const char* cmd : {"check-config", "run"}) {
            const auto t = timed({bin(), cmd, "--config", path});
            EXPECT_EQ(t.r.exit_code, 2) << cmd << " " << path << "\n" << t.r.output;
            EXPECT_LT(t.took, answer_bound) << cmd << " " << path;
            EXPECT_NE(t.r.output.find(path + ": " + message), std::string::npos) << t.r.output;
        }
    }
}

TEST(ConfigInput, FifoAsCaFileIsAnErrorAtItsKeyNotAHang) {
    temp_dir dir;
    make_fifo(dir.file("ca.crt"));
    // The health section belongs to the pool: append it under pools[0].
    std::string yaml = single_pool_config(6443, {"127.0.0.2:6443"}, "round-robin", 1);
    yaml.insert(yaml.find("log:"), "    health:\n      tls: {ca_file: \"" + dir.file("ca.crt") + "\"}\n");
    dir.write("apilb.yaml", yaml);
    const auto t = timed({bin(), "check-config", "--config", dir.file("apilb.yaml")});
    EXPECT_EQ(t.r.exit_code, 2) << t.r.output;
    EXPECT_LT(t.took, answer_bound);
    EXPECT_NE(t.r.output.find("pools[0].health.tls.ca_file"), std::string::npos) << t.r.output;
    EXPECT_NE(t.r.output.find(dir.file("ca.crt") + "\" is a FIFO, expected a regular file"), std::string::npos)
        << t.r.output;
}

TEST(ConfigInput, CliRefusesSpecialFilesForItsTokenAndCa) {
    temp_dir dir;
    make_fifo(dir.file("token"));
    make_fifo(dir.file("ca.crt"));
    // Port 1 on loopback: nothing listens; the files must be refused before any connect.
    auto t = timed({bin(), "reload", "--admin", "127.0.0.1:1", "--token-file", dir.file("token")});
    EXPECT_NE(t.r.exit_code, 0) << t.r.output;
    EXPECT_LT(t.took, answer_bound);
    EXPECT_NE(t.r.output.find(dir.file("token") + ": it is a FIFO, expected a regular file"), std::string::npos)
        << t.r.output;
    t = timed({bin(), "status", "--admin", "https://127.0.0.1:1", "--cacert", dir.file("ca.crt")});
    EXPECT_NE(t.r.exit_code, 0) << t.r.output;
    EXPECT_LT(t.took, answer_bound);
    EXPECT_NE(t.r.output.find("--cacert: " + dir.file("ca.crt") + " is a FIFO, expected a regular file"),
              std::string::npos)
        << t.r.output;
}

/// A running apilb with an echo backend and an admin endpoint with a token.
class RunningConfigInput : public ::testing::Test {
protected:
    void SetUp() override {
        dir_.write("token", token_ + "\n");
        good_ = single_pool_config(port_, {backend_.address()}, "round-robin", 1,
                                   "admin:\n  address: \"127.0.0.1:" + std::to_string(admin_) + "\"\n  token_file: \"" +
                                       dir_.file("token") + "\"\n");
        apilb_ = std::make_unique<apilb_process>(dir_, good_, "127.0.0.1", port_);
        ASSERT_TRUE(serves());
    }

    /// A new client through the listener gets its bytes echoed.
    bool serves() {
        client c;
        c.set_timeout(5s);
        if (c.connect("127.0.0.1", port_) != 0 || !c.send_all("ping")) return false;
        return c.recv_exact(4) == "ping";
    }

    /// SIGHUP; true once the log shows the reload failed (bounded wait).
    bool reload_fails_on_sighup() {
        const auto failed = count(apilb_->log(), "reload failed");
        apilb_->proc().signal(SIGHUP);
        const auto deadline = clock_type::now() + 10s * slowdown;
        while (clock_type::now() < deadline) {
            if (count(apilb_->log(), "reload failed") > failed) return true;
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }

    /// After a rejected reload: still the old config, still serving, still live.
    void expect_unharmed(const std::string& what) {
        EXPECT_TRUE(apilb_->proc().running()) << what;
        EXPECT_EQ(admin_status_code(admin_, "GET", "/livez"), 200) << what;
        EXPECT_TRUE(serves()) << what;
        EXPECT_EQ(count(apilb_->log(), "reload done"), 0u) << what;
    }

    temp_dir dir_;
    tcp_server backend_{"127.0.0.2", echo_handler()};
    std::uint16_t port_ = free_port();
    std::uint16_t admin_ = free_port();
    std::string token_ = "config-input-test-token";
    std::string good_;
    std::unique_ptr<apilb_process> apilb_;
};

TEST_F(RunningConfigInput, ReloadWithAHangingConfigIsRejectedAndLivezStaysUp) {
    for (const char* name : {"hang-comma.yaml", "hang-document-start-comma.yaml", "hang-directive-comma.yaml"}) {
        const std::string bytes = read_file(required_env("APILB_SOURCE_ROOT") + "/tests/corpus/config/" + name);
        dir_.write("apilb.yaml", bytes);
        ASSERT_TRUE(reload_fails_on_sighup()) << name << "\n" << apilb_->log();
        expect_unharmed(std::string("SIGHUP with ") + name);

        // POST /api/v1/reload: rejected within the bound, and /livez asked
        // meanwhile still answers.
        const auto started = clock_type::now();
        auto post = std::async(std::launch::async, [&] {
            return admin_status_code(admin_, "POST", "/api/v1/reload", token_, 10 * slowdown);
        });
        const int live = admin_status_code(admin_, "GET", "/livez");
        const int posted = post.get();
        const auto took = std::chrono::duration_cast<milliseconds>(clock_type::now() - started);
        EXPECT_NE(posted, 200) << name;
        EXPECT_NE(posted, 0) << name << ": no answer to POST /api/v1/reload";
        EXPECT_EQ(live, 200) << name << ": /livez during the reload";
        EXPECT_LT(took, answer_bound) << name;
        std::cout << "[ guard ] " << name << ": POST /api/v1/reload answered " << posted << " in " << took.count()
                  << "ms; /livez meanwhile " << live << "\n";
        expect_unharmed(std::string("POST with ") + name);
    }
    EXPECT_GE(count(apilb_->log(), "did not finish within"), 6u) << apilb_->log();
}

TEST_F(RunningConfigInput, ReloadWithFifosIsRejectedAndLivezStaysUp) {
    // A FIFO named as a pool's CA file.
    make_fifo(dir_.file("ca.crt"));
    std::string yaml = good_;
    yaml.insert(yaml.find("log:"), "    health:\n      tls: {ca_file: \"" + dir_.file("ca.crt") + "\"}\n");
    dir_.write("apilb.yaml", yaml);
    ASSERT_TRUE(reload_fails_on_sighup()) << apilb_->log();
    EXPECT_TRUE(apilb_->wait_for_log(dir_.file("ca.crt") + "\" is a FIFO, expected a regular file")) << apilb_->log();
    expect_unharmed("ca_file FIFO");

    // The config file itself replaced by a FIFO.
    make_fifo(dir_.file("apilb.yaml"));
    ASSERT_TRUE(reload_fails_on_sighup()) << apilb_->log();
    EXPECT_TRUE(apilb_->wait_for_log(dir_.file("apilb.yaml") + ": the file is a FIFO, expected a regular file"))
        << apilb_->log();
    expect_unharmed("config FIFO");
}

}  // namespace
}  // namespace apilb::test
