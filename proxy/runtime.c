/*
 * runtime: a configuration and its TLS contexts, reference-counted across threads.
 */
#include "runtime.h"

#include <stdlib.h>

#include "tlsio.h"

struct runtime *runtime_new(struct conf *conf, struct tlsio_ctx *front_ctx,
                            struct tlsio_ctx *back_ctx)
{
    struct runtime *r = malloc(sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    atomic_init(&r->refs, 1);
    r->conf = conf;
    r->front_ctx = front_ctx;
    r->back_ctx = back_ctx;
    r->webpki_ctx = NULL;
    return r;
}

struct runtime *runtime_ref(struct runtime *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

void runtime_unref(struct runtime *r)
{
    if (r == NULL || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    tlsio_ctx_free(r->front_ctx);
    tlsio_ctx_free(r->back_ctx);
    tlsio_ctx_free(r->webpki_ctx);
    conf_free(r->conf);
    free(r);
}
