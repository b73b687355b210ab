/*
 * tlsio_resume: TLS session resumption for tlsio, on both legs. Leg 1 (we are the server):
 * the session ticket keys, one set per process shared by every worker and every reload,
 * rotated. Leg 2 (we are the client): a bounded cache of sessions per upstream key.
 *
 * Private to tlsio.c (and its unit test); it never does I/O and never logs.
 */
#ifndef PROXY_TLSIO_RESUME_H
#define PROXY_TLSIO_RESUME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

/* A ticket key is used for new tickets this long, then only to decrypt for as long again. */
#define TLSIO_RESUME_KEY_SECONDS (12 * 3600)
/* Upstream keys the cache holds at once (a new key evicts the one in its slot)... */
#define TLSIO_RESUME_SLOTS 1024
/* ...and sessions per key (a server sends one or two TLS 1.3 tickets per handshake). */
#define TLSIO_RESUME_PER_SLOT 4
/* Room for a cache key: the address, the name and the attempt's flags. */
#define TLSIO_RESUME_KEY_MAX 320

/*
 * tlsio_resume_ticket_cb is the SSL_CTX_set_tlsext_ticket_key_cb() callback of the front
 * contexts: AES-256-CBC and HMAC-SHA256 keys from RAND_bytes, made at the first use. New
 * tickets use the current key; a ticket made with the previous key is still accepted and
 * renewed. Keys rotate at the first use after TLSIO_RESUME_KEY_SECONDS.
 */
int tlsio_resume_ticket_cb(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *ctx,
                           HMAC_CTX *hmac_ctx, int encrypt);

/* tlsio_resume_rotate makes a new current ticket key now, keeping the current one as the
 * previous (the one before is forgotten). Returns false when RAND_bytes failed. */
bool tlsio_resume_rotate(void);

/* The leg-2 session cache of one back context; shared by all loops (a mutex inside). */
struct tlsio_resume_cache;

/* tlsio_resume_cache_new returns an empty cache, or NULL when out of memory. */
struct tlsio_resume_cache *tlsio_resume_cache_new(void);

/* tlsio_resume_cache_free drops every session. tlsio_resume_cache_free(NULL) does nothing. */
void tlsio_resume_cache_free(struct tlsio_resume_cache *c);

/*
 * tlsio_resume_take returns a session to offer for |key| (the caller owns one reference),
 * or NULL. A session that should be used once (TLS 1.3) leaves the cache; an older one
 * stays for the next connection. Expired sessions are dropped.
 */
SSL_SESSION *tlsio_resume_take(struct tlsio_resume_cache *c, const char *key);

/* tlsio_resume_put keeps |session| for |key| (taking the caller's reference), dropping the
 * oldest of that key's sessions when it has TLSIO_RESUME_PER_SLOT, or the sessions of
 * another key sharing its slot. Returns false (the reference dropped) on failure. */
bool tlsio_resume_put(struct tlsio_resume_cache *c, const char *key, SSL_SESSION *session);

/* tlsio_resume_forget drops every session kept for |key|. */
void tlsio_resume_forget(struct tlsio_resume_cache *c, const char *key);

/* tlsio_resume_count returns the number of sessions kept for |key| (for tests). */
size_t tlsio_resume_count(struct tlsio_resume_cache *c, const char *key);

#endif
