#include "k8s_store.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <random>
#include <stdexcept>
#include <utility>

namespace standin {

namespace {

constexpr std::size_t max_endpoints = 1000;  // the API's own limit per slice
constexpr std::size_t max_addresses = 100;
constexpr std::size_t max_ports = 100;
constexpr std::size_t max_slices = 1000;  // a bound on what tests can make it hold

std::string rfc3339_now() {
    const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string make_uid(std::uint64_t counter) {
    static const std::uint64_t salt = std::random_device{}();
    char buf[40];
    const std::uint64_t a = salt ^ (counter * 0x9e3779b97f4a7c15ull);
    std::snprintf(buf, sizeof buf, "%08x-%04x-4%03x-8%03x-%012llx", static_cast<unsigned>(a >> 32),
                  static_cast<unsigned>(a & 0xffff), static_cast<unsigned>(counter & 0xfff),
                  static_cast<unsigned>((a >> 16) & 0xfff), static_cast<unsigned long long>(counter));
    return buf;
}

bool valid_name(std::string_view n) {
    if (n.empty() || n.size() > 253) return false;
    for (char c : n)
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
    return true;
}

/// Reads spec's keys into a slice body in the API's field order; "" on
/// success, else what is wrong and where.
std::string read_slice_spec(const json::object& spec, std::uint16_t default_port, std::string& name,
                            json::object& labels, json::object& body) {
    static constexpr std::string_view known[] = {"name", "addressType", "endpoints", "ports", "labels"};
    for (const auto& kv : spec) {
        bool ok = false;
        for (auto k : known) ok = ok || kv.key() == k;
        if (!ok)
            return "unknown key '" + std::string(kv.key()) + "' (expected name, addressType, endpoints, ports, labels)";
    }
    name = "kubernetes";
    if (const auto* v = spec.if_contains("name")) {
        if (!v->is_string() || !valid_name(v->get_string())) return "name: expected a DNS subdomain name";
        name = v->get_string();
    }
    std::string address_type = "IPv4";
    if (const auto* v = spec.if_contains("addressType")) {
        if (!v->is_string() || (*v != "IPv4" && *v != "IPv6" && *v != "FQDN"))
            return "addressType: expected IPv4, IPv6 or FQDN";
        address_type = v->get_string();
    }
    labels = {{"kubernetes.io/service-name", "kubernetes"}};
    if (const auto* v = spec.if_contains("labels")) {
        if (!v->is_object()) return "labels: expected an object of strings";
        labels.clear();
        for (const auto& kv : v->get_object()) {
            if (!kv.value().is_string()) return "labels." + std::string(kv.key()) + ": expected a string";
            labels[kv.key()] = kv.value();
        }
    }
    json::value endpoints;  // null: the API writes an empty list as null
    if (const auto* v = spec.if_contains("endpoints")) {
        if (!v->is_array() || v->get_array().size() > max_endpoints)
            return "endpoints: expected an array of at most 1000 endpoints";
        json::array out;
        for (std::size_t i = 0; i < v->get_array().size(); ++i) {
            const std::string where = "endpoints[" + std::to_string(i) + "]";
            const auto& e = v->get_array()[i];
            if (!e.is_object()) return where + ": expected an object";
            const auto& eo = e.get_object();
            const auto* addrs = eo.if_contains("addresses");
            if (addrs == nullptr || !addrs->is_array() || addrs->get_array().empty() ||
                addrs->get_array().size() > max_addresses)
                return where + ".addresses: expected 1 to 100 addresses";
            for (const auto& a : addrs->get_array())
                if (!a.is_string() || a.get_string().empty()) return where + ".addresses: expected strings";
            json::object ep{{"addresses", *addrs}};
            json::object conditions;
            if (const auto* c = eo.if_contains("conditions")) {
                if (!c->is_object()) return where + ".conditions: expected an object";
                for (const auto& kv : c->get_object()) {
                    if (kv.key() != "ready" && kv.key() != "serving" && kv.key() != "terminating")
                        return where + ".conditions." + std::string(kv.key()) +
                               ": unknown (expected ready, serving, terminating)";
                    if (!kv.value().is_bool() && !kv.value().is_null())
                        return where + ".conditions." + std::string(kv.key()) + ": expected true, false or null";
                }
                for (const char* k : {"ready", "serving", "terminating"})
                    if (const auto* b = c->get_object().if_contains(k); b && b->is_bool()) conditions[k] = *b;
            }
            ep["conditions"] = std::move(conditions);
            for (const auto& kv : eo) {
                if (kv.key() == "addresses" || kv.key() == "conditions") continue;
                if ((kv.key() != "nodeName" && kv.key() != "zone" && kv.key() != "hostname") || !kv.value().is_string())
                    return where + "." + std::string(kv.key()) +
                           ": unknown or not a string (expected hostname, nodeName, zone)";
            }
            for (const char* k : {"hostname", "nodeName", "zone"})
                if (const auto* s = eo.if_contains(k)) ep[k] = *s;
            out.push_back(std::move(ep));
        }
        if (!out.empty()) endpoints = std::move(out);
    }
    json::array ports;
    if (const auto* v = spec.if_contains("ports")) {
        if (!v->is_array() || v->get_array().size() > max_ports) return "ports: expected an array of at most 100";
        for (std::size_t i = 0; i < v->get_array().size(); ++i) {
            const std::string where = "ports[" + std::to_string(i) + "]";
            const auto& p = v->get_array()[i];
            if (!p.is_object()) return where + ": expected an object";
            const auto& po = p.get_object();
            const auto* port = po.if_contains("port");
            boost::system::error_code nec;
            const auto number = port != nullptr && (port->is_int64() || port->is_uint64())
                                    ? port->to_number<std::int64_t>(nec)
                                    : std::int64_t{0};
            if (nec || number < 1 || number > 65535) return where + ".port: expected an integer 1-65535";
            json::object out;
            if (const auto* n = po.if_contains("name")) {
                if (!n->is_string()) return where + ".name: expected a string";
                out["name"] = *n;
            }
            out["protocol"] = po.contains("protocol") ? po.at("protocol") : json::value("TCP");
            if (!out["protocol"].is_string()) return where + ".protocol: expected a string";
            out["port"] = number;
            ports.push_back(std::move(out));
        }
    } else {
        ports.push_back({{"name", "https"}, {"protocol", "TCP"}, {"port", std::int64_t{default_port}}});
    }
    // Empty lists come back from the API as null (protobuf keeps no empty list).
    json::value ports_value = ports.empty() ? json::value{} : json::value(std::move(ports));
    body = {{"addressType", address_type}, {"endpoints", std::move(endpoints)}, {"ports", std::move(ports_value)}};
    return {};
}

json::object make_metadata(const std::string& name, const json::object* previous, std::uint64_t& uid_counter,
                           bool generation) {
    json::object meta;
    meta["name"] = name;
    meta["namespace"] = "default";
    if (previous != nullptr) {
        const auto& pm = previous->at("metadata").get_object();
        meta["uid"] = pm.at("uid");
        meta["resourceVersion"] = "";
        if (generation) meta["generation"] = pm.at("generation").as_int64() + 1;
        meta["creationTimestamp"] = pm.at("creationTimestamp");
    } else {
        meta["uid"] = make_uid(++uid_counter);
        meta["resourceVersion"] = "";
        if (generation) meta["generation"] = 1;
        meta["creationTimestamp"] = rfc3339_now();
    }
    return meta;
}

/// The Endpoints the reconciler keeps beside slice `kubernetes`: ready (or
/// unknown) endpoints as addresses, not-ready ones apart, terminating ones not at all.
json::object mirror_endpoints(const json::object& slice, json::object meta) {
    json::array ready, not_ready;
    if (const auto& eps = slice.at("endpoints"); eps.is_array()) {
        for (const auto& e : eps.get_array()) {
            const auto& c = e.at("conditions").get_object();
            if (const auto* t = c.if_contains("terminating"); t && *t == true) continue;
            const auto* r = c.if_contains("ready");
            auto& to = (r && *r == false) ? not_ready : ready;
            for (const auto& a : e.at("addresses").get_array()) to.push_back(json::object{{"ip", a}});
        }
    }
    json::array ports;
    if (slice.at("ports").is_array())
        for (const auto& p : slice.at("ports").get_array()) {
            json::object out;
            if (const auto* n = p.get_object().if_contains("name")) out["name"] = *n;
            out["port"] = p.at("port");
            out["protocol"] = p.at("protocol");
            ports.push_back(std::move(out));
        }
    meta["labels"] = json::object{{"endpointslice.kubernetes.io/skip-mirror", "true"}};
    json::object ep{{"kind", "Endpoints"}, {"apiVersion", "v1"}, {"metadata", std::move(meta)}};
    if (!ready.empty() || !not_ready.empty()) {
        json::object subset;
        if (!ready.empty()) subset["addresses"] = std::move(ready);
        if (!not_ready.empty()) subset["notReadyAddresses"] = std::move(not_ready);
        subset["ports"] = std::move(ports);
        ep["subsets"] = json::array{std::move(subset)};
    }
    return ep;
}

std::size_t index(k8s_kind k) { return k == k8s_kind::endpoint_slice ? 0 : 1; }

}  // namespace

json::object as_list_item(const json::object& object) {
    // Copied rather than erased: json::object::erase moves the last key into
    // the gap, and clients see the API's field order.
    json::object item;
    for (const auto& kv : object)
        if (kv.key() != "kind" && kv.key() != "apiVersion") item[kv.key()] = kv.value();
    return item;
}

std::string_view object_name(const json::object& object) {
    const auto* meta = object.if_contains("metadata");
    if (meta == nullptr || !meta->is_object()) return {};
    const auto* name = meta->get_object().if_contains("name");
    return name != nullptr && name->is_string() ? std::string_view{name->get_string()} : std::string_view{};
}

k8s_store::k8s_store(std::string address, std::uint16_t port) {
    std::string error;
    const json::object spec{{"endpoints", json::array{json::object{{"addresses", json::array{address}},
                                                                   {"conditions", json::object{{"ready", true}}}}}},
                            {"ports", json::array{json::object{{"name", "https"}, {"port", std::int64_t{port}}}}}};
    if (!set_slice(spec, error)) throw std::logic_error("initial slice: " + error);
    // The initial objects are the start of history, not changes a watch replays.
    std::lock_guard lock{mu_};
    history_.clear();
    base_[0] = live_[0];
    base_[1] = live_[1];
    compacted_ = rv_;
}

std::optional<std::uint64_t> k8s_store::set_slice(const json::value& spec, std::string& error) {
    if (!spec.is_object()) {
        error = "expected a JSON object (an EndpointSlice: name, addressType, endpoints, ports, labels)";
        return std::nullopt;
    }
    std::uint64_t rv = 0;
    {
        std::lock_guard lock{mu_};
        std::string name;
        json::object labels, body;
        // Ports left out: those of slice `kubernetes`, the apiservers' port.
        std::uint16_t default_port = 6443;
        if (const auto it = live_[0].find("kubernetes"); it != live_[0].end()) {
            const auto& ports = it->second.at("ports");
            if (ports.is_array() && !ports.get_array().empty())
                default_port = static_cast<std::uint16_t>(ports.get_array()[0].at("port").as_int64());
        }
        error = read_slice_spec(spec.get_object(), default_port, name, labels, body);
        if (!error.empty()) return std::nullopt;
        const auto prev = live_[0].find(name);
        if (prev == live_[0].end() && live_[0].size() >= max_slices) {
            error = "at most " + std::to_string(max_slices) + " slices";
            return std::nullopt;
        }
        const json::object* previous = prev == live_[0].end() ? nullptr : &prev->second;
        auto meta = make_metadata(name, previous, uid_counter_, true);
        meta["labels"] = std::move(labels);
        json::object slice{{"kind", "EndpointSlice"}, {"apiVersion", "discovery.k8s.io/v1"}, {"metadata", meta}};
        for (auto& kv : body) slice[kv.key()] = std::move(kv.value());
        // The reconciler writes the Endpoints first, then the slice: two writes.
        if (name == "kubernetes") {
            const auto prev_ep = live_[1].find(name);
            auto ep_meta = make_metadata(name, prev_ep == live_[1].end() ? nullptr : &prev_ep->second, uid_counter_,
                                         false);
            apply(k8s_kind::endpoints, name, mirror_endpoints(slice, std::move(ep_meta)));
        }
        rv = apply(k8s_kind::endpoint_slice, name, std::move(slice));
    }
    notify();
    return rv;
}

std::optional<std::uint64_t> k8s_store::delete_slice(std::string_view name) {
    std::uint64_t rv = 0;
    {
        std::lock_guard lock{mu_};
        if (live_[0].find(name) == live_[0].end()) return std::nullopt;
        const std::string n{name};
        if (n == "kubernetes" && live_[1].count(n) != 0) apply(k8s_kind::endpoints, n, std::nullopt);
        rv = apply(k8s_kind::endpoint_slice, n, std::nullopt);
    }
    notify();
    return rv;
}

std::uint64_t k8s_store::bump(std::uint64_t n) {
    std::uint64_t rv = 0;
    {
        std::lock_guard lock{mu_};
        rv_ += n;
        rv = rv_;
    }
    notify();
    return rv;
}

std::uint64_t k8s_store::compact() {
    std::lock_guard lock{mu_};
    history_.clear();
    base_[0] = live_[0];
    base_[1] = live_[1];
    compacted_ = rv_;
    return rv_;
}

std::uint64_t k8s_store::current_rv() const {
    std::lock_guard lock{mu_};
    return rv_;
}

std::uint64_t k8s_store::compacted_rv() const {
    std::lock_guard lock{mu_};
    return compacted_;
}

// Called with mu_ held. A deletion's event carries the object as it was,
// with the deletion's resourceVersion, as the API sends it.
std::uint64_t k8s_store::apply(k8s_kind kind, const std::string& name, std::optional<json::object> object) {
    auto& live = live_[index(kind)];
    const std::uint64_t rv = ++rv_;
    const std::string rv_text = std::to_string(rv);
    std::string type;
    json::object event_object;
    if (object) {
        (*object)["metadata"].get_object()["resourceVersion"] = rv_text;
        type = live.count(name) != 0 ? "MODIFIED" : "ADDED";
        live[name] = *object;
        event_object = std::move(*object);
    } else {
        const auto it = live.find(name);
        event_object = std::move(it->second);
        live.erase(it);
        event_object["metadata"].get_object()["resourceVersion"] = rv_text;
        type = "DELETED";
    }
    history_.push_back({rv, std::move(type), kind, std::move(event_object)});
    while (history_.size() > history_limit) {
        auto& oldest = history_.front();
        auto& base = base_[index(oldest.kind)];
        if (oldest.type == "DELETED")
            base.erase(std::string(object_name(oldest.object)));
        else
            base[std::string(object_name(oldest.object))] = oldest.object;
        compacted_ = oldest.rv;
        history_.pop_front();
    }
    return rv;
}

std::optional<std::vector<json::object>> k8s_store::objects_at(k8s_kind kind, std::uint64_t rv,
                                                               std::uint64_t* read_rv) const {
    std::lock_guard lock{mu_};
    if (read_rv != nullptr) *read_rv = rv != 0 && rv < rv_ ? rv : rv_;
    const object_map* source = &live_[index(kind)];
    object_map replayed;
    if (rv != 0 && rv < rv_) {
        if (rv < compacted_) return std::nullopt;
        replayed = base_[index(kind)];
        for (const auto& e : history_) {
            if (e.rv > rv) break;
            if (e.kind != kind) continue;
            if (e.type == "DELETED")
                replayed.erase(std::string(object_name(e.object)));
            else
                replayed[std::string(object_name(e.object))] = e.object;
        }
        source = &replayed;
    }
    std::vector<json::object> out;
    out.reserve(source->size());
    for (const auto& kv : *source) out.push_back(kv.second);
    return out;
}

bool k8s_store::events_since(k8s_kind kind, std::uint64_t& rv, std::vector<k8s_event>& out) const {
    std::lock_guard lock{mu_};
    if (rv < compacted_) return false;
    for (const auto& e : history_)
        if (e.rv > rv && e.kind == kind) out.push_back(e);
    rv = std::max(rv, rv_);
    return true;
}

void k8s_store::on_change(std::function<void()> callback) {
    std::lock_guard lock{mu_};
    on_change_ = std::move(callback);
}

void k8s_store::notify() {
    std::function<void()> f;
    {
        std::lock_guard lock{mu_};
        f = on_change_;
    }
    if (f) f();
}

}  // namespace standin
