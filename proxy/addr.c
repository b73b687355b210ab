/*
 * addr: socket addresses in a small union and their text forms. One place for what the
 * session, the health probe and the logs all print.
 */
#include "addr.h"

#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>

void addr_set(union addr *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        memcpy(&out->in, sa, sizeof(out->in));
    } else if (sa->sa_family == AF_INET6) {
        memcpy(&out->in6, sa, sizeof(out->in6));
    }
}

unsigned addr_len(const struct sockaddr *sa)
{
    return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

uint16_t addr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    }
    if (sa->sa_family == AF_INET6) {
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    }
    return 0;
}

void addr_format_host(char *out, size_t out_size, const struct sockaddr *sa)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
    }
    snprintf(out, out_size, "%s", host);
}

void addr_format(char *out, size_t out_size, const struct sockaddr *sa)
{
    char host[INET6_ADDRSTRLEN];
    addr_format_host(host, sizeof(host), sa);
    if (sa->sa_family == AF_INET) {
        snprintf(out, out_size, "%s:%u", host, (unsigned)addr_port(sa));
    } else if (sa->sa_family == AF_INET6) {
        snprintf(out, out_size, "[%s]:%u", host, (unsigned)addr_port(sa));
    } else {
        snprintf(out, out_size, "?");
    }
}

/* addr_bytes points |*out| at the 16-byte IPv6 form of |sa| (IPv4 as IPv4-mapped). */
static bool addr_bytes(uint8_t out[16], const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    if (sa->sa_family == AF_INET) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(out, mapped, sizeof(mapped));
        memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    return false;
}

bool addr_equal_host(const struct sockaddr *a, const struct sockaddr *b)
{
    uint8_t x[16];
    uint8_t y[16];
    return addr_bytes(x, a) && addr_bytes(y, b) && memcmp(x, y, 16) == 0;
}
