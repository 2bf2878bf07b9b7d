/* Floor (a) and (b): one thread, one epoll set, both sockets of a session
 * added once, edge-triggered for both directions. Built plain, it relays
 * with recv/send through a 16 KiB buffer per direction; built with
 * -DFLOOR_SPLICE, through a pipe per direction with splice. Built with
 * -DFLOOR_URING_POLL (floor d), the readiness comes from an io_uring
 * instead of epoll -- one multishot, edge-triggered IORING_OP_POLL_ADD per
 * socket, armed and removed by SQEs that go in with the one io_uring_enter
 * that waits -- and the reads and writes stay system calls: the smallest
 * step an epoll-shaped balancer can take towards io_uring; with
 * -DFLOOR_URING_ACCEPT as well (floor e), new clients come from a multishot
 * accept instead of accept4. A read shorter
 * than asked means the socket is empty: no read again until its next edge
 * (or its FIN), as apilb's relay does. See floor.h. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "floor.h"

#ifdef FLOOR_URING_POLL
#include <poll.h>

#include "floor_ring.h"
static struct io_uring ring;
static struct io_uring_sqe* floor_sqe(void) {
    struct io_uring_sqe* s = io_uring_get_sqe(&ring);
    if (s == NULL) {
        io_uring_submit(&ring);
        if ((s = io_uring_get_sqe(&ring)) == NULL) floor_die("io_uring_get_sqe");
    }
    return s;
}
/* Edge-triggered for both directions, until removed (or the kernel ends it:
 * a CQE without IORING_CQE_F_MORE, then armed again). */
static void floor_watch(int fd, uint64_t data) {
    struct io_uring_sqe* s = floor_sqe();
    io_uring_prep_poll_multishot(s, fd, POLLIN | POLLOUT | POLLRDHUP);
    io_uring_sqe_set_data64(s, data);
}
#endif

#ifdef FLOOR_SPLICE
#define FLOOR_CHUNK 65536 /* the kernel's default pipe size */
#else
#define FLOOR_CHUNK FLOOR_BUF
#endif

struct dir {
    int from, to;
#ifdef FLOOR_SPLICE
    int pipe[2];
#else
    char buf[FLOOR_BUF];
    size_t off;
#endif
    size_t len;       /* bytes read and not yet sent */
    int empty;        /* `from` has nothing until its next EPOLLIN */
    int ended;        /* `from` saw FIN or an error: read until 0 */
    int blocked;      /* `to` is full until its next EPOLLOUT */
    int eof, done;
};

struct conn {
    int fd[2]; /* client, backend */
    struct dir d[2];
    int dead;
#ifdef FLOOR_URING_POLL
    int polls; /* multishot polls not yet ended by their last CQE */
#endif
    struct conn* next_dead;
} __attribute__((aligned(16)));

#ifndef FLOOR_URING_POLL
static struct conn* dead_list; /* freed after the batch of events that may name them */
#endif

static void conn_free_later(struct conn* c, int reset) {
    if (c->dead) return;
    c->dead = 1;
    for (int i = 0; i < 2; ++i) {
        if (reset) {
            const struct linger lg = {1, 0};
            setsockopt(c->fd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
#ifdef FLOOR_URING_POLL
        /* The poll holds the socket open: remove it, or no FIN goes out. */
        struct io_uring_sqe* s = floor_sqe();
        io_uring_prep_poll_remove(s, (uint64_t)(uintptr_t)c | (uint64_t)i);
        io_uring_sqe_set_data64(s, 2);
#endif
        close(c->fd[i]);
#ifdef FLOOR_SPLICE
        close(c->d[i].pipe[0]);
        close(c->d[i].pipe[1]);
#endif
    }
#ifndef FLOOR_URING_POLL
    c->next_dead = dead_list;
    dead_list = c;
#endif
}

/* Moves what can move from d->from to d->to; -1 on a socket error. */
static int pump(struct dir* d) {
    for (;;) {
        if (d->len > 0) {
            if (d->blocked) return 0;
#ifdef FLOOR_SPLICE
            const ssize_t n = splice(d->pipe[0], NULL, d->to, NULL, d->len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
#else
            const ssize_t n = send(d->to, d->buf + d->off, d->len, MSG_NOSIGNAL);
#endif
            if (n < 0) {
                if (errno == EAGAIN) {
                    d->blocked = 1;
                    return 0;
                }
                return -1;
            }
#ifndef FLOOR_SPLICE
            d->off += (size_t)n;
#endif
            d->len -= (size_t)n;
            continue;
        }
        if (d->eof) {
            if (!d->done) {
                shutdown(d->to, SHUT_WR);
                d->done = 1;
            }
            return 0;
        }
        if (d->empty && !d->ended) return 0;
#ifdef FLOOR_SPLICE
        const ssize_t n = splice(d->from, NULL, d->pipe[1], NULL, FLOOR_CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
#else
        const ssize_t n = recv(d->from, d->buf, FLOOR_CHUNK, 0);
        d->off = 0;
#endif
        if (n > 0) {
            d->len = (size_t)n;
            if (n < FLOOR_CHUNK) d->empty = 1;
        } else if (n == 0) {
            d->eof = 1;
        } else if (errno == EAGAIN) {
            d->empty = 1;
            return 0;
        } else {
            return -1;
        }
    }
}

#ifndef FLOOR_URING_POLL
static int ep;
static void floor_watch(int fd, uint64_t data) {
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = data};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) != 0) floor_die("epoll_ctl");
}
#endif

/* A new client `cfd`: connect to the next backend and watch both. */
static void start_session(int cfd) {
    const int bfd = floor_upstream_socket();
    const struct sockaddr_in* be = floor_backend();
    if (bfd < 0 || (connect(bfd, (const struct sockaddr*)be, sizeof *be) != 0 && errno != EINPROGRESS)) {
        if (bfd >= 0) close(bfd);
        close(cfd);
        return;
    }
    struct conn* c = aligned_alloc(16, sizeof(struct conn));
    memset(c, 0, sizeof *c);
    c->fd[0] = cfd;
    c->fd[1] = bfd;
    c->d[0].from = cfd, c->d[0].to = bfd;
    c->d[1].from = bfd, c->d[1].to = cfd;
#ifdef FLOOR_SPLICE
    if (pipe2(c->d[0].pipe, O_NONBLOCK | O_CLOEXEC) != 0 || pipe2(c->d[1].pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        floor_die("pipe2");
#endif
#ifdef FLOOR_URING_POLL
    c->polls = 2;
#endif
    for (int s = 0; s < 2; ++s) floor_watch(c->fd[s], (uint64_t)(uintptr_t)c | (uint64_t)s);
}

#ifndef FLOOR_URING_ACCEPT
static void on_accept(int l) {
    for (;;) {
        const int cfd = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) break;
        start_session(cfd);
    }
}
#endif

/* Arms the listener: readiness for accept4, or (FLOOR_URING_ACCEPT) a
 * multishot accept whose every CQE is a new client. */
#ifdef FLOOR_URING_POLL
static void watch_listener(int l) {
    struct io_uring_sqe* a = floor_sqe();
#ifdef FLOOR_URING_ACCEPT
    io_uring_prep_multishot_accept(a, l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    io_uring_prep_poll_multishot(a, l, POLLIN);
#endif
    io_uring_sqe_set_data64(a, 0);
}
#endif

/* Socket `side` of `c` reported `e`. */
static void on_event(struct conn* c, int side, uint32_t e) {
    if (c->dead) return;
    /* d[side] reads this socket, d[!side] writes to it. */
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) c->d[side].empty = 0;
    if (e & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) c->d[side].ended = 1;
    if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) c->d[!side].blocked = 0;
    if (pump(&c->d[0]) < 0 || pump(&c->d[1]) < 0) {
        conn_free_later(c, 1);
    } else if (c->d[0].done && c->d[1].done) {
        conn_free_later(c, 0);
    }
}

int main(int argc, char** argv) {
    const int l = floor_setup(argc, argv, 1);
#ifdef FLOOR_URING_POLL
    floor_ring_init(&ring);
    watch_listener(l);
#else
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) floor_die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) != 0) floor_die("epoll_ctl");
#endif
    printf("ready\n");
    fflush(stdout);
    for (;;) {
#ifdef FLOOR_URING_POLL
        io_uring_submit_and_wait(&ring, 1);
        struct io_uring_cqe* cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            ++seen;
            const uint64_t data = io_uring_cqe_get_data64(cqe);
            if (data == 2) continue; /* a poll removal */
            if (data == 0) {
                if (!(cqe->flags & IORING_CQE_F_MORE)) watch_listener(l);
#ifdef FLOOR_URING_ACCEPT
                if (cqe->res >= 0) start_session(cqe->res);
#else
                on_accept(l);
#endif
                continue;
            }
            struct conn* c = (struct conn*)(uintptr_t)(data & ~(uint64_t)1);
            const int side = (int)(data & 1);
            if (!(cqe->flags & IORING_CQE_F_MORE)) {
                if (c->dead) {
                    if (--c->polls == 0) free(c);
                    continue;
                }
                floor_watch(c->fd[side], data);
            }
            if (cqe->res > 0) on_event(c, side, (uint32_t)cqe->res);
        }
        io_uring_cq_advance(&ring, seen);
#else
        struct epoll_event evs[256];
        const int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR) floor_die("epoll_wait");
        for (int i = 0; i < n; ++i) {
            if (evs[i].data.u64 == 0) {
                on_accept(l);
                continue;
            }
            on_event((struct conn*)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)1), (int)(evs[i].data.u64 & 1),
                     evs[i].events);
        }
        while (dead_list) {
            struct conn* c = dead_list;
            dead_list = c->next_dead;
            free(c);
        }
#endif
    }
}
