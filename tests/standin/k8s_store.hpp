// The stand-in apiserver's object store: the `kubernetes` EndpointSlices (and
// the legacy `kubernetes` Endpoints the endpoint reconciler writes beside
// them) with one resourceVersion counter and a bounded, compactable history,
// as etcd and the watch cache give kube-apiserver. No I/O; thread-safe.
#pragma once

#include <boost/json.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace standin {

namespace json = boost::json;

/// The two kinds of object the stand-in serves.
enum class k8s_kind { endpoint_slice, endpoints };

/// One change as a watch sends it: `object` carries kind and apiVersion.
struct k8s_event {
    std::uint64_t rv;
    std::string type;  ///< ADDED, MODIFIED or DELETED
    k8s_kind kind;
    json::object object;
};

/// The objects of every kind, keyed by name (namespace is always "default").
class k8s_store {
public:
    /// Most events kept; older ones are compacted away, as etcd's periodic compaction does.
    static constexpr std::size_t history_limit = 10000;

    /// Starts at resourceVersion 1 with the slice `kubernetes` holding one
    /// ready endpoint `address` and the port "https" `port` (an apiserver
    /// that advertises itself), and its mirrored Endpoints.
    k8s_store(std::string address, std::uint16_t port);

    /// Creates or replaces the slice `spec` describes (control surface JSON:
    /// name, addressType, endpoints, ports, labels; see k8s_api.hpp). The
    /// new resourceVersion, or nullopt with `error` naming the bad key.
    std::optional<std::uint64_t> set_slice(const json::value& spec, std::string& error);
    /// Deletes slice `name` (and the Endpoints when it is `kubernetes`);
    /// nullopt if there is no such slice.
    std::optional<std::uint64_t> delete_slice(std::string_view name);
    /// Advances the resourceVersion by `n` as writes to other objects do.
    std::uint64_t bump(std::uint64_t n);
    /// Forgets all history up to now: lists at and watches from an older
    /// resourceVersion get 410 Gone.
    std::uint64_t compact();

    std::uint64_t current_rv() const;
    /// The oldest resourceVersion a watch may start from or a list may read.
    std::uint64_t compacted_rv() const;

    /// The objects of `kind` as they were at `rv` (0: now), sorted by name;
    /// nullopt when `rv` is older than the history kept. `rv` above the
    /// current one is the caller's to refuse. `read_rv` (optional) gets the
    /// resourceVersion the objects are at.
    std::optional<std::vector<json::object>> objects_at(k8s_kind kind, std::uint64_t rv,
                                                        std::uint64_t* read_rv = nullptr) const;
    /// Appends the events of `kind` after `rv` to `out` and moves `rv` to the
    /// current resourceVersion; false (nothing appended) when events after
    /// `rv` were compacted away.
    bool events_since(k8s_kind kind, std::uint64_t& rv, std::vector<k8s_event>& out) const;

    /// Called after every change, outside the store's lock (wakes watches).
    void on_change(std::function<void()> callback);

private:
    using object_map = std::map<std::string, json::object, std::less<>>;

    std::uint64_t apply(k8s_kind kind, const std::string& name, std::optional<json::object> object);
    void notify();

    mutable std::mutex mu_;
    std::uint64_t rv_ = 1;
    std::uint64_t compacted_ = 1;
    object_map base_[2];  ///< state at compacted_
    object_map live_[2];  ///< state at rv_
    std::deque<k8s_event> history_;
    std::uint64_t uid_counter_ = 0;
    std::function<void()> on_change_;
};

/// The object without kind and apiVersion, as items of a List carry it.
json::object as_list_item(const json::object& object);
/// metadata.name of an object ("" if absent).
std::string_view object_name(const json::object& object);

}  // namespace standin
