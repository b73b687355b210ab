/*
 * test_learn: the memory's contract: IPv4 and IPv6 keys with ports ignored and
 * IPv4-mapped IPv6 equal to IPv4, expiry at exactly added + ttl, renewal, eviction of the
 * oldest when full, values kept with addresses (replaced, counted as new when changed,
 * removed), counts, a large run, and concurrent use from several threads.
 */
#include "learn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>

#include "check.h"

/* A sockaddr_storage filled from text such as "192.0.2.1" or "2001:db8::1". */
static struct sockaddr_storage addr(const char *text, uint16_t port)
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

/* An IPv4 address made from |n|, so tests can add many distinct ones. */
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

static void test_v4_v6(void)
{
    struct learn *l = learn_new(10, 1000);
    CHECK(l != NULL);
    struct sockaddr_storage a4 = addr("192.0.2.1", 25);
    struct sockaddr_storage a4_port = addr("192.0.2.1", 40000);
    struct sockaddr_storage a4_mapped = addr("::ffff:192.0.2.1", 587);
    struct sockaddr_storage b4 = addr("192.0.2.2", 25);
    struct sockaddr_storage a6 = addr("2001:db8::1", 25);
    struct sockaddr_storage a6_port = addr("2001:db8::1", 26);
    struct sockaddr_storage b6 = addr("2001:db8::2", 25);
    struct sockaddr_storage b4_mapped = addr("::ffff:192.0.2.2", 25);

    CHECK(!learn_contains(l, SA(a4), 0));
    CHECK(learn_add(l, SA(a4), 0));
    CHECK(learn_contains(l, SA(a4), 0));
    CHECK(learn_contains(l, SA(a4_port), 0));
    CHECK(learn_contains(l, SA(a4_mapped), 0));
    CHECK(!learn_contains(l, SA(b4), 0));
    CHECK(!learn_add(l, SA(a4_mapped), 1));
    CHECK_INT(learn_count(l), 1);

    CHECK(learn_add(l, SA(a6), 0));
    CHECK(learn_contains(l, SA(a6_port), 0));
    CHECK(!learn_contains(l, SA(b6), 0));
    CHECK(!learn_add(l, SA(a6_port), 0));

    CHECK(learn_add(l, SA(b4_mapped), 0));
    CHECK(learn_contains(l, SA(b4), 0));
    CHECK_INT(learn_count(l), 3);
    CHECK_INT(learn_evictions(l), 0);

    /* Families other than IPv4 and IPv6 are never remembered. */
    struct sockaddr other;
    memset(&other, 0, sizeof(other));
    other.sa_family = AF_UNIX;
    CHECK(!learn_add(l, &other, 0));
    CHECK(!learn_contains(l, &other, 0));
    CHECK_INT(learn_count(l), 3);
    learn_free(l);
}

static void test_ttl(void)
{
    struct learn *l = learn_new(10, 1000);
    struct sockaddr_storage a = addr("192.0.2.1", 0);
    struct sockaddr_storage b = addr("192.0.2.2", 0);
    CHECK(learn_add(l, SA(a), 5000));
    CHECK(learn_contains(l, SA(a), 5000));
    CHECK(learn_contains(l, SA(a), 5999));
    CHECK(!learn_contains(l, SA(a), 6000));
    CHECK_INT(learn_count(l), 0); /* dropped when met */

    /* A clock read before the entry was added (another thread) does not expire it. */
    CHECK(learn_add(l, SA(a), 7000));
    CHECK(learn_contains(l, SA(a), 6999));

    /* Renewal extends; the return value says it was already known. */
    CHECK(!learn_add(l, SA(a), 7500));
    CHECK(learn_contains(l, SA(a), 8499));
    CHECK(!learn_contains(l, SA(a), 8500));

    /* Adding an expired entry that was not yet dropped counts as new. */
    CHECK(learn_add(l, SA(b), 10000));
    CHECK(learn_add(l, SA(b), 11000));
    CHECK_INT(learn_count(l), 1);
    CHECK(learn_contains(l, SA(b), 11999));

    /* add drops expired entries from the old end. */
    CHECK(learn_add(l, SA(a), 20000));
    CHECK_INT(learn_count(l), 1);
    CHECK_INT(learn_evictions(l), 0);
    learn_free(l);

    /* The largest ttl does not overflow into "already expired". */
    l = learn_new(10, UINT64_MAX);
    CHECK(learn_add(l, SA(a), UINT64_MAX - 10));
    CHECK(learn_contains(l, SA(a), UINT64_MAX));
    learn_free(l);
}

static void test_eviction(void)
{
    struct learn *l = learn_new(3, 1000);
    struct sockaddr_storage a[5];
    for (uint32_t i = 0; i < 5; i++) {
        a[i] = addr_n(i);
    }
    CHECK(learn_add(l, SA(a[0]), 0));
    CHECK(learn_add(l, SA(a[1]), 0));
    CHECK(learn_add(l, SA(a[2]), 0));
    CHECK(learn_add(l, SA(a[3]), 0)); /* evicts a[0] */
    CHECK_INT(learn_count(l), 3);
    CHECK_INT(learn_evictions(l), 1);
    CHECK(!learn_contains(l, SA(a[0]), 0));
    CHECK(learn_contains(l, SA(a[1]), 0));

    /* Renewing a[1] makes a[2] the oldest. */
    CHECK(!learn_add(l, SA(a[1]), 1));
    CHECK(learn_add(l, SA(a[4]), 1));
    CHECK_INT(learn_evictions(l), 2);
    CHECK(!learn_contains(l, SA(a[2]), 1));
    CHECK(learn_contains(l, SA(a[1]), 1));
    CHECK(learn_contains(l, SA(a[3]), 1));
    CHECK(learn_contains(l, SA(a[4]), 1));
    CHECK_INT(learn_count(l), 3);
    learn_free(l);

    /* max_entries 0 remembers nothing. */
    l = learn_new(0, 1000);
    CHECK(!learn_add(l, SA(a[0]), 0));
    CHECK(!learn_contains(l, SA(a[0]), 0));
    CHECK_INT(learn_count(l), 0);
    learn_free(l);
}

static void test_values(void)
{
    struct learn *l = learn_new(10, 1000);
    struct sockaddr_storage a = addr("192.0.2.1", 25);
    struct sockaddr_storage a_mapped = addr("::ffff:192.0.2.1", 587);
    struct sockaddr_storage b6 = addr("2001:db8::1", 25);
    struct sockaddr_storage c = addr("192.0.2.3", 25);
    uint8_t value = 99;

    /* Not remembered: false and 0. */
    CHECK(!learn_get(l, &value, SA(a), 0));
    CHECK_INT(value, 0);

    /* The value is kept; the same value again is a renewal, not new. */
    CHECK(learn_add_value(l, SA(a), 0, 5));
    value = 99;
    CHECK(learn_get(l, &value, SA(a), 0));
    CHECK_INT(value, 5);
    CHECK(!learn_add_value(l, SA(a), 100, 5));
    CHECK(learn_get(l, &value, SA(a), 100));
    CHECK_INT(value, 5);
    CHECK_INT(learn_count(l), 1);

    /* A changed value replaces the old one and counts as new, without a second entry. */
    CHECK(learn_add_value(l, SA(a), 200, 6));
    CHECK(learn_get(l, &value, SA(a), 200));
    CHECK_INT(value, 6);
    CHECK_INT(learn_count(l), 1);
    CHECK(learn_add_value(l, SA(a), 200, 255));
    CHECK(learn_get(l, &value, SA(a), 200));
    CHECK_INT(value, 255);
    /* learn_add() is value 0: a change too. */
    CHECK(learn_add(l, SA(a), 200));
    value = 99;
    CHECK(learn_get(l, &value, SA(a), 200));
    CHECK_INT(value, 0);
    CHECK(learn_contains(l, SA(a), 200));
    CHECK(!learn_add_value(l, SA(a), 200, 0));
    CHECK(learn_add_value(l, SA(a), 200, 1));

    /* IPv4-mapped IPv6 is the same peer, whichever form set or asks; ports ignored. */
    CHECK(learn_get(l, &value, SA(a_mapped), 200));
    CHECK_INT(value, 1);
    CHECK(!learn_add_value(l, SA(a_mapped), 300, 1));
    CHECK(learn_add_value(l, SA(a_mapped), 300, 2));
    CHECK(learn_get(l, &value, SA(a), 300));
    CHECK_INT(value, 2);
    CHECK_INT(learn_count(l), 1);
    CHECK(learn_add_value(l, SA(b6), 300, 7));
    CHECK(learn_get(l, &value, SA(b6), 300));
    CHECK_INT(value, 7);
    CHECK_INT(learn_count(l), 2);

    /* Expiry: at exactly added + ttl the value is gone and the entry dropped. The add at
     * 300 renewed a, so it lives until 1299. */
    CHECK(learn_get(l, &value, SA(a), 1299));
    CHECK_INT(value, 2);
    value = 99;
    CHECK(!learn_get(l, &value, SA(a), 1300));
    CHECK_INT(value, 0);
    CHECK_INT(learn_count(l), 1);
    /* An expired entry not yet dropped (b6, added at 300), renewed with the same value,
     * counts as new. */
    CHECK(learn_add_value(l, SA(b6), 1300, 7));
    CHECK(learn_get(l, &value, SA(b6), 1300));
    CHECK_INT(value, 7);
    CHECK_INT(learn_count(l), 1);
    /* Adding a dropped one again, even with the same value, is new. */
    CHECK(learn_add_value(l, SA(a), 1300, 2));
    CHECK(learn_get(l, &value, SA(a), 1300));
    CHECK_INT(value, 2);
    CHECK_INT(learn_count(l), 2);

    /* learn_remove_addr forgets, in either form; only what was remembered. */
    CHECK(!learn_remove_addr(l, SA(c)));
    CHECK(learn_remove_addr(l, SA(a_mapped)));
    CHECK(!learn_get(l, &value, SA(a), 1300));
    CHECK_INT(value, 0);
    CHECK(!learn_remove_addr(l, SA(a)));
    CHECK_INT(learn_count(l), 1);
    CHECK(learn_get(l, &value, SA(b6), 1300)); /* the others stay */
    CHECK_INT(value, 7);
    CHECK(learn_add_value(l, SA(a), 1300, 2)); /* new again after removal */
    CHECK_INT(learn_count(l), 2);
    CHECK(learn_remove_addr(l, SA(b6)));
    CHECK(learn_remove_addr(l, SA(a)));
    CHECK_INT(learn_count(l), 0);
    CHECK(!learn_remove_addr(l, SA(a)));

    /* Families other than IPv4 and IPv6. */
    struct sockaddr other;
    memset(&other, 0, sizeof(other));
    other.sa_family = AF_UNIX;
    CHECK(!learn_add_value(l, &other, 0, 3));
    value = 99;
    CHECK(!learn_get(l, &value, &other, 0));
    CHECK_INT(value, 0);
    CHECK(!learn_remove_addr(l, &other));
    CHECK_INT(learn_count(l), 0);
    CHECK_INT(learn_evictions(l), 0);
    learn_free(l);

    /* max_entries 0 keeps no value either. */
    l = learn_new(0, 1000);
    CHECK(!learn_add_value(l, SA(a), 0, 4));
    CHECK(!learn_get(l, &value, SA(a), 0));
    CHECK_INT(value, 0);
    CHECK(!learn_remove_addr(l, SA(a)));
    learn_free(l);
}

/* Values under eviction: the oldest add goes first, lookups do not renew, a changed value
 * renews, removal frees a slot, and every survivor keeps its own value. */
static void test_values_eviction(void)
{
    struct learn *l = learn_new(3, 1000);
    struct sockaddr_storage a[6];
    for (uint32_t i = 0; i < 6; i++) {
        a[i] = addr_n(i);
    }
    uint8_t value = 0;
    CHECK(learn_add_value(l, SA(a[0]), 0, 10));
    CHECK(learn_add_value(l, SA(a[1]), 0, 11));
    CHECK(learn_add_value(l, SA(a[2]), 0, 12));

    /* A lookup is not an add: a[0] stays the oldest and goes first. */
    CHECK(learn_get(l, &value, SA(a[0]), 1));
    CHECK(learn_add_value(l, SA(a[3]), 1, 13));
    CHECK_INT(learn_evictions(l), 1);
    CHECK(!learn_get(l, &value, SA(a[0]), 1));
    CHECK_INT(value, 0);

    /* Changing a[1]'s value renews it: a[2] is now the oldest. */
    CHECK(learn_add_value(l, SA(a[1]), 2, 21));
    CHECK(learn_add_value(l, SA(a[4]), 2, 14));
    CHECK_INT(learn_evictions(l), 2);
    CHECK(!learn_contains(l, SA(a[2]), 2));
    CHECK(learn_get(l, &value, SA(a[1]), 2));
    CHECK_INT(value, 21);
    CHECK(learn_get(l, &value, SA(a[3]), 2));
    CHECK_INT(value, 13);
    CHECK(learn_get(l, &value, SA(a[4]), 2));
    CHECK_INT(value, 14);

    /* Renewing with the same value also moves it: a[3] goes next. */
    CHECK(!learn_add_value(l, SA(a[3]), 3, 13));
    CHECK(learn_add_value(l, SA(a[5]), 3, 15));
    CHECK_INT(learn_evictions(l), 3);
    CHECK(!learn_contains(l, SA(a[1]), 3));
    CHECK(learn_get(l, &value, SA(a[3]), 3));
    CHECK_INT(value, 13);

    /* A removal frees a slot: the next add evicts nothing. */
    CHECK(learn_remove_addr(l, SA(a[4])));
    CHECK_INT(learn_count(l), 2);
    CHECK(learn_add_value(l, SA(a[0]), 4, 30));
    CHECK_INT(learn_evictions(l), 3);
    CHECK_INT(learn_count(l), 3);
    static const struct {
        int i;
        uint8_t value;
    } survivors[] = {{3, 13}, {5, 15}, {0, 30}};
    for (size_t k = 0; k < sizeof(survivors) / sizeof(survivors[0]); k++) {
        CHECK(learn_get(l, &value, SA(a[survivors[k].i]), 4));
        CHECK_INT(value, survivors[k].value);
    }

    /* A lower maximum evicts the oldest at the next add; the rest keep their values. */
    learn_configure(l, 2, 1000);
    CHECK(learn_add_value(l, SA(a[1]), 5, 41));
    CHECK_INT(learn_count(l), 2);
    CHECK_INT(learn_evictions(l), 5);
    CHECK(!learn_contains(l, SA(a[3]), 5));
    CHECK(!learn_contains(l, SA(a[5]), 5));
    CHECK(learn_get(l, &value, SA(a[0]), 5));
    CHECK_INT(value, 30);
    CHECK(learn_get(l, &value, SA(a[1]), 5));
    CHECK_INT(value, 41);

    /* Expired entries are dropped from the old end before anything is evicted. */
    CHECK(learn_add_value(l, SA(a[2]), 1004, 42)); /* a[0] (added at 4) has expired */
    CHECK_INT(learn_evictions(l), 5);
    CHECK(learn_get(l, &value, SA(a[1]), 1004));
    CHECK_INT(value, 41);
    CHECK(learn_get(l, &value, SA(a[2]), 1004));
    CHECK_INT(value, 42);
    learn_free(l);
}

static void test_many(void)
{
    enum { N = 100000, MAX = 50000 };
    struct learn *l = learn_new(MAX, 1000000);
    int n_new = 0;
    for (uint32_t i = 0; i < N; i++) {
        struct sockaddr_storage a = addr_n(i);
        n_new += learn_add(l, SA(a), i);
    }
    CHECK_INT(n_new, N);
    CHECK_INT(learn_count(l), MAX);
    CHECK_INT(learn_evictions(l), N - MAX);
    int n_found = 0;
    for (uint32_t i = 0; i < N; i++) {
        struct sockaddr_storage a = addr_n(i);
        n_found += learn_contains(l, SA(a), N) == (i >= N - MAX);
    }
    CHECK_INT(n_found, N);
    learn_free(l);
}

#define THREADS 4
#define PER_THREAD 20000

struct worker_arg {
    struct learn *l;
    uint32_t base;
    int n_bad;
};

static void *worker(void *p)
{
    struct worker_arg *w = p;
    for (uint32_t i = 0; i < PER_THREAD; i++) {
        struct sockaddr_storage a = addr_n(w->base + i);
        struct sockaddr_storage shared = addr_n(1000000 + i % 100);
        if (!learn_add(w->l, SA(a), i)) {
            w->n_bad++;
        }
        if (!learn_contains(w->l, SA(a), i)) {
            w->n_bad++;
        }
        learn_add(w->l, SA(shared), i);
        learn_contains(w->l, SA(shared), i);
        (void)learn_count(w->l);
    }
    return NULL;
}

static void test_threads(void)
{
    struct learn *l = learn_new(THREADS * PER_THREAD + 100, 1000000);
    pthread_t t[THREADS];
    struct worker_arg w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker_arg){.l = l, .base = (uint32_t)i * PER_THREAD, .n_bad = 0};
        CHECK_INT(pthread_create(&t[i], NULL, worker, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK_INT(pthread_join(t[i], NULL), 0);
        CHECK_INT(w[i].n_bad, 0);
    }
    CHECK_INT(learn_count(l), THREADS * PER_THREAD + 100);
    CHECK_INT(learn_evictions(l), 0);
    learn_free(l);
}

int main(void)
{
    learn_free(NULL);
    test_v4_v6();
    test_ttl();
    test_eviction();
    test_values();
    test_values_eviction();
    test_many();
    test_threads();
    return check_exit("test_learn");
}
