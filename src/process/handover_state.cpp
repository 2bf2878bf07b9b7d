#include "apilb/process/handover_state.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "apilb/process/handover.hpp"

namespace apilb::handover {

state_line& state_line::add(std::string key, std::string value) {
    fields.emplace_back(std::move(key), std::move(value));
    return *this;
}

state_line& state_line::add(std::string key, std::uint64_t value) { return add(std::move(key), std::to_string(value)); }

const std::string* state_line::find(std::string_view key) const {
    for (const auto& [k, v] : fields) {
        if (k == key) return &v;
    }
    return nullptr;
}

const std::string& state_line::text(std::string_view key) const {
    const std::string* v = find(key);
    if (v == nullptr) throw handover_error(fmt::format("state line {}: no {}=", kind, key));
    return *v;
}

std::uint64_t state_line::number(std::string_view key) const {
    const std::string& t = text(key);
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc{} || end != t.data() + t.size() || t.empty()) {
        throw handover_error(
            fmt::format("state line {}: {} must be a decimal number, got \"{}\"", kind, key, t.substr(0, 32)));
    }
    return v;
}

bool state_line::flag(std::string_view key) const {
    const std::string& t = text(key);
    if (t != "0" && t != "1") throw handover_error(fmt::format("state line {}: {} must be 0 or 1", kind, key));
    return t == "1";
}

std::vector<std::string> encode_state(const std::vector<state_line>& lines, std::size_t* dropped) {
    const std::string head = fmt::format("v{}\n", state_record_version);
    const std::size_t room = max_frame_bytes - header_bytes;
    std::vector<std::string> out;
    std::string payload = head;
    for (const auto& l : lines) {
        std::string text = l.kind;
        for (const auto& [k, v] : l.fields) text += fmt::format(" {}={}", k, v);
        text += '\n';
        if (text.size() > max_state_line_bytes) {
            if (dropped != nullptr) ++*dropped;
            continue;
        }
        if (payload.size() + text.size() > room) {
            out.push_back(std::move(payload));
            payload = head;
        }
        payload += text;
    }
    if (payload.size() > head.size() || out.empty()) out.push_back(std::move(payload));
    return out;
}

std::vector<state_line> parse_state(std::string_view payload) {
    const std::string head = fmt::format("v{}\n", state_record_version);
    if (!payload.starts_with(head)) {
        throw handover_error(fmt::format("state frame of record version \"{}\", this side reads v{}",
                                         std::string(payload.substr(0, std::min<std::size_t>(payload.find('\n'), 16))),
                                         state_record_version));
    }
    payload.remove_prefix(head.size());
    std::vector<state_line> out;
    std::size_t number = 1;
    while (!payload.empty()) {
        ++number;
        const auto eol = payload.find('\n');
        if (eol == std::string_view::npos) throw handover_error(fmt::format("state line {}: no newline", number));
        std::string_view line = payload.substr(0, eol);
        payload.remove_prefix(eol + 1);
        if (line.size() + 1 > max_state_line_bytes) {
            throw handover_error(
                fmt::format("state line {}: over the limit of {} bytes", number, max_state_line_bytes));
        }
        state_line l;
        bool first = true;
        while (!line.empty()) {
            const auto end = line.find(' ');
            const std::string_view word = line.substr(0, end);
            line = end == std::string_view::npos ? std::string_view{} : line.substr(end + 1);
            if (first) {
                if (word.empty() || word.find('=') != std::string_view::npos) {
                    throw handover_error(fmt::format("state line {}: expected a kind first", number));
                }
                l.kind = word;
                first = false;
                continue;
            }
            const auto eq = word.find('=');
            if (eq == std::string_view::npos || eq == 0) {
                throw handover_error(fmt::format("state line {}: expected key=value, got \"{}\"", number,
                                                 std::string(word.substr(0, 64))));
            }
            l.fields.emplace_back(std::string(word.substr(0, eq)), std::string(word.substr(eq + 1)));
        }
        if (l.kind.empty()) throw handover_error(fmt::format("state line {}: empty", number));
        out.push_back(std::move(l));
    }
    return out;
}

}  // namespace apilb::handover
