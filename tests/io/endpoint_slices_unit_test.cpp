// The EndpointSlice parser on JSON as kube-apiserver sends it (list
// responses and watch streams cut at every byte), malformed and oversized.
#include "apilb/control/endpoint_slices.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace apilb {
namespace {

// A list as `kubectl get --raw '/apis/discovery.k8s.io/v1/namespaces/default/
// endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes'`
// prints it on a kubeadm cluster (v1.29), managedFields cut.
const std::string real_list = R"({"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1",
"metadata":{"resourceVersion":"81523"},
"items":[{"metadata":{"name":"kubernetes","namespace":"default","uid":"9c6bd0a4-3f3e-4a57-a3c1-0c1d5b6b2f7e",
"resourceVersion":"81377","generation":3,"creationTimestamp":"2024-03-01T10:00:00Z",
"labels":{"endpointslice.kubernetes.io/skip-mirror":"true","kubernetes.io/service-name":"kubernetes"}},
"addressType":"IPv4",
"endpoints":[{"addresses":["192.0.2.11"],"conditions":{"ready":true}},
{"addresses":["192.0.2.12"],"conditions":{"ready":true,"serving":true,"terminating":false}},
{"addresses":["192.0.2.13"],"conditions":{"ready":false,"serving":true,"terminating":true}}],
"ports":[{"name":"https","protocol":"TCP","port":6443}]}]}
)";

TEST(SliceList, ReadsARealList) {
    auto r = parse_slice_list(real_list, discovery_api::endpoint_slices);
    ASSERT_TRUE(r.value) << r.error;
    EXPECT_EQ(r.value->resource_version, "81523");
    EXPECT_EQ(r.value->continue_token, "");
    ASSERT_EQ(r.value->items.size(), 1u);
    const slice_state& s = r.value->items[0];
    EXPECT_EQ(s.name, "kubernetes");
    EXPECT_EQ(s.resource_version, "81377");
    ASSERT_EQ(s.endpoints.size(), 3u);
    EXPECT_EQ(s.endpoints[0], (discovered_endpoint{"192.0.2.11", 6443, true, true, false}));
    EXPECT_EQ(s.endpoints[1], (discovered_endpoint{"192.0.2.12", 6443, true, true, false}));
    EXPECT_EQ(s.endpoints[2], (discovered_endpoint{"192.0.2.13", 6443, false, true, true}));
}

TEST(SliceList, ConditionsDefaultAsTheApiSays) {
    // No conditions: ready unknown = ready; serving defers to ready.
    auto r = parse_slice_list(
        R"({"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"k","resourceVersion":"1"},)"
        R"("addressType":"IPv6","endpoints":[{"addresses":["2001:DB8::0:11"]},)"
        R"({"addresses":["2001:db8::12"],"conditions":{"ready":false}}],"ports":[{"port":6443}]}]})",
        discovery_api::endpoint_slices);
    ASSERT_TRUE(r.value) << r.error;
    const auto& e = r.value->items[0].endpoints;
    EXPECT_EQ(e[0], (discovered_endpoint{"2001:db8::11", 6443, true, true, false}));  // canonical text
    EXPECT_EQ(e[1], (discovered_endpoint{"2001:db8::12", 6443, false, false, false}));
}

TEST(SliceList, AnEmptyListIsValidAndEmpty) {
    // What guards against dropping to zero backends is the caller; the
    // parser reports the list as it is.
    auto r = parse_slice_list(R"({"metadata":{"resourceVersion":"5"},"items":[]})", discovery_api::endpoint_slices);
    ASSERT_TRUE(r.value) << r.error;
    EXPECT_TRUE(r.value->items.empty());
}

TEST(SliceList, ReadsV1EndpointsOfAnOldCluster) {
    auto r = parse_slice_list(
        R"({"kind":"EndpointsList","metadata":{"resourceVersion":"9"},"items":[{"metadata":{"name":"kubernetes",)"
        R"("resourceVersion":"8"},"subsets":[{"addresses":[{"ip":"192.0.2.11"},{"ip":"192.0.2.12"}],)"
        R"("notReadyAddresses":[{"ip":"192.0.2.13"}],"ports":[{"name":"https","port":6443,"protocol":"TCP"}]}]}]})",
        discovery_api::endpoints);
    ASSERT_TRUE(r.value) << r.error;
    const auto& e = r.value->items[0].endpoints;
    ASSERT_EQ(e.size(), 3u);
    EXPECT_TRUE(e[1].ready);
    EXPECT_FALSE(e[2].ready);
    EXPECT_FALSE(e[2].serving);
}

TEST(SliceList, RefusesWhatIsNotAnApiserverList) {
    const std::vector<std::pair<std::string, std::string>> bad{
        {"", "not JSON"},
        {"[1,2]", "is not an object"},
        {R"({"items":[]})", "metadata"},
        {R"({"metadata":{"resourceVersion":7},"items":[]})", "not a string"},
        {R"({"metadata":{"resourceVersion":"1"},"items":{}})", "items is not an array"},
        {R"({"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"k","resourceVersion":"1"},)"
         R"("addressType":"IPv4","endpoints":[{"addresses":["cp-1.example"]}],"ports":[{"port":6443}]}]})",
         "not a numeric IP"},
        {R"({"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"k","resourceVersion":"1"},)"
         R"("addressType":"IPv4","endpoints":[{"addresses":["192.0.2.1"],"conditions":{"ready":"yes"}}],)"
         R"("ports":[{"port":6443}]}]})",
         "not a boolean"},
        {R"({"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"k","resourceVersion":"1"},)"
         R"("addressType":"IPv4","endpoints":[{"addresses":["192.0.2.1"]}],"ports":[{"port":70000}]}]})",
         "1..65535"},
        {R"({"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"k","resourceVersion":"1"},)"
         R"("addressType":"IPv4","endpoints":[{"addresses":["192.0.2.1"]}]}]})",
         "ports is missing"},
    };
    for (const auto& [body, why] : bad) {
        auto r = parse_slice_list(body, discovery_api::endpoint_slices);
        EXPECT_FALSE(r.value) << body;
        EXPECT_NE(r.error.find(why), std::string::npos) << body << " -> " << r.error;
    }
}

TEST(SliceList, RefusesOversizedAnswers) {
    std::string huge = R"({"metadata":{"resourceVersion":"1"},"items":[],"pad":")";
    huge += std::string(max_list_bytes, 'x') + "\"}";
    EXPECT_FALSE(parse_slice_list(huge, discovery_api::endpoint_slices).value);

    std::string many = R"({"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"k","resourceVersion":"1"},)"
                       R"("addressType":"IPv4","endpoints":[)";
    for (std::size_t i = 0; i <= max_discovered_endpoints; ++i) {
        many += (i ? "," : "") + std::string(R"({"addresses":["10.0.)") + std::to_string(i / 250) + "." +
                std::to_string(i % 250 + 1) + "\"]}";
    }
    many += R"(],"ports":[{"port":6443}]}]})";
    auto r = parse_slice_list(many, discovery_api::endpoint_slices);
    EXPECT_FALSE(r.value);
    EXPECT_NE(r.error.find("more than 64 endpoints"), std::string::npos) << r.error;
}

// A watch stream as the apiserver writes it: one object per line, in
// chunks that need not end where an event ends.
const std::string real_watch =
    R"({"type":"MODIFIED","object":{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{)"
    R"("name":"kubernetes","namespace":"default","resourceVersion":"81600","labels":{"kubernetes.io/service-name":)"
    R"("kubernetes"}},"addressType":"IPv4","endpoints":[{"addresses":["192.0.2.11"],"conditions":{"ready":true}},)"
    R"({"addresses":["192.0.2.14"],"conditions":{"ready":true}}],"ports":[{"name":"https","protocol":"TCP","port":6443}]}})"
    "\n"
    R"({"type":"BOOKMARK","object":{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{)"
    R"("resourceVersion":"81700","creationTimestamp":null,"annotations":{"k8s.io/initial-events-end":"true"}},)"
    R"("addressType":"","endpoints":null,"ports":null}})"
    "\n"
    R"({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
    R"x("message":"too old resource version: 81000 (81600)","reason":"Expired","code":410}})x"
    "\n";

void expect_real_watch(const std::vector<watch_event>& events) {
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].type, watch_event_type::modified);
    EXPECT_EQ(events[0].object.resource_version, "81600");
    ASSERT_EQ(events[0].object.endpoints.size(), 2u);
    EXPECT_EQ(events[0].object.endpoints[1].ip, "192.0.2.14");
    EXPECT_EQ(events[1].type, watch_event_type::bookmark);
    EXPECT_EQ(events[1].object.resource_version, "81700");
    EXPECT_EQ(events[2].type, watch_event_type::error);
    EXPECT_EQ(events[2].status_code, 410u);
    EXPECT_EQ(events[2].message, "too old resource version: 81000 (81600)");
}

TEST(WatchStream, ReadsEventsWhole) {
    watch_stream_parser p(discovery_api::endpoint_slices);
    std::vector<watch_event> events;
    ASSERT_EQ(p.feed(real_watch, events), "");
    expect_real_watch(events);
}

TEST(WatchStream, ReadsEventsCutAtEveryByte) {
    for (std::size_t cut = 1; cut < real_watch.size(); cut += 7) {
        watch_stream_parser p(discovery_api::endpoint_slices);
        std::vector<watch_event> events;
        ASSERT_EQ(p.feed(std::string_view(real_watch).substr(0, cut), events), "") << cut;
        ASSERT_EQ(p.feed(std::string_view(real_watch).substr(cut), events), "") << cut;
        expect_real_watch(events);
    }
    watch_stream_parser p(discovery_api::endpoint_slices);
    std::vector<watch_event> events;
    for (char c : real_watch) ASSERT_EQ(p.feed(std::string_view(&c, 1), events), "");
    expect_real_watch(events);
}

TEST(WatchStream, RefusesBadEvents) {
    const std::vector<std::pair<std::string, std::string>> bad{
        {"{\"type\":\"ADDED\",\"object\":{]}\n", "not JSON"},
        {"{\"type\":\"RENAMED\",\"object\":{}}\n", "unknown event type"},
        {"{\"object\":{}}\n", "type is missing"},
        {"{\"type\":\"ADDED\"}\n", "event.object is not an object"},
        {"[]\n", "is not an object"},
    };
    for (const auto& [text, why] : bad) {
        watch_stream_parser p(discovery_api::endpoint_slices);
        std::vector<watch_event> events;
        const std::string error = p.feed(text, events);
        EXPECT_NE(error.find(why), std::string::npos) << text << " -> " << error;
    }
}

TEST(WatchStream, RefusesAnEventBeyondTheBoundBeforeBufferingIt) {
    watch_stream_parser p(discovery_api::endpoint_slices);
    std::vector<watch_event> events;
    std::string error = p.feed(R"({"type":"ADDED","object":{"pad":")", events);
    ASSERT_EQ(error, "");
    const std::string piece(64 << 10, 'x');
    std::size_t fed = 0;
    // Bounded: the bound is 1 MiB, so at most 17 pieces of 64 KiB.
    for (int i = 0; i < 40 && error.empty(); ++i, fed += piece.size()) error = p.feed(piece, events);
    EXPECT_NE(error.find("larger than"), std::string::npos) << error;
    EXPECT_LE(fed, max_event_bytes + piece.size());
    EXPECT_TRUE(events.empty());
}

TEST(MergeSlices, EachAddressOnceInAStableOrder) {
    std::map<std::string, slice_state> slices;
    slices["b"] = {"b", "2", {{"192.0.2.12", 6443, true, true, false}, {"192.0.2.11", 6443, true, true, false}}};
    slices["a"] = {"a", "1", {{"192.0.2.12", 6443, true, true, true}}};
    const auto merged = merge_slices(slices);
    ASSERT_EQ(merged.size(), 2u);
    EXPECT_EQ(merged[0].ip, "192.0.2.11");
    EXPECT_EQ(merged[1].ip, "192.0.2.12");
    EXPECT_TRUE(merged[1].terminating);  // slice "a" is read first
}

}  // namespace
}  // namespace apilb
