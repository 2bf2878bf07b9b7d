// TLS end to end through apilb: it never terminates TLS, so the client
// verifies the apiserver's own certificate and the apiserver sees the
// client's certificate. Real curl and kubectl are the clients.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <regex>
#include <set>

#include <unistd.h>
#include <csignal>

#include "harness.hpp"

namespace apilb::test {
namespace {

/// A stand-in apiserver process on `ip`, port chosen by the kernel.
class standin {
public:
    standin(const temp_dir& dir, const std::string& certs, const std::string& ip, const std::string& name)
        : proc_({required_env("APILB_STANDIN_BIN"), "--listen", ip + ":0", "--cert", certs + "/server.crt", "--key",
                 certs + "/server.key", "--client-ca", certs + "/ca.crt", "--name", name},
                dir.file(name + ".log")) {
        const std::regex re("listening on [0-9.]+:([0-9]+)");
        for (int i = 0; i < 500; ++i) {
            std::smatch m;
            const std::string log = proc_.log();
            if (std::regex_search(log, m, re)) {
                address_ = ip + ":" + m[1].str();
                return;
            }
            std::this_thread::sleep_for(10ms);
        }
        throw std::runtime_error("stand-in " + name + " did not start: " + proc_.log());
    }
    ~standin() {
        proc_.signal(SIGTERM);
        EXPECT_EQ(proc_.wait(5s), std::optional<int>(0));
        expect_no_sanitizer_report(proc_.log(), "apilb-standin");
    }
    const std::string& address() const { return address_; }

private:
    process proc_;
    std::string address_;
};

class Tls : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new temp_dir;
        certs_ = dir_->file("certs");
        auto r = run_command({"/bin/bash", required_env("APILB_MKCERTS"), certs_}, 60s);
        ASSERT_EQ(r.exit_code, 0) << r.output;
        for (int i = 2; i <= 4; ++i) {
            standins_.push_back(
                std::make_unique<standin>(*dir_, certs_, fmt::format("127.0.0.{}", i), fmt::format("cp-{}", i)));
        }
        port_ = free_port();
        std::string backends;
        for (auto& s : standins_) {
            backends += fmt::format("      - {{name: b-{}, address: \"{}\"}}\n", backends.size(), s->address());
        }
        const std::string cfg = fmt::format(R"(listeners:
  - {{name: apiserver, address: "127.0.0.1:{}", pool: control-plane}}
pools:
  - name: control-plane
    balance: round-robin
    backends:
{})",
                                            port_, backends);
        apilb_ = new apilb_process(*dir_, cfg, "127.0.0.1", port_);
    }
    static void TearDownTestSuite() {
        if (apilb_) {
            EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
        }
        delete apilb_;
        standins_.clear();
        delete dir_;
    }

    static command_result curl(const std::string& path, std::vector<std::string> extra = {}) {
        std::vector<std::string> argv{"/usr/bin/curl", "-sS", "--max-time", "20", "--cacert", certs_ + "/ca.crt"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv.push_back(fmt::format("https://127.0.0.1:{}{}", port_, path));
        return run_command(argv, 30s);
    }

    static inline temp_dir* dir_ = nullptr;
    static inline std::string certs_;
    static inline std::vector<std::unique_ptr<standin>> standins_;
    static inline std::uint16_t port_ = 0;
    static inline apilb_process* apilb_ = nullptr;
};

TEST_F(Tls, ClientVerifiesTheApiserverCertificateThroughApilb) {
    auto r = curl("/readyz");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output, "ok");
}

TEST_F(Tls, ClientCertificateReachesTheApiserverUntouched) {
    auto r = curl("/whoami", {"--cert", certs_ + "/client.crt", "--key", certs_ + "/client.key"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("CN=kubernetes-admin"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("O=system:masters"), std::string::npos) << r.output;
}

TEST_F(Tls, RoundRobinSpreadsNewConnectionsOverEveryApiserver) {
    std::set<std::string> seen;
    for (int i = 0; i < 9; ++i) {
        auto r = curl("/whoami");
        ASSERT_EQ(r.exit_code, 0) << r.output;
        std::smatch m;
        if (std::regex_search(r.output, m, std::regex("\"name\":\"(cp-[0-9])\""))) seen.insert(m[1]);
    }
    EXPECT_EQ(seen, (std::set<std::string>{"cp-2", "cp-3", "cp-4"}));
}

TEST_F(Tls, LargeBodyEchoesByteForByte) {
    const std::string body = random_bytes(900 << 10, 42);  // the stand-in takes bodies up to 1 MiB
    dir_->write("body.bin", body);
    auto r = curl("/echo", {"--data-binary", "@" + dir_->file("body.bin"), "-H",
                            "Content-Type: application/octet-stream", "-o", dir_->file("echo.bin")});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::string got = read_file(dir_->file("echo.bin"));
    ASSERT_EQ(got.size(), body.size());
    EXPECT_EQ(fnv1a(got.data(), got.size()), fnv1a(body.data(), body.size()));
}

TEST_F(Tls, WatchStreamFlowsThroughApilb) {
    auto r = curl("/watch?events=3&interval_ms=100", {"-N"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    int lines = 0;
    for (char c : r.output) lines += c == '\n';
    EXPECT_EQ(lines, 3) << r.output;
    EXPECT_NE(r.output.find("\"type\":\"ADDED\""), std::string::npos);
}

TEST_F(Tls, KubectlTalksToTheApiserverThroughApilb) {
    if (::access("/usr/bin/kubectl", X_OK) != 0) GTEST_SKIP() << "kubectl is not installed on this machine";
    auto r = run_command(
        {"/usr/bin/kubectl", "--server", fmt::format("https://127.0.0.1:{}", port_), "--certificate-authority",
         certs_ + "/ca.crt", "--client-certificate", certs_ + "/client.crt", "--client-key", certs_ + "/client.key",
         "--request-timeout", "20s", "get", "--raw", "/version"},
        40s);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("v1.32.0-apilb-standin"), std::string::npos) << r.output;
}

TEST_F(Tls, WrongCaIsRejectedByTheClientNotByApilb) {
    // apilb passes the real certificate through; a client that trusts another CA must fail.
    auto r = run_command({"/usr/bin/curl", "-sS", "--max-time", "10", "--cacert", certs_ + "/other-ca.crt",
                          fmt::format("https://127.0.0.1:{}/readyz", port_)});
    EXPECT_NE(r.exit_code, 0) << r.output;
}

}  // namespace
}  // namespace apilb::test
