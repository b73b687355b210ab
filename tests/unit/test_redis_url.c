/*
 * test_redis_url: the store's URL: every part, defaults, IPv6, percent-encoding, and each
 * error.
 */
#include "redis_url.h"

#include <string.h>

#include "check.h"

static void ok(const char *text, const char *host, unsigned port, unsigned db, const char *user,
               const char *password)
{
    struct redis_url u;
    const char *error = redis_url_parse(&u, text);
    if (error != NULL) {
        fprintf(stderr, "\"%s\": %s\n", text, error);
    }
    CHECK(error == NULL);
    CHECK_STR(u.host, host);
    CHECK_INT(u.port, port);
    CHECK_INT(u.db, db);
    CHECK_STR(u.user, user);
    CHECK_STR(u.password, password);
}

static void bad(const char *text, const char *want)
{
    struct redis_url u;
    const char *error = redis_url_parse(&u, text);
    if (error == NULL || strstr(error, want) == NULL) {
        fprintf(stderr, "\"%s\": got \"%s\", want \"%s\"\n", text, error ? error : "(ok)", want);
    }
    CHECK(error != NULL && strstr(error, want) != NULL);
}

int main(void)
{
    ok("redis://127.0.0.1", "127.0.0.1", 6379, 0, "", "");
    ok("redis://127.0.0.1:6380", "127.0.0.1", 6380, 0, "", "");
    ok("redis://redis:6379/0", "redis", 6379, 0, "", "");
    ok("redis://redis.example.net/", "redis.example.net", 6379, 0, "", "");
    ok("redis://redis-0.redis.svc_x.local:7000/15", "redis-0.redis.svc_x.local", 7000, 15, "", "");
    ok("redis://[::1]", "::1", 6379, 0, "", "");
    ok("redis://[2001:db8::7]:6390/2", "2001:db8::7", 6390, 2, "", "");
    ok("redis://:secret@10.0.0.5", "10.0.0.5", 6379, 0, "", "secret");
    ok("redis://proxy:s3cr%40t%3A%25@redis:6379/1", "redis", 6379, 1, "proxy", "s3cr@t:%");
    ok("redis://proxy:p@ss@redis", "redis", 6379, 0, "proxy", "p@ss"); /* the last '@' */
    ok("redis://:a:b@redis", "redis", 6379, 0, "", "a:b");
    ok("redis://@redis", "redis", 6379, 0, "", "");
    ok("redis://h:65535/1000000", "h", 65535, 1000000, "", "");

    bad("", "not a redis:// URL");
    bad("rediss://redis", "not a redis:// URL");
    bad("REDIS://redis", "not a redis:// URL");
    bad("redis:/redis", "not a redis:// URL");
    bad("redis://", "has no host");
    bad("redis://:6379", "has no host");
    bad("redis://user:pw@", "has no host");
    bad("redis://[::1", "closing ']'");
    bad("redis://[not-v6]", "invalid host");
    bad("redis://bad host", "invalid host");
    bad("redis://-redis", "invalid host");
    bad("redis://redis:0", "invalid port");
    bad("redis://redis:65536", "invalid port");
    bad("redis://redis:", "invalid port");
    bad("redis://redis:63x9", "invalid port");
    bad("redis://[::1]x", "invalid port");
    bad("redis://redis/x", "invalid database");
    bad("redis://redis/1000001", "invalid database");
    bad("redis://redis/1/2", "invalid database");
    bad("redis://redis?db=1", "query or fragment");
    bad("redis://redis#x", "query or fragment");
    bad("redis://user@redis", "user without a password");
    bad("redis://user:@redis", "user without a password");
    bad("redis://:pw%4@redis", "password that is too long or badly encoded");
    bad("redis://:pw%zz@redis", "password that is too long or badly encoded");
    bad("redis://:pw%00@redis", "password that is too long or badly encoded");
    bad("redis://:pw%0d%0aFLUSHALL@redis", "password that is too long or badly encoded");
    bad("redis://us%0aer:pw@redis", "user name that is too long or badly encoded");

    char long_host[300] = "redis://";
    memset(long_host + 8, 'a', 256);
    bad(long_host, "longer than 255");
    char long_password[400] = "redis://:";
    memset(long_password + 9, 'p', 256);
    strcat(long_password, "@redis");
    bad(long_password, "password that is too long");
    return check_exit("test_redis_url");
}
