/*
 * addr: IPv4 and IPv6 socket addresses in 28 bytes, and their text forms for logs and
 * protocol lines. Pure: no I/O, no allocation.
 */
#ifndef PROXY_ADDR_H
#define PROXY_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* Room for the longest text addr_format() writes ("[v6%scope]:65535"), its NUL included. */
#define ADDR_TEXT_MAX 56

/* An IPv4 or IPv6 socket address in 28 bytes rather than sockaddr_storage's 128: a session
 * keeps several, and idle sessions are counted in bytes. */
union addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* addr_set copies an IPv4 or IPv6 address into |out|; any other family leaves it zeroed
 * (family AF_UNSPEC). */
void addr_set(union addr *out, const struct sockaddr *sa);

/* addr_len returns the socklen of |sa| for bind()/connect(): 16 for IPv4, 28 for IPv6. */
unsigned addr_len(const struct sockaddr *sa);

/* addr_port returns the port of an IPv4 or IPv6 address in host order, 0 for others. */
uint16_t addr_port(const struct sockaddr *sa);

/* addr_format writes "192.0.2.1:25" or "[2001:db8::1]:25" ("?" for another family). */
void addr_format(char *out, size_t out_size, const struct sockaddr *sa);

/* addr_format_host writes the address without port or brackets ("2001:db8::1"). */
void addr_format_host(char *out, size_t out_size, const struct sockaddr *sa);

/* addr_equal_host tells whether two addresses are the same host (ports ignored; an
 * IPv4-mapped IPv6 address equals its IPv4 address). */
bool addr_equal_host(const struct sockaddr *a, const struct sockaddr *b);

#endif
