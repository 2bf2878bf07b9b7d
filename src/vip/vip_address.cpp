#include "apilb/vip/vip_address.hpp"

#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace apilb {

std::error_code remove_vip(const std::string& interface, const vrrp_vip& vip) {
    const unsigned index = ::if_nametoindex(interface.c_str());
    if (index == 0) return {errno, std::generic_category()};
    std::array<unsigned char, 16> address{};
    const int family = vip.is_v6 ? AF_INET6 : AF_INET;
    if (::inet_pton(family, vip.ip.c_str(), address.data()) != 1)
        return std::make_error_code(std::errc::invalid_argument);
    const std::size_t length = vip.is_v6 ? 16 : 4;

    struct {
        nlmsghdr header;
        ifaddrmsg body;
        std::array<char, 64> attributes;
    } request{};
    request.header.nlmsg_len = NLMSG_LENGTH(sizeof(ifaddrmsg));
    request.header.nlmsg_type = RTM_DELADDR;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.nlmsg_seq = 1;
    request.body.ifa_family = static_cast<unsigned char>(family);
    request.body.ifa_prefixlen = static_cast<unsigned char>(vip.prefix);
    request.body.ifa_index = index;
    // IPv4 names the address by IFA_LOCAL; IPv6 by IFA_ADDRESS.
    auto* attribute = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(&request) +
                                                NLMSG_ALIGN(request.header.nlmsg_len));
    attribute->rta_type = vip.is_v6 ? IFA_ADDRESS : IFA_LOCAL;
    attribute->rta_len = static_cast<unsigned short>(RTA_LENGTH(length));
    std::memcpy(RTA_DATA(attribute), address.data(), length);
    request.header.nlmsg_len = NLMSG_ALIGN(request.header.nlmsg_len) + RTA_ALIGN(attribute->rta_len);

    const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return {errno, std::generic_category()};
    std::error_code result;
    if (::send(fd, &request, request.header.nlmsg_len, 0) < 0) {
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
                if (err != 0 && err != EADDRNOTAVAIL && err != ENOENT) result = {err, std::generic_category()};
            }
        }
    }
    ::close(fd);
    return result;
}

}  // namespace apilb
