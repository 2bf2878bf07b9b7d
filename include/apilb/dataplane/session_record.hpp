// What an upgrade hands over with a session's two sockets (docs/upgrade.md,
// "Sessions"): enough for the new process to carry on relaying as the old
// one did, with no new backend connect. Plain data: the old process's worker
// fills it, the handover channel carries it (process/handover.hpp encodes
// and parses it), the new process's worker adopts the session from it.
#pragma once

#include <cstdint>
#include <string>

namespace apilb {

/// One established session as handed over; the sockets travel beside it.
struct session_record {
    std::string listener;         ///< listener_config::address as text: where the client connected
    std::string pool;             ///< pool name
    std::string backend;          ///< backend name
    std::string backend_address;  ///< backend address as text: the name alone may mean another server after a reload
    std::uint64_t bytes_to_backend = 0;    ///< client -> backend so far
    std::uint64_t bytes_from_backend = 0;  ///< backend -> client so far
    std::uint64_t age_ms = 0;              ///< since the client was accepted
    bool client_fin = false;               ///< the client sent FIN; it was passed on to the backend
    bool backend_fin = false;              ///< the backend sent FIN; it was passed on to the client
};

/// A session's two sockets taken out of a worker for an upgrade, with its
/// record. The descriptors are the holder's to send and close.
struct handed_session {
    session_record record;
    int client_fd = -1;
    int backend_fd = -1;
};

}  // namespace apilb
