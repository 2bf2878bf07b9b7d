/* What the three floor relays share: arguments, the listener, the backends.
 * Each floor program is the least a balancer's worker must do per unit of
 * work on one thread -- accept, connect to the next backend round-robin,
 * relay both ways, pass a half-close on, close -- with nothing else (no
 * limits, no timeouts, no health), so that the difference between it and
 * apilb is apilb's own cost. Usage: floor_X LISTEN_PORT BACKEND_PORT; the
 * backends are 127.0.0.2-4:BACKEND_PORT, as in tests/bench. */
#ifndef APILB_FLOOR_H
#define APILB_FLOOR_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FLOOR_BUF 16384 /* per direction, as apilb's relay buffer */

static void floor_die(const char* what) {
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static struct sockaddr_in floor_backends[3];
static unsigned floor_next;

/* Parses the ports, fills the backends and returns a listening socket. */
static int floor_setup(int argc, char** argv, int nonblock) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT\n", argv[0]);
        exit(2);
    }
    const int lport = atoi(argv[1]), bport = atoi(argv[2]);
    for (int i = 0; i < 3; ++i) {
        floor_backends[i].sin_family = AF_INET;
        floor_backends[i].sin_port = htons((unsigned short)bport);
        floor_backends[i].sin_addr.s_addr = htonl(0x7f000002u + (unsigned)i);
    }
    const int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (l < 0) floor_die("socket");
    const int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Inherited by accepted sockets, as apilb sets it once on the listener. */
    setsockopt(l, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)lport)};
    a.sin_addr.s_addr = htonl(0x7f000001u);
    if (bind(l, (struct sockaddr*)&a, sizeof a) != 0) floor_die("bind");
    if (listen(l, 4096) != 0) floor_die("listen");
    return l;
}

/* The next backend, round-robin. */
static const struct sockaddr_in* floor_backend(void) { return &floor_backends[floor_next++ % 3]; }

/* A non-blocking TCP socket for a backend, with TCP_NODELAY. */
static int floor_upstream_socket(void) {
    const int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    const int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

#endif
