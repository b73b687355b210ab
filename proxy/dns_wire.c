/* dns_wire: see dns_wire.h. */
#include "dns_wire.h"

#include <string.h>

static bool dns_wire_host_byte(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

size_t dns_wire_name(char out[DNS_NAME_MAX + 1], const uint8_t *p, size_t len)
{
    size_t used = 0;
    size_t n = 0;
    for (;;) {
        if (used >= len) {
            return 0;
        }
        uint8_t label = p[used++];
        if (label == 0) {
            break;
        }
        if (label > 63 || label > len - used) {
            return 0; /* a compression pointer (0xc0) or a label past the end */
        }
        if (n + (n > 0) + label > DNS_NAME_MAX) {
            return 0;
        }
        if (n > 0) {
            out[n++] = '.';
        }
        for (uint8_t i = 0; i < label; i++) {
            uint8_t c = p[used + i];
            if (!dns_wire_host_byte(c)) {
                return 0;
            }
            out[n++] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        }
        used += label;
    }
    out[n] = '\0';
    return used;
}

bool dns_wire_mx(uint16_t *out_preference, char out_name[DNS_NAME_MAX + 1], const uint8_t *p,
                 size_t len)
{
    if (len < 3) {
        return false;
    }
    *out_preference = (uint16_t)(p[0] << 8 | p[1]);
    size_t used = dns_wire_name(out_name, p + 2, len - 2);
    return used != 0 && used == len - 2;
}

bool dns_wire_txt(char *out, size_t out_size, const uint8_t *p, size_t len)
{
    size_t n = 0;
    size_t i = 0;
    if (len == 0 || out_size == 0) {
        return false;
    }
    while (i < len) {
        size_t part = p[i++];
        if (part > len - i || n + part >= out_size || memchr(p + i, '\0', part) != NULL) {
            return false;
        }
        memcpy(out + n, p + i, part);
        n += part;
        i += part;
    }
    out[n] = '\0';
    return true;
}
