/*
 * runtime: one loaded configuration and the TLS contexts built from it. Sessions hold a
 * reference from accept to their end, so a SIGHUP reload gives new sessions a new
 * runtime while open ones finish under the one they started with.
 */
#ifndef PROXY_RUNTIME_H
#define PROXY_RUNTIME_H

#include <stdatomic.h>

#include "conf.h"

struct tlsio_ctx;

struct runtime {
    _Atomic int refs;
    struct conf *conf;
    struct tlsio_ctx *front_ctx;  /* leg 1; NULL with [client_tls] starttls = strip */
    struct tlsio_ctx *back_ctx;   /* leg 2; NULL when STARTTLS upstream is never used */
    struct tlsio_ctx *webpki_ctx; /* the gate's WebPKI roots; NULL when the gate is off */
};

/* runtime_new takes ownership of |conf| and the two contexts (either may be NULL) and
 * returns a runtime with one reference, or NULL (then nothing was taken). */
struct runtime *runtime_new(struct conf *conf, struct tlsio_ctx *front_ctx,
                            struct tlsio_ctx *back_ctx);

/* runtime_ref adds a reference and returns |r|. Safe from any thread. */
struct runtime *runtime_ref(struct runtime *r);

/* runtime_unref drops a reference; the last one frees the runtime, its configuration and
 * its contexts. runtime_unref(NULL) does nothing. */
void runtime_unref(struct runtime *r);

#endif
