/*
 * sts_cache: see sts_cache.h. A small table: domains are few compared with clients, so a
 * list in least-recently-used order with a linear search bounded by max_entries would be
 * too slow only for very large caches; a hash of the domain indexes the entries.
 */
#include "sts_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnsname.h"

#define STS_CACHE_BUCKETS 1024

struct sts_entry {
    char domain[DNSNAME_BUF];
    struct sts_cached *cached;
    struct sts_entry *chain;
    struct sts_entry *older;
    struct sts_entry *newer;
};

struct sts_cache {
    pthread_mutex_t mu;
    size_t max_entries;
    size_t n_entries;
    struct sts_entry *buckets[STS_CACHE_BUCKETS];
    struct sts_entry *oldest;
    struct sts_entry *newest;
};

struct sts_cached *sts_cached_ref(struct sts_cached *p)
{
    atomic_fetch_add(&p->refs, 1);
    return p;
}

void sts_cached_unref(struct sts_cached *p)
{
    if (p != NULL && atomic_fetch_sub(&p->refs, 1) == 1) {
        mtasts_policy_free(p->policy);
        free(p);
    }
}

/* FNV-1a: the domains are the recipients' own; a collision costs a longer chain only. */
static size_t sts_hash(const char *domain)
{
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)domain; *p != '\0'; p++) {
        h = (h ^ *p) * 1099511628211ULL;
    }
    return (size_t)(h % STS_CACHE_BUCKETS);
}

struct sts_cache *sts_cache_new(size_t max_entries)
{
    struct sts_cache *c = calloc(1, sizeof(*c));
    if (c == NULL || pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    c->max_entries = max_entries;
    return c;
}

static void sts_unlink(struct sts_cache *c, struct sts_entry *e)
{
    if (e->older != NULL) {
        e->older->newer = e->newer;
    } else {
        c->oldest = e->newer;
    }
    if (e->newer != NULL) {
        e->newer->older = e->older;
    } else {
        c->newest = e->older;
    }
}

static void sts_push_newest(struct sts_cache *c, struct sts_entry *e)
{
    e->newer = NULL;
    e->older = c->newest;
    if (c->newest != NULL) {
        c->newest->newer = e;
    } else {
        c->oldest = e;
    }
    c->newest = e;
}

static void sts_remove(struct sts_cache *c, struct sts_entry *e)
{
    struct sts_entry **p = &c->buckets[sts_hash(e->domain)];
    while (*p != e) {
        p = &(*p)->chain;
    }
    *p = e->chain;
    sts_unlink(c, e);
    sts_cached_unref(e->cached);
    free(e);
    c->n_entries--;
}

static struct sts_entry *sts_find(struct sts_cache *c, const char *domain)
{
    struct sts_entry *e = c->buckets[sts_hash(domain)];
    while (e != NULL && strcmp(e->domain, domain) != 0) {
        e = e->chain;
    }
    return e;
}

void sts_cache_free(struct sts_cache *c)
{
    if (c == NULL) {
        return;
    }
    while (c->oldest != NULL) {
        sts_remove(c, c->oldest);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void sts_cache_configure(struct sts_cache *c, size_t max_entries)
{
    pthread_mutex_lock(&c->mu);
    c->max_entries = max_entries;
    while (c->n_entries > c->max_entries && c->oldest != NULL) {
        sts_remove(c, c->oldest);
    }
    pthread_mutex_unlock(&c->mu);
}

struct sts_cached *sts_cache_get(struct sts_cache *c, const char *domain, uint64_t now_ms)
{
    struct sts_cached *out = NULL;
    pthread_mutex_lock(&c->mu);
    struct sts_entry *e = sts_find(c, domain);
    if (e != NULL && now_ms >= e->cached->expires_ms) {
        sts_remove(c, e);
    } else if (e != NULL) {
        sts_unlink(c, e);
        sts_push_newest(c, e);
        out = sts_cached_ref(e->cached);
    }
    pthread_mutex_unlock(&c->mu);
    return out;
}

struct sts_cached *sts_cache_put(struct sts_cache *c, const char *domain, const char *id,
                                 struct mtasts_policy *policy, uint64_t now_ms)
{
    struct sts_cached *p = calloc(1, sizeof(*p));
    struct sts_entry *fresh = calloc(1, sizeof(*fresh));
    if (p == NULL || fresh == NULL || strlen(domain) >= sizeof(fresh->domain)) {
        free(p);
        free(fresh);
        mtasts_policy_free(policy);
        return NULL;
    }
    atomic_init(&p->refs, 2); /* the cache's and the caller's */
    snprintf(p->id, sizeof(p->id), "%s", id);
    p->policy = policy;
    p->fetched_ms = now_ms;
    p->expires_ms = now_ms + (uint64_t)policy->max_age * 1000;
    memcpy(fresh->domain, domain, strlen(domain) + 1);
    fresh->cached = p;
    pthread_mutex_lock(&c->mu);
    struct sts_entry *old = sts_find(c, domain);
    if (old != NULL) {
        sts_remove(c, old);
    }
    while (c->n_entries >= c->max_entries && c->oldest != NULL) {
        sts_remove(c, c->oldest);
    }
    size_t b = sts_hash(domain);
    fresh->chain = c->buckets[b];
    c->buckets[b] = fresh;
    sts_push_newest(c, fresh);
    c->n_entries++;
    pthread_mutex_unlock(&c->mu);
    return p;
}

size_t sts_cache_count(struct sts_cache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->n_entries;
    pthread_mutex_unlock(&c->mu);
    return n;
}
