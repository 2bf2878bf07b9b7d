// An upgrade's side of a session (docs/upgrade.md, "Sessions"): the old
// process takes a relaying session's two sockets out with its record; the new
// process places a record in its config and relays the pair on.
#include "apilb/dataplane/session.hpp"

#include <algorithm>
#include <new>

#include <fmt/format.h>

#include "apilb/dataplane/session_impl.hpp"
#include "apilb/dataplane/socket_options.hpp"

namespace apilb {
namespace session_impl {

bool session::hand_over(handed_session& out) {
    if (!entry_.relaying || entry_.aborted() || chosen_ == nullptr || !client_.is_open() || !upstream_.is_open() ||
        !relay_.quiet()) {
        return false;
    }
    const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started_);
    out.record = {.listener = listener_.cfg->address.to_string(),
                  .pool = pool_.cfg->name,
                  .backend = chosen_->cfg->name,
                  .backend_address = endpoint_text(chosen_->endpoint),
                  .bytes_to_backend = relay_.to_backend().bytes + replayed_,
                  .bytes_from_backend = relay_.from_backend().bytes,
                  .age_ms = static_cast<std::uint64_t>(std::max<std::int64_t>(age.count(), 0)),
                  .client_fin = relay_.client_ended(),
                  .backend_fin = relay_.backend_ended()};
    // Set before the sockets go: the relay's waits complete aborted and the
    // session ends by this reason, with nothing left to close.
    entry_.closed_by = close_reason::handed_over;
    out.client_fd = client_.release();
    out.backend_fd = upstream_.release();
    // A quiesced direction has no wait for the release to complete.
    entry_.quiesce_until = clock_type::time_point::max();
    relay_.end_quiesce();
    return true;
}

bool session::adopt(std::unique_ptr<session> self, const session_record& r, int client_fd, int backend_fd,
                    std::string& why) {
    session& s = *self;
    const backend_runtime* found = nullptr;
    if (s.pool_.cfg->name != r.pool) {
        why = fmt::format("listener {} now sends to pool {}, not {}", r.listener, s.pool_.cfg->name, r.pool);
    } else {
        for (const backend_runtime& b : s.pool_.backends) {
            if (b.cfg->name == r.backend && endpoint_text(b.endpoint) == r.backend_address) {
                found = &b;
                break;
            }
        }
        if (found == nullptr)
            why = fmt::format("pool {} has no backend {} at {}", r.pool, r.backend, r.backend_address);
    }
    if (found == nullptr) {
        close_with_reset(client_fd);
        close_with_reset(backend_fd);
        return false;
    }
    const error_code cec = s.client_.adopt_connected(client_fd);
    const error_code bec = cec ? error_code{} : s.upstream_.adopt_connected(backend_fd);
    if (cec || bec) {
        if (cec) close_with_reset(backend_fd);
        s.client_.set_abortive_close();  // a FIN would end the client's stream as if complete
        why = fmt::format("cannot watch its sockets: {}", (cec ? cec : bec).message());
        return false;
    }
    s.chosen_ = found;
    found->stats->active.fetch_add(1, std::memory_order_relaxed);
    s.started_ = clock_type::now() - std::chrono::milliseconds(std::min<std::uint64_t>(r.age_ms, 1ull << 40));
    // What the old process counted stays in its counters; these go on from there.
    s.published_to_ = r.bytes_to_backend;
    s.published_from_ = r.bytes_from_backend;
    s.adopted_ = true;
    if (s.pool_.maglev) {
        error_code ec;
        if (auto ep = s.client_.remote_endpoint(ec); !ec) {
            s.client_ep_ = ep;
            s.entry_.key_hash = client_key_hash(ep, s.pool_.cfg->maglev_key);
        }
    }
    s.ctx_.stats.sessions_adopted_total.fetch_add(1, std::memory_order_relaxed);
    s.start_relay(std::move(self));
    return true;
}

}  // namespace session_impl

using session_impl::session;

bool hand_over_session(session_entry& s, handed_session& out) {
    return s.owner != nullptr && static_cast<session*>(s.owner)->hand_over(out);
}

bool adopt_session(worker_context& ctx, const session_record& r, int client_fd, int backend_fd, std::string& why) {
    const snapshot& snap = ctx.snap();
    std::size_t listener_index = snap.listeners.size();
    for (std::size_t i = 0; i < snap.listeners.size(); ++i) {
        if (snap.listeners[i].cfg->address.to_string() == r.listener) listener_index = i;
    }
    if (listener_index == snap.listeners.size()) {
        why = fmt::format("no listener on {} in this config", r.listener);
        close_with_reset(client_fd);
        close_with_reset(backend_fd);
        return false;
    }
    ctx.stats.active_sessions.fetch_add(1, std::memory_order_relaxed);  // the session un-counts itself
    std::unique_ptr<session> s;
    try {
        s = std::make_unique<session>(ctx, listener_index, false);
    } catch (const std::bad_alloc&) {
        ctx.stats.active_sessions.fetch_sub(1, std::memory_order_relaxed);
        why = "out of memory";
        close_with_reset(client_fd);
        close_with_reset(backend_fd);
        return false;
    }
    try {
        return session::adopt(std::move(s), r, client_fd, backend_fd, why);
    } catch (const std::bad_alloc&) {
        // The session is gone: reset, un-counted and counted by its destructor.
        why = "out of memory";
        return false;
    }
}

}  // namespace apilb
