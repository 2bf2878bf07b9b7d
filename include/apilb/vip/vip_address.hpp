// Removing a VIP from an interface through rtnetlink, for when keepalived
// died without doing it (a crash leaves the address configured while the
// peer takes it too).
#pragma once

#include <string>
#include <system_error>

#include "apilb/core/config.hpp"

namespace apilb {

/// Deletes `vip` from `interface`. An address that is not there is success.
std::error_code remove_vip(const std::string& interface, const vrrp_vip& vip);

}  // namespace apilb
