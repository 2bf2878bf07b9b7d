#include "apilb/control/discovered_backends.hpp"

#include <algorithm>


namespace apilb {

socket_address address_of(const discovered_endpoint& e) {
    return {.ip = e.ip, .port = e.port, .is_v6 = e.ip.find(':') != std::string::npos};
}

std::vector<discovered_member> seed_members(const pool_config& file_pool) {
    std::vector<discovered_member> members;
    for (const auto& b : file_pool.backends)
        members.push_back({.address = b.address, .terminating = false, .left_at = {}});
    return members;
}

std::vector<discovered_member> merge_listing(const std::vector<discovered_member>& before,
                                             const std::vector<discovered_endpoint>& listed,
                                             std::chrono::steady_clock::time_point now) {
    std::vector<discovered_member> members;
    for (const auto& e : listed) {
        const socket_address a = address_of(e);
        if (std::any_of(members.begin(), members.end(), [&](const auto& m) { return m.address == a; })) continue;
        members.push_back({.address = a, .terminating = !takes_new_sessions(e), .left_at = {}});
    }
    const std::size_t listed_count = members.size();
    for (const auto& m : before) {
        const auto end = members.begin() + static_cast<std::ptrdiff_t>(listed_count);
        if (std::any_of(members.begin(), end, [&](const auto& l) { return l.address == m.address; })) continue;
        members.push_back({.address = m.address, .terminating = m.terminating, .left_at = m.left_at.value_or(now)});
    }
    return members;
}

std::vector<discovered_member> drop_departed(std::vector<discovered_member> members, duration grace,
                                             std::chrono::steady_clock::time_point now, const passing_fn& passing) {
    std::erase_if(members, [&](const discovered_member& m) {
        return m.left_at && (now >= *m.left_at + grace || !passing(m.address));
    });
    return members;
}

std::optional<std::chrono::steady_clock::time_point> next_grace_end(const std::vector<discovered_member>& members,
                                                                    duration grace) {
    std::optional<std::chrono::steady_clock::time_point> first;
    for (const auto& m : members) {
        if (m.left_at && (!first || *m.left_at + grace < *first)) first = *m.left_at + grace;
    }
    return first;
}

pool_config discovered_pool(const pool_config& file_pool, const std::vector<discovered_member>& members) {
    pool_config pool = file_pool;
    pool.backends.clear();
    for (const auto& m : members) {
        auto seed = std::find_if(file_pool.backends.begin(), file_pool.backends.end(),
                                 [&](const backend_config& b) { return b.address == m.address; });
        backend_config b = seed != file_pool.backends.end()
                               ? *seed
                               : backend_config{
                                     .name = m.address.to_string(), .address = m.address, .discovered = true};
        b.terminating = m.terminating;
        b.leaving = m.left_at.has_value();
        pool.backends.push_back(std::move(b));
    }
    resolve_backend_defaults(pool);
    return pool;
}

}  // namespace apilb
