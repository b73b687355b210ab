/*
 * tlsrpt: the TLS-RPT (RFC 8460) aggregator. A chained hash table keyed by (UTC day,
 * policy domain) holds one entry per report; an entry is a struct tlsrpt_report plus its
 * bookkeeping, so a report handed out is an entry unlinked from the table. One mutex
 * guards the table; inputs are checked and normalised before it is taken. Never logs,
 * never does I/O. The JSON, file names and the TXT record are in tlsrpt_text.c.
 */
#include "tlsrpt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/siphash.h>

/* The hash table's buckets: enough for max_domains of one day, within reason. */
#define TLSRPT_BUCKETS_MIN 16
#define TLSRPT_BUCKETS_MAX 65536
/* 9999-12-31T23:59:59Z: RFC 3339 has four-digit years. */
#define TLSRPT_NOW_MAX INT64_C(253402300799)

/*
 * A policy in one allocation: the pointer arrays the report exposes, then |key|, the exact
 * bytes two equal policies share (type, counts, every string with its NUL), compared to
 * find a policy already counted.
 */
struct tlsrpt_pblock {
    size_t size; /* of the whole allocation */
    uint64_t hash;
    const char **strings;
    const char **mx;
    size_t key_len;
    char *key;
};

struct tlsrpt_entry {
    struct tlsrpt_report report; /* first: a report handed out is its entry */
    struct tlsrpt_report_policy policies[TLSRPT_POLICIES_MAX];
    struct tlsrpt_pblock *pblocks[TLSRPT_POLICIES_MAX];
    struct tlsrpt_row *rows[TLSRPT_POLICIES_MAX]; /* == policies[i].rows, writable */
    size_t rows_cap[TLSRPT_POLICIES_MAX];
    size_t n_rows; /* over every policy, at most TLSRPT_ROWS_MAX */
    size_t bytes;  /* counted against the aggregator's budget */
    int64_t day;
    uint64_t hash;
    struct tlsrpt_entry *chain;
};

struct tlsrpt_day {
    int64_t day;
    size_t n_domains;
};

struct tlsrpt {
    pthread_mutex_t mu;
    uint64_t seed[2];
    size_t max_domains;
    size_t max_bytes;
    size_t bytes;
    struct tlsrpt_entry **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_entries;
    struct tlsrpt_day days[TLSRPT_DAYS_MAX];
    size_t n_days;
};

/* A failure checked and normalised, its strings borrowed or in the arrays. */
struct tlsrpt_norm {
    const char *result_type; /* static */
    char sending_ip[INET6_ADDRSTRLEN];
    char receiving_ip[INET6_ADDRSTRLEN];
    char mx_host[DNSNAME_BUF];
    bool has_mx_host;
    const char *helo;
    size_t helo_len;
    const char *info;
    size_t info_len;
    const char *reason;
    size_t reason_len;
};

static const char *const tlsrpt_result_types[] = {
    "starttls-not-supported", "certificate-host-mismatch",
    "certificate-expired",    "certificate-not-trusted",
    "validation-failure",     "tlsa-invalid",
    "dnssec-invalid",         "dane-required",
    "sts-policy-fetch-error", "sts-policy-invalid",
    "sts-webpki-invalid",
};

/* tlsrpt_result_type_static returns the table's copy of |s|, or NULL. */
static const char *tlsrpt_result_type_static(const char *s)
{
    if (s == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(tlsrpt_result_types) / sizeof(tlsrpt_result_types[0]); i++) {
        if (strcmp(s, tlsrpt_result_types[i]) == 0) {
            return tlsrpt_result_types[i];
        }
    }
    return NULL;
}

bool tlsrpt_result_type_valid(const char *s)
{
    return tlsrpt_result_type_static(s) != NULL;
}

const char *tlsrpt_policy_type_name(enum tlsrpt_policy_type type)
{
    switch (type) {
    case TLSRPT_POLICY_NO_POLICY_FOUND:
        return "no-policy-found";
    case TLSRPT_POLICY_STS:
        return "sts";
    case TLSRPT_POLICY_TLSA:
        return "tlsa";
    }
    return NULL;
}

struct tlsrpt *tlsrpt_new(size_t max_domains)
{
    if (max_domains == 0) {
        return NULL;
    }
    struct tlsrpt *agg = calloc(1, sizeof(*agg));
    if (agg == NULL) {
        return NULL;
    }
    /* Policy domains are recipient domains, which a sender chooses: a secret seed keeps
     * anyone from choosing names that share a bucket. */
    ssize_t n;
    do {
        n = getrandom(agg->seed, sizeof(agg->seed), 0);
    } while (n == -1 && errno == EINTR);
    size_t n_buckets = TLSRPT_BUCKETS_MIN;
    while (n_buckets < max_domains && n_buckets < TLSRPT_BUCKETS_MAX) {
        n_buckets *= 2;
    }
    agg->buckets = calloc(n_buckets, sizeof(*agg->buckets));
    if (n != (ssize_t)sizeof(agg->seed) || agg->buckets == NULL ||
        pthread_mutex_init(&agg->mu, NULL) != 0) {
        free(agg->buckets);
        free(agg);
        return NULL;
    }
    agg->n_buckets = n_buckets;
    agg->max_domains = max_domains;
    agg->max_bytes = max_domains > SIZE_MAX / TLSRPT_BYTES_PER_DOMAIN
                         ? SIZE_MAX
                         : max_domains * TLSRPT_BYTES_PER_DOMAIN;
    return agg;
}

/* tlsrpt_entry_free frees an entry and all it owns: the rows' string blocks start at their
 * sending_mta_ip, which every row has. */
static void tlsrpt_entry_free(struct tlsrpt_entry *e)
{
    for (size_t p = 0; p < e->report.n_policies; p++) {
        for (size_t r = 0; r < e->policies[p].n_rows; r++) {
            free((char *)e->rows[p][r].failure.sending_mta_ip);
        }
        free(e->rows[p]);
        free(e->pblocks[p]);
    }
    free(e);
}

void tlsrpt_report_free(struct tlsrpt_report *report)
{
    if (report != NULL) {
        tlsrpt_entry_free((struct tlsrpt_entry *)report);
    }
}

void tlsrpt_reports_free(struct tlsrpt_report **reports, size_t n)
{
    if (reports == NULL) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        tlsrpt_report_free(reports[i]);
    }
    free(reports);
}

void tlsrpt_free(struct tlsrpt *agg)
{
    if (agg == NULL) {
        return;
    }
    for (size_t b = 0; b < agg->n_buckets; b++) {
        struct tlsrpt_entry *e = agg->buckets[b];
        while (e != NULL) {
            struct tlsrpt_entry *next = e->chain;
            tlsrpt_entry_free(e);
            e = next;
        }
    }
    free(agg->buckets);
    pthread_mutex_destroy(&agg->mu);
    free(agg);
}

/* ---- checking and normalising the inputs (no lock held) ---- */

static bool tlsrpt_host(char *out, const char *name)
{
    return name != NULL &&
           dnsname_parse(out, NULL, name, strlen(name), DNSNAME_ALLOW_TRAILING_DOT) == DNSNAME_HOST;
}

/* tlsrpt_ip writes |text| (IPv4 or IPv6) in RFC 5952 form: inet_ntop's, which compresses
 * the longest run of zero groups and lowercases. An IPv4-mapped address is what a
 * dual-stack socket shows of an IPv4 peer, so it is reported as that IPv4 address. */
static bool tlsrpt_ip(char out[INET6_ADDRSTRLEN], const char *text)
{
    struct in6_addr a6;
    if (text == NULL) {
        return false;
    }
    if (inet_pton(AF_INET, text, &a6) == 1) {
        return inet_ntop(AF_INET, &a6, out, INET6_ADDRSTRLEN) != NULL;
    }
    if (inet_pton(AF_INET6, text, &a6) != 1) {
        return false;
    }
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        return inet_ntop(AF_INET, &a6.s6_addr[12], out, INET6_ADDRSTRLEN) != NULL;
    }
    return inet_ntop(AF_INET6, &a6, out, INET6_ADDRSTRLEN) != NULL;
}

/* tlsrpt_cut returns how many of |s|'s bytes to keep so that at most |max| are kept and a
 * UTF-8 sequence is not split (a continuation byte is never the first one dropped). */
static size_t tlsrpt_cut(const char *s, size_t max)
{
    size_t len = strlen(s);
    if (len <= max) {
        return len;
    }
    size_t keep = max;
    while (keep > 0 && ((unsigned char)s[keep] & 0xc0) == 0x80 && max - keep < 3) {
        keep--;
    }
    return keep;
}

static bool tlsrpt_uri_text(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] <= 0x20 || s[i] >= 0x7f) {
            return false;
        }
    }
    return len > 0;
}

static int tlsrpt_norm_failure(struct tlsrpt_norm *n, const struct tlsrpt_failure *f)
{
    memset(n, 0, sizeof(*n));
    n->result_type = tlsrpt_result_type_static(f->result_type);
    if (n->result_type == NULL || !tlsrpt_ip(n->sending_ip, f->sending_mta_ip) ||
        !tlsrpt_ip(n->receiving_ip, f->receiving_ip)) {
        return -EINVAL;
    }
    if (f->receiving_mx_hostname != NULL) {
        if (!tlsrpt_host(n->mx_host, f->receiving_mx_hostname)) {
            return -EINVAL;
        }
        n->has_mx_host = true;
    }
    if (f->receiving_mx_helo != NULL) {
        n->helo = f->receiving_mx_helo;
        n->helo_len = tlsrpt_cut(n->helo, TLSRPT_TEXT_MAX);
    }
    if (f->additional_information != NULL) {
        n->info = f->additional_information;
        n->info_len = strlen(n->info);
        if (n->info_len > TLSRPT_URI_MAX || !tlsrpt_uri_text(n->info, n->info_len)) {
            return -EINVAL;
        }
    }
    if (f->failure_reason_code != NULL) {
        n->reason = f->failure_reason_code;
        n->reason_len = tlsrpt_cut(n->reason, TLSRPT_TEXT_MAX);
    }
    return 0;
}

/* tlsrpt_pblock_layout points a block's arrays and key into its allocation. */
static void tlsrpt_pblock_layout(struct tlsrpt_pblock *b, size_t n_strings, size_t n_mx)
{
    b->strings = (const char **)(void *)(b + 1);
    b->mx = b->strings + n_strings;
    b->key = (char *)(b->mx + n_mx);
}

/*
 * tlsrpt_pblock_new checks |policy| and builds its block; the normalised domain goes to
 * |out_domain|. Returns 0, -EINVAL or -ENOMEM.
 */
static int tlsrpt_pblock_new(struct tlsrpt_pblock **out, char *out_domain, const struct tlsrpt *agg,
                             const struct tlsrpt_policy *policy)
{
    *out = NULL;
    size_t n_strings = policy->n_policy_strings;
    size_t n_mx = policy->n_mx_hosts;
    if (tlsrpt_policy_type_name(policy->type) == NULL ||
        !tlsrpt_host(out_domain, policy->policy_domain) || n_strings > TLSRPT_POLICY_STRINGS_MAX ||
        n_mx > TLSRPT_POLICY_STRINGS_MAX || (n_strings > 0 && policy->policy_strings == NULL) ||
        (n_mx > 0 && policy->mx_hosts == NULL)) {
        return -EINVAL;
    }
    if (policy->type == TLSRPT_POLICY_NO_POLICY_FOUND ? n_strings != 0 : n_strings == 0) {
        return -EINVAL;
    }
    if (policy->type != TLSRPT_POLICY_STS && n_mx != 0) {
        return -EINVAL;
    }
    /* First the sizes, checking every string; a normalised pattern is as long as the
     * pattern without its trailing dot. */
    size_t text = 0;
    char scratch[DNSNAME_BUF];
    for (size_t i = 0; i < n_strings + n_mx; i++) {
        const char *s = i < n_strings ? policy->policy_strings[i] : policy->mx_hosts[i - n_strings];
        size_t len;
        if (s == NULL) {
            return -EINVAL;
        }
        if (i < n_strings) {
            len = strlen(s);
        } else if (dnsname_parse(scratch, &len, s, strlen(s),
                                 DNSNAME_ALLOW_WILDCARD | DNSNAME_ALLOW_TRAILING_DOT) ==
                   DNSNAME_INVALID) {
            return -EINVAL;
        }
        text += len + 1;
        if (text > TLSRPT_POLICY_BYTES_MAX) {
            return -EINVAL;
        }
    }
    /* The key: type, the two counts, then each string and pattern with its NUL. */
    size_t key_len = 1 + 2 * sizeof(size_t) + text;
    size_t size = sizeof(struct tlsrpt_pblock) + (n_strings + n_mx) * sizeof(char *) + key_len;
    struct tlsrpt_pblock *b = malloc(size);
    if (b == NULL) {
        return -ENOMEM;
    }
    tlsrpt_pblock_layout(b, n_strings, n_mx);
    b->size = size;
    b->key_len = key_len;
    char *k = b->key;
    *k++ = (char)policy->type;
    memcpy(k, &n_strings, sizeof(n_strings));
    k += sizeof(n_strings);
    memcpy(k, &n_mx, sizeof(n_mx));
    k += sizeof(n_mx);
    for (size_t i = 0; i < n_strings; i++) {
        size_t len = strlen(policy->policy_strings[i]) + 1;
        memcpy(k, policy->policy_strings[i], len);
        b->strings[i] = k;
        k += len;
    }
    for (size_t i = 0; i < n_mx; i++) {
        size_t len;
        const char *m = policy->mx_hosts[i];
        (void)dnsname_parse(scratch, &len, m, strlen(m),
                            DNSNAME_ALLOW_WILDCARD | DNSNAME_ALLOW_TRAILING_DOT);
        memcpy(k, scratch, len + 1);
        b->mx[i] = k;
        k += len + 1;
    }
    b->hash = SIPHASH_24(agg->seed, (const uint8_t *)b->key, b->key_len);
    *out = b;
    return 0;
}

/* tlsrpt_pblock_dup copies a block, its pointers moved into the copy. */
static struct tlsrpt_pblock *tlsrpt_pblock_dup(const struct tlsrpt_pblock *b, size_t n_strings,
                                               size_t n_mx)
{
    struct tlsrpt_pblock *c = malloc(b->size);
    if (c == NULL) {
        return NULL;
    }
    memcpy(c, b, b->size);
    tlsrpt_pblock_layout(c, n_strings, n_mx);
    for (size_t i = 0; i < n_strings + n_mx; i++) {
        c->strings[i] = c->key + (b->strings[i] - b->key);
    }
    return c;
}

/* ---- rows ---- */

static bool tlsrpt_same(const char *a, const char *b, size_t b_len)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    return strlen(a) == b_len && memcmp(a, b, b_len) == 0;
}

static bool tlsrpt_row_matches(const struct tlsrpt_row *r, const struct tlsrpt_norm *n)
{
    const struct tlsrpt_failure *f = &r->failure;
    return f->result_type == n->result_type && strcmp(f->sending_mta_ip, n->sending_ip) == 0 &&
           strcmp(f->receiving_ip, n->receiving_ip) == 0 &&
           tlsrpt_same(f->receiving_mx_hostname, n->has_mx_host ? n->mx_host : NULL,
                       strlen(n->mx_host)) &&
           tlsrpt_same(f->receiving_mx_helo, n->helo, n->helo_len) &&
           tlsrpt_same(f->additional_information, n->info, n->info_len) &&
           tlsrpt_same(f->failure_reason_code, n->reason, n->reason_len);
}

/* tlsrpt_put appends |len| bytes at |s| and a NUL at *|k|; NULL stays NULL. */
static const char *tlsrpt_put(char **k, const char *s, size_t len)
{
    if (s == NULL) {
        return NULL;
    }
    char *at = *k;
    memcpy(at, s, len);
    at[len] = '\0';
    *k += len + 1;
    return at;
}

static size_t tlsrpt_row_text(const struct tlsrpt_norm *n)
{
    return strlen(n->sending_ip) + 1 + strlen(n->receiving_ip) + 1 +
           (n->has_mx_host ? strlen(n->mx_host) + 1 : 0) + (n->helo ? n->helo_len + 1 : 0) +
           (n->info ? n->info_len + 1 : 0) + (n->reason ? n->reason_len + 1 : 0);
}

/* tlsrpt_row_fill copies |n|'s strings into one block of tlsrpt_row_text(n) bytes,
 * sending_mta_ip first (tlsrpt_entry_free frees the block through it). */
static bool tlsrpt_row_fill(struct tlsrpt_row *r, const struct tlsrpt_norm *n)
{
    char *k = malloc(tlsrpt_row_text(n));
    if (k == NULL) {
        return false;
    }
    struct tlsrpt_failure *f = &r->failure;
    f->result_type = n->result_type;
    f->sending_mta_ip = tlsrpt_put(&k, n->sending_ip, strlen(n->sending_ip));
    f->receiving_ip = tlsrpt_put(&k, n->receiving_ip, strlen(n->receiving_ip));
    f->receiving_mx_hostname =
        tlsrpt_put(&k, n->has_mx_host ? n->mx_host : NULL, strlen(n->mx_host));
    f->receiving_mx_helo = tlsrpt_put(&k, n->helo, n->helo_len);
    f->additional_information = tlsrpt_put(&k, n->info, n->info_len);
    f->failure_reason_code = tlsrpt_put(&k, n->reason, n->reason_len);
    r->failed_session_count = 1;
    return true;
}

/* tlsrpt_norm_of views a stored row as a normalised failure, for copying it. */
static void tlsrpt_norm_of(struct tlsrpt_norm *n, const struct tlsrpt_failure *f)
{
    memset(n, 0, sizeof(*n));
    n->result_type = f->result_type;
    strcpy(n->sending_ip, f->sending_mta_ip);
    strcpy(n->receiving_ip, f->receiving_ip);
    if (f->receiving_mx_hostname != NULL) {
        strcpy(n->mx_host, f->receiving_mx_hostname);
        n->has_mx_host = true;
    }
    n->helo = f->receiving_mx_helo;
    n->helo_len = n->helo != NULL ? strlen(n->helo) : 0;
    n->info = f->additional_information;
    n->info_len = n->info != NULL ? strlen(n->info) : 0;
    n->reason = f->failure_reason_code;
    n->reason_len = n->reason != NULL ? strlen(n->reason) : 0;
}

static void tlsrpt_add(uint64_t *count)
{
    if (*count != UINT64_MAX) {
        (*count)++;
    }
}

/* ---- the table (mutex held) ---- */

static uint64_t tlsrpt_key_hash(const struct tlsrpt *agg, int64_t day, const char *domain)
{
    uint8_t key[sizeof(day) + DNSNAME_BUF];
    size_t len = strlen(domain);
    memcpy(key, &day, sizeof(day));
    memcpy(key + sizeof(day), domain, len);
    return SIPHASH_24(agg->seed, key, sizeof(day) + len);
}

static struct tlsrpt_entry **tlsrpt_slot(struct tlsrpt *agg, int64_t day, const char *domain,
                                         uint64_t hash)
{
    struct tlsrpt_entry **slot = &agg->buckets[hash & (agg->n_buckets - 1)];
    while (*slot != NULL && ((*slot)->hash != hash || (*slot)->day != day ||
                             strcmp((*slot)->report.policy_domain, domain) != 0)) {
        slot = &(*slot)->chain;
    }
    return slot;
}

static struct tlsrpt_day *tlsrpt_day_find(struct tlsrpt *agg, int64_t day)
{
    for (size_t i = 0; i < agg->n_days; i++) {
        if (agg->days[i].day == day) {
            return &agg->days[i];
        }
    }
    return NULL;
}

static void tlsrpt_day_release(struct tlsrpt *agg, int64_t day)
{
    struct tlsrpt_day *d = tlsrpt_day_find(agg, day);
    if (d != NULL && --d->n_domains == 0) {
        *d = agg->days[--agg->n_days];
    }
}

static bool tlsrpt_fits(const struct tlsrpt *agg, size_t more)
{
    return more <= agg->max_bytes && agg->bytes <= agg->max_bytes - more;
}

/* tlsrpt_entry_new makes the entry of (day, domain) with its first policy, or says why
 * not: -ENOSPC or -ENOMEM. */
static int tlsrpt_entry_new(struct tlsrpt_entry **out, struct tlsrpt *agg, int64_t day,
                            const char *domain, struct tlsrpt_pblock *pb)
{
    struct tlsrpt_day *d = tlsrpt_day_find(agg, day);
    if ((d == NULL && agg->n_days == TLSRPT_DAYS_MAX) ||
        (d != NULL && d->n_domains >= agg->max_domains) ||
        !tlsrpt_fits(agg, sizeof(struct tlsrpt_entry) + pb->size)) {
        return -ENOSPC;
    }
    struct tlsrpt_entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        return -ENOMEM;
    }
    if (d == NULL) {
        d = &agg->days[agg->n_days++];
        d->day = day;
        d->n_domains = 0;
    }
    d->n_domains++;
    strcpy(e->report.policy_domain, domain);
    e->report.day_start = day * TLSRPT_DAY_SECONDS;
    e->report.begin = e->report.day_start;
    e->report.end = e->report.day_start + TLSRPT_DAY_SECONDS - 1;
    e->report.policies = e->policies;
    e->day = day;
    e->bytes = sizeof(*e);
    agg->bytes += e->bytes;
    agg->n_entries++;
    *out = e;
    return 0;
}

/* tlsrpt_policy_of finds or adds |*pb| in |e| (taking it: *pb becomes NULL). Returns the
 * policy's index, or -ENOSPC. */
static int tlsrpt_policy_of(struct tlsrpt *agg, struct tlsrpt_entry *e, struct tlsrpt_pblock **pb,
                            const struct tlsrpt_policy *given)
{
    for (size_t i = 0; i < e->report.n_policies; i++) {
        const struct tlsrpt_pblock *b = e->pblocks[i];
        if (b->hash == (*pb)->hash && b->key_len == (*pb)->key_len &&
            memcmp(b->key, (*pb)->key, b->key_len) == 0) {
            return (int)i;
        }
    }
    if (e->report.n_policies == TLSRPT_POLICIES_MAX || !tlsrpt_fits(agg, (*pb)->size)) {
        return -ENOSPC;
    }
    size_t i = e->report.n_policies++;
    struct tlsrpt_report_policy *p = &e->policies[i];
    memset(p, 0, sizeof(*p));
    p->policy.type = given->type;
    p->policy.policy_domain = e->report.policy_domain;
    p->policy.policy_strings = (*pb)->strings;
    p->policy.n_policy_strings = given->n_policy_strings;
    p->policy.mx_hosts = (*pb)->mx;
    p->policy.n_mx_hosts = given->n_mx_hosts;
    e->pblocks[i] = *pb;
    e->bytes += (*pb)->size;
    agg->bytes += (*pb)->size;
    *pb = NULL;
    return (int)i;
}

/* tlsrpt_count_failure counts |n| under policy |i| of |e|: its row, a new row, or none. */
static void tlsrpt_count_failure(struct tlsrpt *agg, struct tlsrpt_entry *e, size_t i,
                                 const struct tlsrpt_norm *n)
{
    struct tlsrpt_report_policy *p = &e->policies[i];
    tlsrpt_add(&p->total_failure_session_count);
    for (size_t r = 0; r < p->n_rows; r++) {
        if (tlsrpt_row_matches(&e->rows[i][r], n)) {
            tlsrpt_add(&e->rows[i][r].failed_session_count);
            return;
        }
    }
    size_t grow = 0;
    if (p->n_rows == e->rows_cap[i]) {
        grow = e->rows_cap[i] == 0 ? 4 : e->rows_cap[i];
    }
    size_t text = tlsrpt_row_text(n);
    if (e->n_rows == TLSRPT_ROWS_MAX ||
        !tlsrpt_fits(agg, text + grow * sizeof(struct tlsrpt_row))) {
        tlsrpt_add(&p->n_unlisted);
        return;
    }
    if (grow != 0) {
        struct tlsrpt_row *rows =
            realloc(e->rows[i], (e->rows_cap[i] + grow) * sizeof(struct tlsrpt_row));
        if (rows == NULL) {
            tlsrpt_add(&p->n_unlisted);
            return;
        }
        e->rows[i] = rows;
        p->rows = rows;
        e->rows_cap[i] += grow;
        e->bytes += grow * sizeof(struct tlsrpt_row);
        agg->bytes += grow * sizeof(struct tlsrpt_row);
    }
    if (!tlsrpt_row_fill(&e->rows[i][p->n_rows], n)) {
        tlsrpt_add(&p->n_unlisted);
        return;
    }
    p->n_rows++;
    e->n_rows++;
    e->bytes += text;
    agg->bytes += text;
}

static int64_t tlsrpt_day_of(int64_t now)
{
    return now / TLSRPT_DAY_SECONDS; /* now >= 0 */
}

static int tlsrpt_record(struct tlsrpt *agg, const struct tlsrpt_policy *policy,
                         const struct tlsrpt_failure *failure, int64_t now)
{
    if (agg == NULL || policy == NULL || now < 0 || now > TLSRPT_NOW_MAX) {
        return -EINVAL;
    }
    struct tlsrpt_norm n;
    if (failure != NULL) {
        int rc = tlsrpt_norm_failure(&n, failure);
        if (rc != 0) {
            return rc;
        }
    }
    char domain[DNSNAME_BUF];
    struct tlsrpt_pblock *pb;
    int rc = tlsrpt_pblock_new(&pb, domain, agg, policy);
    if (rc != 0) {
        return rc;
    }
    int64_t day = tlsrpt_day_of(now);
    uint64_t hash = tlsrpt_key_hash(agg, day, domain);

    pthread_mutex_lock(&agg->mu);
    struct tlsrpt_entry **slot = tlsrpt_slot(agg, day, domain, hash);
    struct tlsrpt_entry *e = *slot;
    if (e == NULL) {
        rc = tlsrpt_entry_new(&e, agg, day, domain, pb);
        if (rc == 0) {
            e->hash = hash;
            *slot = e;
        }
    }
    int i = rc == 0 ? tlsrpt_policy_of(agg, e, &pb, policy) : rc;
    if (i >= 0) {
        if (failure == NULL) {
            tlsrpt_add(&e->policies[i].total_successful_session_count);
        } else {
            tlsrpt_count_failure(agg, e, (size_t)i, &n);
        }
    }
    pthread_mutex_unlock(&agg->mu);
    free(pb);
    return i >= 0 ? 0 : i;
}

int tlsrpt_success(struct tlsrpt *agg, const struct tlsrpt_policy *policy, int64_t now)
{
    return tlsrpt_record(agg, policy, NULL, now);
}

int tlsrpt_failure(struct tlsrpt *agg, const struct tlsrpt_policy *policy,
                   const struct tlsrpt_failure *failure, int64_t now)
{
    if (failure == NULL) {
        return -EINVAL;
    }
    return tlsrpt_record(agg, policy, failure, now);
}

/* ---- handing reports out ---- */

static int tlsrpt_report_cmp(const void *a, const void *b)
{
    const struct tlsrpt_report *x = *(const struct tlsrpt_report *const *)a;
    const struct tlsrpt_report *y = *(const struct tlsrpt_report *const *)b;
    if (x->day_start != y->day_start) {
        return x->day_start < y->day_start ? -1 : 1;
    }
    return strcmp(x->policy_domain, y->policy_domain);
}

/* tlsrpt_entry_dup copies an entry, unlinked, with all it owns. */
static struct tlsrpt_entry *tlsrpt_entry_dup(const struct tlsrpt_entry *e)
{
    struct tlsrpt_entry *c = malloc(sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    memcpy(c, e, sizeof(*c));
    c->report.policies = c->policies;
    c->report.n_policies = 0;
    c->chain = NULL;
    bool ok = true;
    for (size_t i = 0; i < e->report.n_policies && ok; i++) {
        const struct tlsrpt_report_policy *p = &e->policies[i];
        struct tlsrpt_report_policy *q = &c->policies[i];
        c->pblocks[i] =
            tlsrpt_pblock_dup(e->pblocks[i], p->policy.n_policy_strings, p->policy.n_mx_hosts);
        c->rows[i] = p->n_rows > 0 ? malloc(p->n_rows * sizeof(struct tlsrpt_row)) : NULL;
        c->rows_cap[i] = p->n_rows;
        q->n_rows = 0;
        q->rows = c->rows[i];
        c->report.n_policies++;
        if (c->pblocks[i] == NULL || (p->n_rows > 0 && c->rows[i] == NULL)) {
            ok = false;
            break;
        }
        q->policy.policy_domain = c->report.policy_domain;
        q->policy.policy_strings = c->pblocks[i]->strings;
        q->policy.mx_hosts = c->pblocks[i]->mx;
        for (size_t r = 0; r < p->n_rows; r++) {
            struct tlsrpt_norm n;
            tlsrpt_norm_of(&n, &e->rows[i][r].failure);
            if (!tlsrpt_row_fill(&c->rows[i][r], &n)) {
                ok = false;
                break;
            }
            c->rows[i][r].failed_session_count = e->rows[i][r].failed_session_count;
            q->n_rows++;
        }
    }
    if (!ok) {
        tlsrpt_entry_free(c);
        return NULL;
    }
    return c;
}

/* tlsrpt_hand_out collects the held entries of days ended before |now| (|take|: unlinked)
 * or copies of all of them. */
static int tlsrpt_hand_out(struct tlsrpt *agg, struct tlsrpt_report ***out, size_t *n_out,
                           int64_t now, bool take)
{
    *out = NULL;
    *n_out = 0;
    if (agg == NULL) {
        return -EINVAL;
    }
    pthread_mutex_lock(&agg->mu);
    size_t n = 0;
    for (size_t b = 0; b < agg->n_buckets; b++) {
        for (struct tlsrpt_entry *e = agg->buckets[b]; e != NULL; e = e->chain) {
            n += !take || e->report.end < now;
        }
    }
    struct tlsrpt_report **reports = NULL;
    if (n > 0) {
        reports = calloc(n, sizeof(*reports));
        if (reports == NULL) {
            pthread_mutex_unlock(&agg->mu);
            return -ENOMEM;
        }
    }
    size_t k = 0;
    for (size_t b = 0; b < agg->n_buckets && k < n; b++) {
        struct tlsrpt_entry **slot = &agg->buckets[b];
        while (*slot != NULL) {
            struct tlsrpt_entry *e = *slot;
            if (!take) {
                struct tlsrpt_entry *c = tlsrpt_entry_dup(e);
                if (c == NULL) {
                    pthread_mutex_unlock(&agg->mu);
                    tlsrpt_reports_free(reports, k);
                    return -ENOMEM;
                }
                if (c->report.end >= now) {
                    c->report.partial = true;
                    c->report.end = now > c->report.begin ? now : c->report.begin;
                }
                reports[k++] = &c->report;
                slot = &e->chain;
            } else if (e->report.end < now) {
                *slot = e->chain;
                e->chain = NULL;
                agg->bytes -= e->bytes;
                agg->n_entries--;
                tlsrpt_day_release(agg, e->day);
                reports[k++] = &e->report;
            } else {
                slot = &e->chain;
            }
        }
    }
    pthread_mutex_unlock(&agg->mu);
    if (k > 1) {
        qsort(reports, k, sizeof(*reports), tlsrpt_report_cmp);
    }
    *out = reports;
    *n_out = k;
    return 0;
}

int tlsrpt_take(struct tlsrpt *agg, struct tlsrpt_report ***out, size_t *n_out, int64_t now)
{
    return tlsrpt_hand_out(agg, out, n_out, now, true);
}

int tlsrpt_snapshot(struct tlsrpt *agg, struct tlsrpt_report ***out, size_t *n_out, int64_t now)
{
    return tlsrpt_hand_out(agg, out, n_out, now, false);
}
