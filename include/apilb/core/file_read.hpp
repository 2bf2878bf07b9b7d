// The one way apilb reads a file it is told about (the config, PEM files,
// token files): only a regular file, never more than a stated size. A path
// can name a FIFO, a device or /dev/zero; opening one of those blocking, or
// reading it to the end, would stall the control thread (or `check-config`)
// forever. Pure core: no Asio; used by every layer.
#pragma once

#include <cstddef>
#include <string>

namespace apilb {

/// Largest config file apilb reads (a real one is a few KiB; 100 pools of
/// three backends are ~20 KiB). Also bounds the parse's CPU time
/// (apilb/yaml_guard.hpp).
constexpr std::size_t max_config_bytes = std::size_t{256} << 10;
/// Largest PEM file (certificate chain, key, CA bundle; Debian's whole
/// ca-certificates bundle is about 200 KiB).
constexpr std::size_t max_pem_bytes = std::size_t{1} << 20;
/// Largest bearer-token file (a service-account JWT is 1-2 KiB).
constexpr std::size_t max_token_bytes = std::size_t{64} << 10;

/// Largest kubeconfig (one with every certificate embedded is ~10 KiB) and
/// largest discovery state file (apilb writes ~100 bytes per apiserver).
constexpr std::size_t max_kubeconfig_bytes = std::size_t{1} << 20;
constexpr std::size_t max_state_file_bytes = std::size_t{64} << 10;

/// A file's bytes, or why they were not read.
struct file_contents {
    std::string bytes;
    /// "" = read; else what follows the file's name in a message: "is a
    /// FIFO, expected a regular file", "is larger than 1 MiB", "cannot be
    /// read: No such file or directory".
    std::string error;

    explicit operator bool() const { return error.empty(); }
};

/// Reads `path` whole if it is a regular file of at most `max_bytes`.
/// Opens with O_NONBLOCK and checks the type before the first read, so a
/// FIFO, device, socket or directory is refused at once and never blocks.
file_contents read_regular_file(const std::string& path, std::size_t max_bytes);

/// "1 MiB", "64 KiB", "100 bytes": a limit as messages state it.
std::string describe_size(std::size_t bytes);

}  // namespace apilb
