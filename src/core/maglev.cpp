#include "apilb/core/maglev.hpp"

#include <algorithm>
#include <cassert>
#include <numeric>
#include <stdexcept>

namespace apilb {

namespace {

constexpr std::uint32_t empty_slot = UINT32_MAX;
constexpr std::uint64_t offset_seed = 0x6d61676c65762d6fULL;  // "maglev-o"
constexpr std::uint64_t skip_seed = 0x6d61676c65762d73ULL;    // "maglev-s"
constexpr std::uint64_t walk_seed = 0x6d61676c65762d77ULL;    // "maglev-w"

std::uint64_t splitmix64(std::uint64_t x) noexcept {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

struct build_entry {
    std::uint32_t index;   ///< position in the caller's span
    std::uint64_t offset;  ///< first slot of the permutation
    std::uint64_t skip;    ///< step of the permutation, 1..size-1
    std::uint64_t weight;
    std::uint64_t next = 0;           ///< how far along its permutation
    std::uint64_t target_weight = 0;  ///< Envoy's weighting: picked when iteration × weight ≥ this
};

}  // namespace

std::uint64_t stable_hash(std::string_view bytes, std::uint64_t seed) noexcept {
    std::uint64_t h = 1469598103934665603ULL ^ seed;
    for (unsigned char c : bytes) {
        h ^= c;
        h *= 1099511628211ULL;
    }
    return splitmix64(h);
}

bool is_prime(std::uint32_t n) noexcept {
    if (n < 2) return false;
    if (n % 2 == 0) return n == 2;
    for (std::uint32_t d = 3; static_cast<std::uint64_t>(d) * d <= n; d += 2) {
        if (n % d == 0) return false;
    }
    return true;
}

maglev_table maglev_table::build(std::span<const maglev_backend> backends, std::uint32_t size) {
    if (backends.empty()) throw std::invalid_argument("maglev: no backends");
    if (!is_prime(size) || size < backends.size()) {
        throw std::invalid_argument("maglev: table size must be a prime of at least the backend count");
    }
    // Fill in name order: which backend claims a contested slot must not
    // depend on the order of the config file.
    std::vector<build_entry> entries;
    entries.reserve(backends.size());
    for (std::uint32_t i = 0; i < backends.size(); ++i) {
        assert(backends[i].weight >= 1);
        entries.push_back({.index = i,
                           .offset = stable_hash(backends[i].name, offset_seed) % size,
                           .skip = stable_hash(backends[i].name, skip_seed) % (size - 1) + 1,
                           .weight = backends[i].weight});
    }
    std::sort(entries.begin(), entries.end(), [&](const build_entry& a, const build_entry& b) {
        return backends[a.index].name < backends[b.index].name;
    });
    const std::uint64_t max_weight = std::max_element(entries.begin(), entries.end(), [](auto& a, auto& b) {
                                         return a.weight < b.weight;
                                     })->weight;

    maglev_table t;
    t.entries_.assign(size, empty_slot);
    std::uint32_t filled = 0;
    // The paper's population loop. A backend of weight w takes a turn on
    // every (max_weight / w)-th iteration, so its share of slots follows its
    // weight (Envoy maglev_lb.cc).
    for (std::uint64_t iteration = 1; filled < size; ++iteration) {
        for (auto& e : entries) {
            if (iteration * e.weight < e.target_weight) continue;
            e.target_weight += max_weight;
            std::uint64_t slot = (e.offset + e.next * e.skip) % size;
            while (t.entries_[slot] != empty_slot) {
                ++e.next;
                slot = (e.offset + e.next * e.skip) % size;
            }
            t.entries_[slot] = e.index;
            ++e.next;
            if (++filled == size) break;
        }
    }
    return t;
}

std::uint32_t maglev_table::lookup(std::uint64_t key_hash, std::uint32_t attempt) const noexcept {
    const std::uint64_t n = entries_.size();
    if (attempt == 0) return entries_[key_hash % n];
    // A second, key-specific step: the key's fallbacks are spread over the
    // table rather than being its neighbours' slots.
    const std::uint64_t step = splitmix64(key_hash ^ walk_seed) % (n - 1) + 1;
    return entries_[(key_hash % n + attempt * step) % n];
}

}  // namespace apilb
