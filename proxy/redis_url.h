/*
 * redis_url: the address of the shared store, as the Redis URI scheme writes it
 * (https://www.iana.org/assignments/uri-schemes/prov/redis):
 *
 *     redis://[[user][:password]@]host[:port][/db]
 *
 * host is a name, an IPv4 address or a bracketed IPv6 address; port defaults to 6379 and
 * db to 0. user and password may be percent-encoded. Pure: no I/O.
 */
#ifndef PROXY_REDIS_URL_H
#define PROXY_REDIS_URL_H

#include <stdbool.h>
#include <stdint.h>

#define REDIS_URL_HOST_MAX 255
#define REDIS_URL_USER_MAX 127
#define REDIS_URL_PASSWORD_MAX 255

struct redis_url {
    char host[REDIS_URL_HOST_MAX + 1];         /* without brackets */
    uint16_t port;                             /* 6379 unless given */
    unsigned db;                               /* SELECT this database when not 0 */
    char user[REDIS_URL_USER_MAX + 1];         /* empty: the default user */
    char password[REDIS_URL_PASSWORD_MAX + 1]; /* empty: no AUTH */
};

/*
 * redis_url_parse parses |text| into |out|. Returns NULL on success, else what is wrong
 * (a static phrase for an error message, such as "has no host").
 */
const char *redis_url_parse(struct redis_url *out, const char *text);

#endif
