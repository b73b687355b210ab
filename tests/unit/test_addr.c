/*
 * test_addr: socket addresses in the small union: copying in, socklen and port, the text
 * forms with and without port for IPv4, IPv6 and other families, truncation into small
 * buffers (never past them, always terminated), and host equality with IPv4-mapped IPv6.
 */
#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "check.h"

/* An address from text such as "192.0.2.1" or "2001:db8::1" (AF_UNSPEC when neither). */
static struct sockaddr_storage sa_of(const char *text, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
    } else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
    }
    return ss;
}

static struct sockaddr_storage sa_unix(void)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_un *local = (struct sockaddr_un *)&ss;
    local->sun_family = AF_UNIX;
    strcpy(local->sun_path, "/run/x.sock");
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void test_set(void)
{
    CHECK_INT(sizeof(union addr), 28);

    struct sockaddr_storage v4 = sa_of("192.0.2.1", 25);
    union addr a;
    memset(&a, 0xee, sizeof(a));
    addr_set(&a, SA(v4));
    CHECK_INT(a.sa.sa_family, AF_INET);
    CHECK(memcmp(&a.in, &v4, sizeof(a.in)) == 0);
    CHECK_INT(addr_port(&a.sa), 25);

    struct sockaddr_storage v6 = sa_of("2001:db8::1", 587);
    ((struct sockaddr_in6 *)&v6)->sin6_scope_id = 3;
    ((struct sockaddr_in6 *)&v6)->sin6_flowinfo = htonl(7);
    memset(&a, 0xee, sizeof(a));
    addr_set(&a, SA(v6));
    CHECK_INT(a.sa.sa_family, AF_INET6);
    CHECK(memcmp(&a.in6, &v6, sizeof(a.in6)) == 0);
    CHECK_INT(addr_port(&a.sa), 587);

    /* Another family leaves it zeroed, AF_UNSPEC. */
    struct sockaddr_storage un = sa_unix();
    memset(&a, 0xee, sizeof(a));
    addr_set(&a, SA(un));
    CHECK_INT(a.sa.sa_family, AF_UNSPEC);
    union addr zero;
    memset(&zero, 0, sizeof(zero));
    CHECK(memcmp(&a, &zero, sizeof(a)) == 0);
    struct sockaddr_storage unspec;
    memset(&unspec, 0, sizeof(unspec));
    memset(&a, 0xee, sizeof(a));
    addr_set(&a, SA(unspec));
    CHECK(memcmp(&a, &zero, sizeof(a)) == 0);
}

static void test_len_port(void)
{
    struct sockaddr_storage v4 = sa_of("192.0.2.1", 25);
    struct sockaddr_storage v6 = sa_of("2001:db8::1", 65535);
    struct sockaddr_storage mapped = sa_of("::ffff:192.0.2.1", 1);
    CHECK_INT(addr_len(SA(v4)), sizeof(struct sockaddr_in));
    CHECK_INT(addr_len(SA(v4)), 16);
    CHECK_INT(addr_len(SA(v6)), sizeof(struct sockaddr_in6));
    CHECK_INT(addr_len(SA(v6)), 28);
    CHECK_INT(addr_len(SA(mapped)), 28);

    CHECK_INT(addr_port(SA(v4)), 25);
    CHECK_INT(addr_port(SA(v6)), 65535);
    CHECK_INT(addr_port(SA(mapped)), 1);
    struct sockaddr_storage p0 = sa_of("192.0.2.1", 0);
    CHECK_INT(addr_port(SA(p0)), 0);
    struct sockaddr_storage high = sa_of("192.0.2.1", 0x8001);
    CHECK_INT(addr_port(SA(high)), 0x8001); /* host order, unsigned */

    /* Other families have no port. */
    struct sockaddr_storage un = sa_unix();
    CHECK_INT(addr_port(SA(un)), 0);
    struct sockaddr_storage unspec;
    memset(&unspec, 0, sizeof(unspec));
    CHECK_INT(addr_port(SA(unspec)), 0);

    /* The same through the union. */
    union addr a;
    addr_set(&a, SA(v6));
    CHECK_INT(addr_len(&a.sa), 28);
    CHECK_INT(addr_port(&a.sa), 65535);
}

/* check_format checks both text forms of |ss|, whole and cut to every smaller size. */
static void check_format(const struct sockaddr_storage *ss, const char *want, const char *want_host)
{
    const struct sockaddr *sa = (const struct sockaddr *)ss;
    char out[ADDR_TEXT_MAX + 16];
    size_t want_len = strlen(want);
    CHECK(want_len < ADDR_TEXT_MAX);

    memset(out, '#', sizeof(out));
    addr_format(out, ADDR_TEXT_MAX, sa);
    CHECK_STR(out, want);
    memset(out, '#', sizeof(out));
    addr_format_host(out, ADDR_TEXT_MAX, sa);
    CHECK_STR(out, want_host);

    /* Every smaller buffer: the start of the text, NUL-terminated, nothing written past. */
    for (int host = 0; host <= 1; host++) {
        const char *text = host ? want_host : want;
        size_t text_len = strlen(text);
        for (size_t size = 0; size <= text_len + 1; size++) {
            memset(out, '#', sizeof(out));
            if (host) {
                addr_format_host(out, size, sa);
            } else {
                addr_format(out, size, sa);
            }
            if (size > 0) {
                CHECK_INT(strlen(out), size - 1);
                CHECK(memcmp(out, text, size - 1) == 0);
            }
            for (size_t i = size; i < sizeof(out); i++) {
                if (out[i] != '#') {
                    fprintf(stderr, "addr: \"%s\" into %zu bytes wrote byte %zu\n", text, size, i);
                    CHECK(out[i] == '#');
                    break;
                }
            }
        }
    }
}

static void test_format(void)
{
    struct sockaddr_storage ss;
    ss = sa_of("192.0.2.1", 25);
    check_format(&ss, "192.0.2.1:25", "192.0.2.1");
    ss = sa_of("0.0.0.0", 0);
    check_format(&ss, "0.0.0.0:0", "0.0.0.0");
    ss = sa_of("255.255.255.255", 65535);
    check_format(&ss, "255.255.255.255:65535", "255.255.255.255");
    ss = sa_of("2001:db8::1", 25);
    check_format(&ss, "[2001:db8::1]:25", "2001:db8::1");
    ss = sa_of("::", 0);
    check_format(&ss, "[::]:0", "::");
    ss = sa_of("::1", 587);
    check_format(&ss, "[::1]:587", "::1");
    ss = sa_of("::ffff:192.0.2.1", 2525);
    check_format(&ss, "[::ffff:192.0.2.1]:2525", "::ffff:192.0.2.1");
    /* The longest text there is still fits ADDR_TEXT_MAX. */
    ss = sa_of("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
    check_format(&ss, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    ss = sa_of("2001:db8:0:0:1:0:0:1", 25); /* RFC 5952 form */
    check_format(&ss, "[2001:db8::1:0:0:1]:25", "2001:db8::1:0:0:1");

    /* Other families. */
    ss = sa_unix();
    check_format(&ss, "?", "?");
    memset(&ss, 0, sizeof(ss));
    check_format(&ss, "?", "?");

    /* Through the union. */
    union addr a;
    ss = sa_of("2001:db8::25", 25);
    addr_set(&a, SA(ss));
    char out[ADDR_TEXT_MAX];
    addr_format(out, sizeof(out), &a.sa);
    CHECK_STR(out, "[2001:db8::25]:25");
}

static void test_equal_host(void)
{
    struct sockaddr_storage a4 = sa_of("192.0.2.1", 25);
    struct sockaddr_storage a4_port = sa_of("192.0.2.1", 40000);
    struct sockaddr_storage a4_mapped = sa_of("::ffff:192.0.2.1", 587);
    struct sockaddr_storage a4_compat = sa_of("::192.0.2.1", 25);
    struct sockaddr_storage b4 = sa_of("192.0.2.2", 25);
    struct sockaddr_storage b4_mapped = sa_of("::ffff:192.0.2.2", 25);
    struct sockaddr_storage a6 = sa_of("2001:db8::1", 25);
    struct sockaddr_storage a6_port = sa_of("2001:db8::1", 26);
    struct sockaddr_storage b6 = sa_of("2001:db8::2", 25);
    struct sockaddr_storage un = sa_unix();
    struct sockaddr_storage unspec;
    memset(&unspec, 0, sizeof(unspec));

    CHECK(addr_equal_host(SA(a4), SA(a4)));
    CHECK(addr_equal_host(SA(a4), SA(a4_port))); /* ports ignored */
    CHECK(addr_equal_host(SA(a4), SA(a4_mapped)));
    CHECK(addr_equal_host(SA(a4_mapped), SA(a4)));
    CHECK(addr_equal_host(SA(a4_mapped), SA(a4_port)));
    CHECK(!addr_equal_host(SA(a4), SA(b4)));
    CHECK(!addr_equal_host(SA(a4), SA(b4_mapped)));
    CHECK(!addr_equal_host(SA(a4_mapped), SA(b4)));
    CHECK(!addr_equal_host(SA(a4), SA(a4_compat))); /* IPv4-compatible is not mapped */
    CHECK(addr_equal_host(SA(a6), SA(a6_port)));
    CHECK(!addr_equal_host(SA(a6), SA(b6)));
    CHECK(!addr_equal_host(SA(a6), SA(a4)));
    CHECK(!addr_equal_host(SA(a4), SA(a6)));

    /* Other families are never the same host, not even as themselves. */
    CHECK(!addr_equal_host(SA(un), SA(un)));
    CHECK(!addr_equal_host(SA(unspec), SA(unspec)));
    CHECK(!addr_equal_host(SA(a4), SA(unspec)));
    CHECK(!addr_equal_host(SA(unspec), SA(a4)));
    CHECK(!addr_equal_host(SA(un), SA(a6)));

    /* Through the union, as the session keeps them. */
    union addr x;
    union addr y;
    addr_set(&x, SA(a4));
    addr_set(&y, SA(a4_mapped));
    CHECK(addr_equal_host(&x.sa, &y.sa));
    addr_set(&y, SA(un));
    CHECK(!addr_equal_host(&x.sa, &y.sa));
}

int main(void)
{
    test_set();
    test_len_port();
    test_format();
    test_equal_host();
    return check_exit("test_addr");
}
