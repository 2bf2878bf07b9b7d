// A pool's `health` section: active probes, passive detection and what
// apilb does with the result. Part of the loader (see loader.hpp); split out
// because it is the largest section and has rules of its own across fields.
#include <algorithm>

#include "apilb/core/file_read.hpp"
#include "apilb/core/loader.hpp"

namespace apilb::config_detail {
namespace {

constexpr std::array<std::string_view, 14> health_key_list{"type",
                                                           "path",
                                                           "interval",
                                                           "timeout",
                                                           "rise",
                                                           "fall",
                                                           "expect",
                                                           "tls",
                                                           "bearer_token_file",
                                                           "passive",
                                                           "close_sessions_after",
                                                           "slow_start",
                                                           "all_unhealthy",
                                                           "initial"};
constexpr std::array<std::string_view, 2> expect_keys{"status", "body"};
constexpr std::array<std::string_view, 5> tls_keys{"ca_file", "server_name", "cert_file", "key_file",
                                                   "insecure_skip_verify"};
constexpr std::array<std::string_view, 1> passive_keys{"enabled"};

constexpr std::array<choice<health_check_type>, 3> type_choices{
    {{"https", health_check_type::https}, {"tcp", health_check_type::tcp}, {"none", health_check_type::none}}};
constexpr std::array<choice<all_unhealthy_policy>, 2> all_unhealthy_choices{
    {{"try-all", all_unhealthy_policy::try_all}, {"reject", all_unhealthy_policy::reject}}};
constexpr std::array<choice<bool>, 2> initial_choices{{{"healthy", true}, {"unhealthy", false}}};

/// The longest request target and expected body accepted; both end up in a
/// request line or in a bounded read of the response.
constexpr std::size_t max_path_length = 2048;
constexpr std::size_t max_body_text = 1024;

/// Why `text` cannot be a TLS server name, or "". A DNS name (labels of
/// letters, digits and hyphens) or a numeric IP address.
std::string server_name_problem(const std::string& text) {
    if (text.empty()) return "the name is empty";
    if (text.size() > 253) return "the name is longer than 253 characters";
    if (text.find(':') != std::string::npos) {
        // An IPv6 address; brackets are for addresses with ports.
        if (parse_socket_address("[" + text + "]:1")) return {};
        return "\"" + text + "\" is not a valid IPv6 address (write it without brackets)";
    }
    const bool numeric = text.find_first_not_of("0123456789.") == std::string::npos;
    if (numeric) {
        return parse_socket_address(text + ":1") ? std::string() : quote(text) + " is not a valid IPv4 address";
    }
    std::size_t label = 0;
    for (std::size_t i = 0; i <= text.size(); ++i) {
        const char c = i < text.size() ? text[i] : '.';
        if (c == '.') {
            if (label == 0) return "empty label in " + quote(text);
            if (label > 63) return "a label of " + quote(text) + " is longer than 63 characters";
            if (text[i - 1] == '-' || text[i - label] == '-') {
                return "a label of " + quote(text) + " starts or ends with \"-\"";
            }
            label = 0;
            continue;
        }
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
        if (!ok)
            return quote(text) + " holds " + quote(std::string(1, c)) + "; expected letters, digits, \"-\" and \".\"";
        ++label;
    }
    return {};
}

/// Why `path` cannot be sent as a request target, or "".
std::string path_problem(const std::string& path) {
    if (path.empty() || path.front() != '/') return "expected a path starting with \"/\", e.g. \"/readyz\"";
    if (path.size() > max_path_length)
        return "the path is longer than " + std::to_string(max_path_length) + " characters";
    for (char c : path) {
        const auto u = static_cast<unsigned char>(c);
        // Visible ASCII only: a space or a line break would end the request line.
        if (u <= 0x20 || u >= 0x7f)
            return "the path holds a space, a control character or non-ASCII; percent-encode it";
    }
    return {};
}

}  // namespace

bool loader::read_text(const mapping& m, std::string_view key, std::string_view expected, std::string& out) {
    const field* f = m.find(key);
    if (f == nullptr) return true;
    auto text = scalar(*f, expected);
    if (!text) return false;
    out = *text;
    return true;
}

bool loader::read_file_path(const mapping& m, std::string_view key, std::size_t max_bytes, std::string& out,
                            std::string* bytes) {
    const field* f = m.find(key);
    if (f == nullptr) return true;
    auto text = scalar(*f, "the path of a file");
    if (!text) return false;
    if (text->empty()) {
        error(f->mark, f->path, "the file name is empty");
        return false;
    }
    // Checked now so that a typo fails `apilb check-config` and the start,
    // not every probe later. The file is read again when it is used.
    file_contents file = read_regular_file(*text, max_bytes);
    if (!file) {
        error(f->mark, f->path, quote(*text) + " " + file.error);
        return false;
    }
    out = *text;
    if (bytes != nullptr) *bytes = std::move(file.bytes);
    return true;
}

void loader::read_health(const field& f, health_config& h) {
    auto m = open_mapping(f, health_key_list, true);
    if (!m) return;
    // A written health section means "check the apiservers"; https is what
    // tells a ready kube-apiserver from one that merely accepts TCP.
    h.type = health_check_type::https;
    read_choice(*m, "type", type_choices, h.type);

    if (const field* p = m->find("path")) {
        std::string path;
        if (read_text(*m, "path", "a request path such as \"/readyz\"", path)) {
            if (auto problem = path_problem(path); !problem.empty()) {
                error(p->mark, p->path, "invalid path " + quote(path) + ": " + problem);
            } else {
                h.path = path;
            }
        }
    }
    read_duration(*m, "interval", {.min = 100ms, .max = 1h, .range = "100ms..1h"}, h.interval);
    read_duration(*m, "timeout", {.min = 10ms, .max = 5min, .range = "10ms..5m"}, h.timeout);
    read_integer(*m, "rise", {.min = 1, .max = 100}, h.rise);
    read_integer(*m, "fall", {.min = 1, .max = 100}, h.fall);

    if (const field* e = m->find("expect")) {
        if (auto em = open_mapping(*e, expect_keys, true)) {
            read_integer(*em, "status", {.min = 100, .max = 599}, h.expect_status);
            if (const field* b = em->find("body")) {
                std::string body;
                if (read_text(*em, "body", "the text the body must contain", body)) {
                    if (body.empty() || body.size() > max_body_text) {
                        error(b->mark, b->path,
                              "expected 1 to " + std::to_string(max_body_text) + " characters; found " +
                                  std::to_string(body.size()));
                    } else {
                        h.expect_body = body;
                    }
                }
            }
        }
    }

    const field* tls_field = m->find("tls");
    // Copies: they point into the tls mapping, which lives only in the block below.
    std::optional<field> insecure_field;
    bool ca_given = false;  // an unreadable ca_file is reported once, as unreadable
    if (tls_field != nullptr) {
        if (auto tm = open_mapping(*tls_field, tls_keys, true)) {
            ca_given = tm->find("ca_file") != nullptr;
            read_file_path(*tm, "ca_file", max_pem_bytes, h.tls.ca_file);
            if (const field* s = tm->find("server_name")) {
                std::string name;
                if (read_text(*tm, "server_name", "a DNS name or an IP address", name)) {
                    if (auto problem = server_name_problem(name); !problem.empty()) {
                        error(s->mark, s->path, "invalid server name: " + problem);
                    } else {
                        h.tls.server_name = name;
                    }
                }
            }
            const field* cert_field = tm->find("cert_file");
            const field* key_field = tm->find("key_file");
            if (const field* i = tm->find("insecure_skip_verify")) insecure_field = *i;
            read_file_path(*tm, "cert_file", max_pem_bytes, h.tls.cert_file);
            read_file_path(*tm, "key_file", max_pem_bytes, h.tls.key_file);
            read_bool(*tm, "insecure_skip_verify", h.tls.insecure_skip_verify);
            if ((cert_field != nullptr) != (key_field != nullptr)) {
                const field* given = cert_field != nullptr ? cert_field : key_field;
                error(given->mark, given->path,
                      std::string("a client certificate needs both cert_file and key_file; ") +
                          (cert_field != nullptr ? "key_file" : "cert_file") + " is missing");
            }
        }
    }
    read_file_path(*m, "bearer_token_file", max_token_bytes, h.bearer_token_file);

    if (const field* p = m->find("passive")) {
        if (auto pm = open_mapping(*p, passive_keys, true)) read_bool(*pm, "enabled", h.passive);
    }
    if (const field* c = m->find("close_sessions_after")) {
        if (c->node.IsScalar() && c->node.Scalar() == "never") {
            h.close_sessions_after.reset();
        } else {
            duration grace = *h.close_sessions_after;
            const mapping one{m->mark, m->path, {{"close_sessions_after", *c}}};
            if (read_duration(one, "close_sessions_after",
                              {.min = 0ms, .max = 1h, .zero_allowed = true, .range = "0..1h, or never"}, grace)) {
                h.close_sessions_after = grace;
            }
        }
    }
    read_duration(*m, "slow_start", {.min = 0ms, .max = 1h, .zero_allowed = true, .range = "0..1h"}, h.slow_start);
    read_choice(*m, "all_unhealthy", all_unhealthy_choices, h.all_unhealthy);
    read_choice(*m, "initial", initial_choices, h.initial_healthy);

    // Rules across fields.
    if (h.type == health_check_type::https && !ca_given && !h.tls.insecure_skip_verify) {
        const YAML::Mark& at = tls_field != nullptr ? tls_field->mark : m->mark;
        const std::string path = tls_field != nullptr ? tls_field->path : m->path;
        error(at, path,
              "type https verifies the apiserver's certificate and needs tls.ca_file (the cluster CA, e.g. "
              "/etc/kubernetes/pki/ca.crt); to probe without verifying, set tls.insecure_skip_verify: true, "
              "or use type tcp");
    }
    if (h.type == health_check_type::https && h.tls.insecure_skip_verify) {
        warning(insecure_field->mark, insecure_field->path,
                std::string("health probes do not verify the apiserver's certificate: anything answering on a "
                            "backend's address can claim to be ready") +
                    (h.tls.ca_file.empty() ? "" : "; tls.ca_file is not used"));
    }
    if (h.type != health_check_type::https) {
        for (std::string_view key : {"path", "expect", "tls", "bearer_token_file"}) {
            if (const field* x = m->find(key)) {
                warning(x->mark, x->path,
                        std::string("ignored: applies only to type https, and type is ") + to_string(h.type));
            }
        }
    }
    if (h.type == health_check_type::none && !h.initial_healthy) {
        const field* i = m->find("initial");
        error(i->mark, i->path, "initial: unhealthy needs probes to ever become healthy; type none has none");
    }
}

}  // namespace apilb::config_detail
