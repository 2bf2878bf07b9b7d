/* Floor (c): one thread, one io_uring. Multishot accept; per session a
 * socket(2) and an IORING_OP_CONNECT, then per direction recv -> send ->
 * recv ... through a 16 KiB buffer, a FIN passed on with IORING_OP_SHUTDOWN;
 * every SQE of a loop turn goes in with the one io_uring_enter that also
 * waits for the next completions (SINGLE_ISSUER | DEFER_TASKRUN where the
 * kernel has them). Built with -DFLOOR_MULTISHOT (floor f), each direction
 * reads with one multishot recv into buffers it picks from a provided buffer
 * ring (1024 x 16 KiB, shared by all sessions), queued in order for the
 * sends, each buffer given back to the ring once sent. See floor.h. */
#define _GNU_SOURCE
#include <stdint.h>

#include "floor_ring.h"

enum { T_ACCEPT, T_CONNECT, T_RECV0, T_RECV1, T_SEND0, T_SEND1, T_OTHER };

#ifdef FLOOR_MULTISHOT
#include <sys/mman.h>
#define NBUF 1024
static struct io_uring_buf_ring* br;
static char* bufs;
#endif

struct dir {
    int from, to;
#ifdef FLOOR_MULTISHOT
    unsigned short q[NBUF]; /* buffer ids received and not yet sent, in order */
    unsigned qlen[NBUF];
    unsigned head, tail;
    int sending, receiving, eof;
    char* buf; /* the buffer being sent */
#else
    char buf[FLOOR_BUF];
#endif
    size_t off, len;
    int done;
};

struct conn {
    int fd[2];
    struct dir d[2];
    int inflight; /* SQEs whose CQE has not come */
    int closing;
    int failed;
} __attribute__((aligned(16)));

static struct io_uring ring;

static struct io_uring_sqe* sqe_for(struct conn* c, int tag) {
    struct io_uring_sqe* s = io_uring_get_sqe(&ring);
    if (s == NULL) {
        io_uring_submit(&ring);
        s = io_uring_get_sqe(&ring);
        if (s == NULL) floor_die("io_uring_get_sqe");
    }
    io_uring_sqe_set_data64(s, (uint64_t)(uintptr_t)c | (uint64_t)tag);
    if (c) ++c->inflight;
    return s;
}

static void start_send(struct conn* c, int i) {
    struct dir* d = &c->d[i];
    io_uring_prep_send(sqe_for(c, T_SEND0 + i), d->to, d->buf + d->off, d->len, MSG_NOSIGNAL);
}

#ifdef FLOOR_MULTISHOT
static void give_back(unsigned short bid) {
    io_uring_buf_ring_add(br, bufs + (size_t)bid * FLOOR_BUF, FLOOR_BUF, bid, io_uring_buf_ring_mask(NBUF), 0);
    io_uring_buf_ring_advance(br, 1);
}

static void start_recv(struct conn* c, int i) {
    struct io_uring_sqe* s = sqe_for(c, T_RECV0 + i);
    io_uring_prep_recv_multishot(s, c->d[i].from, NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = 0;
    c->d[i].receiving = 1;
}

/* Sends the oldest buffer queued, or passes the FIN on once all are sent. */
static void send_next(struct conn* c, int i) {
    struct dir* d = &c->d[i];
    if (d->sending) return;
    if (d->head != d->tail) {
        const unsigned k = d->head % NBUF;
        d->buf = bufs + (size_t)d->q[k] * FLOOR_BUF;
        d->off = 0;
        d->len = d->qlen[k];
        d->sending = 1;
        start_send(c, i);
    } else if (d->eof && !d->done) {
        io_uring_prep_shutdown(sqe_for(c, T_OTHER), d->to, SHUT_WR);
        d->done = 1;
    }
}
#else
static void start_recv(struct conn* c, int i) {
    io_uring_prep_recv(sqe_for(c, T_RECV0 + i), c->d[i].from, c->d[i].buf, FLOOR_BUF, 0);
}
#endif

/* Ends a failed session: wakes its pending reads so that it can be freed. */
static void fail(struct conn* c) {
    if (c->failed) return;
    c->failed = 1;
    shutdown(c->fd[0], SHUT_RDWR);
    shutdown(c->fd[1], SHUT_RDWR);
}

/* Frees the session once nothing of it is in flight. */
static void maybe_end(struct conn* c) {
    if (c->inflight > 0 || !(c->failed || (c->d[0].done && c->d[1].done))) return;
    for (int i = 0; i < 2; ++i) {
        if (c->failed) {
            const struct linger lg = {1, 0};
            setsockopt(c->fd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        io_uring_prep_close(sqe_for(NULL, T_OTHER), c->fd[i]);
#ifdef FLOOR_MULTISHOT
        for (struct dir* d = &c->d[i]; d->head != d->tail; ++d->head) give_back(d->q[d->head % NBUF]);
#endif
    }
    free(c);
}

static void on_accept(int l, struct io_uring_cqe* cqe) {
    if (!(cqe->flags & IORING_CQE_F_MORE)) io_uring_prep_multishot_accept(sqe_for(NULL, T_ACCEPT), l, NULL, NULL, SOCK_CLOEXEC);
    if (cqe->res < 0) return;
    const int bfd = floor_upstream_socket();
    if (bfd < 0) {
        close(cqe->res);
        return;
    }
    struct conn* c = aligned_alloc(16, sizeof(struct conn));
    memset(c, 0, sizeof *c);
    c->fd[0] = cqe->res;
    c->fd[1] = bfd;
    c->d[0].from = c->fd[0], c->d[0].to = c->fd[1];
    c->d[1].from = c->fd[1], c->d[1].to = c->fd[0];
    const struct sockaddr_in* be = floor_backend();
    io_uring_prep_connect(sqe_for(c, T_CONNECT), bfd, (const struct sockaddr*)be, sizeof *be);
}

static void on_cqe(int l, struct io_uring_cqe* cqe) {
    const uint64_t data = io_uring_cqe_get_data64(cqe);
    const int tag = (int)(data & 15);
    struct conn* c = (struct conn*)(uintptr_t)(data & ~(uint64_t)15);
    if (tag == T_ACCEPT) return on_accept(l, cqe);
    if (c == NULL) return;
    const int res = cqe->res;
#ifdef FLOOR_MULTISHOT
    if (tag == T_RECV0 || tag == T_RECV1) {
        struct dir* d = &c->d[tag - T_RECV0];
        if (res > 0) {
            d->q[d->tail % NBUF] = (unsigned short)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            d->qlen[d->tail % NBUF] = (unsigned)res;
            ++d->tail;
        }
        if (cqe->flags & IORING_CQE_F_MORE) {
            if (!c->failed) send_next(c, tag - T_RECV0);
            return;
        }
        --c->inflight;
        d->receiving = 0;
        if (c->failed) return maybe_end(c);
        if (res == 0) {
            d->eof = 1;
        } else if (res < 0 && res != -ENOBUFS) {
            fail(c);
            return maybe_end(c);
        } else if (res > 0 || d->head == d->tail) {
            start_recv(c, tag - T_RECV0);
        } /* -ENOBUFS holding buffers: armed again when one of them is sent */
        send_next(c, tag - T_RECV0);
        return maybe_end(c);
    }
#endif
    --c->inflight;
    if (c->failed) return maybe_end(c);
    switch (tag) {
    case T_CONNECT:
        if (res < 0) {
            fail(c);
        } else {
            start_recv(c, 0);
            start_recv(c, 1);
        }
        break;
#ifndef FLOOR_MULTISHOT
    case T_RECV0:
    case T_RECV1: {
        struct dir* d = &c->d[tag - T_RECV0];
        if (res > 0) {
            d->off = 0;
            d->len = (size_t)res;
            start_send(c, tag - T_RECV0);
        } else if (res == 0) {
            io_uring_prep_shutdown(sqe_for(c, T_OTHER), d->to, SHUT_WR);
            d->done = 1;
        } else {
            fail(c);
        }
        break;
    }
#endif
    case T_SEND0:
    case T_SEND1: {
        struct dir* d = &c->d[tag - T_SEND0];
        if (res < 0) {
            fail(c);
        } else {
            d->off += (size_t)res;
            d->len -= (size_t)res;
            if (d->len > 0) {
                start_send(c, tag - T_SEND0);
            } else {
#ifdef FLOOR_MULTISHOT
                give_back(d->q[d->head++ % NBUF]);
                d->sending = 0;
                if (!d->receiving && !d->eof) start_recv(c, tag - T_SEND0);
                send_next(c, tag - T_SEND0);
#else
                start_recv(c, tag - T_SEND0);
#endif
            }
        }
        break;
    }
    default:
        break;
    }
    maybe_end(c);
}

int main(int argc, char** argv) {
    const int l = floor_setup(argc, argv, 0);
    floor_ring_init(&ring);
    int rc;
#ifdef FLOOR_MULTISHOT
    br = mmap(NULL, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    bufs = malloc((size_t)NBUF * FLOOR_BUF);
    if (br == MAP_FAILED || bufs == NULL) floor_die("buffer ring");
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = 0};
    if ((rc = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) {
        errno = -rc;
        floor_die("io_uring_register_buf_ring");
    }
    io_uring_buf_ring_init(br);
    for (unsigned i = 0; i < NBUF; ++i)
        io_uring_buf_ring_add(br, bufs + (size_t)i * FLOOR_BUF, FLOOR_BUF, (unsigned short)i, io_uring_buf_ring_mask(NBUF), (int)i);
    io_uring_buf_ring_advance(br, NBUF);
#endif
    io_uring_prep_multishot_accept(sqe_for(NULL, T_ACCEPT), l, NULL, NULL, SOCK_CLOEXEC);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            errno = -rc;
            floor_die("io_uring_submit_and_wait");
        }
        struct io_uring_cqe* cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            on_cqe(l, cqe);
            ++seen;
        }
        io_uring_cq_advance(&ring, seen);
    }
}
