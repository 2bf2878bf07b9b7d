// The list+watch loop of discovery (see the header). Modelled on client-go's
// reflector (tools/cache/reflector.go): list, then watch from the list's
// resourceVersion with allowWatchBookmarks and a random timeoutSeconds in
// 5..10 minutes; a watch that ends normally is re-opened from the last
// resourceVersion without a list; 410 Gone (as the HTTP status or as an
// ERROR event) means that version was compacted away: list again.
#include "apilb/control/discovery_client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/error.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include <array>
#include <chrono>

#include "apilb/control/http_io.hpp"
#include "apilb/control/prober.hpp"
#include "apilb/control/tls_files.hpp"
#include "apilb/control/yaml_guard.hpp"
#include "apilb/core/file_read.hpp"
#include "apilb/core/kubeconfig.hpp"
#include "apilb/core/thread_role.hpp"

#include "apilb_build_config.h"

namespace apilb {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using boost::system::error_code;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

/// Connect plus TLS handshake to one address.
constexpr auto open_timeout = 5s;
/// A whole list response, every page.
constexpr auto list_timeout = 30s;
/// client-go's reflector backoff: 800 ms doubling to 30 s, with jitter 1.0.
constexpr auto backoff_initial = 800ms;
constexpr auto backoff_max = 30s;
/// Response headers (the apiserver's are a few hundred bytes).
constexpr std::uint32_t max_header_bytes = 64 * 1024;
/// Pages of a list: a `kubernetes` list has one slice per address family.
constexpr int max_pages = 16;

std::string endpoint_text(const tcp::endpoint& ep) {
    return ep.address().is_v6() ? fmt::format("[{}]:{}", ep.address().to_string(), ep.port())
                                : fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

/// The TLS client context from the section and the credentials it names;
/// `files` gets every file they were read from (to notice a rotation).
ssl::context make_tls(const std::string& pool, const discovery_config& d, std::string& token, std::string& token_file,
                      std::vector<std::string>& files) {
    ssl::context ctx(ssl::context::tls_client);
    SSL_CTX* native = ctx.native_handle();
    set_client_defaults(native);
    const std::string what = fmt::format("pool {}: discovery", pool);
    kube_credentials k;
    if (!d.kubeconfig.empty()) {
        file_contents file = read_regular_file(d.kubeconfig, max_kubeconfig_bytes);
        if (!file) throw std::runtime_error(fmt::format("{}.kubeconfig: {} {}", what, d.kubeconfig, file.error));
        prove_yaml_parse_ends(d.kubeconfig, file.bytes);
        k = parse_kubeconfig(file.bytes, d.kubeconfig);
    } else {
        k.ca_file = in_cluster_ca_file;
        k.token_file = in_cluster_token_file;
    }
    // The apiserver is always verified: a kubeconfig that skips it still
    // needs a CA here, in ca_file or its own.
    if (!d.ca_file.empty()) {
        load_ca_file(native, what + ".ca_file", d.ca_file);
    } else if (!k.ca_pem.empty()) {
        load_ca_pem(native, what + ".kubeconfig", d.kubeconfig + " certificate-authority-data", k.ca_pem);
    } else if (!k.ca_file.empty()) {
        load_ca_file(native, what + ".kubeconfig certificate-authority", k.ca_file);
    } else {
        throw std::runtime_error(fmt::format(
            "{}: {} has no cluster CA (certificate-authority or -data){}; set discovery.ca_file: apilb always "
            "verifies the apiserver",
            what, d.kubeconfig, k.insecure_skip_verify ? " and skips verification" : ""));
    }
    ctx.set_verify_mode(ssl::verify_peer);
    if (!k.cert_pem.empty()) {
        load_certificate_chain_pem(native, what + ".kubeconfig", d.kubeconfig + " client-certificate-data", k.cert_pem);
    } else if (!k.cert_file.empty()) {
        load_certificate_chain_file(native, what + ".kubeconfig client-certificate", k.cert_file);
    }
    if (!k.key_pem.empty()) {
        load_private_key_pem(native, what + ".kubeconfig", d.kubeconfig + " client-key-data", k.key_pem);
    } else if (!k.key_file.empty()) {
        load_private_key_file(native, what + ".kubeconfig client-key", k.key_file);
    }
    if ((!k.key_pem.empty() || !k.key_file.empty()) && SSL_CTX_check_private_key(native) != 1) {
        throw std::runtime_error(fmt::format("{}: the kubeconfig's client key does not match its certificate", what));
    }
    token = k.token;
    token_file = k.token_file;
    files.clear();
    for (const std::string* f :
         std::array<const std::string*, 5>{&d.kubeconfig, &d.ca_file, &k.ca_file, &k.cert_file, &k.key_file}) {
        if (!f->empty()) files.push_back(*f);
    }
    return ctx;
}

/// What a file is now: device, inode, size and change time of what the path
/// leads to (through a symlink, as the kubelet's kubelet-client-current.pem
/// is); all zero when it cannot be looked at.
std::array<std::int64_t, 5> file_stamp(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return {};
    return {static_cast<std::int64_t>(st.st_dev), static_cast<std::int64_t>(st.st_ino),
            static_cast<std::int64_t>(st.st_size),
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
            static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec};
}

/// "" or why: a status the loop must act on is returned as its number.
std::string status_problem(unsigned status, const std::string& body) {
    std::string text = body.substr(0, 200);
    for (char& c : text) {
        if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    }
    if (status == 401 || status == 403) {
        return fmt::format("credentials rejected (HTTP {}): check the kubeconfig's user and its RBAC; {}", status,
                           text);
    }
    return fmt::format("HTTP {}: {}", status, text);
}

}  // namespace

const char* to_string(discovery_source s) {
    switch (s) {
    case discovery_source::seed: return "seed";
    case discovery_source::state_file: return "state_file";
    case discovery_source::api: return "api";
    }
    return "unknown";
}

const char* to_string(watch_state s) {
    switch (s) {
    case watch_state::starting: return "starting";
    case watch_state::listing: return "listing";
    case watch_state::watching: return "watching";
    case watch_state::backoff: return "backoff";
    case watch_state::stopped: return "stopped";
    }
    return "unknown";
}

/// What the coroutine and stop() share: whether to go on, and the socket or
/// timer in flight so that stop() ends the wait at once.
struct discovery_client::shared {
    bool stopped = false;
    tcp::socket* socket = nullptr;
    asio::steady_timer* timer = nullptr;

    void stop() {
        stopped = true;
        error_code ignored;
        if (socket != nullptr) socket->close(ignored);
        if (timer != nullptr) timer->cancel();
    }
};

namespace {

/// Registers a socket with `shared` for as long as a request runs.
template <class Shared>
struct socket_registration {
    socket_registration(Shared& s, tcp::socket& sock) : life(s) { life.socket = &sock; }
    ~socket_registration() { life.socket = nullptr; }
    Shared& life;
};

}  // namespace

discovery_client::discovery_client(asio::io_context& control, const pool_config& pool, targets_fn targets,
                                   change_fn on_change)
    : control_(control),
      pool_(pool.name),
      cfg_(*pool.discovery),
      targets_(std::move(targets)),
      on_change_(std::move(on_change)),
      stats_(std::make_shared<discovery_stats>()),
      random_(std::random_device{}()) {
    tls_.emplace(make_tls(pool_, cfg_, token_, token_file_, credential_files_));
    credential_stamps_ = stamps();
}

std::vector<std::array<std::int64_t, 5>> discovery_client::stamps() const {
    std::vector<std::array<std::int64_t, 5>> out;
    for (const auto& f : credential_files_) out.push_back(file_stamp(f));
    return out;
}

void discovery_client::refresh_credentials() {
    // A few stat calls on the control thread, before a connect: the workers
    // never wait for them. The kubelet rotates its client certificate by
    // pointing kubelet-client-current.pem at a new file, and a kubeconfig
    // may be rewritten: either changes a stamp.
    auto now = stamps();
    if (now == credential_stamps_) return;
    std::string token, token_file;
    std::vector<std::string> files;
    try {
        ssl::context fresh = make_tls(pool_, cfg_, token, token_file, files);
        // No stream is open here (the loop is between requests), so none
        // refers to the context replaced.
        tls_.emplace(std::move(fresh));
    } catch (const std::exception& e) {
        // Half-written files, or a rotation in progress: the credentials in
        // use stay, and the next connect looks again.
        stats_->credential_errors_total.fetch_add(1, std::memory_order_relaxed);
        spdlog::warn("discovery: pool {}: the credentials changed but cannot be used, keeping the previous ones: {}",
                     pool_, single_line(e.what()));
        return;
    }
    token_ = std::move(token);
    token_file_ = std::move(token_file);
    credential_files_ = std::move(files);
    credential_stamps_ = stamps();
    stats_->credential_reloads_total.fetch_add(1, std::memory_order_relaxed);
    spdlog::info("discovery: pool {}: the credentials changed; the next connect uses the new ones", pool_);
}

discovery_client::~discovery_client() { stop(); }

void discovery_client::start() {
    APILB_ASSERT_ROLE(control);
    life_ = std::make_shared<shared>();
    asio::co_spawn(control_, run(life_), asio::detached);
}

void discovery_client::stop() {
    if (life_) life_->stop();
    stats_->state.store(static_cast<int>(watch_state::stopped), std::memory_order_relaxed);
}

std::string discovery_client::request_target(bool watching, const std::string& continue_token) {
    std::string t;
    if (api_ == discovery_api::endpoint_slices) {
        t = fmt::format(
            "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector="
            "kubernetes.io%2Fservice-name%3D{}",
            cfg_.namespace_name, cfg_.service);
    } else {
        t = fmt::format("/api/v1/namespaces/{}/endpoints?fieldSelector=metadata.name%3D{}", cfg_.namespace_name,
                        cfg_.service);
    }
    if (!watching) {
        t += "&limit=500";
        if (!continue_token.empty()) t += "&continue=" + continue_token;
        return t;
    }
    // client-go: a random timeout in [5m, 10m) spreads the re-watches of many clients.
    const int timeout_s = 300 + static_cast<int>(random_() % 300);
    return t + fmt::format("&watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}", resource_version_,
                           timeout_s);
}

namespace {

using ssl_stream = beast::ssl_stream<beast::tcp_stream>;

/// Connects and shakes hands with `target`, verifying `server_name`; "" or why.
asio::awaitable<std::string> open_stream(ssl_stream& stream, const tcp::endpoint& target,
                                         const std::string& server_name) {
    auto& lower = beast::get_lowest_layer(stream);
    lower.expires_after(open_timeout);
    if (auto [ec] = co_await http_io::connect(lower, target); ec) {
        co_return fmt::format("connect to {}: {}", endpoint_text(target), ec.message());
    }
    SSL* native = stream.native_handle();
    set_server_name(native, server_name, true);
    if (auto [ec] = co_await http_io::handshake(stream, ssl::stream_base::client); ec) {
        std::string text = ec.message();
        if (const long v = SSL_get_verify_result(native); v != X509_V_OK) {
            text += fmt::format(": certificate verification failed: {}", X509_verify_cert_error_string(v));
        }
        co_return fmt::format("TLS to {}: {}", endpoint_text(target), text);
    }
    co_return std::string();
}

}  // namespace

asio::awaitable<std::string> discovery_client::list(const tcp::endpoint& target) {
    const std::shared_ptr<shared> life = life_;
    std::string continue_token;
    std::map<std::string, slice_state> slices;
    std::string version;
    std::size_t total = 0;
    for (int page = 0; page < max_pages; ++page) {
        ssl_stream stream(co_await asio::this_coro::executor, *tls_);
        socket_registration reg(*life, beast::get_lowest_layer(stream).socket());
        std::string err = co_await open_stream(stream, target, cfg_.server_name);
        if (life->stopped) co_return "stopped";
        if (!err.empty()) co_return err;
        http::request<http::empty_body> req{http::verb::get, request_target(false, continue_token), 11};
        req.set(http::field::host, cfg_.server_name);
        req.set(http::field::user_agent, "apilb/" APILB_VERSION " discovery");
        req.set(http::field::accept, "application/json");
        if (!token_file_.empty()) {
            file_contents f = read_regular_file(token_file_, max_token_bytes);
            if (!f) co_return fmt::format("the token file {} {}", token_file_, f.error);
            token_ = f.bytes;
            while (!token_.empty() && std::isspace(static_cast<unsigned char>(token_.back()))) token_.pop_back();
        }
        if (!token_.empty()) req.set(http::field::authorization, "Bearer " + token_);
        beast::get_lowest_layer(stream).expires_after(list_timeout);
        if (auto [ec, n] = co_await http_io::write(stream, req); ec) {
            co_return life->stopped ? "stopped" : "sending the list request: " + ec.message();
        }
        beast::flat_buffer buffer;
        http::response_parser<http::string_body> parser;
        parser.header_limit(max_header_bytes);
        parser.body_limit(max_list_bytes);
        auto [ec, n] = co_await http_io::read(stream, buffer, parser);
        if (life->stopped) co_return "stopped";
        if (ec == ssl::error::stream_truncated && parser.is_done()) ec = {};
        if (ec == http::error::body_limit) co_return fmt::format("the list is larger than {} bytes", max_list_bytes);
        if (ec) co_return "reading the list: " + ec.message();
        const auto& res = parser.get();
        if (res.result_int() == 404 && api_ == discovery_api::endpoint_slices) {
            // discovery.k8s.io/v1 is served from Kubernetes 1.21.
            spdlog::warn("discovery: pool {}: EndpointSlices are not served (404); following v1 Endpoints", pool_);
            api_ = discovery_api::endpoints;
            co_return "404";
        }
        if (res.result_int() != 200) co_return status_problem(res.result_int(), res.body());
        auto parsed_list = parse_slice_list(res.body(), api_);
        if (!parsed_list.value) co_return "the list: " + parsed_list.error;
        for (auto& s : parsed_list.value->items) {
            total += s.endpoints.size();
            if (total > max_discovered_endpoints) co_return "the list names more than 64 endpoints";
            slices[s.name] = std::move(s);
        }
        version = parsed_list.value->resource_version;
        continue_token = parsed_list.value->continue_token;
        if (continue_token.empty()) {
            slices_ = std::move(slices);
            resource_version_ = version;
            co_return std::string();
        }
    }
    co_return fmt::format("the list has more than {} pages", max_pages);
}

asio::awaitable<std::string> discovery_client::watch(const tcp::endpoint& target) {
    const std::shared_ptr<shared> life = life_;
    ssl_stream stream(co_await asio::this_coro::executor, *tls_);
    auto& lower = beast::get_lowest_layer(stream);
    socket_registration reg(*life, lower.socket());
    std::string err = co_await open_stream(stream, target, cfg_.server_name);
    if (life->stopped) co_return "stopped";
    if (!err.empty()) co_return err;
    http::request<http::empty_body> req{http::verb::get, request_target(true, {}), 11};
    req.set(http::field::host, cfg_.server_name);
    req.set(http::field::user_agent, "apilb/" APILB_VERSION " discovery");
    req.set(http::field::accept, "application/json");
    if (!token_.empty()) req.set(http::field::authorization, "Bearer " + token_);
    lower.expires_after(cfg_.idle_timeout);
    if (auto [ec, n] = co_await http_io::write(stream, req); ec) {
        co_return life->stopped ? "stopped" : "sending the watch request: " + ec.message();
    }
    beast::flat_buffer buffer;
    http::response_parser<http::buffer_body> parser;
    parser.header_limit(max_header_bytes);
    parser.body_limit(boost::none);  // endless; each event is bounded by the stream parser
    if (auto [ec, n] = co_await http_io::read_header(stream, buffer, parser); ec) {
        if (life->stopped) co_return "stopped";
        co_return ec == beast::error::timeout
            ? fmt::format("no watch response within {}s", cfg_.idle_timeout.count() / 1000)
            : "reading the watch response: " + ec.message();
    }
    if (life->stopped) co_return "stopped";
    const unsigned status = parser.get().result_int();
    if (status == 410) co_return "410";
    if (status != 200) co_return status_problem(status, {});
    watch_stream_parser events(api_);
    std::vector<watch_event> batch;
    std::array<char, 16 * 1024> chunk{};
    while (!parser.is_done()) {
        parser.get().body().data = chunk.data();
        parser.get().body().size = chunk.size();
        // A watch that brings no byte for idle_timeout, not even a
        // bookmark, is dead (a half-open connection, a stalled apiserver).
        lower.expires_after(cfg_.idle_timeout);
        auto [ec, n] = co_await http_io::read_some(stream, buffer, parser);
        if (life->stopped) co_return "stopped";
        if (ec == http::error::need_buffer) ec = {};
        if (ec == beast::error::timeout) {
            co_return fmt::format("the watch brought no byte for {}s", cfg_.idle_timeout.count() / 1000);
        }
        // The apiserver ends a watch at timeoutSeconds with the end of the
        // chunked body; a cut connection is an error.
        if (ec == http::error::end_of_stream || ec == ssl::error::stream_truncated) {
            co_return parser.is_done() ? std::string() : "the watch connection was cut";
        }
        if (ec) co_return "reading the watch: " + ec.message();
        const std::size_t got = chunk.size() - parser.get().body().size;
        batch.clear();
        if (auto why = events.feed(std::string_view(chunk.data(), got), batch); !why.empty()) co_return why;
        for (auto& e : batch) {
            stats_->events_total.fetch_add(1, std::memory_order_relaxed);
            switch (e.type) {
            case watch_event_type::added:
            case watch_event_type::modified:
                resource_version_ = e.object.resource_version;
                slices_[e.object.name] = std::move(e.object);
                break;
            case watch_event_type::deleted:
                resource_version_ = e.object.resource_version;
                slices_.erase(e.object.name);
                break;
            case watch_event_type::bookmark: resource_version_ = e.object.resource_version; break;
            case watch_event_type::error:
                if (e.status_code == 410) co_return "410";
                co_return fmt::format("watch error {}: {}", e.status_code, e.message);
            }
        }
        if (!batch.empty()) {
            mark_synced();
            publish();
        }
    }
    co_return std::string();
}

void discovery_client::record_error(const std::string& err) {
    // An apiserver's message is quoted in it: one line, bounded, for the
    // status (apilb status prints it on one line; the page shows it as text).
    std::size_t n = std::min(err.size(), max_error_chars);
    // Not through the middle of a UTF-8 character.
    if (n < err.size()) {
        while (n > 0 && (static_cast<unsigned char>(err[n]) & 0xC0) == 0x80) --n;
    }
    last_error_ = single_line(err.substr(0, n));
    last_error_unix_ =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void discovery_client::mark_synced() {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    stats_->last_sync_unix.store(std::chrono::duration_cast<std::chrono::seconds>(now).count(),
                                 std::memory_order_relaxed);
}

void discovery_client::publish() {
    std::vector<discovered_endpoint> merged = merge_slices(slices_);
    const bool usable = std::any_of(merged.begin(), merged.end(), takes_new_sessions);
    if (!usable) {
        // The endpoint reconciler never lists zero apiservers while one
        // runs; a list that does is wrong, and applying it would cut every
        // client off. Keep the set we have.
        stats_->empty_lists_total.fetch_add(1, std::memory_order_relaxed);
        spdlog::warn("discovery: pool {}: the API lists no serving apiserver; keeping the {} known", pool_,
                     current_.size());
        return;
    }
    const bool same = merged == current_ && source_ == discovery_source::api;
    source_ = discovery_source::api;
    if (same) return;
    current_ = std::move(merged);
    on_change_(current_);
}

asio::awaitable<void> discovery_client::run(std::shared_ptr<shared> life) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    life->timer = &timer;
    auto backoff = std::chrono::duration_cast<std::chrono::milliseconds>(backoff_initial);
    std::size_t attempt = 0;
    bool listed = false;
    auto set_state = [&](watch_state s) { stats_->state.store(static_cast<int>(s), std::memory_order_relaxed); };
    while (!life->stopped) {
        refresh_credentials();
        const std::vector<tcp::endpoint> targets = targets_();
        std::string err;
        if (targets.empty()) {
            err = "no backend address to reach the API through";
        } else {
            const tcp::endpoint target = targets[attempt % targets.size()];
            api_server_ = endpoint_text(target);
            if (resource_version_.empty()) {
                set_state(watch_state::listing);
                err = co_await list(target);
                if (life->stopped) break;
                if (err == "404") continue;  // the same address, the other API
                if (err.empty()) {
                    stats_->lists_total.fetch_add(1, std::memory_order_relaxed);
                    if (listed) stats_->relists_total.fetch_add(1, std::memory_order_relaxed);
                    listed = true;
                    mark_synced();
                    spdlog::info("discovery: pool {}: listed {} slice(s) at resourceVersion {} through {}", pool_,
                                 slices_.size(), resource_version_, endpoint_text(target));
                    publish();
                }
            }
            if (err.empty()) {
                set_state(watch_state::watching);
                const auto opened = std::chrono::steady_clock::now();
                err = co_await watch(target);
                if (life->stopped) break;
                if (err == "410") {
                    spdlog::info("discovery: pool {}: resourceVersion {} is too old (410 Gone); listing again", pool_,
                                 resource_version_);
                    resource_version_.clear();
                    continue;
                }
                // A watch that ran a while was a success: the next failure starts the backoff afresh.
                if (std::chrono::steady_clock::now() - opened > 10s) backoff = backoff_initial;
                if (err.empty()) continue;  // ended at timeoutSeconds: watch again from resource_version_
            }
        }
        stats_->errors_total.fetch_add(1, std::memory_order_relaxed);
        record_error(err);
        ++attempt;  // the next try goes through the next address
        const auto wait = backoff + std::chrono::milliseconds(random_() % (backoff.count() + 1));
        spdlog::warn("discovery: pool {}: {}; trying again in {}ms", pool_, err, wait.count());
        set_state(watch_state::backoff);
        timer.expires_after(wait);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        if (life->stopped) break;
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, backoff_max);
    }
    life->timer = nullptr;
}

}  // namespace apilb
