/* The io_uring of the floor relays that use one. */
#ifndef APILB_FLOOR_RING_H
#define APILB_FLOOR_RING_H

#include <liburing.h>

#include "floor.h"

/* SINGLE_ISSUER | DEFER_TASKRUN (6.1): completions are posted only when the
 * one thread asks for them in io_uring_enter, never by interrupting it;
 * without them where the kernel lacks them. A large CQ: multishot requests
 * post many completions per SQE. */
static void floor_ring_init(struct io_uring* ring) {
    struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE,
                                .cq_entries = 65536};
    int rc = io_uring_queue_init_params(4096, ring, &p);
    if (rc < 0) {
        p = (struct io_uring_params){.flags = IORING_SETUP_CQSIZE, .cq_entries = 65536};
        rc = io_uring_queue_init_params(4096, ring, &p);
    }
    if (rc < 0) {
        errno = -rc;
        floor_die("io_uring_queue_init");
    }
}

#endif
