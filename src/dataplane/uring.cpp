#include "apilb/dataplane/uring.hpp"

#include <liburing.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

namespace apilb {

namespace {

constexpr unsigned ring_flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;

struct op_name {
    int op;
    const char* name;
};

/// Every operation a worker submits: the wait for its epoll set (POLL_ADD,
/// multishot, and POLL_REMOVE), the copy path's RECV and SEND, and the
/// cancel by descriptor a close needs (ASYNC_CANCEL).
constexpr std::array<op_name, 7> ops_used{{{IORING_OP_NOP, "NOP"},
                                           {IORING_OP_CLOSE, "CLOSE"},
                                           {IORING_OP_POLL_ADD, "POLL_ADD"},
                                           {IORING_OP_POLL_REMOVE, "POLL_REMOVE"},
                                           {IORING_OP_RECV, "RECV"},
                                           {IORING_OP_SEND, "SEND"},
                                           {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"}}};

std::string errno_text(int err) { return std::error_code(err, std::system_category()).message(); }

/// liburing returns -errno.
std::system_error ring_error(int rc, const char* what) { return std::system_error(-rc, std::system_category(), what); }

}  // namespace

std::string io_uring_unavailable() {
    ::io_uring ring{};
    io_uring_params params{};
    params.flags = ring_flags;
    if (const int rc = ::io_uring_queue_init_params(8, &ring, &params); rc < 0) {
        // EPERM: kernel.io_uring_disabled, or a seccomp profile's errno;
        // ENOSYS: a seccomp profile, or a kernel without io_uring; EINVAL:
        // a kernel older than 6.1 (no DEFER_TASKRUN).
        return fmt::format("io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN failed: {}", errno_text(-rc));
    }
    struct close_ring {
        ::io_uring* r;
        ~close_ring() { ::io_uring_queue_exit(r); }
    } closer{&ring};
    ::io_uring_probe* probe = ::io_uring_get_probe_ring(&ring);
    if (probe == nullptr) return "io_uring's probe of its operations failed (IORING_REGISTER_PROBE)";
    std::string missing;
    for (const auto& o : ops_used) {
        if (::io_uring_opcode_supported(probe, o.op) == 0)
            missing += (missing.empty() ? "" : ", ") + std::string(o.name);
    }
    ::io_uring_free_probe(probe);
    if (!missing.empty()) return "the kernel's io_uring lacks " + missing;
    ::io_uring_sqe* sqe = ::io_uring_get_sqe(&ring);
    ::io_uring_prep_nop(sqe);
    if (const int rc = ::io_uring_submit_and_wait(&ring, 1); rc < 0)
        return fmt::format("io_uring_enter failed: {}", errno_text(-rc));
    ::io_uring_cqe* cqe = nullptr;
    if (const int rc = ::io_uring_peek_cqe(&ring, &cqe); rc < 0 || cqe == nullptr) return "io_uring completed no no-op";
    if (cqe->res < 0) return fmt::format("io_uring's no-op failed: {}", errno_text(-cqe->res));
    ::io_uring_cqe_seen(&ring, cqe);
    return {};
}

relay_io_choice choose_relay_io(const config& cfg) {
    if (cfg.relay.io == relay_io::epoll) return {};
    std::string why = io_uring_unavailable();
    if (why.empty()) return {.io_uring = true, .reason = {}};
    if (cfg.relay.io == relay_io::automatic) return {.io_uring = false, .reason = std::move(why)};
    throw config_load_error(
        {config_error{.file = cfg.source,
                      .line = cfg.relay.io_line,
                      .column = cfg.relay.io_column,
                      .key_path = "relay.io",
                      .message = single_line("io_uring was asked for but this host does not give it: " + why +
                                             "; expected auto or epoll here (or allow io_uring: seccomp profile, "
                                             "kernel.io_uring_disabled)")}});
}

uring::uring(unsigned entries) : ring_(std::make_unique<::io_uring>()) {
    io_uring_params params{};
    params.flags = ring_flags | IORING_SETUP_R_DISABLED;
    if (const int rc = ::io_uring_queue_init_params(entries, ring_.get(), &params); rc < 0)
        throw ring_error(rc, "io_uring_setup for a worker");
}

uring::~uring() { ::io_uring_queue_exit(ring_.get()); }

void uring::enable() {
    // liburing 2.3 declares io_uring_enable_rings but its library does not
    // export it (Debian 12's liburing2 2.3-3): the register call itself.
    if (::syscall(__NR_io_uring_register, ring_->ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) != 0)
        throw std::system_error(errno, std::system_category(), "enabling a worker's io_uring");
}

::io_uring_sqe* uring::sqe() noexcept {
    for (;;) {
        if (::io_uring_sqe* s = ::io_uring_get_sqe(ring_.get())) {
            ::io_uring_sqe_set_data64(s, 0);
            return s;
        }
        // Full: hand what is queued to the kernel, which takes it at once
        // (its completions come in the next wait). EBUSY (completions the
        // kernel could not post wait to be reaped) is not retried here: a
        // retry would spin, nothing reaping in between.
        if (const int rc = ::io_uring_submit(ring_.get()); rc < 0 && rc != -EINTR) return nullptr;
    }
}

unsigned uring::forget_fd(int fd) noexcept {
    // Not yet submitted: from the kernel's head to the local tail. Without
    // SQPOLL the kernel moves its head only inside io_uring_enter, which
    // only this thread calls; liburing keeps the index array the identity.
    ::io_uring_sq& sq = ring_->sq;
    unsigned n = 0;
    for (unsigned i = *sq.khead; i != sq.sqe_tail; ++i) {
        ::io_uring_sqe& e = sq.sqes[i & sq.ring_mask];
        if (e.fd == fd && (e.flags & IOSQE_FIXED_FILE) == 0) {
            e.fd = -1;
            ++n;
        }
    }
    return n;
}

}  // namespace apilb
