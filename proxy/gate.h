/*
 * gate: the downgrade gate's lookups, one set per recipient domain: DNSSEC (the domain's
 * MX hosts, the upstream's address among them, that host's TLSA records) and MTA-STS (the
 * _mta-sts TXT record, the policy from the shared cache or fetched). One struct gate per
 * worker loop; the policy cache is shared by all (sts_cache.c). The facts go to
 * gate_judge(), which decides.
 */
#ifndef PROXY_GATE_H
#define PROXY_GATE_H

#include <stdbool.h>
#include <sys/socket.h>

#include <uv.h>

#include "conf.h"
#include "gate_judge.h"

struct gate;
struct gate_lookup;
struct sts_cache;
struct tlsio_ctx;

/* Called once when a lookup's facts are complete (never from within gate_lookup()). */
typedef void gate_facts_fn(void *arg, struct gate_lookup *q);

/* gate_new makes one loop's gate: its resolver from [recipient_policy] (unbound_config,
 * dns_timeout). NULL with |err| set on failure. */
struct gate *gate_new(uv_loop_t *loop, const struct conf *conf, struct sts_cache *sts, char *err,
                      size_t err_len);
void gate_unref(struct gate *g);
void gate_close(struct gate *g);
void gate_free(struct gate *g);

/*
 * gate_lookup gathers the facts about |domain| (lower case, no trailing dot) for leg 2 to
 * |upstream|, under |conf| (which sources are on, the bounds) fetching policies with
 * |webpki|. Returns the lookup; when it needed nothing asynchronous it is already done
 * (gate_lookup_done()) and |fn| is never called. NULL when out of memory.
 */
struct gate_lookup *gate_lookup(struct gate *g, const struct conf *conf, struct tlsio_ctx *webpki,
                                const char *domain, const struct sockaddr *upstream,
                                gate_facts_fn *fn, void *arg);

bool gate_lookup_done(const struct gate_lookup *q);
const struct gate_facts *gate_lookup_facts(const struct gate_lookup *q);

/* gate_lookup_free cancels what is still running (no callback) and frees |q|. */
void gate_lookup_free(struct gate_lookup *q);

#endif
