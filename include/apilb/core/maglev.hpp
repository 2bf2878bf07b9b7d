// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, section 3.4), with Envoy's
// weighting. Pure core: a table is built once per pool config on the control
// thread and read by every worker without a lock.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apilb {

/// A backend as the table sees it: only its name (not its position in the
/// file) decides where it lands, so every apilb given the same pool builds
/// the same table.
struct maglev_backend {
    std::string_view name;
    std::uint32_t weight = 1;  ///< >= 1
};

class maglev_table {
public:
    /// Default table size: a prime well above 100 × the backends of any
    /// control plane, so shares are within about 1% of the weights.
    static constexpr std::uint32_t default_size = 65537;

    /// Builds the table. `size` must be prime and at least backends.size();
    /// `backends` must be non-empty with distinct names. Entries are indices
    /// into `backends` as given.
    static maglev_table build(std::span<const maglev_backend> backends, std::uint32_t size = default_size);

    /// The backend at the key's `attempt`-th place of its own preference
    /// order: attempt 0 is the key's table slot; later attempts walk other
    /// slots in a sequence that depends only on the key, so when its backend
    /// is unavailable a key moves to its own next choice and no other key
    /// moves.
    std::uint32_t lookup(std::uint64_t key_hash, std::uint32_t attempt = 0) const noexcept;

    std::uint32_t size() const noexcept { return static_cast<std::uint32_t>(entries_.size()); }
    const std::vector<std::uint32_t>& entries() const noexcept { return entries_; }

private:
    std::vector<std::uint32_t> entries_;
};

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finaliser so that close
/// inputs such as neighbouring IP addresses spread over the whole range).
std::uint64_t stable_hash(std::string_view bytes, std::uint64_t seed = 0) noexcept;

bool is_prime(std::uint32_t n) noexcept;

}  // namespace apilb
