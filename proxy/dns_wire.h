/*
 * dns_wire: the RDATA the gate reads, in DNS wire format (RFC 1035 section 3.3; as
 * libunbound returns it: names uncompressed). Pure.
 */
#ifndef PROXY_DNS_WIRE_H
#define PROXY_DNS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_NAME_MAX 253 /* text, without the trailing dot */

/*
 * dns_wire_name reads an uncompressed name at |p| (|len| bytes available) into |out|
 * (at least DNS_NAME_MAX + 1 bytes) as lower-case text without the trailing dot ("" for
 * the root). Labels with bytes other than letters, digits, '-' and '_' are refused (the
 * gate compares host names). Returns the bytes used, or 0 when malformed.
 */
size_t dns_wire_name(char out[DNS_NAME_MAX + 1], const uint8_t *p, size_t len);

/* dns_wire_mx reads an MX RDATA: preference and exchange name. */
bool dns_wire_mx(uint16_t *out_preference, char out_name[DNS_NAME_MAX + 1], const uint8_t *p,
                 size_t len);

/*
 * dns_wire_txt concatenates the character-strings of one TXT RDATA into |out| (|out_size|
 * bytes with the NUL; RFC 7208 section 3.3 style concatenation, as RFC 8461 wants).
 * False when malformed, too long, or holding a NUL byte.
 */
bool dns_wire_txt(char *out, size_t out_size, const uint8_t *p, size_t len);

#endif
