// without_io_uring COMMAND [ARG...]: runs COMMAND with io_uring refused by a
// seccomp filter (EPERM, as container runtimes' default profiles do), so
// that a test sees what apilb's relay.io does on such a host.
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "../refuse_io_uring.hpp"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: without_io_uring COMMAND [ARG...]\n");
        return 64;
    }
    if (!apilb::test::refuse_io_uring()) {
        std::fprintf(stderr, "without_io_uring: cannot install the seccomp filter: %s\n", std::strerror(errno));
        return 70;
    }
    ::execvp(argv[1], argv + 1);
    std::fprintf(stderr, "without_io_uring: cannot run %s: %s\n", argv[1], std::strerror(errno));
    return 127;
}
