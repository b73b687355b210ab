/*
 * test_anvil: the per-client limits' contract: sessions at once with places given back,
 * session and message rates over a window that restarts, one first refusal per window,
 * IPv6 grouped by prefix and IPv4-mapped IPv6 equal to IPv4, limits off, reload keeping
 * the counts, eviction bounded by max_clients (idle clients first), and concurrent use.
 */
#include "anvil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>

#include "check.h"

/* A sockaddr_storage filled from text such as "192.0.2.1" or "2001:db8::1". */
static struct sockaddr_storage addr(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(25);
    } else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(25);
    }
    return ss;
}

/* An IPv4 address made from |n|, so tests can use many distinct ones. */
static struct sockaddr_storage addr_n(uint32_t n)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(0x0a000000 + n);
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

/* The places handed out and not given back, so that tests can close by address. */
#define MAX_PLACES 4096
static struct anvil_place places[MAX_PLACES];
static struct sockaddr_storage place_addrs[MAX_PLACES];
static size_t n_places;

static enum anvil_verdict open_session(struct anvil *l, bool *first, const struct sockaddr *sa,
                                       uint64_t now_ms)
{
    struct anvil_place place;
    enum anvil_verdict v = anvil_open(l, &place, first, sa, now_ms);
    if (v == ANVIL_OK) {
        /* Only IPv4 and IPv6 clients are tracked (and so hold a place). */
        CHECK((place.generation != 0) == (sa->sa_family != AF_UNIX));
        if (n_places < MAX_PLACES) {
            places[n_places] = place;
            memcpy(&place_addrs[n_places], sa, sizeof(struct sockaddr_storage));
            n_places++;
        }
    } else {
        CHECK_INT(place.generation, 0);
    }
    return v;
}

/* close_session gives back the most recent place of |sa| (or a zero place: a no-op). */
static void close_session(struct anvil *l, const struct sockaddr *sa)
{
    for (size_t i = n_places; i-- > 0;) {
        if (memcmp(&place_addrs[i], sa, sizeof(struct sockaddr_storage)) == 0) {
            anvil_close(l, &places[i]);
            places[i] = places[--n_places];
            place_addrs[i] = place_addrs[n_places];
            return;
        }
    }
    struct anvil_place none = {0};
    anvil_close(l, &none);
}

/* forget_places starts a new table's tests. */
static void forget_places(void)
{
    n_places = 0;
}

static const struct anvil_config base = {
    .max_sessions = 3,
    .max_session_rate = 0,
    .max_message_rate = 0,
    .window_ms = 60000,
    .ipv6_prefix = 64,
    .max_clients = 1000,
};

static void test_sessions_at_once(void)
{
    forget_places();
    struct anvil *l = anvil_new(&base);
    struct sockaddr_storage a = addr("192.0.2.1");
    struct sockaddr_storage b = addr("192.0.2.2");
    bool first = true;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(open_session(l, &first, SA(a), 1000), ANVIL_OK);
        CHECK(!first);
    }
    CHECK_INT(open_session(l, &first, SA(a), 1000), ANVIL_SESSIONS);
    CHECK(first);
    /* Later refusals in the same window are not "first": one log line per window. */
    CHECK_INT(open_session(l, &first, SA(a), 2000), ANVIL_SESSIONS);
    CHECK(!first);
    /* Another client is not affected. */
    CHECK_INT(open_session(l, &first, SA(b), 2000), ANVIL_OK);
    /* A place given back is taken again; refused attempts were not counted. */
    close_session(l, SA(a));
    CHECK_INT(open_session(l, &first, SA(a), 3000), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a), 3000), ANVIL_SESSIONS);
    CHECK(!first);
    /* The next window reports again. */
    CHECK_INT(open_session(l, &first, SA(a), 1000 + 60000), ANVIL_SESSIONS);
    CHECK(first);
    /* Closing more than was opened cannot go below zero (or free places for others). */
    for (int i = 0; i < 10; i++) {
        close_session(l, SA(b));
    }
    CHECK_INT(open_session(l, &first, SA(b), 3000), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(b), 3000), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(b), 3000), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(b), 3000), ANVIL_SESSIONS);
    CHECK_INT(anvil_count(l), 2);
    anvil_free(l);
}

static void test_session_rate(void)
{
    struct anvil_config c = base;
    c.max_sessions = 0;
    c.max_session_rate = 2;
    c.window_ms = 10000;
    forget_places();
    struct anvil *l = anvil_new(&c);
    struct sockaddr_storage a = addr("198.51.100.7");
    bool first;
    CHECK_INT(open_session(l, &first, SA(a), 5000), ANVIL_OK);
    close_session(l, SA(a));
    CHECK_INT(open_session(l, &first, SA(a), 9000), ANVIL_OK);
    close_session(l, SA(a));
    /* Closed sessions still count towards the rate. */
    CHECK_INT(open_session(l, &first, SA(a), 14999), ANVIL_SESSION_RATE);
    CHECK(first);
    CHECK_INT(open_session(l, &first, SA(a), 14999), ANVIL_SESSION_RATE);
    CHECK(!first);
    /* The window runs from the first session in it: over at 5000 + 10000. */
    CHECK_INT(open_session(l, &first, SA(a), 15000), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a), 15001), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a), 15002), ANVIL_SESSION_RATE);
    CHECK(first);
    /* A clock that goes backwards (it does not: monotonic) restarts the window. */
    CHECK_INT(open_session(l, &first, SA(a), 100), ANVIL_OK);
    anvil_free(l);
}

static void test_message_rate(void)
{
    struct anvil_config c = base;
    c.max_message_rate = 3;
    c.window_ms = 1000;
    forget_places();
    struct anvil *l = anvil_new(&c);
    struct sockaddr_storage a = addr("203.0.113.9");
    struct sockaddr_storage b = addr("203.0.113.10");
    bool first;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(anvil_message(l, &first, SA(a), 0), ANVIL_OK);
    }
    CHECK_INT(anvil_message(l, &first, SA(a), 999), ANVIL_MESSAGE_RATE);
    CHECK(first);
    CHECK_INT(anvil_message(l, &first, SA(a), 999), ANVIL_MESSAGE_RATE);
    CHECK(!first);
    CHECK_INT(anvil_message(l, &first, SA(b), 999), ANVIL_OK);
    CHECK_INT(anvil_message(l, &first, SA(a), 1000), ANVIL_OK);
    /* Messages do not touch the sessions counts. */
    for (int i = 0; i < 3; i++) {
        CHECK_INT(open_session(l, &first, SA(a), 1000), ANVIL_OK);
    }
    CHECK_INT(open_session(l, &first, SA(a), 1000), ANVIL_SESSIONS);
    anvil_free(l);

    /* With the message rate off, messages track nothing. */
    forget_places();
    l = anvil_new(&base);
    for (uint32_t i = 0; i < 100; i++) {
        struct sockaddr_storage n = addr_n(i);
        CHECK_INT(anvil_message(l, &first, SA(n), 0), ANVIL_OK);
    }
    CHECK_INT(anvil_count(l), 0);
    anvil_free(l);
}

static void test_ipv6_prefix(void)
{
    struct anvil_config c = base;
    c.max_sessions = 2;
    forget_places();
    struct anvil *l = anvil_new(&c);
    struct sockaddr_storage a1 = addr("2001:db8:1:2::1");
    struct sockaddr_storage a2 = addr("2001:db8:1:2:ffff:ffff:ffff:ffff");
    struct sockaddr_storage other = addr("2001:db8:1:3::1");
    bool first;
    CHECK_INT(open_session(l, &first, SA(a1), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a2), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a1), 0), ANVIL_SESSIONS);
    CHECK_INT(open_session(l, &first, SA(other), 0), ANVIL_OK);
    /* A place given back by one address of the /64 serves another. */
    close_session(l, SA(a2));
    CHECK_INT(open_session(l, &first, SA(a1), 0), ANVIL_OK);
    CHECK_INT(anvil_count(l), 2);
    anvil_free(l);

    /* /128: every address on its own. */
    c.ipv6_prefix = 128;
    forget_places();
    l = anvil_new(&c);
    CHECK_INT(open_session(l, &first, SA(a1), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a1), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a2), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a1), 0), ANVIL_SESSIONS);
    anvil_free(l);

    /* /48 groups more; /65 splits inside a /64. */
    c.ipv6_prefix = 48;
    forget_places();
    l = anvil_new(&c);
    CHECK_INT(open_session(l, &first, SA(a1), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(other), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a2), 0), ANVIL_SESSIONS);
    anvil_free(l);
    c.ipv6_prefix = 65;
    forget_places();
    l = anvil_new(&c);
    struct sockaddr_storage low = addr("2001:db8:1:2:7fff::1");
    struct sockaddr_storage high = addr("2001:db8:1:2:8000::1");
    CHECK_INT(open_session(l, &first, SA(low), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(low), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(high), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(low), 0), ANVIL_SESSIONS);
    anvil_free(l);
}

static void test_mapped_ipv4(void)
{
    forget_places();
    struct anvil *l = anvil_new(&base);
    struct sockaddr_storage v4 = addr("192.0.2.33");
    struct sockaddr_storage mapped = addr("::ffff:192.0.2.33");
    struct sockaddr_storage neighbour = addr("::ffff:192.0.2.34");
    bool first;
    CHECK_INT(open_session(l, &first, SA(v4), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(mapped), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(v4), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(mapped), 0), ANVIL_SESSIONS);
    /* The /64 grouping never applies to IPv4 in IPv6 form. */
    CHECK_INT(open_session(l, &first, SA(neighbour), 0), ANVIL_OK);
    close_session(l, SA(mapped));
    CHECK_INT(open_session(l, &first, SA(v4), 0), ANVIL_OK);
    /* Neither IPv4 nor IPv6: not limited, not tracked. */
    struct sockaddr_storage unix_sa;
    memset(&unix_sa, 0, sizeof(unix_sa));
    unix_sa.ss_family = AF_UNIX;
    for (int i = 0; i < 5; i++) {
        CHECK_INT(open_session(l, &first, SA(unix_sa), 0), ANVIL_OK);
    }
    CHECK_INT(anvil_count(l), 2);
    anvil_free(l);
}

static void test_configure(void)
{
    forget_places();
    struct anvil *l = anvil_new(&base);
    struct sockaddr_storage a = addr("192.0.2.50");
    bool first;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_OK);
    }
    CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_SESSIONS);
    /* A reload that raises the limit lets the client in at once, counts kept. */
    struct anvil_config c = base;
    c.max_sessions = 4;
    anvil_configure(l, &c);
    CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_OK);
    CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_SESSIONS);
    /* One that lowers it refuses new sessions; the open ones end normally. */
    c.max_sessions = 1;
    anvil_configure(l, &c);
    close_session(l, SA(a));
    close_session(l, SA(a));
    CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_SESSIONS);
    close_session(l, SA(a));
    close_session(l, SA(a));
    CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_OK);
    /* Off: no limit at all. */
    c.max_sessions = 0;
    anvil_configure(l, &c);
    for (int i = 0; i < 1000; i++) {
        CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_OK);
    }
    anvil_free(l);
}

static void test_eviction(void)
{
    struct anvil_config c = base;
    c.max_clients = 100;
    c.max_sessions = 1;
    forget_places();
    struct anvil *l = anvil_new(&c);
    bool first;
    /* Client 0 holds a session; 1..99 come and go. */
    struct sockaddr_storage busy = addr_n(0);
    CHECK_INT(open_session(l, &first, SA(busy), 0), ANVIL_OK);
    for (uint32_t i = 1; i < 100; i++) {
        struct sockaddr_storage n = addr_n(i);
        CHECK_INT(open_session(l, &first, SA(n), 0), ANVIL_OK);
        close_session(l, SA(n));
    }
    CHECK_INT(anvil_count(l), 100);
    CHECK_INT(anvil_evictions(l), 0);
    /* 10,000 more: the table stays at its bound, and the busy client, the oldest, is kept
     * because idle ones go first. */
    for (uint32_t i = 100; i < 10100; i++) {
        struct sockaddr_storage n = addr_n(i);
        CHECK_INT(open_session(l, &first, SA(n), 0), ANVIL_OK);
        close_session(l, SA(n));
    }
    CHECK_INT(anvil_count(l), 100);
    CHECK_INT(anvil_evictions(l), 10000);
    CHECK_INT(open_session(l, &first, SA(busy), 0), ANVIL_SESSIONS);
    anvil_free(l);

    /* When every tracked client holds a session, the oldest is forgotten anyway: its
     * sessions end uncounted, and its next session starts from zero. */
    c.max_clients = 10;
    forget_places();
    l = anvil_new(&c);
    for (uint32_t i = 0; i < 11; i++) {
        struct sockaddr_storage n = addr_n(i);
        CHECK_INT(open_session(l, &first, SA(n), 0), ANVIL_OK);
    }
    CHECK_INT(anvil_count(l), 10);
    CHECK_INT(anvil_evictions(l), 1);
    struct sockaddr_storage forgotten = addr_n(0);
    close_session(l, SA(forgotten)); /* ignored */
    CHECK_INT(open_session(l, &first, SA(forgotten), 0), ANVIL_OK);
    struct sockaddr_storage kept = addr_n(10);
    CHECK_INT(open_session(l, &first, SA(kept), 0), ANVIL_SESSIONS);
    anvil_free(l);
}

/* A place is given back to the entry it was taken from: not to a later entry of the same
 * client after an eviction, and not to another key after a reload changed the prefix. */
static void test_places(void)
{
    struct anvil_config c = base;
    c.max_sessions = 1;
    c.max_clients = 2;
    struct anvil *l = anvil_new(&c);
    struct sockaddr_storage a = addr("192.0.2.1");
    struct sockaddr_storage b = addr("192.0.2.2");
    struct sockaddr_storage d = addr("192.0.2.3");
    struct anvil_place pa, pb, pd, pa2;
    bool first;
    CHECK_INT(anvil_open(l, &pa, &first, SA(a), 0), ANVIL_OK);
    CHECK_INT(anvil_open(l, &pb, &first, SA(b), 0), ANVIL_OK);
    CHECK_INT(anvil_open(l, &pd, &first, SA(d), 0), ANVIL_OK); /* a is forgotten */
    CHECK_INT(anvil_evictions(l), 1);
    CHECK_INT(anvil_open(l, &pa2, &first, SA(a), 0), ANVIL_OK); /* a again: new entry */
    anvil_close(l, &pa); /* the old place: must not free the new session's */
    CHECK_INT(anvil_open(l, &pa, &first, SA(a), 0), ANVIL_SESSIONS);
    anvil_close(l, &pa2);
    CHECK_INT(anvil_open(l, &pa, &first, SA(a), 0), ANVIL_OK);
    anvil_free(l);

    c = base;
    c.max_sessions = 1;
    l = anvil_new(&c);
    struct sockaddr_storage v6 = addr("2001:db8:1:2::1");
    struct sockaddr_storage v6b = addr("2001:db8:1:2::2");
    struct anvil_place p6, p6b;
    CHECK_INT(anvil_open(l, &p6, &first, SA(v6), 0), ANVIL_OK);
    c.ipv6_prefix = 128;
    anvil_configure(l, &c);
    CHECK_INT(anvil_open(l, &p6b, &first, SA(v6b), 0), ANVIL_OK); /* its own /128 */
    anvil_close(l, &p6);                                          /* back to the /64 */
    anvil_close(l, &p6b);
    c.ipv6_prefix = 64;
    anvil_configure(l, &c);
    CHECK_INT(anvil_open(l, &p6, &first, SA(v6b), 0), ANVIL_OK);
    CHECK_INT(anvil_open(l, &p6b, &first, SA(v6), 0), ANVIL_SESSIONS);
    /* A zero place (a session that never held one) gives back nothing. */
    struct anvil_place none = {0};
    anvil_close(l, &none);
    CHECK_INT(anvil_open(l, &p6b, &first, SA(v6), 0), ANVIL_SESSIONS);
    anvil_free(l);
}

#define THREADS 4
#define ROUNDS 20000

struct worker_arg {
    struct anvil *l;
    int n_bad;
};

/* Each thread opens and closes sessions of four shared clients: the counts must balance. */
static void *worker(void *arg)
{
    struct worker_arg *w = arg;
    bool first;
    for (int i = 0; i < ROUNDS; i++) {
        struct sockaddr_storage a = addr_n((uint32_t)i % 4);
        struct anvil_place place;
        if (anvil_open(w->l, &place, &first, SA(a), (uint64_t)i) != ANVIL_OK) {
            w->n_bad++;
            continue;
        }
        anvil_message(w->l, &first, SA(a), (uint64_t)i);
        anvil_close(w->l, &place);
    }
    return NULL;
}

static void test_threads(void)
{
    struct anvil_config c = base;
    c.max_sessions = THREADS; /* never reached: each thread holds at most one */
    c.max_message_rate = 1000000;
    forget_places();
    struct anvil *l = anvil_new(&c);
    pthread_t t[THREADS];
    struct worker_arg w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker_arg){.l = l, .n_bad = 0};
        CHECK_INT(pthread_create(&t[i], NULL, worker, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK_INT(pthread_join(t[i], NULL), 0);
        CHECK_INT(w[i].n_bad, 0);
    }
    CHECK_INT(anvil_count(l), 4);
    /* Every place was given back: each client can open max_sessions again. */
    bool first;
    for (uint32_t n = 0; n < 4; n++) {
        struct sockaddr_storage a = addr_n(n);
        for (int i = 0; i < THREADS; i++) {
            CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_OK);
        }
        CHECK_INT(open_session(l, &first, SA(a), 0), ANVIL_SESSIONS);
    }
    anvil_free(l);
}

int main(void)
{
    anvil_free(NULL);
    CHECK_STR(anvil_name(ANVIL_OK), "ok");
    CHECK_STR(anvil_name(ANVIL_SESSIONS), "sessions");
    CHECK_STR(anvil_name(ANVIL_SESSION_RATE), "session-rate");
    CHECK_STR(anvil_name(ANVIL_MESSAGE_RATE), "message-rate");
    test_sessions_at_once();
    test_session_rate();
    test_message_rate();
    test_ipv6_prefix();
    test_mapped_ipv4();
    test_configure();
    test_eviction();
    test_places();
    test_threads();
    return check_exit("test_anvil");
}
