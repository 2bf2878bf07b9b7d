// Loading the config file safely against any bytes. yaml-cpp 0.7 loops
// forever on some malformed input, allocating as it goes (a file holding
// only ","; upstream jbeder/yaml-cpp issue 1040), and no check of the text
// can rule out every such input. So the parse is first run in a child
// process (this binary again, in a hidden mode) under hard limits and a
// deadline; only when the child has shown that the parse of these exact
// bytes ends does apilb parse them itself (yaml-cpp is deterministic).
#pragma once

#include <spawn.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "apilb/core/config.hpp"

namespace apilb {

// A sanitizer build (AddressSanitizer or ThreadSanitizer): g++ says so with
// __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__, clang 14 only with
// __has_feature (the fuzz build, tests/fuzz/).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define APILB_SANITIZED_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define APILB_SANITIZED_BUILD 1
#endif
#endif

#if defined(APILB_SANITIZED_BUILD)
/// AddressSanitizer's start-up alone costs the child ~0.5 s of CPU (and
/// ThreadSanitizer's is of the same order).
constexpr int yaml_guard_slowdown = 4;
#else
constexpr int yaml_guard_slowdown = 1;
#endif
/// The CPU time the child may use before the file is refused. CPU time, not
/// wall-clock time, so that a starved machine does not refuse a good file:
/// the runaway parse spins, so on an idle machine it is killed after this
/// much wall-clock time too. A real config costs the child ~20 ms (start-up
/// included); the largest allowed (256 KiB) ~150 ms.
constexpr std::chrono::milliseconds yaml_guard_cpu_budget{500 * yaml_guard_slowdown};
/// The wall-clock limit, for a child that uses no CPU at all (stopped).
constexpr std::chrono::milliseconds yaml_guard_deadline{5000 * yaml_guard_slowdown};
/// The child's address-space limit (RLIMIT_AS; not under AddressSanitizer or
/// ThreadSanitizer, which reserve terabytes of shadow memory and whose
/// allocators then fail at their first allocation).
constexpr std::size_t yaml_guard_memory = std::size_t{1} << 30;

/// argv[1] that makes `apilb` the guard's child; main() checks for it first.
constexpr std::string_view yaml_guard_mode = "__yaml-guard-child";

/// Reads and validates the config file at `path`: read_config_file (a
/// regular file, bounded), the guard, then parse_config. Every config load
/// of the product goes through here. `text`, if given, receives the bytes
/// (for the config hash). Throws config_load_error. Blocks the calling
/// thread while the child runs: ~50 ms, at most yaml_guard_deadline.
std::shared_ptr<const config> load_config_guarded(const std::string& path, std::string* text = nullptr);

/// The guard alone: returns when yaml-cpp's parse of `text` ends within
/// the limits above in a child process, throws config_load_error (naming
/// `path`) when it does not. Only then may this process parse `text`.
/// load_config_guarded calls it; so does the config fuzz target.
void prove_yaml_parse_ends(const std::string& path, const std::string& text);

/// The child's whole life: limits itself, reads the bytes from stdin,
/// parses them and exits 0 when the parse ended (with or without a syntax
/// error), 3 when memory ran out.
int yaml_guard_child_main();

/// Makes a child spawned with `attr` start with no signal blocked and every
/// signal at its default action, like a process the service manager starts:
/// the caller's thread may block signals (the workers do), and apilb ignores
/// SIGPIPE and SIGXFSZ. For the YAML guard's child and an upgrade's binary.
void set_default_signals(posix_spawnattr_t& attr);

}  // namespace apilb
