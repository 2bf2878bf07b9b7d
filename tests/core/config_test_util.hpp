// Helpers shared by the tests of the config loader (config_load_test,
// config_syntax_test, config_validation_test): a minimal valid file and ways
// to get at the errors a rejected file gives; and a scratch directory for
// the tests that read real files (file_read_test, cpu_budget_test).
#pragma once

#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

/// Expects `needle` within `haystack` and shows the haystack when it is not.
#define EXPECT_CONTAINS(haystack, needle) \
    EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "in: " << (haystack)

namespace apilb::test {

/// A fresh directory, removed with everything in it. `file` makes the
/// directories a name like "a/b/c" needs.
class scratch {
public:
    scratch() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "apilb-core-test-XXXXXX").string();
        path_ = ::mkdtemp(tmpl.data());
    }
    ~scratch() { std::filesystem::remove_all(path_); }
    std::string file(const std::string& name, const std::string& content) const {
        std::filesystem::create_directories((path_ / name).parent_path());
        std::ofstream(path_ / name, std::ios::binary) << content;
        return (path_ / name).string();
    }
    std::string fifo(const std::string& name) const {
        const auto p = (path_ / name).string();
        EXPECT_EQ(::mkfifo(p.c_str(), 0600), 0);
        return p;
    }
    std::string path(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

/// Test YAML is written starting on the line after R"( so that line 1 of the
/// file is the first line shown in the source.
inline std::string yaml(const char* text) {
    std::string s = text;
    if (!s.empty() && s.front() == '\n') s.erase(0, 1);
    return s;
}

/// Smallest valid file; tests append sections to it or replace it.
inline const std::string minimal = yaml(R"(
listeners:
  - name: apiserver
    address: "0.0.0.0:6443"
    pool: control-plane
pools:
  - name: control-plane
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
      - {name: cp-2, address: "192.0.2.12:6443"}
      - {name: cp-3, address: "192.0.2.13:6443"}
)");  // 10 lines; appended text starts at line 11

/// The errors of a file expected to be rejected (a test failure if it loads).
inline std::vector<config_error> errors_of(const std::string& text) {
    try {
        parse_config(text, "test.yaml");
    } catch (const config_load_error& e) {
        return e.errors();
    }
    ADD_FAILURE() << "expected the config to be rejected:\n" << text;
    return {};
}

/// The only error of a file expected to have exactly one.
inline config_error only_error(const std::string& text) {
    auto errors = errors_of(text);
    EXPECT_EQ(errors.size(), 1u) << [&] {
        std::string all;
        for (const auto& e : errors) all += e.to_string() + "\n";
        return all;
    }();
    return errors.empty() ? config_error{} : errors.front();
}

/// Every error, one a line, for a failure message.
inline std::string all_messages(const std::vector<config_error>& errors) {
    std::string all;
    for (const auto& e : errors) all += e.to_string() + "\n";
    return all;
}

/// The error at `path`, or null if there is none.
inline const config_error* find_path(const std::vector<config_error>& errors, const std::string& path) {
    auto it = std::find_if(errors.begin(), errors.end(), [&](const auto& e) { return e.key_path == path; });
    return it == errors.end() ? nullptr : &*it;
}

/// Asserts one error at `line` with `path` whose message contains `needle`.
inline void expect_one(const std::string& text, int line, const std::string& path, const std::string& needle) {
    auto e = only_error(text);
    EXPECT_EQ(e.file, "test.yaml");
    EXPECT_EQ(e.line, line) << e.to_string();
    EXPECT_EQ(e.key_path, path) << e.to_string();
    EXPECT_CONTAINS(e.message, needle);
}

}  // namespace apilb::test
