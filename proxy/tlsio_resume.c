/*
 * tlsio_resume: session tickets for leg 1 and a session cache for leg 2.
 *
 * The ticket keys live here, once per process, so that every worker's context and every
 * context a reload builds accept the tickets of the others. The leg-2 cache belongs to one
 * back context; a reload (maybe with another CA file) starts an empty one.
 */
#include "tlsio_resume.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/cipher.h>
#include <openssl/digest.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

/* ---- ticket keys (leg 1) ------------------------------------------------------------------- */

struct tlsio_resume_key {
    uint8_t name[SSL_TICKET_KEY_NAME_LEN]; /* random: tells the keys apart in a ticket */
    uint8_t aes[32];
    uint8_t hmac[32];
};

static struct {
    pthread_mutex_t lock;
    bool ready;        /* |current| holds a key */
    bool has_previous; /* |previous| holds one */
    uint64_t made_at;  /* CLOCK_MONOTONIC seconds when |current| was made */
    struct tlsio_resume_key current;
    struct tlsio_resume_key previous;
} tlsio_resume_keys = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t tlsio_resume_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

/* tlsio_resume_rotate_locked makes a new current key; the lock is held. */
static bool tlsio_resume_rotate_locked(uint64_t now)
{
    struct tlsio_resume_key fresh;
    if (!RAND_bytes((uint8_t *)&fresh, sizeof(fresh))) {
        return false;
    }
    if (tlsio_resume_keys.ready) {
        tlsio_resume_keys.previous = tlsio_resume_keys.current;
        tlsio_resume_keys.has_previous = true;
    }
    tlsio_resume_keys.current = fresh;
    tlsio_resume_keys.ready = true;
    tlsio_resume_keys.made_at = now;
    OPENSSL_cleanse(&fresh, sizeof(fresh));
    return true;
}

bool tlsio_resume_rotate(void)
{
    pthread_mutex_lock(&tlsio_resume_keys.lock);
    bool ok = tlsio_resume_rotate_locked(tlsio_resume_now());
    pthread_mutex_unlock(&tlsio_resume_keys.lock);
    return ok;
}

/*
 * tlsio_resume_pick copies the key to use into |out|: with |name| NULL the current one
 * (rotated first when it is old), else the one called |name|. Returns 0 for none, 1 for
 * the current key, 2 for the previous one.
 */
static int tlsio_resume_pick(struct tlsio_resume_key *out, const uint8_t *name)
{
    int which = 0;
    pthread_mutex_lock(&tlsio_resume_keys.lock);
    uint64_t now = tlsio_resume_now();
    if (!tlsio_resume_keys.ready || now - tlsio_resume_keys.made_at >= TLSIO_RESUME_KEY_SECONDS) {
        (void)tlsio_resume_rotate_locked(now); /* on failure the old key serves on */
    }
    if (tlsio_resume_keys.ready && (name == NULL || memcmp(name, tlsio_resume_keys.current.name,
                                                           SSL_TICKET_KEY_NAME_LEN) == 0)) {
        *out = tlsio_resume_keys.current;
        which = 1;
    } else if (tlsio_resume_keys.has_previous &&
               memcmp(name, tlsio_resume_keys.previous.name, SSL_TICKET_KEY_NAME_LEN) == 0) {
        *out = tlsio_resume_keys.previous;
        which = 2;
    }
    pthread_mutex_unlock(&tlsio_resume_keys.lock);
    return which;
}

int tlsio_resume_ticket_cb(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *ctx,
                           HMAC_CTX *hmac_ctx, int encrypt)
{
    (void)ssl;
    struct tlsio_resume_key key;
    int which = tlsio_resume_pick(&key, encrypt ? NULL : key_name);
    int rc;
    if (which == 0) {
        rc = encrypt ? -1 : 0; /* no key: no ticket; an unknown ticket: a full handshake */
    } else if (encrypt) {
        memcpy(key_name, key.name, SSL_TICKET_KEY_NAME_LEN);
        rc = RAND_bytes(iv, EVP_MAX_IV_LENGTH) &&
                     EVP_EncryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, key.aes, iv) &&
                     HMAC_Init_ex(hmac_ctx, key.hmac, sizeof(key.hmac), EVP_sha256(), NULL)
                 ? 1
                 : -1;
    } else {
        /* 2: a ticket of the previous key is renewed with the current one. */
        rc = EVP_DecryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, key.aes, iv) &&
                     HMAC_Init_ex(hmac_ctx, key.hmac, sizeof(key.hmac), EVP_sha256(), NULL)
                 ? which
                 : -1;
    }
    OPENSSL_cleanse(&key, sizeof(key));
    return rc;
}

/* ---- the session cache (leg 2) ------------------------------------------------------------- */

struct tlsio_resume_slot {
    char *key; /* NULL: the slot is free */
    SSL_SESSION *sessions[TLSIO_RESUME_PER_SLOT];
    size_t n_sessions; /* oldest first */
};

struct tlsio_resume_cache {
    pthread_mutex_t lock;
    struct tlsio_resume_slot *slots; /* TLSIO_RESUME_SLOTS, made at the first put */
};

struct tlsio_resume_cache *tlsio_resume_cache_new(void)
{
    struct tlsio_resume_cache *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

static void tlsio_resume_slot_clear(struct tlsio_resume_slot *slot)
{
    for (size_t i = 0; i < slot->n_sessions; i++) {
        SSL_SESSION_free(slot->sessions[i]);
    }
    free(slot->key);
    memset(slot, 0, sizeof(*slot));
}

void tlsio_resume_cache_free(struct tlsio_resume_cache *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; c->slots != NULL && i < TLSIO_RESUME_SLOTS; i++) {
        tlsio_resume_slot_clear(&c->slots[i]);
    }
    free(c->slots);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* tlsio_resume_slot finds |key|'s slot (FNV-1a); NULL when there are no slots yet. */
static struct tlsio_resume_slot *tlsio_resume_slot(struct tlsio_resume_cache *c, const char *key)
{
    if (c->slots == NULL) {
        return NULL;
    }
    uint64_t h = 14695981039346656037u;
    for (const char *p = key; *p != '\0'; p++) {
        h = (h ^ (uint8_t)*p) * 1099511628211u;
    }
    return &c->slots[h % TLSIO_RESUME_SLOTS];
}

/* tlsio_resume_remove takes session |i| out of |slot|, keeping the order of the rest. */
static SSL_SESSION *tlsio_resume_remove(struct tlsio_resume_slot *slot, size_t i)
{
    SSL_SESSION *s = slot->sessions[i];
    memmove(&slot->sessions[i], &slot->sessions[i + 1],
            (slot->n_sessions - i - 1) * sizeof(slot->sessions[0]));
    slot->n_sessions--;
    slot->sessions[slot->n_sessions] = NULL;
    return s;
}

SSL_SESSION *tlsio_resume_take(struct tlsio_resume_cache *c, const char *key)
{
    SSL_SESSION *found = NULL;
    uint64_t now = (uint64_t)time(NULL);
    pthread_mutex_lock(&c->lock);
    struct tlsio_resume_slot *slot = tlsio_resume_slot(c, key);
    if (slot != NULL && slot->key != NULL && strcmp(slot->key, key) == 0) {
        while (found == NULL && slot->n_sessions > 0) {
            size_t last = slot->n_sessions - 1; /* the newest */
            SSL_SESSION *s = slot->sessions[last];
            if (SSL_SESSION_get_time(s) + SSL_SESSION_get_timeout(s) <= now) {
                SSL_SESSION_free(tlsio_resume_remove(slot, last));
            } else if (SSL_SESSION_should_be_single_use(s)) {
                found = tlsio_resume_remove(slot, last);
            } else {
                SSL_SESSION_up_ref(s);
                found = s;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

bool tlsio_resume_put(struct tlsio_resume_cache *c, const char *key, SSL_SESSION *session)
{
    bool ok = false;
    pthread_mutex_lock(&c->lock);
    if (c->slots == NULL) {
        c->slots = calloc(TLSIO_RESUME_SLOTS, sizeof(c->slots[0]));
    }
    struct tlsio_resume_slot *slot = tlsio_resume_slot(c, key);
    if (slot != NULL && (slot->key == NULL || strcmp(slot->key, key) != 0)) {
        tlsio_resume_slot_clear(slot);
        slot->key = strdup(key);
    }
    if (slot != NULL && slot->key != NULL) {
        if (slot->n_sessions == TLSIO_RESUME_PER_SLOT) {
            SSL_SESSION_free(tlsio_resume_remove(slot, 0));
        }
        slot->sessions[slot->n_sessions++] = session;
        ok = true;
    }
    pthread_mutex_unlock(&c->lock);
    if (!ok) {
        SSL_SESSION_free(session);
    }
    return ok;
}

void tlsio_resume_forget(struct tlsio_resume_cache *c, const char *key)
{
    pthread_mutex_lock(&c->lock);
    struct tlsio_resume_slot *slot = tlsio_resume_slot(c, key);
    if (slot != NULL && slot->key != NULL && strcmp(slot->key, key) == 0) {
        tlsio_resume_slot_clear(slot);
    }
    pthread_mutex_unlock(&c->lock);
}

size_t tlsio_resume_count(struct tlsio_resume_cache *c, const char *key)
{
    size_t n = 0;
    pthread_mutex_lock(&c->lock);
    struct tlsio_resume_slot *slot = tlsio_resume_slot(c, key);
    if (slot != NULL && slot->key != NULL && strcmp(slot->key, key) == 0) {
        n = slot->n_sessions;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}
