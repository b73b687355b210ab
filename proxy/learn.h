/*
 * learn: a bounded, TTL'd memory of peer addresses, each with a small value, shared by all
 * worker threads (one mutex; touched when a connection starts and when TLS was negotiated
 * or failed): clients whose handshake failed, and per upstream the fallback step that
 * worked.
 *
 * Addresses are IPv4 or IPv6 (an IPv4-mapped IPv6 address is the same peer as its IPv4
 * address); ports are ignored. When full, adding evicts the oldest entry.
 */
#ifndef PROXY_LEARN_H
#define PROXY_LEARN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct learn;

/* learn_new makes an empty memory of at most |max_entries| addresses, each remembered for
 * |ttl_ms|. Returns NULL when out of memory. Memory grows with use, not up front. */
struct learn *learn_new(size_t max_entries, uint64_t ttl_ms);

/* learn_free releases the memory; learn_free(NULL) does nothing. */
void learn_free(struct learn *l);

/*
 * learn_add remembers |sa| from |now_ms| (a monotonic clock in milliseconds) until
 * now_ms + ttl. Adding an address already remembered renews it. Returns true when the
 * address was not remembered before (a new entry, worth a log line), false otherwise,
 * including when memory ran out (then nothing is remembered).
 */
bool learn_add(struct learn *l, const struct sockaddr *sa, uint64_t now_ms);

/* learn_add_value is learn_add() with a value kept with the address (replacing the one
 * it had; a changed value also counts as new). */
bool learn_add_value(struct learn *l, const struct sockaddr *sa, uint64_t now_ms, uint8_t value);

/* learn_contains tells whether |sa| is remembered and not expired at |now_ms|. Expired
 * entries it meets are dropped. */
bool learn_contains(struct learn *l, const struct sockaddr *sa, uint64_t now_ms);

/* learn_get is learn_contains() that also sets |*out_value| to the remembered value (0
 * when the address is not remembered). */
bool learn_get(struct learn *l, uint8_t *out_value, const struct sockaddr *sa, uint64_t now_ms);

/* learn_remove_addr forgets |sa|. Returns whether it was remembered. */
bool learn_remove_addr(struct learn *l, const struct sockaddr *sa);

/* learn_configure changes the limits (a reloaded configuration). Entries are kept; the
 * new TTL applies to them too, and a lower maximum takes effect at the next add. */
void learn_configure(struct learn *l, size_t max_entries, uint64_t ttl_ms);

/* learn_count returns how many entries are held (expired ones not yet dropped included). */
size_t learn_count(struct learn *l);

/* learn_evictions returns how many entries were dropped to make room, since learn_new. */
uint64_t learn_evictions(struct learn *l);

#endif
