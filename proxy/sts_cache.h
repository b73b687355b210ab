/*
 * sts_cache: the MTA-STS policies the proxy has fetched, per recipient domain, shared by
 * all workers (RFC 8461 section 5.1: cached until max_age, refreshed when the TXT
 * record's id changes or the policy ages). Bounded: the least recently used domain goes
 * first. One mutex, held for a lookup. Pure: no I/O.
 */
#ifndef PROXY_STS_CACHE_H
#define PROXY_STS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mtasts.h"

/* A cached policy: read-only, reference-counted so that a session may keep using it while
 * a newer one replaces it in the cache. */
struct sts_cached {
    _Atomic unsigned refs;
    char id[MTASTS_ID_MAX + 1];
    struct mtasts_policy *policy;
    uint64_t fetched_ms; /* wall clock, milliseconds since the epoch */
    uint64_t expires_ms; /* fetched_ms + max_age */
};

struct sts_cache;

struct sts_cache *sts_cache_new(size_t max_entries);
void sts_cache_free(struct sts_cache *c);
void sts_cache_configure(struct sts_cache *c, size_t max_entries);

/* sts_cache_get returns a reference to |domain|'s unexpired policy at |now_ms|, or NULL.
 * An expired one is dropped. Release it with sts_cached_unref(). */
struct sts_cached *sts_cache_get(struct sts_cache *c, const char *domain, uint64_t now_ms);

/* sts_cache_put stores |policy| (taken over, also on failure) fetched for |domain| with
 * |id| at |now_ms|, replacing what was cached, and returns a reference to it for the
 * caller (NULL when out of memory). */
struct sts_cached *sts_cache_put(struct sts_cache *c, const char *domain, const char *id,
                                 struct mtasts_policy *policy, uint64_t now_ms);

/* sts_cache_count returns how many domains are cached. */
size_t sts_cache_count(struct sts_cache *c);

struct sts_cached *sts_cached_ref(struct sts_cached *p);
void sts_cached_unref(struct sts_cached *p);

#endif
