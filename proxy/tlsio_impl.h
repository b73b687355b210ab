/*
 * tlsio_impl: what tlsio.c (connections) and tlsio_ctx.c (contexts) share. Nothing else
 * includes it.
 */
#ifndef PROXY_TLSIO_IMPL_H
#define PROXY_TLSIO_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "tlsio.h"
#include "tlsio_resume.h"

/* One certificate/key pair: the leaf, its chain (maybe empty) and the private key. */
struct tlsio_cert {
    X509 *leaf;
    EVP_PKEY *key;
    struct stack_st_X509 *chain; /* STACK_OF(X509), spelled out for clang-format */
};

/*
 * The SSL_CTX owns this struct through ex_data, so it lives exactly as long as the last
 * SSL made from it, even after main dropped its reference on reload.
 */
struct tlsio_ctx {
    SSL_CTX *ssl_ctx;
    bool front;
    bool verify;
    struct tlsio_cert certs[CONF_CERT_MAX];
    size_t n_certs;
    struct tlsio_resume_cache *cache; /* back: sessions to resume; NULL for none */
};

/* A plaintext record carries at most 2^14 bytes (RFC 8446 section 5.1). */
#define TLSIO_RECORD_MAX 16384

/* tlsio_ctx_of returns the context |ssl| was made from. */
struct tlsio_ctx *tlsio_ctx_of(const SSL *ssl);

/* tlsio_on_new_session is the back contexts' SSL_CTX_sess_set_new_cb() callback: it keeps
 * the upstream's sessions in the context's cache (tlsio.c). */
int tlsio_on_new_session(SSL *ssl, SSL_SESSION *session);

#endif
