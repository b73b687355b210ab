/*
 * anvil: per-client counters for the abuse limits. A chained hash table keyed by the
 * client's 16-byte address (IPv4 as IPv4-mapped IPv6, IPv6 cut to the configured prefix)
 * with a secret SipHash seed, and a list in least-recently-seen order to find the entry to
 * forget when the table is full. One mutex guards everything; it is held for one lookup.
 */
#include "anvil.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/siphash.h>

#define ANVIL_MIN_BUCKETS 64
/* How far from the oldest end eviction looks for a client without a session. */
#define ANVIL_EVICT_SCAN 64

struct anvil_entry {
    uint8_t key[16];
    uint64_t generation;        /* tells this entry from a later one for the same key */
    unsigned sessions;          /* open now */
    unsigned session_count;     /* opened in the current session window */
    unsigned message_count;     /* messages in the current message window */
    uint64_t session_window_ms; /* when the current session window began */
    uint64_t message_window_ms;
    uint64_t logged_ms[4]; /* per verdict: the window in which a refusal was reported */
    struct anvil_entry *chain;
    struct anvil_entry *older;
    struct anvil_entry *newer;
};

struct anvil {
    pthread_mutex_t mu;
    struct anvil_config config;
    uint64_t seed[2];
    struct anvil_entry **buckets;
    size_t n_buckets; /* 0 or a power of two */
    size_t n_entries;
    uint64_t n_evictions;
    uint64_t n_created; /* entries ever made: the next generation */
    struct anvil_entry *oldest;
    struct anvil_entry *newest;
};

struct anvil *anvil_new(const struct anvil_config *config)
{
    struct anvil *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return NULL;
    }
    /* A secret seed keeps a remote party from choosing addresses that share a bucket. */
    ssize_t n;
    do {
        n = getrandom(l->seed, sizeof(l->seed), 0);
    } while (n == -1 && errno == EINTR);
    if (n != (ssize_t)sizeof(l->seed) || pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l);
        return NULL;
    }
    l->config = *config;
    return l;
}

void anvil_free(struct anvil *l)
{
    if (l == NULL) {
        return;
    }
    struct anvil_entry *e = l->oldest;
    while (e != NULL) {
        struct anvil_entry *next = e->newer;
        free(e);
        e = next;
    }
    free(l->buckets);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void anvil_configure(struct anvil *l, const struct anvil_config *config)
{
    pthread_mutex_lock(&l->mu);
    l->config = *config;
    pthread_mutex_unlock(&l->mu);
}

/* anvil_key writes the client's key: IPv4 as IPv4-mapped IPv6 (so both forms of one
 * address are one client), IPv6 with the bits after the prefix cleared. */
static bool anvil_key(uint8_t out[16], const struct sockaddr *sa, unsigned ipv6_prefix)
{
    if (sa->sa_family == AF_INET) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(out, mapped, sizeof(mapped));
        memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family != AF_INET6) {
        return false;
    }
    memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(out, v4_mapped, sizeof(v4_mapped)) == 0) {
        return true; /* an IPv4 client on a dual-stack socket */
    }
    unsigned prefix = ipv6_prefix > 128 ? 128 : ipv6_prefix;
    for (unsigned bit = prefix; bit < 128; bit++) {
        out[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    }
    return true;
}

static size_t anvil_bucket(const struct anvil *l, const uint8_t key[16], size_t n_buckets)
{
    return (size_t)SIPHASH_24(l->seed, key, 16) & (n_buckets - 1);
}

static struct anvil_entry *anvil_find(const struct anvil *l, const uint8_t key[16])
{
    if (l->n_buckets == 0) {
        return NULL;
    }
    struct anvil_entry *e = l->buckets[anvil_bucket(l, key, l->n_buckets)];
    while (e != NULL && memcmp(e->key, key, 16) != 0) {
        e = e->chain;
    }
    return e;
}

static void anvil_unlink(struct anvil *l, struct anvil_entry *e)
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

static void anvil_push_newest(struct anvil *l, struct anvil_entry *e)
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

static void anvil_remove(struct anvil *l, struct anvil_entry *e)
{
    struct anvil_entry **p = &l->buckets[anvil_bucket(l, e->key, l->n_buckets)];
    while (*p != e) {
        p = &(*p)->chain;
    }
    *p = e->chain;
    anvil_unlink(l, e);
    free(e);
    l->n_entries--;
}

/* anvil_grow doubles the table once it holds as many entries as buckets; if that fails
 * the chains get longer and nothing breaks. */
static void anvil_grow(struct anvil *l)
{
    if (l->n_entries < l->n_buckets) {
        return;
    }
    size_t n = l->n_buckets == 0 ? ANVIL_MIN_BUCKETS : l->n_buckets * 2;
    struct anvil_entry **buckets = calloc(n, sizeof(*buckets));
    if (buckets == NULL) {
        return;
    }
    for (struct anvil_entry *e = l->oldest; e != NULL; e = e->newer) {
        size_t i = anvil_bucket(l, e->key, n);
        e->chain = buckets[i];
        buckets[i] = e;
    }
    free(l->buckets);
    l->buckets = buckets;
    l->n_buckets = n;
}

/* anvil_evict_one forgets a client to make room: the least recently seen one without a
 * session, or the least recently seen one at all (its sessions then end uncounted). */
static void anvil_evict_one(struct anvil *l)
{
    struct anvil_entry *victim = l->oldest;
    struct anvil_entry *e = l->oldest;
    for (int i = 0; e != NULL && i < ANVIL_EVICT_SCAN; i++, e = e->newer) {
        if (e->sessions == 0) {
            victim = e;
            break;
        }
    }
    if (victim != NULL) {
        anvil_remove(l, victim);
        l->n_evictions++;
    }
}

/* anvil_get finds or makes the entry for |key| and marks it the most recently seen.
 * NULL when out of memory or max_clients is 0 (then the client is not limited). */
static struct anvil_entry *anvil_get(struct anvil *l, const uint8_t key[16])
{
    struct anvil_entry *e = anvil_find(l, key);
    if (e != NULL) {
        anvil_unlink(l, e);
        anvil_push_newest(l, e);
        return e;
    }
    if (l->config.max_clients == 0) {
        return NULL;
    }
    while (l->n_entries >= l->config.max_clients && l->oldest != NULL) {
        anvil_evict_one(l);
    }
    anvil_grow(l);
    if (l->n_buckets == 0 || (e = calloc(1, sizeof(*e))) == NULL) {
        return NULL;
    }
    memcpy(e->key, key, 16);
    e->generation = ++l->n_created;
    size_t i = anvil_bucket(l, key, l->n_buckets);
    e->chain = l->buckets[i];
    l->buckets[i] = e;
    anvil_push_newest(l, e);
    l->n_entries++;
    return e;
}

/* anvil_window restarts a fixed window that is over: counts from a client's first event
 * in it, like Postfix's anvil time unit. Written without now + window, which could
 * overflow. */
static void anvil_window(uint64_t *start_ms, unsigned *count, uint64_t now_ms, uint64_t window)
{
    if (*count == 0 || now_ms < *start_ms || now_ms - *start_ms >= window) {
        *start_ms = now_ms;
        *count = 0;
    }
}

/* anvil_refuse records a refusal; true when it is the first of its kind in the window. */
static bool anvil_refuse(struct anvil_entry *e, enum anvil_verdict verdict, uint64_t window_ms)
{
    uint64_t *logged = &e->logged_ms[verdict];
    bool first = *logged != window_ms + 1;
    *logged = window_ms + 1; /* +1: a window starting at 0 still counts as logged */
    return first;
}

enum anvil_verdict anvil_open(struct anvil *l, struct anvil_place *out_place, bool *out_first,
                              const struct sockaddr *sa, uint64_t now_ms)
{
    *out_first = false;
    memset(out_place, 0, sizeof(*out_place));
    uint8_t key[16];
    pthread_mutex_lock(&l->mu);
    const struct anvil_config *c = &l->config;
    struct anvil_entry *e = anvil_key(key, sa, c->ipv6_prefix) ? anvil_get(l, key) : NULL;
    enum anvil_verdict verdict = ANVIL_OK;
    if (e != NULL) {
        anvil_window(&e->session_window_ms, &e->session_count, now_ms, c->window_ms);
        if (c->max_sessions != 0 && e->sessions >= c->max_sessions) {
            verdict = ANVIL_SESSIONS;
            /* the sessions limit has no window of its own: one report per rate window */
            *out_first = anvil_refuse(e, verdict, e->session_window_ms);
        } else if (c->max_session_rate != 0 && e->session_count >= c->max_session_rate) {
            verdict = ANVIL_SESSION_RATE;
            *out_first = anvil_refuse(e, verdict, e->session_window_ms);
        } else {
            e->sessions++;
            e->session_count++;
            memcpy(out_place->key, e->key, 16);
            out_place->generation = e->generation;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return verdict;
}

void anvil_close(struct anvil *l, const struct anvil_place *place)
{
    if (place->generation == 0) {
        return;
    }
    pthread_mutex_lock(&l->mu);
    struct anvil_entry *e = anvil_find(l, place->key);
    if (e != NULL && e->generation == place->generation && e->sessions > 0) {
        e->sessions--;
    }
    pthread_mutex_unlock(&l->mu);
}

enum anvil_verdict anvil_message(struct anvil *l, bool *out_first, const struct sockaddr *sa,
                                 uint64_t now_ms)
{
    *out_first = false;
    uint8_t key[16];
    pthread_mutex_lock(&l->mu);
    const struct anvil_config *c = &l->config;
    enum anvil_verdict verdict = ANVIL_OK;
    struct anvil_entry *e = NULL;
    if (c->max_message_rate != 0 && anvil_key(key, sa, c->ipv6_prefix)) {
        e = anvil_get(l, key);
    }
    if (e != NULL) {
        anvil_window(&e->message_window_ms, &e->message_count, now_ms, c->window_ms);
        if (e->message_count >= c->max_message_rate) {
            verdict = ANVIL_MESSAGE_RATE;
            *out_first = anvil_refuse(e, verdict, e->message_window_ms);
        } else {
            e->message_count++;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return verdict;
}

const char *anvil_name(enum anvil_verdict verdict)
{
    switch (verdict) {
    case ANVIL_SESSIONS:
        return "sessions";
    case ANVIL_SESSION_RATE:
        return "session-rate";
    case ANVIL_MESSAGE_RATE:
        return "message-rate";
    case ANVIL_OK:
        break;
    }
    return "ok";
}

size_t anvil_count(struct anvil *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->n_entries;
    pthread_mutex_unlock(&l->mu);
    return n;
}

uint64_t anvil_evictions(struct anvil *l)
{
    pthread_mutex_lock(&l->mu);
    uint64_t n = l->n_evictions;
    pthread_mutex_unlock(&l->mu);
    return n;
}
