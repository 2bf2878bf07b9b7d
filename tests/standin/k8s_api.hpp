// The stand-in apiserver's Kubernetes API: discovery documents, EndpointSlice
// and Endpoints get/list/watch as kube-apiserver serves them, its
// authentication, and the control surface tests drive it with.
//
// API (GET; 401 Status without a valid identity, 403 for --forbidden-user):
//   /api, /api/v1, /apis, /apis/discovery.k8s.io, /apis/discovery.k8s.io/v1
//                                 legacy discovery documents (kubectl falls back to them)
//   /apis/discovery.k8s.io/v1/namespaces/default/endpointslices[/NAME]
//   /api/v1/namespaces/default/endpoints[/NAME]   (also without namespaces/NS:
//                                 all namespaces; the deprecated /watch/ paths work too)
//     list:  labelSelector, fieldSelector (metadata.name/namespace; k=v, k==v,
//            k!=v, k, !k), limit + continue (410 when the continue's
//            resourceVersion was compacted), resourceVersion (+
//            resourceVersionMatch=Exact: 410 when compacted), 504 when in the future
//            for 3 s
//     watch: watch=1/true/True (Go ParseBool), resourceVersion ("" or "0": ADDED for what exists,
//            then changes; N: changes after N, or one ERROR event with a 410
//            Status when N is compacted), allowWatchBookmarks=true (a BOOKMARK
//            every bookmark interval and 2 s before the end), timeoutSeconds
//            (default 1800-3600 s, as the apiserver picks). One JSON event plus
//            "\n" per chunk; the stream ends with the last chunk at the timeout.
// Identity: a client certificate verified against --client-ca (user = CN),
// or "Authorization: Bearer T" with T in --token-auth-file (kube-apiserver's
// CSV: token,user,uid[,"groups"], read again on every request).
//
// Control (needs an identity as above that is not the forbidden user; the
// reject-credentials switch does not apply to it); answers JSON:
//   PUT    /control/slices/NAME    body: {"addressType":"IPv4","endpoints":[{"addresses":["IP"],
//                                 "conditions":{"ready":true,"serving":true,"terminating":false}}],
//                                 "ports":[{"name":"https","port":6443,"protocol":"TCP"}],"labels":{..}}
//                                 (ports default to slice kubernetes's, labels to
//                                 kubernetes.io/service-name=kubernetes); slice `kubernetes`
//                                 also rewrites the Endpoints `kubernetes`
//   DELETE /control/slices/NAME
//   POST   /control/compact        history forgotten up to now (older watches/lists: 410)
//   POST   /control/bump?n=N       resourceVersion += N, as writes to other objects do
//   POST   /control/break-watches?how=close|reset  open watches end mid-stream (FIN without
//                                 the last chunk, or RST)
//   POST   /control/stall?on=true|false    API requests and open watches stop answering
//   POST   /control/bogus-empty?on=true|false  lists answer no items
//   POST   /control/reject-credentials?on=true|false  every API request gets 401
//   POST   /control/unavailable?on=true|false  every API request gets 503 (the apiserver's
//                                 "the server is currently unable to handle the request"),
//                                 open watches end; /readyz and /version still answer
//   POST   /control/revoke?serial=HEX  API requests with the client certificate of that
//                                 serial (hex, as `openssl x509 -serial` prints it) get 401;
//                                 open watches end (a rotated-out kubelet certificate)
//   POST   /control/bookmarks?interval_ms=N
//   GET    /control/state          resourceVersion, compacted, counters (lists, watches, ...)
#pragma once

#include "k8s_store.hpp"
#include "standin_http.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace standin {

/// How the Kubernetes API part is set up (from the command line).
struct k8s_api_options {
    std::string token_auth_file;  ///< kube-apiserver's --token-auth-file format; "" for none
    std::string forbidden_user;   ///< authenticated but allowed nothing (403)
    std::chrono::milliseconds bookmark_interval{60000};
    std::string advertise;  ///< IP:PORT shown in /api's serverAddressByClientCIDRs
};

struct watch_waker;

/// Serves the Kubernetes API paths and the control surface; shared by all
/// connections (its switches are atomics, the store has its own lock).
class k8s_api {
public:
    k8s_api(k8s_store& store, k8s_api_options opt);

    /// Whether `path` is this part's (/api..., /apis..., /control/ but /control/readyz).
    static bool handles(std::string_view path);
    /// Serves one request on the connection's strand; whether the connection
    /// may carry another.
    net::awaitable<bool> serve(tls_stream& stream, const request& req, const server_state& state);

private:
    struct identity;
    struct resource_request;

    identity authenticate(tls_stream& stream, const request& req) const;
    net::awaitable<bool> serve_api(tls_stream& stream, const request& req, const target& t, const server_state& state);
    net::awaitable<bool> serve_control(tls_stream& stream, const request& req, const target& t,
                                       const server_state& state);
    net::awaitable<bool> serve_watch(tls_stream& stream, const request& req, const resource_request& rr,
                                     const target& t, const server_state& state);
    response list(const request& req, const resource_request& rr, const target& t, const server_state& state);
    void wake_watches(int broken);

    k8s_store& store_;
    k8s_api_options opt_;
    std::atomic<bool> stalled_{false};
    std::atomic<bool> bogus_empty_{false};
    std::atomic<bool> reject_credentials_{false};
    std::atomic<bool> unavailable_{false};
    mutable std::mutex revoked_mu_;
    std::vector<std::string> revoked_;  ///< client certificate serials, lower-case hex
    std::atomic<std::int64_t> bookmark_ms_;
    std::atomic<std::uint64_t> lists_{0}, gets_{0}, watches_{0}, open_watches_{0}, unauthorized_{0}, forbidden_{0},
        expired_{0}, unavailable_count_{0};
    std::mutex watchers_mu_;
    std::vector<std::weak_ptr<watch_waker>> watchers_;
};

}  // namespace standin
