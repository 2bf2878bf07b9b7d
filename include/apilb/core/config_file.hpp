// Reading the config file's bytes, apart from parsing them, so that the
// product's loader (apilb/yaml_guard.hpp) can check the bytes before
// yaml-cpp sees them. Pure core.
#pragma once

#include <string>

namespace apilb {

/// The bytes of the config file at `path`: a regular file of at most
/// max_config_bytes (apilb/file_read.hpp). Throws config_load_error naming
/// the file and what is wrong with it.
std::string read_config_file(const std::string& path);

/// Runs yaml-cpp over `text` and drops the result, syntax errors included:
/// all the guard's child process does (apilb/yaml_guard.hpp). yaml-cpp 0.7
/// can loop forever here, allocating (upstream issue 1040): never call it
/// where that could hang anything but a child process.
void parse_yaml_unguarded(const std::string& text);

}  // namespace apilb
