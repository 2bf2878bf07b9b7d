// The one way apilb replaces a file it owns (the VRRP track file, the
// discovery state file): a reader sees the old or the new content, never
// half of it. Pure core: no Asio; control thread or start-up only.
#pragma once

#include <string>
#include <system_error>

namespace apilb {

/// Replaces `path` with `content` by writing `path.tmp` and renaming it
/// over. `durable`: fsync the file before the rename and the directory
/// after, so that a power loss leaves the old or the new content (the
/// discovery state file); without it the kernel writes back when it likes
/// (the track file, rewritten every second).
std::error_code write_file_atomically(const std::string& path, const std::string& content, bool durable = false);

}  // namespace apilb
