// Files the loader rejects for their form: unreadable or empty files, YAML
// syntax errors, unknown, repeated and missing keys, values of the wrong
// type; each error names the file, line and key path.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "config_test_util.hpp"

namespace apilb::test {
namespace {

// ---------------------------------------------------------------- whole-file problems

TEST(LoadConfigErrors, UnreadableFileGivesTheOsReason) {
    try {
        load_config("/nonexistent/apilb.yaml");
        FAIL() << "expected an error";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        const auto& err = e.errors()[0];
        EXPECT_EQ(err.line, 0);
        EXPECT_EQ(err.file, "/nonexistent/apilb.yaml");
        EXPECT_EQ(err.to_string(), "/nonexistent/apilb.yaml: the file cannot be read: No such file or directory");
    }
}

TEST(LoadConfigErrors, AKeyWithControlCharactersStaysOnOneLine) {
    // Found by the config fuzzer: an unknown key holding a carriage return
    // went raw into the key path, so the error spanned lines in the log.
    const auto errors = errors_of(minimal + "\"wor\\rks\\n\\e[2J\": 1\n");
    ASSERT_EQ(errors.size(), 1u) << all_messages(errors);
    const std::string line = errors[0].to_string();
    EXPECT_EQ(line.find_first_of("\r\n\x1b"), std::string::npos) << line;
    EXPECT_EQ(errors[0].key_path, "wor?ks??[2J");
}

TEST(LoadConfigErrors, ASyntaxErrorAtAControlCharacterStaysOnOneLine) {
    // Found by the config fuzzer: yaml-cpp's "unknown escape character: X"
    // carries the byte raw, a line break or a terminal escape included.
    for (const std::string& text :
         {std::string("\"a\\\rb\": 1\n"), std::string("\"\\\x1b[2J\": 1\n"), std::string("((\x03\0\n", 5)}) {
        const auto errors = errors_of(text);
        ASSERT_EQ(errors.size(), 1u) << all_messages(errors);
        EXPECT_CONTAINS(errors[0].message, "YAML syntax error");
        EXPECT_EQ(errors[0].to_string().find_first_of("\r\n\x1b"), std::string::npos) << errors[0].to_string();
    }
}

TEST(LoadConfigErrors, DirectoryIsNotAFile) {
    try {
        load_config(std::filesystem::temp_directory_path().string());
        FAIL() << "expected an error";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        EXPECT_EQ(e.errors()[0].line, 0);
        EXPECT_EQ(e.errors()[0].message, "the file is a directory, expected a regular file");
    }
}

TEST(LoadConfigErrors, SyntaxErrorIsOneErrorAtItsMark) {
    auto e = only_error(yaml(R"(
listeners:
  - name: apiserver
    address: [0.0.0.0:6443
    pool: control-plane
)"));
    EXPECT_EQ(e.line, 4);
    EXPECT_GT(e.column, 0);
    EXPECT_EQ(e.key_path, "");
    EXPECT_CONTAINS(e.message, "YAML syntax error");
    EXPECT_CONTAINS(e.to_string(), "test.yaml:4:");
}

TEST(LoadConfigErrors, TabIndentationIsASyntaxError) {
    auto e = only_error("listeners:\n\t- name: x\n");
    EXPECT_EQ(e.line, 2);
    EXPECT_CONTAINS(e.message, "YAML syntax error");
}

TEST(LoadConfigErrors, EmptyFile) {
    for (const char* text : {"", "\n\n", "# only a comment\n"}) {
        auto e = only_error(text);
        EXPECT_EQ(e.line, 1);
        EXPECT_CONTAINS(e.message, "empty");
    }
}

TEST(LoadConfigErrors, TopLevelMustBeAMapping) {
    expect_one("- listeners\n- pools\n", 1, "", "expected a mapping");
    expect_one("just text\n", 1, "", "found \"just text\"");
}

TEST(LoadConfigErrors, OnlyOneDocument) { expect_one(minimal + "---\nworkers: 2\n", 12, "", "2 YAML documents"); }

// ---------------------------------------------------------------- keys

TEST(LoadConfigErrors, UnknownTopLevelKeySuggestsTheNearest) {
    auto e = only_error(minimal + "worker: 2\n");
    EXPECT_EQ(e.line, 11);
    EXPECT_EQ(e.column, 1);
    EXPECT_EQ(e.key_path, "worker");
    EXPECT_CONTAINS(e.message, "unknown key \"worker\"; did you mean \"workers\"?");
    EXPECT_CONTAINS(e.message, "expected one of: workers, listeners, pools, timeouts, tcp, limits, relay, log");
}

TEST(LoadConfigErrors, UnknownKeyDeepInsideNamesItsPath) {
    auto e = only_error(yaml(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
      - name: cp-2
        address: "192.0.2.12:6443"
        wieght: 2
)"));
    EXPECT_EQ(e.line, 9);
    EXPECT_EQ(e.column, 9);
    EXPECT_EQ(e.key_path, "pools[0].backends[1].wieght");
    EXPECT_CONTAINS(e.message, "did you mean \"weight\"?");
    EXPECT_CONTAINS(e.message, "expected one of: name, address, weight");
}

TEST(LoadConfigErrors, UnknownKeyWithNothingCloseHasNoSuggestion) {
    auto e = only_error(minimal + "tcp: {fast_open: true}\n");
    EXPECT_EQ(e.key_path, "tcp.fast_open");
    EXPECT_EQ(e.message.find("did you mean"), std::string::npos) << e.message;
}

TEST(LoadConfigErrors, UnknownKeysInEverySection) {
    auto errors = errors_of(minimal + yaml(R"(
timeouts: {conect: 1s}
tcp: {keepalive_cnt: 3}
limits: {max_conns: 1}
relay: {buffer: 4096}
log: {levle: info}
)"));
    ASSERT_EQ(errors.size(), 5u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "timeouts.conect");
    EXPECT_CONTAINS(errors[0].message, "did you mean \"connect\"?");
    EXPECT_EQ(errors[1].key_path, "tcp.keepalive_cnt");
    EXPECT_EQ(errors[2].key_path, "limits.max_conns");
    EXPECT_EQ(errors[3].key_path, "relay.buffer");
    EXPECT_EQ(errors[4].key_path, "log.levle");
    EXPECT_CONTAINS(errors[4].message, "did you mean \"level\"?");
    EXPECT_EQ(errors[4].line, 15);
}

TEST(LoadConfigErrors, RepeatedKeyIsAnError) {
    expect_one(minimal + "workers: 2\nworkers: 4\n", 12, "workers", "repeated; first set at line 11");
}

TEST(LoadConfigErrors, MissingRequiredKeyPointsAtTheEnclosingMapping) {
    auto e = only_error(yaml(R"(
listeners:
  - name: apiserver
    pool: control-plane
pools:
  - name: control-plane
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
)"));
    EXPECT_EQ(e.line, 2);
    EXPECT_EQ(e.column, 5);
    EXPECT_EQ(e.key_path, "listeners[0]");
    EXPECT_CONTAINS(e.message, "required key \"address\" is missing");
}

TEST(LoadConfigErrors, MissingTopLevelSections) {
    auto errors = errors_of("workers: 2\n");
    ASSERT_EQ(errors.size(), 2u) << all_messages(errors);
    EXPECT_EQ(errors[0].line, 1);
    EXPECT_CONTAINS(errors[0].message, "\"listeners\" is missing");
    EXPECT_CONTAINS(errors[1].message, "\"pools\" is missing");
}

TEST(LoadConfigErrors, MissingBackendName) {
    auto e = only_error(minimal + yaml(R"(
  - name: other
    backends:
      - address: "192.0.2.21:6443"
)"));
    EXPECT_EQ(e.line, 13);
    EXPECT_EQ(e.key_path, "pools[1].backends[0]");
    EXPECT_CONTAINS(e.message, "\"name\" is missing");
}

// ---------------------------------------------------------------- types

TEST(LoadConfigErrors, MappingWhereAScalarIsExpected) {
    expect_one(minimal + "workers: {count: 2}\n", 11, "workers", "expected an integer in 0..256; found a mapping");
}

TEST(LoadConfigErrors, MappingWhereASequenceIsExpected) {
    auto e = only_error(yaml(R"(
listeners:
  name: apiserver
pools:
  - name: cp
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
)"));
    EXPECT_EQ(e.line, 2);
    EXPECT_EQ(e.key_path, "listeners");
    EXPECT_CONTAINS(e.message, "expected a sequence of listeners");
    EXPECT_CONTAINS(e.message, "found a mapping");
}

TEST(LoadConfigErrors, ScalarWhereASectionIsExpected) {
    expect_one(minimal + "tcp: fast\n", 11, "tcp", "expected a mapping with keys nodelay, keepalive");
}

TEST(LoadConfigErrors, ListItemMustBeAMapping) {
    auto e = only_error(minimal + "  - control-plane-2\n");
    EXPECT_EQ(e.line, 11);
    EXPECT_EQ(e.key_path, "pools[1]");
    EXPECT_CONTAINS(e.message, "found \"control-plane-2\"");
}

TEST(LoadConfigErrors, IntegersMustBeDecimal) {
    expect_one(minimal + "workers: four\n", 11, "workers", "expected an integer in 0..256; found \"four\"");
    expect_one(minimal + "workers: 0x10\n", 11, "workers", "found \"0x10\"");
    expect_one(minimal + "workers: 2.5\n", 11, "workers", "found \"2.5\"");
}

TEST(LoadConfigErrors, BooleansAreTrueOrFalseOnly) {
    expect_one(minimal + "tcp:\n  nodelay: yes\n", 12, "tcp.nodelay",
               "expected true or false; found \"yes\" (the YAML 1.1 spellings");
    expect_one(minimal + "tcp: {keepalive: True}\n", 11, "tcp.keepalive", "found \"True\"");
    expect_one(minimal + "tcp: {keepalive: [true]}\n", 11, "tcp.keepalive", "found a sequence");
}

TEST(LoadConfigErrors, EmptyValueIsNotAValue) {
    auto e = only_error(minimal + "tcp:\n  nodelay:\n  keepalive: true\n");
    EXPECT_EQ(e.line, 12) << "points at the key, not the next line";
    EXPECT_EQ(e.key_path, "tcp.nodelay");
    EXPECT_CONTAINS(e.message, "found no value");
}

// ---------------------------------------------------------------- collecting

TEST(LoadConfigErrors, CollectsEveryProblemInFileOrder) {
    const std::string text = yaml(R"(
workers: lots
listeners:
  - name: apiserver
    address: "0.0.0.0:6443"
    pool: control-plane
pools:
  - name: control-plane
    balance: random
    backends:
      - {name: cp-1, address: "cp-1.example:6443"}
)");
    auto errors = errors_of(text);
    ASSERT_EQ(errors.size(), 3u) << all_messages(errors);
    EXPECT_EQ(errors[0].line, 1);
    EXPECT_EQ(errors[0].key_path, "workers");
    EXPECT_EQ(errors[1].line, 8);
    EXPECT_EQ(errors[1].key_path, "pools[0].balance");
    EXPECT_EQ(errors[2].line, 10);
    EXPECT_EQ(errors[2].key_path, "pools[0].backends[0].address");

    try {
        parse_config(text, "test.yaml");
    } catch (const config_load_error& e) {
        const std::string what = e.what();
        EXPECT_EQ(std::count(what.begin(), what.end(), '\n'), 2) << what;
        EXPECT_EQ(what.rfind("test.yaml:1:10: workers: ", 0), 0u) << what;
    }
}

}  // namespace
}  // namespace apilb::test
