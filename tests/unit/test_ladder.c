/*
 * test_ladder: leg 2's fallback ladder: the first attempt, the next step for every
 * configured order of steps and both failure kinds (checked against a model and by hand),
 * the end of the ladder, fallback off, and the encoding the memory keeps: a round trip for
 * every reachable attempt and refusal of values the configuration cannot use.
 */
#include "ladder.h"

#include <stdio.h>
#include <string.h>

#include "check.h"

#define NCC CONF_FALLBACK_NO_CLIENT_CERT
#define TLS12 CONF_FALLBACK_TLS12
#define CLEAR CONF_FALLBACK_CLEARTEXT

static struct ladder_config config(const enum conf_fallback_step *steps, size_t n_steps,
                                   bool has_client_cert)
{
    return (struct ladder_config){
        .steps = steps, .n_steps = n_steps, .fallback = true, .has_client_cert = has_client_cert};
}

static bool same_flags(const struct ladder_attempt *a, const struct ladder_attempt *b)
{
    return a->no_client_cert == b->no_client_cert && a->max_tls12 == b->max_tls12 &&
           a->cleartext == b->cleartext;
}

/* check_attempt checks an attempt's flags and next step. */
static void check_attempt(const struct ladder_attempt *a, bool no_client_cert, bool max_tls12,
                          bool cleartext, unsigned next_step)
{
    CHECK_INT(a->no_client_cert, no_client_cert);
    CHECK_INT(a->max_tls12, max_tls12);
    CHECK_INT(a->cleartext, cleartext);
    CHECK_INT(a->next_step, next_step);
}

static void test_start(void)
{
    struct ladder_attempt a;
    memset(&a, 0xff, sizeof(a));
    ladder_start(&a);
    check_attempt(&a, false, false, false, 0);
    CHECK(ladder_is_first(&a));
    CHECK_STR(ladder_name(&a), "tls");
    CHECK_INT(ladder_encode(&a), 0);

    struct ladder_attempt b = a;
    b.no_client_cert = true;
    CHECK(!ladder_is_first(&b));
    b = a;
    b.max_tls12 = true;
    CHECK(!ladder_is_first(&b));
    b = a;
    b.cleartext = true;
    CHECK(!ladder_is_first(&b));
}

static void test_names(void)
{
    static const struct {
        bool no_client_cert;
        bool max_tls12;
        bool cleartext;
        const char *name;
    } names[] = {
        {false, false, false, "tls"},      {true, false, false, "no-client-cert"},
        {false, true, false, "tls12"},     {true, true, false, "no-client-cert+tls12"},
        {false, false, true, "cleartext"}, {true, false, true, "cleartext"},
        {false, true, true, "cleartext"},  {true, true, true, "cleartext"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        struct ladder_attempt a = {.no_client_cert = names[i].no_client_cert,
                                   .max_tls12 = names[i].max_tls12,
                                   .cleartext = names[i].cleartext};
        CHECK_STR(ladder_name(&a), names[i].name);
        /* The name read back (the shared store keeps names) is the same step: exact for
         * the TLS steps, cleartext alone for any cleartext attempt. */
        struct ladder_attempt canonical = {.no_client_cert = !a.cleartext && a.no_client_cert,
                                           .max_tls12 = !a.cleartext && a.max_tls12,
                                           .cleartext = a.cleartext};
        CHECK_INT(ladder_value_of_name(names[i].name), ladder_encode(&canonical));
    }
    static const char *const unknown[] = {
        "", "tls", "TLS12", "cleartext ", " cleartext", "tls12+no-client-cert", "no-client-cert+",
        "1"};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        CHECK_INT(ladder_value_of_name(unknown[i]), 0);
    }
}

/* The steps taken, by hand, for the orders and failures that matter most. */
static void test_next_by_hand(void)
{
    static const enum conf_fallback_step all[] = {NCC, TLS12, CLEAR};
    struct ladder_config c = config(all, 3, true);
    struct ladder_attempt a;

    /* With a client certificate, every handshake failure takes the next step. */
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, true, false, false, 1);
    CHECK_STR(ladder_name(&a), "no-client-cert");
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, true, true, false, 2);
    CHECK_STR(ladder_name(&a), "no-client-cert+tls12");
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, true, true, true, 3);
    CHECK_STR(ladder_name(&a), "cleartext");
    /* Nothing after cleartext, whatever failed. */
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, true, true, true, 3);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_OTHER));
    check_attempt(&a, true, true, true, 3);

    /* Without one, the certificate step does not apply. */
    c = config(all, 3, false);
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, false, true, false, 2);
    CHECK_STR(ladder_name(&a), "tls12");
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, false, true, true, 3);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));

    /* A failure outside the handshake: only cleartext helps. */
    c = config(all, 3, true);
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_OTHER));
    check_attempt(&a, false, false, true, 3);
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(ladder_next(&a, &c, LADDER_FAILED_OTHER));
    check_attempt(&a, true, false, true, 3);

    /* The configured order is followed. */
    static const enum conf_fallback_step reversed[] = {CLEAR, TLS12, NCC};
    c = config(reversed, 3, true);
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, false, false, true, 1);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, false, false, true, 1);

    static const enum conf_fallback_step tls12_first[] = {TLS12, NCC, CLEAR};
    c = config(tls12_first, 3, true);
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, false, true, false, 1);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, true, true, false, 2);
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(ladder_next(&a, &c, LADDER_FAILED_OTHER)); /* skips no-client-cert */
    check_attempt(&a, false, true, true, 3);
    CHECK_STR(ladder_name(&a), "cleartext");

    /* No cleartext step: a failure outside the handshake ends the ladder at once. */
    static const enum conf_fallback_step tls_only[] = {NCC, TLS12};
    c = config(tls_only, 2, true);
    ladder_start(&a);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_OTHER));
    CHECK(ladder_is_first(&a));
    ladder_start(&a);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(a.no_client_cert && a.max_tls12 && !a.cleartext);

    /* Only the certificate step, and no certificate: nothing applies. */
    static const enum conf_fallback_step ncc_only[] = {NCC};
    c = config(ncc_only, 1, false);
    ladder_start(&a);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(ladder_is_first(&a));

    /* No steps at all. */
    c = config(NULL, 0, true);
    ladder_start(&a);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_OTHER));
    CHECK(ladder_is_first(&a));

    /* Fallback off: never a next attempt, and the flags stay. */
    c = config(all, 3, true);
    c.fallback = false;
    ladder_start(&a);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_OTHER));
    CHECK(ladder_is_first(&a));
    a = (struct ladder_attempt){.no_client_cert = true, .max_tls12 = true, .next_step = 2};
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_OTHER));
    CHECK(a.no_client_cert && a.max_tls12 && !a.cleartext);
}

/* Every configured order: each subset of the three steps, in each order (16 in all). */
struct order {
    enum conf_fallback_step steps[3];
    size_t n;
};

static size_t all_orders(struct order out[16])
{
    size_t n = 0;
    out[n++] = (struct order){.n = 0};
    for (int a = 0; a < 3; a++) {
        out[n++] = (struct order){{(enum conf_fallback_step)a}, 1};
        for (int b = 0; b < 3; b++) {
            if (b == a) {
                continue;
            }
            out[n++] = (struct order){{(enum conf_fallback_step)a, (enum conf_fallback_step)b}, 2};
            for (int c = 0; c < 3; c++) {
                if (c != a && c != b) {
                    out[n++] =
                        (struct order){{(enum conf_fallback_step)a, (enum conf_fallback_step)b,
                                        (enum conf_fallback_step)c},
                                       3};
                }
            }
        }
    }
    return n;
}

/* model_applies tells whether |step| can follow a failure of kind |failure| from |a|. */
static bool model_applies(enum conf_fallback_step step, const struct ladder_attempt *a,
                          const struct ladder_config *c, enum ladder_failure failure)
{
    switch (step) {
    case CONF_FALLBACK_NO_CLIENT_CERT:
        return failure == LADDER_FAILED_HANDSHAKE && c->has_client_cert;
    case CONF_FALLBACK_TLS12:
        return failure == LADDER_FAILED_HANDSHAKE;
    case CONF_FALLBACK_CLEARTEXT:
        return !a->cleartext;
    }
    return false;
}

/* The attempts reached so far, by encoding, with the next step each had. */
struct reached {
    bool seen[8];
    struct ladder_attempt attempt[8];
};

/*
 * walk follows every sequence of failures from |a|, checking each ladder_next() against the
 * model, and records every attempt reached. Returns the number of mismatches.
 */
static int walk(const struct ladder_attempt *a, const struct ladder_config *c,
                struct reached *reached, int depth)
{
    int bad = 0;
    CHECK(depth <= 4);
    for (int f = 0; f <= 1; f++) {
        enum ladder_failure failure = f == 0 ? LADDER_FAILED_HANDSHAKE : LADDER_FAILED_OTHER;
        /* The model: the first configured step at or after next_step that applies. */
        bool want = false;
        size_t want_at = 0;
        for (size_t i = a->next_step; !a->cleartext && i < c->n_steps && !want; i++) {
            if (model_applies(c->steps[i], a, c, failure)) {
                want = true;
                want_at = i;
            }
        }
        struct ladder_attempt next = *a;
        bool got = ladder_next(&next, c, failure);
        if (got != want) {
            bad++;
            continue;
        }
        if (!got) {
            bad += !same_flags(&next, a);
            continue;
        }
        struct ladder_attempt expect = *a;
        switch (c->steps[want_at]) {
        case CONF_FALLBACK_NO_CLIENT_CERT:
            expect.no_client_cert = true;
            break;
        case CONF_FALLBACK_TLS12:
            expect.max_tls12 = true;
            break;
        case CONF_FALLBACK_CLEARTEXT:
            expect.cleartext = true;
            break;
        }
        expect.next_step = (uint8_t)(want_at + 1);
        if (!same_flags(&next, &expect) || next.next_step != expect.next_step ||
            ladder_is_first(&next)) {
            bad++;
            continue;
        }
        uint8_t value = ladder_encode(&next);
        reached->seen[value & 7] = true;
        reached->attempt[value & 7] = next;
        bad += walk(&next, c, reached, depth + 1);
    }
    return bad;
}

static void test_next_all_orders(void)
{
    struct order orders[16];
    CHECK_INT(all_orders(orders), 16);
    int n_reached = 0;
    for (size_t o = 0; o < 16; o++) {
        for (int cert = 0; cert <= 1; cert++) {
            struct ladder_config c = config(orders[o].steps, orders[o].n, cert);
            struct ladder_attempt first;
            ladder_start(&first);
            struct reached reached;
            memset(&reached, 0, sizeof(reached));
            int bad = walk(&first, &c, &reached, 0);
            if (bad != 0) {
                fprintf(stderr, "ladder: order %zu (%zu steps), cert %d: %d mismatches\n", o,
                        orders[o].n, cert, bad);
            }
            CHECK_INT(bad, 0);

            /* Every reachable attempt survives the memory: encode, decode, same attempt. */
            for (unsigned v = 0; v < 8; v++) {
                if (!reached.seen[v]) {
                    continue;
                }
                n_reached++;
                const struct ladder_attempt *a = &reached.attempt[v];
                uint8_t value = ladder_encode(a);
                CHECK(value != 0);
                struct ladder_attempt back;
                CHECK(ladder_decode(&back, &c, value));
                CHECK(same_flags(&back, a));
                CHECK_INT(back.next_step, a->next_step);
                CHECK_STR(ladder_name(&back), ladder_name(a));
                CHECK_INT(ladder_encode(&back), value);
                /* And it goes on down the ladder as the original would. */
                for (int f = 0; f <= 1; f++) {
                    enum ladder_failure failure =
                        f == 0 ? LADDER_FAILED_HANDSHAKE : LADDER_FAILED_OTHER;
                    struct ladder_attempt x = *a;
                    struct ladder_attempt y = back;
                    CHECK_INT(ladder_next(&x, &c, failure), ladder_next(&y, &c, failure));
                    CHECK(same_flags(&x, &y));
                }
                /* Fallback off: not usable, start from the first attempt. */
                struct ladder_config off = c;
                off.fallback = false;
                memset(&back, 0xff, sizeof(back));
                CHECK(!ladder_decode(&back, &off, value));
                CHECK(ladder_is_first(&back));
                CHECK_INT(back.next_step, 0);
            }
            /* Cleartext is reached exactly when it is configured. */
            bool has_clear = false;
            for (size_t i = 0; i < orders[o].n; i++) {
                has_clear = has_clear || orders[o].steps[i] == CLEAR;
            }
            bool reached_clear = false;
            for (unsigned v = 0; v < 8; v++) {
                reached_clear = reached_clear || (reached.seen[v] && reached.attempt[v].cleartext);
            }
            CHECK_INT(reached_clear, has_clear);
        }
    }
    CHECK(n_reached > 16);
}

static void test_encode(void)
{
    /* The seven non-first flag sets encode to seven distinct non-zero values. */
    uint8_t values[8];
    for (unsigned f = 0; f < 8; f++) {
        struct ladder_attempt a = {.no_client_cert = (f & 1) != 0,
                                   .max_tls12 = (f & 2) != 0,
                                   .cleartext = (f & 4) != 0,
                                   .next_step = (uint8_t)f};
        values[f] = ladder_encode(&a);
        CHECK_INT(values[f] == 0, f == 0);
        for (unsigned g = 0; g < f; g++) {
            CHECK(values[g] != values[f]);
        }
    }
}

static void test_decode_refuses(void)
{
    static const enum conf_fallback_step all[] = {NCC, TLS12, CLEAR};
    struct ladder_config c = config(all, 3, true);
    struct ladder_attempt a;

    /* 0 is the first attempt, never stored. */
    memset(&a, 0xff, sizeof(a));
    CHECK(!ladder_decode(&a, &c, 0));
    CHECK(ladder_is_first(&a));
    CHECK_INT(a.next_step, 0);

    /* Values no attempt encodes to. */
    uint8_t used_bits = 0;
    for (unsigned f = 1; f < 8; f++) {
        struct ladder_attempt x = {
            .no_client_cert = (f & 1) != 0, .max_tls12 = (f & 2) != 0, .cleartext = (f & 4) != 0};
        used_bits |= ladder_encode(&x);
    }
    int n_refused = 0;
    for (unsigned v = 1; v < 256; v++) {
        if ((v & ~(unsigned)used_bits) == 0) {
            continue;
        }
        memset(&a, 0xff, sizeof(a));
        CHECK(!ladder_decode(&a, &c, (uint8_t)v));
        CHECK(ladder_is_first(&a));
        CHECK_INT(a.next_step, 0);
        n_refused++;
    }
    CHECK_INT(n_refused, 248);

    /* A step that is not configured (any more). */
    struct ladder_attempt ncc = {.no_client_cert = true};
    struct ladder_attempt tls12 = {.max_tls12 = true};
    struct ladder_attempt clear = {.cleartext = true};
    struct ladder_attempt both = {.no_client_cert = true, .max_tls12 = true};
    struct ladder_attempt tls12_clear = {.max_tls12 = true, .cleartext = true};
    static const enum conf_fallback_step no_clear[] = {NCC, TLS12};
    static const enum conf_fallback_step only_clear[] = {CLEAR};
    static const enum conf_fallback_step only_tls12[] = {TLS12};
    struct ladder_config nc = config(no_clear, 2, true);
    struct ladder_config oc = config(only_clear, 1, true);
    struct ladder_config ot = config(only_tls12, 1, true);
    struct ladder_config none = config(NULL, 0, true);
    CHECK(!ladder_decode(&a, &nc, ladder_encode(&clear)));
    CHECK(ladder_is_first(&a));
    CHECK(!ladder_decode(&a, &nc, ladder_encode(&tls12_clear)));
    CHECK(!ladder_decode(&a, &oc, ladder_encode(&ncc)));
    CHECK(!ladder_decode(&a, &oc, ladder_encode(&tls12)));
    CHECK(!ladder_decode(&a, &oc, ladder_encode(&tls12_clear)));
    CHECK(!ladder_decode(&a, &ot, ladder_encode(&both)));
    CHECK(!ladder_decode(&a, &none, ladder_encode(&clear)));
    CHECK(ladder_decode(&a, &oc, ladder_encode(&clear)));
    check_attempt(&a, false, false, true, 1);
    CHECK(ladder_decode(&a, &ot, ladder_encode(&tls12)));
    check_attempt(&a, false, true, false, 1);

    /* Fallback off refuses even a configured step. */
    struct ladder_config off = c;
    off.fallback = false;
    CHECK(!ladder_decode(&a, &off, ladder_encode(&clear)));
    CHECK(!ladder_decode(&a, &off, ladder_encode(&tls12)));
    CHECK(ladder_is_first(&a));
}

/* next_step after decoding: after the last configured step the value used. */
static void test_decode_next_step(void)
{
    struct ladder_attempt tls12 = {.max_tls12 = true};
    struct ladder_attempt both = {.no_client_cert = true, .max_tls12 = true};
    struct ladder_attempt a;

    static const enum conf_fallback_step order1[] = {NCC, TLS12, CLEAR};
    struct ladder_config c = config(order1, 3, true);
    CHECK(ladder_decode(&a, &c, ladder_encode(&tls12)));
    check_attempt(&a, false, true, false, 2);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE)); /* no-client-cert is behind it */
    check_attempt(&a, false, true, true, 3);

    static const enum conf_fallback_step order2[] = {TLS12, NCC, CLEAR};
    c = config(order2, 3, true);
    CHECK(ladder_decode(&a, &c, ladder_encode(&tls12)));
    check_attempt(&a, false, true, false, 1);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    check_attempt(&a, true, true, false, 2);
    CHECK(ladder_decode(&a, &c, ladder_encode(&both)));
    check_attempt(&a, true, true, false, 2);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_OTHER));
    check_attempt(&a, true, true, true, 3);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_OTHER));

    static const enum conf_fallback_step order3[] = {TLS12, CLEAR};
    c = config(order3, 2, false);
    CHECK(ladder_decode(&a, &c, ladder_encode(&tls12)));
    check_attempt(&a, false, true, false, 1);
    CHECK(ladder_next(&a, &c, LADDER_FAILED_OTHER));
    check_attempt(&a, false, true, true, 2);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    struct ladder_attempt tls12_clear = {.max_tls12 = true, .cleartext = true};
    CHECK(ladder_decode(&a, &c, ladder_encode(&tls12_clear)));
    check_attempt(&a, false, true, true, 2);
    CHECK(!ladder_next(&a, &c, LADDER_FAILED_HANDSHAKE));
    CHECK_STR(ladder_name(&a), "cleartext");
}

int main(void)
{
    test_start();
    test_names();
    test_next_by_hand();
    test_next_all_orders();
    test_encode();
    test_decode_refuses();
    test_decode_next_step();
    return check_exit("test_ladder");
}
