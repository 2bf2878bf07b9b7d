// Reading the config file's bytes, apart from parsing them. Pure core.
#pragma once

#include <string>

namespace apilb {

/// The bytes of the config file at `path`: a regular file of at most
/// max_config_bytes (apilb/file_read.hpp). Throws config_load_error naming
/// the file and what is wrong with it.
std::string read_config_file(const std::string& path);

}  // namespace apilb
