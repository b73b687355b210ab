/*
 * ladder: the step-down order of leg 2's TLS attempts, and its encoding for the memory.
 * Pure; the session decides when to call it and what to do with the answer.
 */
#include "ladder.h"

#include <string.h>

#define LADDER_NO_CLIENT_CERT_BIT 1u
#define LADDER_TLS12_BIT 2u
#define LADDER_CLEARTEXT_BIT 4u

void ladder_start(struct ladder_attempt *out)
{
    *out = (struct ladder_attempt){.next_step = 0};
}

bool ladder_is_first(const struct ladder_attempt *a)
{
    return !a->no_client_cert && !a->max_tls12 && !a->cleartext;
}

bool ladder_next(struct ladder_attempt *a, const struct ladder_config *c,
                 enum ladder_failure failure)
{
    if (!c->fallback || a->cleartext) {
        return false;
    }
    bool in_handshake = failure == LADDER_FAILED_HANDSHAKE;
    while (a->next_step < c->n_steps) {
        switch (c->steps[a->next_step++]) {
        case CONF_FALLBACK_NO_CLIENT_CERT:
            if (in_handshake && c->has_client_cert && !a->no_client_cert) {
                a->no_client_cert = true;
                return true;
            }
            break;
        case CONF_FALLBACK_TLS12:
            if (in_handshake && !a->max_tls12) {
                a->max_tls12 = true;
                return true;
            }
            break;
        case CONF_FALLBACK_CLEARTEXT:
            a->cleartext = true;
            return true;
        }
    }
    return false;
}

uint8_t ladder_encode(const struct ladder_attempt *a)
{
    return (uint8_t)((a->no_client_cert ? LADDER_NO_CLIENT_CERT_BIT : 0) |
                     (a->max_tls12 ? LADDER_TLS12_BIT : 0) |
                     (a->cleartext ? LADDER_CLEARTEXT_BIT : 0));
}

/* ladder_step_index returns where |step| is configured, or -1. */
static int ladder_step_index(const struct ladder_config *c, enum conf_fallback_step step)
{
    for (size_t i = 0; i < c->n_steps; i++) {
        if (c->steps[i] == step) {
            return (int)i;
        }
    }
    return -1;
}

bool ladder_decode(struct ladder_attempt *out, const struct ladder_config *c, uint8_t value)
{
    ladder_start(out);
    if (!c->fallback || value == 0 ||
        (value & ~(LADDER_NO_CLIENT_CERT_BIT | LADDER_TLS12_BIT | LADDER_CLEARTEXT_BIT)) != 0) {
        return false;
    }
    static const struct {
        unsigned bit;
        enum conf_fallback_step step;
    } flags[] = {
        {LADDER_NO_CLIENT_CERT_BIT, CONF_FALLBACK_NO_CLIENT_CERT},
        {LADDER_TLS12_BIT, CONF_FALLBACK_TLS12},
        {LADDER_CLEARTEXT_BIT, CONF_FALLBACK_CLEARTEXT},
    };
    int last = -1;
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if ((value & flags[i].bit) == 0) {
            continue;
        }
        int at = ladder_step_index(c, flags[i].step);
        if (at < 0) {
            return false;
        }
        last = at > last ? at : last;
    }
    out->no_client_cert = (value & LADDER_NO_CLIENT_CERT_BIT) != 0;
    out->max_tls12 = (value & LADDER_TLS12_BIT) != 0;
    out->cleartext = (value & LADDER_CLEARTEXT_BIT) != 0;
    out->next_step = (uint8_t)(last + 1);
    return true;
}

const char *ladder_name(const struct ladder_attempt *a)
{
    if (a->cleartext) {
        return "cleartext";
    }
    if (a->no_client_cert && a->max_tls12) {
        return "no-client-cert+tls12";
    }
    if (a->no_client_cert) {
        return "no-client-cert";
    }
    return a->max_tls12 ? "tls12" : "tls";
}

uint8_t ladder_value_of_name(const char *name)
{
    static const struct {
        const char *name;
        uint8_t value;
    } steps[] = {
        {"no-client-cert", LADDER_NO_CLIENT_CERT_BIT},
        {"tls12", LADDER_TLS12_BIT},
        {"no-client-cert+tls12", LADDER_NO_CLIENT_CERT_BIT | LADDER_TLS12_BIT},
        {"cleartext", LADDER_CLEARTEXT_BIT},
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        if (strcmp(name, steps[i].name) == 0) {
            return steps[i].value;
        }
    }
    return 0;
}
