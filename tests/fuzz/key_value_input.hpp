// The input format of the fuzz targets that render a config section
// (keepalived_conf, frr_conf): lines "key=value", where "\n", "\r", "\\" and
// "\xHH" in a value stand for those bytes.
#pragma once

#include <cctype>
#include <map>
#include <string>
#include <string_view>

namespace apilb::fuzz {

/// A value with its escapes replaced by the bytes they stand for.
inline std::string unescape(std::string_view v) {
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] != '\\' || i + 1 == v.size()) {
            out += v[i];
            continue;
        }
        const char c = v[++i];
        if (c == 'n') {
            out += '\n';
        } else if (c == 'r') {
            out += '\r';
        } else if (c == 'x' && i + 2 < v.size() && std::isxdigit(static_cast<unsigned char>(v[i + 1])) &&
                   std::isxdigit(static_cast<unsigned char>(v[i + 2]))) {
            out += static_cast<char>(std::stoi(std::string(v.substr(i + 1, 2)), nullptr, 16));
            i += 2;
        } else {
            out += c;
        }
    }
    return out;
}

/// The input's keys, each with every value it was given; lines without "=" are skipped.
inline std::multimap<std::string, std::string> read_fields(std::string_view input) {
    std::multimap<std::string, std::string> fields;
    while (!input.empty()) {
        const auto eol = input.find('\n');
        const std::string_view line = input.substr(0, eol);
        input = eol == std::string_view::npos ? std::string_view{} : input.substr(eol + 1);
        const auto eq = line.find('=');
        if (eq != std::string_view::npos)
            fields.emplace(std::string(line.substr(0, eq)), unescape(line.substr(eq + 1)));
    }
    return fields;
}

}  // namespace apilb::fuzz
