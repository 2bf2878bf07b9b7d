// The helper integration tests drive the stand-in apiserver's Kubernetes API
// with (standin_process::request): a slice set through /control/ is what the
// API lists and what the legacy Endpoints mirror; a bad body is named; the
// control surface wants an identity. The API's fidelity to kube-apiserver is
// standin_api_test.py's, against the real Python client and kubectl.
#include "standin.hpp"

#include <gtest/gtest.h>

namespace apilb::test {
namespace {

constexpr const char* slices =
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    "?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";

TEST(StandinControl, SetSliceIsListedAndMirrored) {
    temp_dir dir;
    const auto certs = make_certs(dir);
    standin_process api{dir, certs, "127.0.0.1", "api", {"--client-ca", certs + "/ca.crt"}};

    auto r = api.request("GET", slices);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_NE(r.body.find(R"("addresses":["127.0.0.1"])"), std::string::npos) << "starts with itself: " << r.body;

    r = api.request("PUT", "/control/slices/kubernetes",
                    R"({"endpoints":[{"addresses":["127.0.0.7"],"conditions":{"ready":true,"terminating":false}}]})");
    ASSERT_EQ(r.status, 200) << r.body;
    r = api.request("GET", slices);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_NE(r.body.find(R"({"addresses":["127.0.0.7"],"conditions":{"ready":true,"terminating":false}})"),
              std::string::npos)
        << r.body;
    r = api.request("GET", "/api/v1/namespaces/default/endpoints/kubernetes");
    EXPECT_NE(r.body.find(R"("addresses":[{"ip":"127.0.0.7"}])"), std::string::npos) << r.body;

    r = api.request("PUT", "/control/slices/kubernetes", R"({"endpoints":[{"addresses":[]}]})");
    EXPECT_EQ(r.status, 400);
    EXPECT_NE(r.body.find("endpoints[0].addresses: expected 1 to 100 addresses"), std::string::npos) << r.body;

    r = api.request("DELETE", "/control/slices/kubernetes");
    EXPECT_EQ(r.status, 200) << r.body;
    r = api.request("GET", slices);
    EXPECT_NE(r.body.find(R"("items":[])"), std::string::npos) << r.body;
}

TEST(StandinControl, ControlWantsAnIdentity) {
    temp_dir dir;
    const auto certs = make_certs(dir);
    // No --client-ca: the test certificate is no identity here.
    standin_process plain{dir, certs, "127.0.0.1", "plain"};
    const auto r = plain.request("POST", "/control/compact");
    EXPECT_EQ(r.status, 401) << r.body;
}

}  // namespace
}  // namespace apilb::test
