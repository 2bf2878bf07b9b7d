#include "apilb/relay.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <optional>
#include <thread>

namespace apilb {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

TEST(PipePool, ReusesEmptyPipes) {
    pipe_pool pool(0);
    boost::system::error_code ec;
    auto a = pool.acquire(ec);
    ASSERT_FALSE(ec);
    EXPECT_EQ(pool.in_use(), 1u);
    pool.release(a, true);
    EXPECT_EQ(pool.idle(), 1u);
    auto b = pool.acquire(ec);
    EXPECT_EQ(b.read_fd, a.read_fd);
    EXPECT_EQ(b.write_fd, a.write_fd);
    pool.release(b, true);
}

TEST(PipePool, ClosesPipesThatMayHoldBytes) {
    pipe_pool pool(0);
    boost::system::error_code ec;
    auto a = pool.acquire(ec);
    ASSERT_EQ(::write(a.write_fd, "x", 1), 1);
    pool.release(a, false);
    EXPECT_EQ(pool.idle(), 0u);
    EXPECT_FALSE(fd_open(a.read_fd));
    EXPECT_FALSE(fd_open(a.write_fd));
}

TEST(PipePool, IdleListIsBounded) {
    pipe_pool pool(0, 2);
    boost::system::error_code ec;
    std::vector<pipe_pair> pipes;
    for (int i = 0; i < 5; ++i) pipes.push_back(pool.acquire(ec));
    for (auto& p : pipes) pool.release(p, true);
    EXPECT_EQ(pool.idle(), 2u);
    EXPECT_EQ(pool.in_use(), 0u);
}

TEST(BufferPool, ReusesBuffers) {
    buffer_pool pool(4096, 1);
    auto a = pool.acquire();
    auto* raw = a.get();
    pool.release(std::move(a));
    EXPECT_EQ(pool.acquire().get(), raw);
}

/// Two connected loopback TCP socket pairs: src_peer → src ==pump==> dst → dst_peer.
struct rig {
    asio::io_context io;
    tcp::socket src_peer{io}, src{io}, dst{io}, dst_peer{io};
    rig() {
        tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        src_peer.connect(acc.local_endpoint());
        acc.accept(src);
        dst.connect(acc.local_endpoint());
        acc.accept(dst_peer);
        src.native_non_blocking(true);
        dst.native_non_blocking(true);
    }
};

class Pump : public ::testing::TestWithParam<relay_mode> {};

TEST_P(Pump, CopiesBytesAndPassesEofOnAsHalfClose) {
    rig r;
    relay_resources res(relay_config{.mode = GetParam(), .buffer_size = 4096, .pipe_size = 0});
    std::optional<pump_result> result;
    auto last = std::chrono::steady_clock::time_point{};
    asio::co_spawn(r.io, pump(r.src, r.dst, res, last), [&](std::exception_ptr e, pump_result pr) {
        ASSERT_FALSE(e);
        result = pr;
    });
    std::string payload(1 << 20, '\0');
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7 + 3);
    std::thread writer([&] {
        asio::write(r.src_peer, asio::buffer(payload));
        r.src_peer.shutdown(tcp::socket::shutdown_send);
    });
    std::string got;
    std::thread reader([&] {
        boost::system::error_code ec;
        asio::read(r.dst_peer, asio::dynamic_buffer(got), ec);
        EXPECT_EQ(ec, asio::error::eof);
    });
    r.io.run();
    writer.join();
    reader.join();
    ASSERT_TRUE(result);
    EXPECT_EQ(result->end, pump_end::eof);
    EXPECT_EQ(result->bytes, payload.size());
    EXPECT_TRUE(got == payload);
    EXPECT_NE(last, std::chrono::steady_clock::time_point{});
    // The borrowed pipe or buffer went back to the pool.
    EXPECT_EQ(res.pipes.in_use(), 0u);
    // Only this direction ended: the destination can still send to us.
    EXPECT_TRUE(r.dst.is_open());
}

TEST_P(Pump, SourceResetBecomesResetTowardsTheSink) {
    rig r;
    relay_resources res(relay_config{.mode = GetParam(), .buffer_size = 4096, .pipe_size = 0});
    std::optional<pump_result> result;
    auto last = std::chrono::steady_clock::time_point{};
    asio::co_spawn(r.io, pump(r.src, r.dst, res, last), [&](std::exception_ptr, pump_result pr) { result = pr; });
    r.src_peer.set_option(asio::socket_base::linger(true, 0));
    asio::write(r.src_peer, asio::buffer("abc", 3));
    r.io.run_for(std::chrono::milliseconds(100));
    r.src_peer.close();
    r.io.run();
    ASSERT_TRUE(result);
    EXPECT_EQ(result->end, pump_end::source_reset);
    char buf[8];
    boost::system::error_code ec;
    std::size_t n = 0;
    for (int i = 0; i < 3 && !ec; ++i) n += r.dst_peer.read_some(asio::buffer(buf), ec);
    EXPECT_EQ(n, 3u);
    EXPECT_EQ(ec, asio::error::connection_reset);
}

INSTANTIATE_TEST_SUITE_P(BothRelays, Pump, ::testing::Values(relay_mode::splice, relay_mode::copy),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace apilb
