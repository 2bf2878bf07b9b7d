// The top-level `admin` section: where the admin HTTP endpoint listens and
// what protects its state-changing requests. Part of the loader (see
// loader.hpp).
#include "loader.hpp"

namespace apilb::config_detail {
namespace {

constexpr std::array<std::string_view, 2> admin_keys{"address", "token_file"};

bool is_loopback(const socket_address& a) {
    return a.is_v6 ? a.ip == "::1" : a.ip.rfind("127.", 0) == 0;
}

}  // namespace

void loader::read_admin(const field& f, admin_config& a) {
    auto m = open_mapping(f, admin_keys, true);
    if (!m) return;
    a.address = {.ip = "127.0.0.1", .port = 6445, .is_v6 = false};
    const site address = read_address(*m, "address", false, a.address);
    read_file_path(*m, "token_file", a.token_file);
    // Anyone who can reach the endpoint could drain every backend or reload:
    // off the loopback that needs a credential.
    if ((address.ok || m->find("address") == nullptr) && !is_loopback(a.address) && a.token_file.empty()) {
        const field* af = m->find("address");
        error(af != nullptr ? af->mark : m->mark, af != nullptr ? af->path : m->path,
              "the admin endpoint on " + quote(a.address.to_string()) +
                  " is reachable from other hosts, but nothing protects drain, enable and reload; set "
                  "admin.token_file (a bearer token) or bind a loopback address such as 127.0.0.1");
    }
}

}  // namespace apilb::config_detail
