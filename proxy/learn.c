/*
 * learn: a bounded, TTL'd memory of peer addresses, each with a small value (for
 * upstreams: the fallback step that worked). A chained hash table
 * keyed by the 16-byte address (IPv4 stored as IPv4-mapped IPv6) finds entries; a doubly
 * linked list ordered by last add finds the oldest to expire or evict. One mutex guards
 * everything. It never allocates for max_entries up front and never logs.
 */
#include "learn.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/siphash.h>

#define LEARN_MIN_BUCKETS 16

struct learn_entry {
    uint8_t addr[16];
    uint8_t value;
    uint64_t added_ms;
    struct learn_entry *chain; /* next in the same bucket */
    struct learn_entry *older;
    struct learn_entry *newer;
};

struct learn {
    pthread_mutex_t mu;
    size_t max_entries;
    uint64_t ttl_ms;
    uint64_t seed[2];
    struct learn_entry **buckets;
    size_t n_buckets; /* 0 or a power of two */
    size_t n_entries;
    uint64_t n_evictions;
    struct learn_entry *oldest;
    struct learn_entry *newest;
};

struct learn *learn_new(size_t max_entries, uint64_t ttl_ms)
{
    struct learn *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return NULL;
    }
    /* A secret seed keeps a remote party from choosing addresses that share a bucket and
     * turning every lookup into a walk of one long chain. */
    ssize_t n;
    do {
        n = getrandom(l->seed, sizeof(l->seed), 0);
    } while (n == -1 && errno == EINTR);
    if (n != (ssize_t)sizeof(l->seed) || pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l);
        return NULL;
    }
    l->max_entries = max_entries;
    l->ttl_ms = ttl_ms;
    return l;
}

void learn_free(struct learn *l)
{
    if (l == NULL) {
        return;
    }
    struct learn_entry *e = l->oldest;
    while (e != NULL) {
        struct learn_entry *next = e->newer;
        free(e);
        e = next;
    }
    free(l->buckets);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* learn_key writes the 16-byte form of |sa| to |out|; false for other families. */
static bool learn_key(uint8_t out[16], const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(out, prefix, sizeof(prefix));
        memcpy(out + 12, &sin->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

static size_t learn_bucket(const struct learn *l, const uint8_t addr[16], size_t n_buckets)
{
    return (size_t)SIPHASH_24(l->seed, addr, 16) & (n_buckets - 1);
}

/* Written without now_ms + ttl_ms, which could overflow. A |now_ms| older than the entry
 * (another thread read the clock first) is not expiry. */
static bool learn_expired(const struct learn *l, const struct learn_entry *e, uint64_t now_ms)
{
    return now_ms >= e->added_ms && now_ms - e->added_ms >= l->ttl_ms;
}

static struct learn_entry *learn_find(const struct learn *l, const uint8_t addr[16])
{
    if (l->n_buckets == 0) {
        return NULL;
    }
    struct learn_entry *e = l->buckets[learn_bucket(l, addr, l->n_buckets)];
    while (e != NULL && memcmp(e->addr, addr, 16) != 0) {
        e = e->chain;
    }
    return e;
}

static void learn_unlink(struct learn *l, struct learn_entry *e)
{
    if (e->older != NULL) {
        e->older->newer = e->newer;
    } else {
        l->oldest = e->newer;
    }
    if (e->newer != NULL) {
        e->newer->older = e->older;
    } else {
        l->newest = e->older;
    }
}

static void learn_push_newest(struct learn *l, struct learn_entry *e)
{
    e->newer = NULL;
    e->older = l->newest;
    if (l->newest != NULL) {
        l->newest->newer = e;
    } else {
        l->oldest = e;
    }
    l->newest = e;
}

static void learn_remove(struct learn *l, struct learn_entry *e)
{
    struct learn_entry **p = &l->buckets[learn_bucket(l, e->addr, l->n_buckets)];
    while (*p != e) {
        p = &(*p)->chain;
    }
    *p = e->chain;
    learn_unlink(l, e);
    free(e);
    l->n_entries--;
}

/* learn_grow doubles the table once it holds as many entries as buckets. If that
 * allocation fails the old table stays: chains get longer, nothing breaks. */
static void learn_grow(struct learn *l)
{
    if (l->n_entries < l->n_buckets) {
        return;
    }
    size_t n = l->n_buckets == 0 ? LEARN_MIN_BUCKETS : l->n_buckets * 2;
    struct learn_entry **buckets = calloc(n, sizeof(*buckets));
    if (buckets == NULL) {
        return;
    }
    for (struct learn_entry *e = l->oldest; e != NULL; e = e->newer) {
        size_t i = learn_bucket(l, e->addr, n);
        e->chain = buckets[i];
        buckets[i] = e;
    }
    free(l->buckets);
    l->buckets = buckets;
    l->n_buckets = n;
}

/* learn_add_locked is learn_add with the mutex held. */
static bool learn_add_locked(struct learn *l, const uint8_t addr[16], uint64_t now_ms,
                             uint8_t value)
{
    struct learn_entry *e = learn_find(l, addr);
    if (e != NULL) {
        /* An expired entry is reused, but the address counts as new. */
        bool added = learn_expired(l, e, now_ms) || e->value != value;
        e->added_ms = now_ms;
        e->value = value;
        learn_unlink(l, e);
        learn_push_newest(l, e);
        return added;
    }
    if (l->max_entries == 0) {
        return false;
    }
    while (l->oldest != NULL && learn_expired(l, l->oldest, now_ms)) {
        learn_remove(l, l->oldest);
    }
    learn_grow(l);
    if (l->n_buckets == 0 || (e = calloc(1, sizeof(*e))) == NULL) {
        return false;
    }
    /* A loop: the limit may have been lowered by learn_configure(). */
    while (l->n_entries >= l->max_entries) {
        learn_remove(l, l->oldest);
        l->n_evictions++;
    }
    memcpy(e->addr, addr, 16);
    e->value = value;
    e->added_ms = now_ms;
    size_t i = learn_bucket(l, addr, l->n_buckets);
    e->chain = l->buckets[i];
    l->buckets[i] = e;
    learn_push_newest(l, e);
    l->n_entries++;
    return true;
}

bool learn_add(struct learn *l, const struct sockaddr *sa, uint64_t now_ms)
{
    return learn_add_value(l, sa, now_ms, 0);
}

bool learn_add_value(struct learn *l, const struct sockaddr *sa, uint64_t now_ms, uint8_t value)
{
    uint8_t addr[16];
    if (!learn_key(addr, sa)) {
        return false;
    }
    pthread_mutex_lock(&l->mu);
    bool added = learn_add_locked(l, addr, now_ms, value);
    pthread_mutex_unlock(&l->mu);
    return added;
}

bool learn_contains(struct learn *l, const struct sockaddr *sa, uint64_t now_ms)
{
    uint8_t value;
    return learn_get(l, &value, sa, now_ms);
}

bool learn_get(struct learn *l, uint8_t *out_value, const struct sockaddr *sa, uint64_t now_ms)
{
    uint8_t addr[16];
    *out_value = 0;
    if (!learn_key(addr, sa)) {
        return false;
    }
    pthread_mutex_lock(&l->mu);
    struct learn_entry *e = learn_find(l, addr);
    if (e != NULL && learn_expired(l, e, now_ms)) {
        learn_remove(l, e);
        e = NULL;
    }
    if (e != NULL) {
        *out_value = e->value;
    }
    pthread_mutex_unlock(&l->mu);
    return e != NULL;
}

bool learn_remove_addr(struct learn *l, const struct sockaddr *sa)
{
    uint8_t addr[16];
    if (!learn_key(addr, sa)) {
        return false;
    }
    pthread_mutex_lock(&l->mu);
    struct learn_entry *e = learn_find(l, addr);
    if (e != NULL) {
        learn_remove(l, e);
    }
    pthread_mutex_unlock(&l->mu);
    return e != NULL;
}

size_t learn_count(struct learn *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->n_entries;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void learn_configure(struct learn *l, size_t max_entries, uint64_t ttl_ms)
{
    pthread_mutex_lock(&l->mu);
    l->max_entries = max_entries;
    l->ttl_ms = ttl_ms;
    pthread_mutex_unlock(&l->mu);
}

uint64_t learn_evictions(struct learn *l)
{
    pthread_mutex_lock(&l->mu);
    uint64_t n = l->n_evictions;
    pthread_mutex_unlock(&l->mu);
    return n;
}
