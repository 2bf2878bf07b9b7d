#include "k8s_api.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <random>
#include <utility>

namespace standin {

namespace {

using net::use_awaitable;
using namespace std::chrono_literals;

constexpr std::string_view app_json = "application/json";
constexpr std::size_t token_file_limit = 1024 * 1024;
constexpr std::uint64_t max_timeout_seconds = 24 * 3600;
constexpr auto stall_poll = 50ms;
constexpr auto too_large_wait = 3s;

// ------------------------------------------------------------ Status objects

json::object status_object(int code, std::string_view reason, std::string message, json::object details = {}) {
    json::object s{{"kind", "Status"},
                   {"apiVersion", "v1"},
                   {"metadata", json::object{}},
                   {"status", "Failure"},
                   {"message", std::move(message)},
                   {"reason", reason}};
    if (!details.empty()) s["details"] = std::move(details);
    s["code"] = code;
    return s;
}

response json_reply(const request& req, http::status status, const json::value& body, const server_state& state) {
    return make_response(status, req.version(), req.keep_alive(), json::serialize(body), app_json, state);
}

response status_reply(const request& req, const json::object& status, const server_state& state) {
    return json_reply(req, static_cast<http::status>(status.at("code").as_int64()), status, state);
}

net::awaitable<bool> write_response(tls_stream& stream, response res) {
    beast::get_lowest_layer(stream).expires_after(write_timeout);
    auto [ec, n] = co_await http::async_write(stream, res, net::as_tuple(use_awaitable));
    co_return !ec && res.keep_alive();
}

// ------------------------------------------------------------ selectors

/// One term of a label or field selector (equality-based forms only).
struct requirement {
    enum class op { eq, ne, exists, absent } how;
    std::string key;
    std::string value;
};

std::string trim(std::string_view s) {
    const auto b = s.find_first_not_of(' ');
    if (b == std::string_view::npos) return {};
    return std::string(s.substr(b, s.find_last_not_of(' ') - b + 1));
}

/// The selector's terms, or nullopt with `error` as the apiserver words it.
std::optional<std::vector<requirement>> parse_selector(std::string_view s, std::string& error) {
    std::vector<requirement> out;
    if (trim(s).empty()) return out;
    if (s.find('(') != std::string_view::npos) {
        error = "unable to parse requirement: the stand-in knows only =, ==, != and existence";
        return std::nullopt;
    }
    while (!s.empty()) {
        const auto comma = s.find(',');
        const auto term = s.substr(0, comma);
        s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
        requirement r{};
        if (const auto ne = term.find("!="); ne != std::string_view::npos) {
            r = {requirement::op::ne, trim(term.substr(0, ne)), trim(term.substr(ne + 2))};
        } else if (const auto eq = term.find('='); eq != std::string_view::npos) {
            const auto skip = term.substr(eq).starts_with("==") ? 2 : 1;
            r = {requirement::op::eq, trim(term.substr(0, eq)), trim(term.substr(eq + skip))};
        } else if (trim(term).starts_with('!')) {
            r = {requirement::op::absent, trim(trim(term).substr(1)), {}};
        } else {
            r = {requirement::op::exists, trim(term), {}};
        }
        if (r.key.empty()) {
            error = "unable to parse requirement: found '" + std::string(term) + "', expected: identifier";
            return std::nullopt;
        }
        out.push_back(std::move(r));
    }
    return out;
}

bool matches(const std::vector<requirement>& sel, const json::object& fields) {
    for (const auto& r : sel) {
        const auto* v = fields.if_contains(r.key);
        const bool has = v != nullptr && v->is_string();
        switch (r.how) {
        case requirement::op::eq:
            if (!has || v->get_string() != r.value) return false;
            break;
        case requirement::op::ne:
            if (has && v->get_string() == r.value) return false;
            break;
        case requirement::op::exists:
            if (!has) return false;
            break;
        case requirement::op::absent:
            if (has) return false;
            break;
        }
    }
    return true;
}

// ------------------------------------------------------------ continue tokens

constexpr std::string_view b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string base64url(std::string_view in) {
    std::string out;
    std::uint32_t acc = 0;
    int bits = 0;
    for (unsigned char c : in) {
        acc = (acc << 8) | c;
        bits += 8;
        while (bits >= 6) out += b64[(acc >> (bits -= 6)) & 63];
    }
    if (bits > 0) out += b64[(acc << (6 - bits)) & 63];
    return out;
}

std::optional<std::string> unbase64url(std::string_view in) {
    std::string out;
    std::uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        const auto v = b64.find(c == '+' ? '-' : c == '/' ? '_' : c);
        if (c == '=') break;
        if (v == std::string_view::npos) return std::nullopt;
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) out += static_cast<char>((acc >> (bits -= 8)) & 0xff);
    }
    return out;
}

// As etcd3's store encodes it: the list's resourceVersion and the key after
// the last one returned (name + NUL, relative to the resource's prefix).
std::string encode_continue(std::uint64_t rv, std::string_view last_name) {
    json::object token{{"v", "meta.k8s.io/v1"}, {"rv", rv}, {"start", std::string(last_name) + '\0'}};
    return base64url(json::serialize(token));
}

bool decode_continue(std::string_view text, std::uint64_t& rv, std::string& start) {
    const auto raw = unbase64url(text);
    if (!raw) return false;
    boost::system::error_code ec;
    const auto v = json::parse(*raw, ec);
    if (ec || !v.is_object()) return false;
    const auto& o = v.get_object();
    const auto* ver = o.if_contains("v");
    const auto* r = o.if_contains("rv");
    const auto* s = o.if_contains("start");
    if (!ver || *ver != "meta.k8s.io/v1" || !r || !r->is_int64() || r->get_int64() <= 0 || !s || !s->is_string())
        return false;
    rv = static_cast<std::uint64_t>(r->get_int64());
    start = s->get_string();
    return true;
}

// ------------------------------------------------------------ discovery documents

json::array all_verbs() { return {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}; }

json::object discovery_document(std::string_view path, const std::string& advertise) {
    const json::object group_version{{"groupVersion", "discovery.k8s.io/v1"}, {"version", "v1"}};
    const json::object group{
        {"name", "discovery.k8s.io"}, {"versions", json::array{group_version}}, {"preferredVersion", group_version}};
    if (path == "/api")
        return {{"kind", "APIVersions"},
                {"versions", json::array{"v1"}},
                {"serverAddressByClientCIDRs",
                 json::array{json::object{{"clientCIDR", "0.0.0.0/0"}, {"serverAddress", advertise}}}}};
    if (path == "/apis") return {{"kind", "APIGroupList"}, {"apiVersion", "v1"}, {"groups", json::array{group}}};
    if (path == "/apis/discovery.k8s.io") {
        json::object g{{"kind", "APIGroup"}, {"apiVersion", "v1"}};
        for (const auto& kv : group) g[kv.key()] = kv.value();
        return g;
    }
    if (path == "/api/v1")
        return {{"kind", "APIResourceList"},
                {"groupVersion", "v1"},
                {"resources", json::array{json::object{{"name", "endpoints"},
                                                       {"singularName", "endpoints"},
                                                       {"namespaced", true},
                                                       {"kind", "Endpoints"},
                                                       {"verbs", all_verbs()},
                                                       {"shortNames", json::array{"ep"}},
                                                       {"storageVersionHash", "fWeeMqaN/OA="}}}}};
    if (path == "/apis/discovery.k8s.io/v1")
        return {{"kind", "APIResourceList"},
                {"apiVersion", "v1"},
                {"groupVersion", "discovery.k8s.io/v1"},
                {"resources", json::array{json::object{{"name", "endpointslices"},
                                                       {"singularName", "endpointslice"},
                                                       {"namespaced", true},
                                                       {"kind", "EndpointSlice"},
                                                       {"verbs", all_verbs()},
                                                       {"storageVersionHash", "Nx3SIv6I0mE="}}}}};
    return {};
}

/// What the apiserver's errors call the resource: "endpointslices.discovery.k8s.io".
std::string qualified(k8s_kind kind) {
    return kind == k8s_kind::endpoint_slice ? "endpointslices.discovery.k8s.io" : "endpoints";
}

json::object bookmark_object(k8s_kind kind, std::uint64_t rv) {
    json::object meta{{"resourceVersion", std::to_string(rv)}, {"creationTimestamp", nullptr}};
    if (kind == k8s_kind::endpoints) return {{"kind", "Endpoints"}, {"apiVersion", "v1"}, {"metadata", meta}};
    return {{"kind", "EndpointSlice"}, {"apiVersion", "discovery.k8s.io/v1"},
            {"metadata", meta},        {"addressType", ""},
            {"endpoints", nullptr},    {"ports", nullptr}};
}

std::string event_line(std::string_view type, const json::object& object) {
    json::object e{{"type", type}, {"object", object}};
    return json::serialize(e) + "\n";
}

/// The users of a kube-apiserver token file (token,user,uid[,groups]).
std::string token_user(const std::string& file, std::string_view token) {
    if (file.empty() || token.empty()) return {};
    std::FILE* f = std::fopen(file.c_str(), "rb");
    if (f == nullptr) return {};
    std::string text;
    char buf[4096];
    for (std::size_t n; text.size() < token_file_limit && (n = std::fread(buf, 1, sizeof buf, f)) > 0;)
        text.append(buf, n);
    std::fclose(f);
    std::string_view rest = text;
    while (!rest.empty()) {
        const auto nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        const auto c1 = line.find(',');
        if (line.empty() || line.front() == '#' || c1 == std::string_view::npos) continue;
        const auto c2 = line.find(',', c1 + 1);
        if (line.substr(0, c1) == token) return std::string(line.substr(c1 + 1, c2 - c1 - 1));
    }
    return {};
}

// Query booleans as the apiserver reads them (Go's strconv.ParseBool): the
// Python client sends watch=True.
bool truthy(std::optional<std::string_view> v) {
    return v && (*v == "1" || *v == "t" || *v == "T" || *v == "true" || *v == "TRUE" || *v == "True");
}

}  // namespace

/// Wakes one watch when the store changes or a switch flips; lives as long
/// as the longer of the watch and a pending wake-up.
struct watch_waker {
    explicit watch_waker(net::any_io_executor ex) : timer(std::move(ex)) {}
    net::steady_timer timer;
    std::atomic<int> broken{0};  ///< 1: end with FIN, 2: end with RST
};

struct k8s_api::identity {
    std::string user;  ///< "" when not authenticated
};

/// A request for a resource: which kind, where, which object.
struct k8s_api::resource_request {
    k8s_kind kind;
    std::string ns;    ///< "" for all namespaces
    std::string name;  ///< "" for the collection
    bool watch_path = false;
};

k8s_api::k8s_api(k8s_store& store, k8s_api_options opt)
    : store_(store), opt_(std::move(opt)), bookmark_ms_(opt_.bookmark_interval.count()) {
    store_.on_change([this] { wake_watches(0); });
}

bool k8s_api::handles(std::string_view path) {
    return path == "/api" || path.starts_with("/api/") || path == "/apis" || path.starts_with("/apis/") ||
           (path.starts_with("/control/") && path != "/control/readyz");
}

void k8s_api::wake_watches(int broken) {
    std::lock_guard lock{watchers_mu_};
    std::erase_if(watchers_, [](const auto& w) { return w.expired(); });
    for (const auto& weak : watchers_) {
        auto w = weak.lock();
        if (!w) continue;
        if (broken != 0) w->broken = broken;
        // On the watch's own strand, so the cancel cannot slip between its
        // look at the store and its wait.
        net::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
    }
}

k8s_api::identity k8s_api::authenticate(tls_stream& stream, const request& req) const {
    // Like the apiserver's union authenticator: the certificate first, then the token.
    if (auto cn = peer_common_name(stream); !cn.empty()) {
        const std::string serial = peer_serial(stream);
        std::lock_guard lock{revoked_mu_};
        if (std::find(revoked_.begin(), revoked_.end(), serial) != revoked_.end()) return {};
        return {std::move(cn)};
    }
    const auto header = req[http::field::authorization];
    const std::string_view h{header.data(), header.size()};
    if (h.size() > 7 && beast::iequals(h.substr(0, 7), "Bearer "))
        return {token_user(opt_.token_auth_file, h.substr(7))};
    return {};
}

net::awaitable<bool> k8s_api::serve(tls_stream& stream, const request& req, const server_state& state) {
    const target t{std::string_view{req.target().data(), req.target().size()}};
    if (t.path.starts_with("/control/")) co_return co_await serve_control(stream, req, t, state);
    co_return co_await serve_api(stream, req, t, state);
}

net::awaitable<bool> k8s_api::serve_control(tls_stream& stream, const request& req, const target& t,
                                            const server_state& state) {
    const auto who = authenticate(stream, req);
    if (who.user.empty() || who.user == opt_.forbidden_user) {
        co_return co_await write_response(
            stream, status_reply(req, status_object(401, "Unauthorized", "control needs an allowed identity"), state));
    }
    const auto method = req.method();
    const auto path = t.path;
    const auto bad = [&](std::string message) {
        return status_reply(req, status_object(400, "BadRequest", std::move(message)), state);
    };
    const auto done = [&](json::object extra = {}) {
        extra["resourceVersion"] = std::to_string(store_.current_rv());
        return json_reply(req, http::status::ok, extra, state);
    };
    const auto on_off = [&](std::atomic<bool>& flag) {
        const auto on = t.param("on");
        if (!on || (*on != "true" && *on != "false")) return bad("on: expected true or false");
        flag = *on == "true";
        wake_watches(0);
        return done();
    };
    response res;
    if (path.starts_with("/control/slices/") && (method == http::verb::put || method == http::verb::delete_)) {
        const std::string name{path.substr(16)};
        if (method == http::verb::delete_) {
            res = store_.delete_slice(name)
                      ? done()
                      : status_reply(req, status_object(404, "NotFound", "no slice '" + name + "'"), state);
        } else {
            boost::system::error_code ec;
            json::value spec = json::parse(req.body(), ec);
            std::string error;
            if (!ec && spec.is_object()) spec.get_object()["name"] = name;
            if (ec)
                res = bad("body: expected JSON (" + ec.message() + ")");
            else if (!store_.set_slice(spec, error))
                res = bad("slice " + name + ": " + error);
            else
                res = done();
        }
    } else if (method == http::verb::post && path == "/control/compact") {
        store_.compact();
        res = done();
    } else if (method == http::verb::post && path == "/control/bump") {
        const auto n = t.param("n") ? parse_u64(*t.param("n")) : std::optional<std::uint64_t>{1};
        if (!n || *n == 0 || *n > 1000000) {
            res = bad("n: expected an integer 1-1000000");
        } else {
            store_.bump(*n);
            res = done();
        }
    } else if (method == http::verb::post && path == "/control/break-watches") {
        const auto how = t.param("how").value_or("close");
        if (how != "close" && how != "reset") {
            res = bad("how: expected close or reset");
        } else {
            const auto open = open_watches_.load();
            wake_watches(how == "reset" ? 2 : 1);
            res = done({{"broken", open}});
        }
    } else if (method == http::verb::post && path == "/control/stall") {
        res = on_off(stalled_);
    } else if (method == http::verb::post && path == "/control/bogus-empty") {
        res = on_off(bogus_empty_);
    } else if (method == http::verb::post && path == "/control/reject-credentials") {
        res = on_off(reject_credentials_);
    } else if (method == http::verb::post && path == "/control/unavailable") {
        res = on_off(unavailable_);
        if (unavailable_) wake_watches(1);
    } else if (method == http::verb::post && path == "/control/revoke") {
        std::string serial{t.param("serial").value_or("")};
        for (char& c : serial) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        while (serial.size() > 1 && serial.front() == '0') serial.erase(0, 1);
        if (serial.empty() || serial.find_first_not_of("0123456789abcdef") != std::string::npos) {
            res = bad("serial: expected a certificate serial in hex");
        } else {
            {
                std::lock_guard lock{revoked_mu_};
                revoked_.push_back(std::move(serial));
            }
            wake_watches(1);
            res = done();
        }
    } else if (method == http::verb::post && path == "/control/bookmarks") {
        const auto ms = t.param("interval_ms") ? parse_u64(*t.param("interval_ms")) : std::nullopt;
        if (!ms || *ms < 10 || *ms > 3600 * 1000) {
            res = bad("interval_ms: expected an integer 10-3600000");
        } else {
            bookmark_ms_ = static_cast<std::int64_t>(*ms);
            wake_watches(0);
            res = done();
        }
    } else if (method == http::verb::get && path == "/control/state") {
        res = done({{"compactedResourceVersion", std::to_string(store_.compacted_rv())},
                    {"lists", lists_.load()},
                    {"gets", gets_.load()},
                    {"watches", watches_.load()},
                    {"openWatches", open_watches_.load()},
                    {"unauthorized", unauthorized_.load()},
                    {"forbidden", forbidden_.load()},
                    {"expired", expired_.load()},
                    {"stalled", stalled_.load()},
                    {"bogusEmpty", bogus_empty_.load()},
                    {"rejectCredentials", reject_credentials_.load()},
                    {"unavailable", unavailable_.load()},
                    {"unavailableAnswers", unavailable_count_.load()},
                    {"bookmarkIntervalMs", bookmark_ms_.load()}});
    } else {
        res = status_reply(req, status_object(404, "NotFound", "no such control"), state);
    }
    co_return co_await write_response(stream, std::move(res));
}

net::awaitable<bool> k8s_api::serve_api(tls_stream& stream, const request& req, const target& t,
                                        const server_state& state) {
    // A stalled apiserver accepts and reads the request, then answers nothing
    // until the stall is lifted.
    net::steady_timer pause{co_await net::this_coro::executor};
    while (stalled_) {
        pause.expires_after(stall_poll);
        co_await pause.async_wait(net::as_tuple(use_awaitable));
    }

    if (unavailable_) {
        ++unavailable_count_;
        co_return co_await write_response(
            stream,
            status_reply(
                req, status_object(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
                state));
    }
    const auto who = authenticate(stream, req);
    if (who.user.empty() || reject_credentials_) {
        ++unauthorized_;
        co_return co_await write_response(stream,
                                          status_reply(req, status_object(401, "Unauthorized", "Unauthorized"), state));
    }
    if (req.method() != http::verb::get) {
        co_return co_await write_response(
            stream, status_reply(req,
                                 status_object(405, "MethodNotAllowed",
                                               "the server does not allow this method on the requested resource"),
                                 state));
    }
    if (auto doc = discovery_document(t.path, opt_.advertise); !doc.empty())
        co_return co_await write_response(stream, json_reply(req, http::status::ok, doc, state));

    // [/apis/discovery.k8s.io/v1 | /api/v1] [/watch] [/namespaces/NS] /RESOURCE [/NAME]
    std::string_view rest;
    std::string_view resource_name;
    resource_request rr{};
    if (t.path.starts_with("/apis/discovery.k8s.io/v1/")) {
        rest = t.path.substr(26);
        rr.kind = k8s_kind::endpoint_slice;
        resource_name = "endpointslices";
    } else if (t.path.starts_with("/api/v1/")) {
        rest = t.path.substr(8);
        rr.kind = k8s_kind::endpoints;
        resource_name = "endpoints";
    }
    std::vector<std::string_view> seg;
    while (!rest.empty()) {
        const auto slash = rest.find('/');
        seg.push_back(rest.substr(0, slash));
        rest = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    }
    std::size_t i = 0;
    if (i < seg.size() && seg[i] == "watch") rr.watch_path = true, ++i;
    if (i + 1 < seg.size() && seg[i] == "namespaces") rr.ns = seg[i + 1], i += 2;
    const bool found = !resource_name.empty() && i < seg.size() && seg[i] == resource_name && seg.size() - i <= 2;
    if (found && seg.size() - i == 2) rr.name = seg[i + 1];
    if (!found || (rr.ns.empty() && !rr.name.empty())) {
        co_return co_await write_response(
            stream,
            status_reply(req, status_object(404, "NotFound", "the server could not find the requested resource"),
                         state));
    }

    const bool watch = rr.watch_path || truthy(t.param("watch"));
    const std::string verb = watch ? "watch" : rr.name.empty() ? "list" : "get";
    if (who.user == opt_.forbidden_user) {
        ++forbidden_;
        const std::string group = rr.kind == k8s_kind::endpoint_slice ? "discovery.k8s.io" : "";
        std::string message = (rr.name.empty() ? qualified(rr.kind) : qualified(rr.kind) + " \"" + rr.name + "\"") +
                              " is forbidden: User \"" + who.user + "\" cannot " + verb + " resource \"" +
                              std::string(resource_name) + "\" in API group \"" + group + "\"" +
                              (rr.ns.empty() ? " at the cluster scope" : " in the namespace \"" + rr.ns + "\"");
        json::object details;
        if (!rr.name.empty()) details["name"] = rr.name;
        if (!group.empty()) details["group"] = group;
        details["kind"] = resource_name;
        co_return co_await write_response(
            stream, status_reply(req, status_object(403, "Forbidden", std::move(message), std::move(details)), state));
    }
    if (watch) co_return co_await serve_watch(stream, req, rr, t, state);
    if (rr.name.empty()) {
        // A list at a resourceVersion not seen yet waits for it up to 3 s
        // (the cacher's blockTimeout), then gets 504.
        const auto asked = parse_u64(t.param("resourceVersion").value_or(""));
        const auto until = std::chrono::steady_clock::now() + too_large_wait;
        while (asked && *asked > store_.current_rv() && std::chrono::steady_clock::now() < until) {
            pause.expires_after(stall_poll);
            co_await pause.async_wait(net::as_tuple(use_awaitable));
        }
        co_return co_await write_response(stream, list(req, rr, t, state));
    }

    ++gets_;
    const auto objects = store_.objects_at(rr.kind, 0);
    for (const auto& o : *objects)
        if (rr.ns == "default" && object_name(o) == rr.name)
            co_return co_await write_response(stream, json_reply(req, http::status::ok, o, state));
    json::object details{{"name", rr.name}};
    if (rr.kind == k8s_kind::endpoint_slice) details["group"] = "discovery.k8s.io";
    details["kind"] = resource_name;
    co_return co_await write_response(
        stream, status_reply(req,
                             status_object(404, "NotFound", qualified(rr.kind) + " \"" + rr.name + "\" not found",
                                           std::move(details)),
                             state));
}

namespace {

/// The selectors of a request and the objects' fields they look at.
struct selection {
    std::vector<requirement> labels;
    std::vector<requirement> fields;
    std::string ns;

    bool selects(const json::object& o) const {
        const auto& meta = o.at("metadata").get_object();
        if (!ns.empty() && meta.at("namespace") != json::string_view(ns)) return false;
        static const json::object no_labels;
        const auto* l = meta.if_contains("labels");
        if (!matches(labels, l && l->is_object() ? l->get_object() : no_labels)) return false;
        json::object f{{"metadata.name", meta.at("name")}, {"metadata.namespace", meta.at("namespace")}};
        return matches(fields, f);
    }
    bool empty() const { return labels.empty() && fields.empty(); }
};

/// The request's selection, or a 400 Status.
std::optional<json::object> read_selection(const target& t, const std::string& ns, selection& out) {
    std::string error;
    auto labels = parse_selector(t.param("labelSelector").value_or(""), error);
    if (!labels) return status_object(400, "BadRequest", error);
    auto fields = parse_selector(t.param("fieldSelector").value_or(""), error);
    if (!fields) return status_object(400, "BadRequest", error);
    for (const auto& r : *fields)
        if (r.key != "metadata.name" && r.key != "metadata.namespace")
            return status_object(400, "BadRequest", "field label not supported: " + r.key);
    out = {std::move(*labels), std::move(*fields), ns};
    return std::nullopt;
}

json::object too_large(std::uint64_t asked, std::uint64_t current) {
    return status_object(
        504, "Timeout",
        "Timeout: Too large resource version: " + std::to_string(asked) + ", current: " + std::to_string(current),
        {{"causes",
          json::array{json::object{{"reason", "ResourceVersionTooLarge"}, {"message", "Too large resource version"}}}},
         {"retryAfterSeconds", 1}});
}

}  // namespace

response k8s_api::list(const request& req, const resource_request& rr, const target& t, const server_state& state) {
    ++lists_;
    selection sel;
    if (auto error = read_selection(t, rr.ns, sel)) return status_reply(req, *error, state);
    const auto bad = [&](std::string message) {
        return status_reply(req, status_object(400, "BadRequest", std::move(message)), state);
    };
    std::uint64_t limit = 0;
    if (const auto l = t.param("limit"); l && !l->empty()) {
        const auto n = parse_u64(*l);
        if (!n) return bad("limit: expected a non-negative integer");
        limit = *n;
    }
    const auto rv_param = t.param("resourceVersion").value_or("");
    const auto match = t.param("resourceVersionMatch").value_or("");
    if (!match.empty() && match != "Exact" && match != "NotOlderThan")
        return bad("resourceVersionMatch: Unsupported value: \"" + std::string(match) + "\"");
    if (!match.empty() && rv_param.empty())
        return bad("resourceVersionMatch is forbidden unless resourceVersion is provided");

    const std::uint64_t now = store_.current_rv();
    std::uint64_t at = 0;  // 0: now
    std::string start;
    if (const auto cont = t.param("continue"); cont && !cont->empty()) {
        if (!rv_param.empty()) return bad("specifying resource version is not allowed when using continue");
        if (!decode_continue(*cont, at, start)) return bad("continue key is not valid: malformed token");
        if (at < store_.compacted_rv()) {
            ++expired_;
            auto s = status_object(
                410, "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new "
                "list without the continue parameter, or use the continue token in this response to retrieve the "
                "remainder of the results. Continuing with the provided token results in an inconsistent list - "
                "objects that were created, modified, or deleted between the time the first chunk was returned and "
                "now may show up in the list.");
            s["metadata"] = json::object{{"continue", encode_continue(now, start.substr(0, start.size() - 1))}};
            return status_reply(req, s, state);
        }
    } else if (!rv_param.empty() && rv_param != "0") {
        const auto n = parse_u64(rv_param);
        if (!n) return bad("resourceVersion: Invalid value: \"" + std::string(rv_param) + "\": must be an integer");
        if (*n > now) return status_reply(req, too_large(*n, now), state);
        if (match == "Exact") at = *n;
    }
    std::uint64_t read_rv = 0;
    auto objects = store_.objects_at(rr.kind, at, &read_rv);
    if (!objects) {
        ++expired_;
        return status_reply(req, status_object(410, "Expired", "The resourceVersion for the provided list is too old."),
                            state);
    }
    json::array items;
    std::uint64_t remaining = 0;
    std::string last;
    if (!bogus_empty_) {
        for (const auto& o : *objects) {
            const auto name = object_name(o);
            if (!start.empty() && name < std::string_view(start)) continue;  // start: last name + NUL
            if (!sel.selects(o)) continue;
            if (limit != 0 && items.size() >= limit) {
                ++remaining;
                continue;
            }
            items.push_back(as_list_item(o));
            last = name;
        }
    }
    json::object meta{{"resourceVersion", std::to_string(read_rv)}};
    if (remaining > 0) {
        meta["continue"] = encode_continue(read_rv, last);
        // The apiserver counts what is left only when nothing filters it.
        if (sel.empty()) meta["remainingItemCount"] = remaining;
    }
    const bool slices = rr.kind == k8s_kind::endpoint_slice;
    json::object list{{"kind", slices ? "EndpointSliceList" : "EndpointsList"},
                      {"apiVersion", slices ? "discovery.k8s.io/v1" : "v1"},
                      {"metadata", std::move(meta)},
                      {"items", std::move(items)}};
    return json_reply(req, http::status::ok, list, state);
}

net::awaitable<bool> k8s_api::serve_watch(tls_stream& stream, const request& req, const resource_request& rr,
                                          const target& t, const server_state& state) {
    selection sel;
    if (auto error = read_selection(t, rr.ns, sel))
        co_return co_await write_response(stream, status_reply(req, *error, state));
    if (!rr.name.empty()) sel.fields.push_back({requirement::op::eq, "metadata.name", rr.name});
    const auto rv_param = t.param("resourceVersion").value_or("");
    std::optional<std::uint64_t> from;
    if (!rv_param.empty() && rv_param != "0") {
        from = parse_u64(rv_param);
        if (!from)
            co_return co_await write_response(
                stream, status_reply(req,
                                     status_object(400, "BadRequest",
                                                   "resourceVersion: Invalid value: \"" + std::string(rv_param) +
                                                       "\": must be an integer"),
                                     state));
    }
    // Without a timeout the apiserver picks one in [min, 2 min] request timeout (1800 s).
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    std::uint64_t timeout_s = 1800 + rng() % 1800;
    if (const auto ts = t.param("timeoutSeconds"); ts && !ts->empty()) {
        const auto n = parse_u64(*ts);
        if (!n)
            co_return co_await write_response(
                stream,
                status_reply(req, status_object(400, "BadRequest", "timeoutSeconds: expected an integer"), state));
        if (*n > 0) timeout_s = std::min(*n, max_timeout_seconds);
    }
    const bool bookmarks = truthy(t.param("allowWatchBookmarks"));

    // Registered before it is counted: a test that sees the count and then
    // breaks the watches breaks this one.
    auto waker = std::make_shared<watch_waker>(co_await net::this_coro::executor);
    {
        std::lock_guard lock{watchers_mu_};
        watchers_.push_back(waker);
    }
    ++watches_;
    ++open_watches_;
    struct open_guard {
        std::atomic<std::uint64_t>& n;
        ~open_guard() { --n; }
    } guard{open_watches_};

    if (!co_await write_stream_header(stream, req, state)) co_return false;
    auto& tcp_layer = beast::get_lowest_layer(stream);

    std::uint64_t rv = 0;
    if (!from) {
        // "Start at most recent": what exists now as ADDED, then the changes.
        const auto objects = store_.objects_at(rr.kind, 0, &rv);
        for (const auto& o : *objects)
            if (sel.selects(o) && !co_await write_chunk(stream, event_line("ADDED", o))) co_return false;
    } else {
        rv = *from;
    }

    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto deadline = start + std::chrono::seconds(timeout_s);
    // Every interval, and once 2 s before the end (the cacher's nextBookmarkTime).
    auto interval_ms = bookmark_ms_.load();
    auto next_bookmark = [&](clock::time_point now) -> std::optional<clock::time_point> {
        const auto next = std::min(now + std::chrono::milliseconds(interval_ms), deadline - 2s);
        if (!bookmarks || next < now) return std::nullopt;
        return next;
    };
    auto bookmark_at = next_bookmark(start);
    std::vector<k8s_event> events;
    for (;;) {
        if (const int b = waker->broken.load(); b != 0) {
            boost::system::error_code ignored;
            if (b == 2) tcp_layer.socket().set_option(net::socket_base::linger(true, 0), ignored);
            tcp_layer.socket().close(ignored);
            co_return false;
        }
        const auto now = clock::now();
        if (stalled_) {
            waker->timer.expires_after(stall_poll);
            co_await waker->timer.async_wait(net::as_tuple(use_awaitable));
            continue;
        }
        if (interval_ms != bookmark_ms_.load()) {
            interval_ms = bookmark_ms_.load();
            bookmark_at = next_bookmark(now);
        }
        events.clear();
        if (!store_.events_since(rr.kind, rv, events)) {
            ++expired_;
            const auto line = event_line("ERROR",
                                         status_object(410, "Expired",
                                                       "too old resource version: " + std::to_string(rv) + " (" +
                                                           std::to_string(store_.compacted_rv()) + ")"));
            if (!co_await write_chunk(stream, line)) co_return false;
            break;
        }
        for (const auto& e : events)
            if (sel.selects(e.object) && !co_await write_chunk(stream, event_line(e.type, e.object))) co_return false;
        if (now >= deadline) break;
        bool wrote = !events.empty();
        if (bookmark_at && now >= *bookmark_at) {
            if (!co_await write_chunk(stream, event_line("BOOKMARK", bookmark_object(rr.kind, rv)))) co_return false;
            bookmark_at = *bookmark_at >= deadline - 2s ? std::nullopt : next_bookmark(now);
            wrote = true;
        }
        // A wake-up that came while a write was suspended found no wait to
        // cancel: look at the store again before sleeping.
        if (wrote) continue;
        auto wake = deadline;
        if (bookmark_at) wake = std::min(wake, *bookmark_at);
        waker->timer.expires_at(wake);
        co_await waker->timer.async_wait(net::as_tuple(use_awaitable));
    }
    if (!co_await write_last_chunk(stream)) co_return false;
    co_return req.keep_alive();
}

}  // namespace standin
