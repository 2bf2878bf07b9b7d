#include "apilb/vip/vip_address.hpp"

#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>

namespace apilb {
namespace {

/// One rtnetlink request with room for a few attributes.
template <class Body>
struct request {
    nlmsghdr header;
    Body body;
    std::array<char, 64> attributes;
};

/// The header of a request of `type` with only the body so far; a request
/// that adds creates, or replaces what is there (so adding twice is no error).
template <class Body>
void start(request<Body>& r, unsigned short type, bool add) {
    r.header.nlmsg_len = NLMSG_LENGTH(sizeof(Body));
    r.header.nlmsg_type = type;
    r.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_REPLACE : 0);
    r.header.nlmsg_seq = 1;
}

/// Appends attribute `type` holding `length` bytes of `data` to `r`.
template <class Body>
void add_attribute(request<Body>& r, unsigned short type, const void* data, std::size_t length) {
    auto* attribute = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(&r) + NLMSG_ALIGN(r.header.nlmsg_len));
    attribute->rta_type = type;
    attribute->rta_len = static_cast<unsigned short>(RTA_LENGTH(length));
    std::memcpy(RTA_DATA(attribute), data, length);
    r.header.nlmsg_len = NLMSG_ALIGN(r.header.nlmsg_len) + RTA_ALIGN(attribute->rta_len);
}

/// Sends `r` and reads the kernel's acknowledgement; the errors in `ignored`
/// (say, "no such address" for a delete) count as success.
std::error_code exchange(const nlmsghdr& r, std::initializer_list<int> ignored) {
    const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return {errno, std::generic_category()};
    std::error_code result;
    if (::send(fd, &r, r.nlmsg_len, 0) < 0) {
        result = {errno, std::generic_category()};
    } else {
        // The kernel answers at once; the poll only bounds a surprise.
        pollfd p{fd, POLLIN, 0};
        std::array<char, 1024> reply{};
        const ssize_t n = ::poll(&p, 1, 1000) == 1 ? ::recv(fd, reply.data(), reply.size(), 0) : -1;
        if (n < static_cast<ssize_t>(sizeof(nlmsghdr))) {
            result = std::make_error_code(std::errc::timed_out);
        } else {
            const auto* answer = reinterpret_cast<const nlmsghdr*>(reply.data());
            if (answer->nlmsg_type == NLMSG_ERROR) {
                const int err = -reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(answer))->error;
                if (err != 0 && std::find(ignored.begin(), ignored.end(), err) == ignored.end()) {
                    result = {err, std::generic_category()};
                }
            }
        }
    }
    ::close(fd);
    return result;
}

/// `ip` as 4 or 16 bytes in `out`; its length, or 0 if it is not an address.
std::size_t to_bytes(const std::string& ip, bool is_v6, std::array<unsigned char, 16>& out) {
    if (::inet_pton(is_v6 ? AF_INET6 : AF_INET, ip.c_str(), out.data()) != 1) return 0;
    return is_v6 ? 16 : 4;
}

std::error_code change_address(const std::string& interface, const std::string& ip, bool is_v6, unsigned prefix,
                               bool add) {
    const unsigned index = ::if_nametoindex(interface.c_str());
    if (index == 0) return {errno, std::generic_category()};
    std::array<unsigned char, 16> address{};
    const std::size_t length = to_bytes(ip, is_v6, address);
    if (length == 0) return std::make_error_code(std::errc::invalid_argument);

    request<ifaddrmsg> r{};
    start(r, add ? RTM_NEWADDR : RTM_DELADDR, add);
    r.body.ifa_family = static_cast<unsigned char>(is_v6 ? AF_INET6 : AF_INET);
    r.body.ifa_prefixlen = static_cast<unsigned char>(prefix);
    r.body.ifa_index = index;
    // No duplicate address detection: a tentative VIP would not be
    // announced, nor answer, for a second or more.
    if (is_v6) r.body.ifa_flags = IFA_F_NODAD;
    // IPv4 names the address by IFA_LOCAL; IPv6 by IFA_ADDRESS.
    add_attribute(r, is_v6 ? IFA_ADDRESS : IFA_LOCAL, address.data(), length);
    if (add && !is_v6) add_attribute(r, IFA_ADDRESS, address.data(), length);
    return exchange(r.header, {EADDRNOTAVAIL, ENOENT, EEXIST});
}

/// The destinations of apilb's local routes of one family (AF_INET or
/// AF_INET6), appended to `out`.
std::error_code dump_marked(int family, std::vector<host_address>& out) {
    const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return {errno, std::generic_category()};
    std::error_code result;
    request<rtmsg> r{};
    r.header.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
    r.header.nlmsg_type = RTM_GETROUTE;
    r.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    r.header.nlmsg_seq = 2;
    r.body.rtm_family = static_cast<unsigned char>(family);
    if (::send(fd, &r, r.header.nlmsg_len, 0) < 0) result = {errno, std::generic_category()};
    auto buffer = std::make_unique<std::array<char, 32768>>();
    // Bounded: a host's routing tables in at most 4096 reads of 32 KiB.
    bool done = static_cast<bool>(result);
    for (int reads = 0; !done && reads < 4096; ++reads) {
        pollfd p{fd, POLLIN, 0};
        const ssize_t n = ::poll(&p, 1, 1000) == 1 ? ::recv(fd, buffer->data(), buffer->size(), 0) : -1;
        if (n <= 0) {
            result = std::make_error_code(std::errc::timed_out);
            break;
        }
        int left = static_cast<int>(n);
        for (auto* h = reinterpret_cast<nlmsghdr*>(buffer->data()); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                done = true;
                break;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                const int err = -reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(h))->error;
                result = {err == 0 ? EPROTO : err, std::generic_category()};
                done = true;
                break;
            }
            if (h->nlmsg_type != RTM_NEWROUTE) continue;
            const auto* route = reinterpret_cast<const rtmsg*>(NLMSG_DATA(h));
            if (route->rtm_protocol != apilb_route_protocol || route->rtm_type != RTN_LOCAL) continue;
            unsigned table = route->rtm_table;
            const void* dst = nullptr;
            int attributes_left = static_cast<int>(RTM_PAYLOAD(h));
            for (auto* a = RTM_RTA(route); RTA_OK(a, attributes_left); a = RTA_NEXT(a, attributes_left)) {
                if (a->rta_type == RTA_TABLE) table = *reinterpret_cast<const std::uint32_t*>(RTA_DATA(a));
                if (a->rta_type == RTA_DST) dst = RTA_DATA(a);
            }
            std::array<char, INET6_ADDRSTRLEN> text{};
            if (table != RT_TABLE_LOCAL || dst == nullptr ||
                ::inet_ntop(route->rtm_family, dst, text.data(), text.size()) == nullptr)
                continue;
            out.push_back({.ip = text.data(), .is_v6 = route->rtm_family == AF_INET6});
        }
    }
    if (!done && !result) result = std::make_error_code(std::errc::value_too_large);
    ::close(fd);
    return result;
}

}  // namespace

std::vector<host_address> marked_vips(std::error_code& ec) {
    std::vector<host_address> out;
    ec = dump_marked(AF_INET, out);
    if (!ec) ec = dump_marked(AF_INET6, out);
    return out;
}

std::error_code remove_host_address_everywhere(const std::string& ip, bool is_v6) {
    std::unique_ptr<struct if_nameindex, decltype(&::if_freenameindex)> interfaces(::if_nameindex(),
                                                                                   &::if_freenameindex);
    if (!interfaces) return {errno, std::generic_category()};
    std::error_code first;
    for (const struct if_nameindex* i = interfaces.get(); i->if_index != 0; ++i) {
        auto ec = set_host_address(i->if_name, ip, is_v6, false);
        // An interface that went away since the listing holds nothing.
        if (ec && ec != std::errc::no_such_device && !first) first = ec;
    }
    return first;
}

std::error_code remove_vip(const std::string& interface, const vrrp_vip& vip) {
    return change_address(interface, vip.ip, vip.is_v6, vip.prefix, false);
}

std::error_code set_host_address(const std::string& interface, const std::string& ip, bool is_v6, bool add) {
    return change_address(interface, ip, is_v6, is_v6 ? 128 : 32, add);
}

std::error_code set_local_route(const std::string& ip, bool is_v6, bool add) {
    std::array<unsigned char, 16> address{};
    const std::size_t length = to_bytes(ip, is_v6, address);
    if (length == 0) return std::make_error_code(std::errc::invalid_argument);
    const unsigned lo = ::if_nametoindex("lo");
    if (lo == 0) return {errno, std::generic_category()};

    request<rtmsg> r{};
    start(r, add ? RTM_NEWROUTE : RTM_DELROUTE, add);
    r.body.rtm_family = static_cast<unsigned char>(is_v6 ? AF_INET6 : AF_INET);
    r.body.rtm_dst_len = static_cast<unsigned char>(length * 8);
    r.body.rtm_table = RT_TABLE_LOCAL;
    // A delete names the protocol too, so that it never takes the kernel's
    // route of an address someone else put there.
    r.body.rtm_protocol = apilb_route_protocol;
    r.body.rtm_scope = RT_SCOPE_HOST;
    r.body.rtm_type = RTN_LOCAL;
    add_attribute(r, RTA_DST, address.data(), length);
    const std::uint32_t oif = lo;
    add_attribute(r, RTA_OIF, &oif, sizeof(oif));
    return exchange(r.header, {ESRCH, ENOENT, EADDRNOTAVAIL});
}

}  // namespace apilb
