// What every fuzz target that parses YAML does first: the YAML guard's
// child is the target binary again (/proc/self/exe), as it is apilb itself
// in production, so a target must become that child when started as one;
// and a guard that refuses everything (as it did under clang's
// AddressSanitizer, whose child died of its own address-space limit) would
// leave the parser unfuzzed, so that is said instead of running blind.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "apilb/control/yaml_guard.hpp"

namespace apilb::fuzz {

/// Call first in LLVMFuzzerInitialize. `target` names the fuzzer in the message.
inline void become_guard_child_or_check_guard(int argc, char** argv, const char* target) {
    if (argc == 2 && argv[1] == yaml_guard_mode) std::_Exit(yaml_guard_child_main());
    try {
        prove_yaml_parse_ends("fuzz.yaml", "a: 1\n");
    } catch (const config_load_error& e) {
        std::fprintf(stderr, "%s: the YAML guard refuses a trivial file: %s\n", target, e.what());
        std::abort();
    }
}

}  // namespace apilb::fuzz
