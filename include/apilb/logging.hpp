// Process-wide logging: spdlog's default logger on stderr, as text or JSON lines.
#pragma once

#include <string>

#include "apilb/config.hpp"

namespace apilb {

/// Installs the default logger. `level_override`, when not empty, wins over
/// the config (the command line's --log-level). Throws std::invalid_argument
/// for an unknown level name.
void init_logging(const log_config& cfg, const std::string& level_override = {});

/// Escapes `text` for use inside a JSON string literal.
std::string json_escape(std::string_view text);

}  // namespace apilb
