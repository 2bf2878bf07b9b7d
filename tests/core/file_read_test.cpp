// read_regular_file: only a regular file, never more than the limit, and a
// special file refused before anything could block on it; and the config
// loader's use of it for every path in the config.
#include "apilb/core/file_read.hpp"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "apilb/core/config_file.hpp"
#include "config_test_util.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;

TEST(ReadRegularFile, ReadsAWholeFile) {
    scratch dir;
    const std::string text(100000, 'x');
    const auto f = read_regular_file(dir.file("a", text), max_config_bytes);
    ASSERT_TRUE(f) << f.error;
    EXPECT_EQ(f.bytes, text);
}

TEST(ReadRegularFile, ReadsAnEmptyFile) {
    scratch dir;
    const auto f = read_regular_file(dir.file("a", ""), 10);
    ASSERT_TRUE(f) << f.error;
    EXPECT_EQ(f.bytes, "");
}

TEST(ReadRegularFile, RefusesAFifoAtOnceWithoutAWriter) {
    scratch dir;
    const auto started = std::chrono::steady_clock::now();
    const auto f = read_regular_file(dir.fifo("p"), max_pem_bytes);
    EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
    EXPECT_FALSE(f);
    EXPECT_EQ(f.error, "is a FIFO, expected a regular file");
}

TEST(ReadRegularFile, RefusesDevZeroInsteadOfReadingForever) {
    const auto f = read_regular_file("/dev/zero", max_config_bytes);
    EXPECT_EQ(f.error, "is a character device, expected a regular file");
}

TEST(ReadRegularFile, RefusesADirectory) {
    scratch dir;
    std::filesystem::create_directory(dir.path("d"));
    EXPECT_EQ(read_regular_file(dir.path("d"), 10).error, "is a directory, expected a regular file");
}

TEST(ReadRegularFile, RefusesAUnixSocket) {
    scratch dir;
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string p = dir.path("s");
    ASSERT_LT(p.size(), sizeof addr.sun_path);
    std::copy(p.begin(), p.end(), addr.sun_path);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(read_regular_file(p, 10).error, "is a socket, expected a regular file");
    ::close(fd);
}

TEST(ReadRegularFile, RefusesAFileOverTheLimitAndTakesOneAtIt) {
    scratch dir;
    EXPECT_EQ(read_regular_file(dir.file("big", std::string(1025, 'x')), 1024).error, "is larger than 1 KiB");
    EXPECT_TRUE(read_regular_file(dir.file("fits", std::string(1024, 'x')), 1024));
}

TEST(ReadRegularFile, SaysWhyAMissingFileCannotBeRead) {
    EXPECT_EQ(read_regular_file("/nonexistent/x", 10).error, "cannot be read: No such file or directory");
}

TEST(ReadRegularFile, StatesLimitsInBinaryUnits) {
    EXPECT_EQ(describe_size(max_config_bytes), "256 KiB");
    EXPECT_EQ(describe_size(max_pem_bytes), "1 MiB");
    EXPECT_EQ(describe_size(max_token_bytes), "64 KiB");
    EXPECT_EQ(describe_size(1000), "1000 bytes");
}

TEST(ReadConfigFile, ConfigThatIsAFifoIsRefusedNamingIt) {
    scratch dir;
    const auto p = dir.fifo("apilb.yaml");
    try {
        read_config_file(p);
        FAIL() << "expected an error";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        EXPECT_EQ(e.errors()[0].to_string(), p + ": the file is a FIFO, expected a regular file");
    }
}

TEST(ReadConfigFile, OversizedConfigIsRefusedStatingTheLimit) {
    scratch dir;
    const auto p = dir.file("apilb.yaml", std::string(max_config_bytes + 1, '#'));
    try {
        read_config_file(p);
        FAIL() << "expected an error";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        EXPECT_EQ(e.errors()[0].message, "the file is larger than 256 KiB");
    }
}

/// The only error of `text` (a full config), checked to name `key`.
config_error error_at(const std::string& text, const std::string& key) {
    auto errors = errors_of(text);
    EXPECT_EQ(errors.size(), 1u);
    if (errors.empty()) return {};
    EXPECT_EQ(errors[0].key_path, key) << errors[0].to_string();
    return errors[0];
}

TEST(ConfigFilePaths, CaFileThatIsAFifoIsAnErrorAtItsKey) {
    scratch dir;
    const auto p = dir.fifo("ca.crt");
    const auto e = error_at(minimal + "    health:\n      tls: {ca_file: \"" + p + "\"}\n",
                            "pools[0].health.tls.ca_file");
    EXPECT_CONTAINS(e.message, "\"" + p + "\" is a FIFO, expected a regular file");
    EXPECT_EQ(e.line, 12);
}

TEST(ConfigFilePaths, OversizedTokenFilesAreRefusedStatingTheLimit) {
    scratch dir;
    const auto p = dir.file("token", std::string(max_token_bytes + 1, 'a'));
    auto e = error_at(
        minimal + "    health:\n      tls: {insecure_skip_verify: true}\n      bearer_token_file: \"" + p + "\"\n",
        "pools[0].health.bearer_token_file");
    EXPECT_CONTAINS(e.message, "is larger than 64 KiB");
    e = error_at(minimal + "admin:\n  token_file: \"" + p + "\"\n", "admin.token_file");
    EXPECT_CONTAINS(e.message, "is larger than 64 KiB");
}

TEST(ConfigFilePaths, AdminTlsFilesThatAreFifosAreErrorsAtTheirKeys) {
    scratch dir;
    const auto cert = dir.fifo("tls.crt");
    const auto key = dir.fifo("tls.key");
    const auto ca = dir.fifo("ca.crt");
    const auto errors = errors_of(minimal + "admin:\n  tls: {cert_file: \"" + cert + "\", key_file: \"" + key +
                                  "\", client_ca_file: \"" + ca + "\"}\n");
    ASSERT_EQ(errors.size(), 3u);
    EXPECT_EQ(errors[0].key_path, "admin.tls.cert_file");
    EXPECT_EQ(errors[1].key_path, "admin.tls.key_file");
    EXPECT_EQ(errors[2].key_path, "admin.tls.client_ca_file");
    for (const auto& e : errors) EXPECT_CONTAINS(e.message, "is a FIFO, expected a regular file");
}

}  // namespace
}  // namespace apilb::test
