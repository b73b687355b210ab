/*
 * test_tlsrpt: the TLS-RPT aggregator (UTC days, domains, rows that merge, a policy that
 * changes, every bound), who owns what tlsrpt_take and tlsrpt_snapshot hand out, a whole
 * report's JSON compared byte for byte, the escaping of every byte value and of ill-formed
 * UTF-8, RFC 8460 file names, TLSA policy strings, and the _smtp._tls record. TXT records
 * are heap copies of their exact length, so ASan sees any read past them.
 */
#include "tlsrpt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* 2026-12-01T00:00:00Z */
#define DAY0 INT64_C(1796083200)
#define DAY (INT64_C(86400))

static const char *const sts_lines[] = {"version: STSv1", "mode: enforce", "mx: mx1.example.com",
                                        "mx: *.example.net", "max_age: 86400"};
static const char *const sts_mx[] = {"mx1.example.com", "*.example.net"};

static struct tlsrpt_policy sts_policy(const char *domain)
{
    struct tlsrpt_policy p = {
        .type = TLSRPT_POLICY_STS,
        .policy_domain = domain,
        .policy_strings = sts_lines,
        .n_policy_strings = 5,
        .mx_hosts = sts_mx,
        .n_mx_hosts = 2,
    };
    return p;
}

static struct tlsrpt_policy none_policy(const char *domain)
{
    struct tlsrpt_policy p = {.type = TLSRPT_POLICY_NO_POLICY_FOUND, .policy_domain = domain};
    return p;
}

static struct tlsrpt_failure simple_failure(const char *type)
{
    struct tlsrpt_failure f = {
        .result_type = type,
        .sending_mta_ip = "192.0.2.1",
        .receiving_ip = "198.51.100.7",
    };
    return f;
}

/* take_all takes every report of days ended before |now|, checking the call worked. */
static struct tlsrpt_report **take_all(struct tlsrpt *agg, size_t *n, int64_t now)
{
    struct tlsrpt_report **r = (struct tlsrpt_report **)1;
    CHECK_INT(tlsrpt_take(agg, &r, n, now), 0);
    CHECK(*n == 0 ? r == NULL : r != NULL);
    return r;
}

/* ---- aggregation ---- */

static void test_days_and_domains(void)
{
    struct tlsrpt *agg = tlsrpt_new(100);
    CHECK(agg != NULL);
    struct tlsrpt_policy a = sts_policy("Example.COM.");
    struct tlsrpt_policy b = none_policy("example.org");
    struct tlsrpt_failure f = simple_failure("starttls-not-supported");
    CHECK_INT(tlsrpt_success(agg, &a, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &a, DAY0 + DAY - 1), 0);
    CHECK_INT(tlsrpt_failure(agg, &a, &f, DAY0 + 5), 0);
    CHECK_INT(tlsrpt_success(agg, &b, DAY0 + 7), 0);
    CHECK_INT(tlsrpt_success(agg, &a, DAY0 + DAY), 0); /* the next day */

    size_t n;
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + DAY - 1); /* day 0 not over */
    CHECK_INT(n, 0);
    r = take_all(agg, &n, DAY0 + DAY); /* now it is */
    CHECK_INT(n, 2);
    if (n == 2) {
        /* Sorted by day, then domain. */
        CHECK_STR(r[0]->policy_domain, "example.com");
        CHECK_STR(r[1]->policy_domain, "example.org");
        CHECK_INT(r[0]->day_start, DAY0);
        CHECK_INT(r[0]->begin, DAY0);
        CHECK_INT(r[0]->end, DAY0 + DAY - 1);
        CHECK(!r[0]->partial);
        CHECK_INT(r[0]->n_policies, 1);
        const struct tlsrpt_report_policy *p = &r[0]->policies[0];
        CHECK_INT(p->total_successful_session_count, 2);
        CHECK_INT(p->total_failure_session_count, 1);
        CHECK_INT(p->n_rows, 1);
        CHECK_INT(p->n_unlisted, 0);
        CHECK_STR(p->policy.policy_domain, "example.com");
        CHECK_INT(p->policy.type, TLSRPT_POLICY_STS);
        CHECK_INT(p->policy.n_policy_strings, 5);
        CHECK_STR(p->policy.policy_strings[2], "mx: mx1.example.com");
        CHECK_INT(p->policy.n_mx_hosts, 2);
        CHECK_STR(p->policy.mx_hosts[1], "*.example.net");
        CHECK_STR(p->rows[0].failure.result_type, "starttls-not-supported");
        CHECK_INT(p->rows[0].failed_session_count, 1);
        CHECK(p->rows[0].failure.receiving_mx_hostname == NULL);
        CHECK_INT(r[1]->policies[0].total_successful_session_count, 1);
        CHECK_INT(r[1]->policies[0].policy.n_policy_strings, 0);
    }
    tlsrpt_reports_free(r, n);
    /* Taken means forgotten: only the next day is left. */
    r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 0);
    r = take_all(agg, &n, DAY0 + 10 * DAY);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(r[0]->day_start, DAY0 + DAY);
        CHECK_INT(r[0]->policies[0].total_successful_session_count, 1);
    }
    tlsrpt_reports_free(r, n);
    tlsrpt_free(agg);
}

static void test_rows_merge(void)
{
    struct tlsrpt *agg = tlsrpt_new(10);
    struct tlsrpt_policy a = sts_policy("example.com");
    struct tlsrpt_failure f = simple_failure("certificate-expired");
    f.sending_mta_ip = "2001:db8::1";
    f.receiving_mx_hostname = "MX1.example.com.";
    CHECK_INT(tlsrpt_failure(agg, &a, &f, DAY0), 0);
    /* The same row spelled differently. */
    f.sending_mta_ip = "2001:DB8:0:0:0:0:0:1";
    f.receiving_mx_hostname = "mx1.example.com";
    CHECK_INT(tlsrpt_failure(agg, &a, &f, DAY0 + 1), 0);
    /* Each field that differs makes a row of its own. */
    struct tlsrpt_failure g = f;
    g.result_type = "certificate-not-trusted";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0);
    g = f;
    g.receiving_ip = "198.51.100.8";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0);
    g.receiving_ip = "::FFFF:198.51.100.8"; /* an IPv4 peer on a dual-stack socket */
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0);
    g = f;
    g.receiving_mx_hostname = NULL;
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0);
    g = f;
    g.receiving_mx_helo = "mx1";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0);
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0); /* merges with the previous */
    g = f;
    g.additional_information = "https://reports.example/x";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0);
    g = f;
    g.failure_reason_code = "X509_V_ERR_CERT_HAS_EXPIRED";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0);
    g.failure_reason_code = "";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), 0); /* present but empty is not absent */

    size_t n;
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 1);
    if (n == 1) {
        const struct tlsrpt_report_policy *p = &r[0]->policies[0];
        CHECK_INT(p->total_failure_session_count, 11);
        CHECK_INT(p->n_rows, 8);
        CHECK_STR(p->rows[2].failure.receiving_ip, "198.51.100.8");
        CHECK_INT(p->rows[2].failed_session_count, 2);
        CHECK_INT(p->rows[0].failed_session_count, 2);
        CHECK_STR(p->rows[0].failure.sending_mta_ip, "2001:db8::1");
        CHECK_STR(p->rows[0].failure.receiving_mx_hostname, "mx1.example.com");
        CHECK_INT(p->rows[4].failed_session_count, 2);
        CHECK_STR(p->rows[4].failure.receiving_mx_helo, "mx1");
        CHECK_STR(p->rows[7].failure.failure_reason_code, "");
    }
    tlsrpt_reports_free(r, n);
    tlsrpt_free(agg);
}

static void test_policy_change(void)
{
    struct tlsrpt *agg = tlsrpt_new(10);
    struct tlsrpt_policy a = sts_policy("example.com");
    const char *lines2[] = {"version: STSv1", "mode: testing", "mx: mx1.example.com",
                            "mx: *.example.net", "max_age: 86400"};
    struct tlsrpt_policy a2 = a;
    a2.policy_strings = lines2;
    const char *mx2[] = {"mx1.example.com"};
    struct tlsrpt_policy a3 = a;
    a3.mx_hosts = mx2;
    a3.n_mx_hosts = 1;
    struct tlsrpt_policy a4 = none_policy("example.com");
    CHECK_INT(tlsrpt_success(agg, &a, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &a2, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &a2, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &a3, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &a4, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &a, DAY0), 0); /* back to the first */
    /* A fifth policy is past TLSRPT_POLICIES_MAX. */
    const char *tlsa[] = {"3 1 1 AB"};
    struct tlsrpt_policy a5 = {TLSRPT_POLICY_TLSA, "example.com", tlsa, 1, NULL, 0};
    CHECK_INT(tlsrpt_success(agg, &a5, DAY0), -ENOSPC);
    struct tlsrpt_failure f = simple_failure("validation-failure");
    CHECK_INT(tlsrpt_failure(agg, &a5, &f, DAY0), -ENOSPC);

    size_t n;
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(r[0]->n_policies, 4);
        CHECK_INT(r[0]->policies[0].total_successful_session_count, 2);
        CHECK_INT(r[0]->policies[1].total_successful_session_count, 2);
        CHECK_STR(r[0]->policies[1].policy.policy_strings[1], "mode: testing");
        CHECK_INT(r[0]->policies[2].policy.n_mx_hosts, 1);
        CHECK_INT(r[0]->policies[3].policy.type, TLSRPT_POLICY_NO_POLICY_FOUND);
    }
    tlsrpt_reports_free(r, n);
    tlsrpt_free(agg);
}

static void test_bounds(void)
{
    struct tlsrpt *agg = tlsrpt_new(2);
    struct tlsrpt_policy a = none_policy("a.example");
    struct tlsrpt_policy b = none_policy("b.example");
    struct tlsrpt_policy c = none_policy("c.example");
    CHECK_INT(tlsrpt_success(agg, &a, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &b, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &c, DAY0), -ENOSPC); /* a third domain that day */
    CHECK_INT(tlsrpt_success(agg, &a, DAY0), 0);       /* known ones still count */
    CHECK_INT(tlsrpt_success(agg, &c, DAY0 + DAY), 0); /* another day has room */
    /* TLSRPT_DAYS_MAX days are held at once. */
    for (int d = 2; d < TLSRPT_DAYS_MAX; d++) {
        CHECK_INT(tlsrpt_success(agg, &a, DAY0 + d * DAY), 0);
    }
    CHECK_INT(tlsrpt_success(agg, &a, DAY0 + TLSRPT_DAYS_MAX * DAY), -ENOSPC);
    size_t n;
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 2);
    tlsrpt_reports_free(r, n);
    /* Taking day 0 made room for another day, which then fills the days again. */
    CHECK_INT(tlsrpt_success(agg, &a, DAY0 + TLSRPT_DAYS_MAX * DAY), 0);
    CHECK_INT(tlsrpt_success(agg, &c, DAY0), -ENOSPC);
    r = take_all(agg, &n, DAY0 + 2 * DAY);
    CHECK_INT(n, 1);
    tlsrpt_reports_free(r, n);
    CHECK_INT(tlsrpt_success(agg, &c, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &b, DAY0), 0);
    CHECK_INT(tlsrpt_success(agg, &a, DAY0), -ENOSPC); /* max_domains again */
    tlsrpt_free(agg);                                  /* frees what it still holds */

    /* Rows: TLSRPT_ROWS_MAX distinct ones per domain and day, over all its policies,
     * then the summary only. */
    agg = tlsrpt_new(10);
    struct tlsrpt_policy s1 = sts_policy("example.com");
    const char *lines2[] = {"version: STSv1", "mode: testing", "mx: mx1.example.com",
                            "max_age: 86400"};
    struct tlsrpt_policy s2 = s1;
    s2.policy_strings = lines2;
    s2.n_policy_strings = 4;
    char ip[32];
    for (int i = 0; i < TLSRPT_ROWS_MAX + 3; i++) {
        struct tlsrpt_failure f = simple_failure("validation-failure");
        snprintf(ip, sizeof(ip), "10.0.%d.%d", i / 256, i % 256);
        f.receiving_ip = ip;
        CHECK_INT(tlsrpt_failure(agg, i < TLSRPT_ROWS_MAX / 2 ? &s1 : &s2, &f, DAY0), 0);
    }
    struct tlsrpt_failure f = simple_failure("validation-failure");
    f.receiving_ip = "10.0.0.0"; /* the first row: still merges */
    CHECK_INT(tlsrpt_failure(agg, &s1, &f, DAY0), 0);
    r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 1);
    if (n == 1) {
        const struct tlsrpt_report_policy *p1 = &r[0]->policies[0];
        const struct tlsrpt_report_policy *p2 = &r[0]->policies[1];
        CHECK_INT(p1->n_rows, TLSRPT_ROWS_MAX / 2);
        CHECK_INT(p1->n_unlisted, 0);
        CHECK_INT(p1->total_failure_session_count, TLSRPT_ROWS_MAX / 2 + 1);
        CHECK_INT(p1->rows[0].failed_session_count, 2);
        CHECK_INT(p2->n_rows, TLSRPT_ROWS_MAX / 2);
        CHECK_INT(p2->n_unlisted, 3);
        CHECK_INT(p2->total_failure_session_count, TLSRPT_ROWS_MAX / 2 + 3);
    }
    tlsrpt_reports_free(r, n);
    tlsrpt_free(agg);

    /* The memory budget: one domain's worth. Big policies fill it before max_domains. */
    agg = tlsrpt_new(1);
    static char big[8000];
    memset(big, 'x', sizeof(big) - 1);
    const char *bigs[] = {big};
    struct tlsrpt_policy p = {TLSRPT_POLICY_TLSA, "example.com", bigs, 1, NULL, 0};
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), 0);
    big[0] = 'y';
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -ENOSPC);
    tlsrpt_free(agg);
    CHECK(tlsrpt_new(0) == NULL);
}

static void test_invalid(void)
{
    struct tlsrpt *agg = tlsrpt_new(10);
    struct tlsrpt_policy a = sts_policy("example.com");
    struct tlsrpt_failure f = simple_failure("validation-failure");
    CHECK_INT(tlsrpt_failure(agg, &a, &f, DAY0), 0);

    struct tlsrpt_failure g = f;
    g.result_type = "tls-version-invalid"; /* not RFC 8460's */
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g.result_type = "Validation-Failure";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g.result_type = NULL;
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g = f;
    g.sending_mta_ip = "192.0.2.256";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g.sending_mta_ip = "fe80::1%eth0";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g.sending_mta_ip = NULL;
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g = f;
    g.receiving_ip = "mx.example.com";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g = f;
    g.receiving_mx_hostname = "mx_1.example.com";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g = f;
    g.additional_information = "https://x.example/a b";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    g.additional_information = "";
    CHECK_INT(tlsrpt_failure(agg, &a, &g, DAY0), -EINVAL);
    CHECK_INT(tlsrpt_failure(agg, &a, NULL, DAY0), -EINVAL);

    struct tlsrpt_policy p = a;
    p.policy_domain = "b\xc3\xbc"
                      "cher.example"; /* a U-label */
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p.policy_domain = "*.example.com";
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p.policy_domain = NULL;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p = a;
    p.n_policy_strings = 0; /* sts needs its lines */
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p = a;
    p.type = TLSRPT_POLICY_TLSA; /* mx-host is for sts */
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p = a;
    p.type = TLSRPT_POLICY_NO_POLICY_FOUND;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p = a;
    p.type = (enum tlsrpt_policy_type)7;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p = a;
    const char *bad_mx[] = {"mx.example.com", "mx..example.com"};
    p.mx_hosts = bad_mx;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    const char *null_line[] = {"version: STSv1", NULL};
    p = a;
    p.policy_strings = null_line;
    p.n_policy_strings = 2;
    p.n_mx_hosts = 0;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    /* Past TLSRPT_POLICY_STRINGS_MAX strings, or TLSRPT_POLICY_BYTES_MAX bytes. */
    static const char *many[TLSRPT_POLICY_STRINGS_MAX + 1];
    for (size_t i = 0; i <= TLSRPT_POLICY_STRINGS_MAX; i++) {
        many[i] = "mx: a.example";
    }
    p = a;
    p.policy_strings = many;
    p.n_policy_strings = TLSRPT_POLICY_STRINGS_MAX + 1;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    p.n_policy_strings = TLSRPT_POLICY_STRINGS_MAX;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), 0);
    static char huge[TLSRPT_POLICY_BYTES_MAX + 1];
    memset(huge, 'x', sizeof(huge) - 1);
    const char *huges[] = {huge};
    p = a;
    p.policy_strings = huges;
    p.n_policy_strings = 1;
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);
    /* With its NUL and the mx patterns ("mx1.example.com", "*.example.net": 30 bytes with
     * theirs), a 16353-byte line is the longest that fits. */
    huge[TLSRPT_POLICY_BYTES_MAX - 31] = '\0';
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), 0);
    huge[TLSRPT_POLICY_BYTES_MAX - 31] = 'x';
    huge[TLSRPT_POLICY_BYTES_MAX - 30] = '\0';
    CHECK_INT(tlsrpt_success(agg, &p, DAY0), -EINVAL);

    CHECK_INT(tlsrpt_success(agg, &a, -1), -EINVAL);
    CHECK_INT(tlsrpt_success(agg, &a, INT64_C(253402300800)), -EINVAL); /* year 10000 */
    CHECK_INT(tlsrpt_success(agg, &a, INT64_C(253402300799)), 0);
    CHECK_INT(tlsrpt_success(NULL, &a, DAY0), -EINVAL);
    CHECK_INT(tlsrpt_success(agg, NULL, DAY0), -EINVAL);

    size_t n;
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(r[0]->n_policies, 3);
        CHECK_INT(r[0]->policies[0].total_failure_session_count, 1);
        CHECK_INT(r[0]->policies[0].total_successful_session_count, 0);
    }
    tlsrpt_reports_free(r, n);
    tlsrpt_free(agg);

    CHECK(tlsrpt_result_type_valid("sts-webpki-invalid"));
    CHECK(tlsrpt_result_type_valid("dane-required"));
    CHECK(!tlsrpt_result_type_valid("sts-webpki-invalid "));
    CHECK(!tlsrpt_result_type_valid(NULL));
}

static void test_text_cut(void)
{
    struct tlsrpt *agg = tlsrpt_new(10);
    struct tlsrpt_policy a = none_policy("example.com");
    struct tlsrpt_failure f = simple_failure("starttls-not-supported");
    char helo[400];
    memset(helo, 'h', sizeof(helo));
    helo[sizeof(helo) - 1] = '\0';
    /* "é" (2 bytes) across the cut at TLSRPT_TEXT_MAX: both bytes go. */
    char reason[400];
    memset(reason, 'r', sizeof(reason));
    reason[TLSRPT_TEXT_MAX - 1] = '\xc3';
    reason[TLSRPT_TEXT_MAX] = '\xa9';
    reason[sizeof(reason) - 1] = '\0';
    f.receiving_mx_helo = helo;
    f.failure_reason_code = reason;
    CHECK_INT(tlsrpt_failure(agg, &a, &f, DAY0), 0);
    size_t n;
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(strlen(r[0]->policies[0].rows[0].failure.receiving_mx_helo), TLSRPT_TEXT_MAX);
        CHECK_INT(strlen(r[0]->policies[0].rows[0].failure.failure_reason_code),
                  TLSRPT_TEXT_MAX - 1);
    }
    tlsrpt_reports_free(r, n);
    tlsrpt_free(agg);
}

/* ---- take and snapshot: who owns what ---- */

static void test_snapshot(void)
{
    struct tlsrpt *agg = tlsrpt_new(10);
    struct tlsrpt_policy a = sts_policy("example.com");
    struct tlsrpt_failure f = simple_failure("sts-policy-invalid");
    f.receiving_mx_hostname = "mx1.example.com";
    CHECK_INT(tlsrpt_success(agg, &a, DAY0 - 10), 0); /* the day before */
    CHECK_INT(tlsrpt_success(agg, &a, DAY0 + 10), 0);
    CHECK_INT(tlsrpt_failure(agg, &a, &f, DAY0 + 20), 0);

    size_t n;
    struct tlsrpt_report **snap = (struct tlsrpt_report **)1;
    CHECK_INT(tlsrpt_snapshot(agg, &snap, &n, DAY0 + 3600), 0);
    CHECK_INT(n, 2);
    /* The aggregator goes on counting; the snapshot does not move. */
    CHECK_INT(tlsrpt_failure(agg, &a, &f, DAY0 + 30), 0);
    CHECK_INT(tlsrpt_success(agg, &a, DAY0 + 40), 0);
    if (n == 2) {
        CHECK_INT(snap[0]->day_start, DAY0 - DAY);
        CHECK(!snap[0]->partial);
        CHECK_INT(snap[0]->end, DAY0 - 1);
        CHECK(snap[1]->partial);
        CHECK_INT(snap[1]->begin, DAY0);
        CHECK_INT(snap[1]->end, DAY0 + 3600);
        CHECK_INT(snap[1]->policies[0].total_successful_session_count, 1);
        CHECK_INT(snap[1]->policies[0].rows[0].failed_session_count, 1);
        CHECK_STR(snap[1]->policies[0].rows[0].failure.receiving_mx_hostname, "mx1.example.com");
        CHECK_STR(snap[1]->policies[0].policy.policy_strings[4], "max_age: 86400");
        CHECK_STR(snap[1]->policies[0].policy.mx_hosts[0], "mx1.example.com");
        CHECK(snap[1]->policies[0].policy.policy_domain == snap[1]->policy_domain);
    }
    /* Free one report alone, then the rest with the array. */
    if (n == 2) {
        tlsrpt_report_free(snap[0]);
        snap[0] = NULL;
    }
    tlsrpt_reports_free(snap, n);

    /* Nothing was forgotten: take still finds the day before, the snapshot of today counts
     * all of today. */
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + 3600);
    CHECK_INT(n, 1);
    tlsrpt_reports_free(r, n);
    CHECK_INT(tlsrpt_snapshot(agg, &snap, &n, DAY0 + 2 * DAY), 0);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK(!snap[0]->partial); /* the day is over at that |now| */
        CHECK_INT(snap[0]->end, DAY0 + DAY - 1);
        CHECK_INT(snap[0]->policies[0].total_successful_session_count, 2);
        CHECK_INT(snap[0]->policies[0].rows[0].failed_session_count, 2);
    }
    /* The aggregator may go first: the snapshot owns its bytes. */
    tlsrpt_free(agg);
    if (n == 1) {
        CHECK_STR(snap[0]->policies[0].policy.policy_strings[0], "version: STSv1");
    }
    tlsrpt_reports_free(snap, n);

    /* Empty. */
    agg = tlsrpt_new(1);
    snap = (struct tlsrpt_report **)1;
    CHECK_INT(tlsrpt_snapshot(agg, &snap, &n, DAY0), 0);
    CHECK(snap == NULL);
    CHECK_INT(n, 0);
    tlsrpt_reports_free(snap, n);
    tlsrpt_report_free(NULL);
    tlsrpt_free(agg);
    tlsrpt_free(NULL);
}

/* ---- the JSON ---- */

static void test_json(void)
{
    struct tlsrpt *agg = tlsrpt_new(10);
    struct tlsrpt_policy a = sts_policy("company-y.example");
    struct tlsrpt_failure f1 = {
        .result_type = "certificate-expired",
        .sending_mta_ip = "2001:db8:abcd:0012::1",
        .receiving_ip = "203.0.113.56",
        .receiving_mx_hostname = "mx1.mail.company-y.example",
    };
    struct tlsrpt_failure f2 = {
        .result_type = "validation-failure",
        .sending_mta_ip = "198.51.100.62",
        .receiving_ip = "203.0.113.58",
        .receiving_mx_hostname = "mx-backup.mail.company-y.example",
        .receiving_mx_helo = "mx \"backup\"\\\t\xc3\xa9\xff",
        .additional_information = "https://reports.company-x.example/info?id=5065427c",
        .failure_reason_code = "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED",
    };
    for (int i = 0; i < 3; i++) {
        CHECK_INT(tlsrpt_success(agg, &a, DAY0 + i), 0);
    }
    CHECK_INT(tlsrpt_failure(agg, &a, &f1, DAY0 + 100), 0);
    CHECK_INT(tlsrpt_failure(agg, &a, &f1, DAY0 + 200), 0);
    CHECK_INT(tlsrpt_failure(agg, &a, &f2, DAY0 + 300), 0);
    const char *tlsa[] = {"3 1 1 1F850A337E6DB9C609C522D136A475638CC43E1ED424F8EEC8513D747D1D085D",
                          "2 0 1 12350A337E6DB9C6123522D136A475638CC43E1ED424F8EEC8513D747D1D1234"};
    struct tlsrpt_policy t = {TLSRPT_POLICY_TLSA, "company-y.example", tlsa, 2, NULL, 0};
    CHECK_INT(tlsrpt_success(agg, &t, DAY0 + 400), 0);
    struct tlsrpt_policy none = none_policy("company-y.example");
    CHECK_INT(tlsrpt_success(agg, &none, DAY0 + 500), 0);

    size_t n;
    struct tlsrpt_report **r = take_all(agg, &n, DAY0 + DAY);
    CHECK_INT(n, 1);
    if (n != 1) {
        tlsrpt_reports_free(r, n);
        tlsrpt_free(agg);
        return;
    }
    char *json = (char *)1;
    size_t len = 1;
    CHECK_INT(tlsrpt_report_json(r[0], &json, &len, "Company-X", "sts-reporting@company-x.example",
                                 "5065427c-23d3-47ca-b6e0-946ea0e8c4be"),
              0);
    static const char want[] =
        "{\"organization-name\":\"Company-X\","
        "\"date-range\":{\"start-datetime\":\"2026-12-01T00:00:00Z\","
        "\"end-datetime\":\"2026-12-01T23:59:59Z\"},"
        "\"contact-info\":\"sts-reporting@company-x.example\","
        "\"report-id\":\"5065427c-23d3-47ca-b6e0-946ea0e8c4be\","
        "\"policies\":["
        "{\"policy\":{\"policy-type\":\"sts\","
        "\"policy-string\":[\"version: STSv1\",\"mode: enforce\",\"mx: mx1.example.com\","
        "\"mx: *.example.net\",\"max_age: 86400\"],"
        "\"policy-domain\":\"company-y.example\","
        "\"mx-host\":[\"mx1.example.com\",\"*.example.net\"]},"
        "\"summary\":{\"total-successful-session-count\":3,\"total-failure-session-count\":3},"
        "\"failure-details\":["
        "{\"result-type\":\"certificate-expired\",\"sending-mta-ip\":\"2001:db8:abcd:12::1\","
        "\"receiving-mx-hostname\":\"mx1.mail.company-y.example\","
        "\"receiving-ip\":\"203.0.113.56\",\"failed-session-count\":2},"
        "{\"result-type\":\"validation-failure\",\"sending-mta-ip\":\"198.51.100.62\","
        "\"receiving-mx-hostname\":\"mx-backup.mail.company-y.example\","
        "\"receiving-mx-helo\":\"mx \\\"backup\\\"\\\\\\u0009\\u00e9\\ufffd\","
        "\"receiving-ip\":\"203.0.113.58\",\"failed-session-count\":1,"
        "\"additional-information\":\"https://reports.company-x.example/info?id=5065427c\","
        "\"failure-reason-code\":\"X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED\"}]},"
        "{\"policy\":{\"policy-type\":\"tlsa\","
        "\"policy-string\":[\"3 1 1 "
        "1F850A337E6DB9C609C522D136A475638CC43E1ED424F8EEC8513D747D1D085D\","
        "\"2 0 1 12350A337E6DB9C6123522D136A475638CC43E1ED424F8EEC8513D747D1D1234\"],"
        "\"policy-domain\":\"company-y.example\"},"
        "\"summary\":{\"total-successful-session-count\":1,\"total-failure-session-count\":0}},"
        "{\"policy\":{\"policy-type\":\"no-policy-found\",\"policy-domain\":\"company-y.example\"},"
        "\"summary\":{\"total-successful-session-count\":1,\"total-failure-session-count\":0}}"
        "]}";
    CHECK_STR(json, want);
    CHECK_INT(len, strlen(want));
    free(json);

    /* Required arguments. */
    CHECK_INT(tlsrpt_report_json(r[0], &json, &len, "", "a@b.example", "1"), -EINVAL);
    CHECK(json == NULL);
    CHECK_INT(tlsrpt_report_json(r[0], &json, &len, "X", NULL, "1"), -EINVAL);
    CHECK_INT(tlsrpt_report_json(r[0], &json, &len, "X", "a@b.example", ""), -EINVAL);
    CHECK_INT(tlsrpt_report_json(NULL, &json, &len, "X", "a@b.example", "1"), -EINVAL);
    tlsrpt_reports_free(r, n);

    /* A partial snapshot's range ends at its |now|; counts are capped at 2^53 - 1. */
    CHECK_INT(tlsrpt_success(agg, &none, DAY0 + DAY + 5), 0);
    CHECK_INT(tlsrpt_snapshot(agg, &r, &n, DAY0 + DAY + 3661), 0);
    CHECK_INT(n, 1);
    if (n == 1) {
        struct tlsrpt_report_policy *p = (struct tlsrpt_report_policy *)&r[0]->policies[0];
        p->total_successful_session_count = UINT64_MAX;
        CHECK_INT(tlsrpt_report_json(r[0], &json, &len, "X", "a@b.example", "id"), 0);
        CHECK_STR(json, "{\"organization-name\":\"X\",\"date-range\":{\"start-datetime\":"
                        "\"2026-12-02T00:00:00Z\",\"end-datetime\":\"2026-12-02T01:01:01Z\"},"
                        "\"contact-info\":\"a@b.example\",\"report-id\":\"id\",\"policies\":["
                        "{\"policy\":{\"policy-type\":\"no-policy-found\",\"policy-domain\":"
                        "\"company-y.example\"},\"summary\":{\"total-successful-session-count\":"
                        "9007199254740991,\"total-failure-session-count\":0}}]}");
        free(json);
    }
    tlsrpt_reports_free(r, n);
    tlsrpt_free(agg);
}

/* ---- escaping ---- */

static void check_escape(int line, const char *in, size_t in_len, const char *want)
{
    char out[256];
    size_t len = 99;
    bool ok = tlsrpt_json_string(out, sizeof(out), &len, in, in_len);
    if (!ok || strcmp(out, want) != 0) {
        fprintf(stderr, "line %d: escaped to %s, want %s\n", line, out, want);
    }
    CHECK(ok);
    CHECK_STR(out, want);
    CHECK_INT(len, strlen(want));
}

#define ESC(in, want) check_escape(__LINE__, in, sizeof(in) - 1, want)

static void test_escape(void)
{
    /* Every single byte. */
    for (int b = 0; b < 256; b++) {
        char in[1] = {(char)b};
        char want[16];
        if (b == '"' || b == '\\') {
            snprintf(want, sizeof(want), "\"\\%c\"", b);
        } else if (b >= 0x20 && b < 0x7f) {
            snprintf(want, sizeof(want), "\"%c\"", b);
        } else if (b < 0x80) {
            snprintf(want, sizeof(want), "\"\\u%04x\"", b);
        } else {
            snprintf(want, sizeof(want), "\"\\ufffd\""); /* a lone non-ASCII byte */
        }
        check_escape(b, in, 1, want);
    }
    ESC("", "\"\"");
    ESC("a\0b", "\"a\\u0000b\"");
    ESC("\r\n\t\b\f\x1f\x7f", "\"\\u000d\\u000a\\u0009\\u0008\\u000c\\u001f\\u007f\"");
    ESC("</script>", "\"</script>\"");
    /* Well-formed UTF-8 at each length and edge. */
    ESC("\xc2\x80", "\"\\u0080\"");
    ESC("\xdf\xbf", "\"\\u07ff\"");
    ESC("\xe0\xa0\x80", "\"\\u0800\"");
    ESC("\xe2\x80\xa8\xe2\x80\xa9", "\"\\u2028\\u2029\""); /* JavaScript's line ends */
    ESC("\xed\x9f\xbf", "\"\\ud7ff\"");
    ESC("\xee\x80\x80", "\"\\ue000\"");
    ESC("\xef\xbb\xbf", "\"\\ufeff\"");
    ESC("\xef\xbf\xbf", "\"\\uffff\"");
    ESC("\xf0\x90\x80\x80", "\"\\ud800\\udc00\"");
    ESC("\xf0\x9f\x98\x80", "\"\\ud83d\\ude00\"");
    ESC("\xf4\x8f\xbf\xbf", "\"\\udbff\\udfff\"");
    /* Ill-formed: one U+FFFD per maximal subpart (Unicode 15, section 3.9, Table 3-8). */
    ESC("\xc0\xaf", "\"\\ufffd\\ufffd\"");            /* overlong "/" */
    ESC("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\""); /* overlong */
    ESC("\xf0\x80\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    ESC("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""); /* a UTF-8 surrogate */
    ESC("\xed\xa0\x80\xed\xb0\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\"");
    ESC("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* above U+10FFFF */
    ESC("\xf5\x80", "\"\\ufffd\\ufffd\"");
    ESC("\x61\xf1\x80\x80\xe1\x80\xc2\x62\x80\x63\x80\xbf\x64",
        "\"a\\ufffd\\ufffd\\ufffdb\\ufffdc\\ufffd\\ufffdd\"");
    ESC("\xe2\x82", "\"\\ufffd\""); /* truncated at the end */
    ESC("\xe2\x82"
        "A",
        "\"\\ufffdA\""); /* truncated before ASCII */
    ESC("\xf0\x9f\x98", "\"\\ufffd\"");
    ESC("\xc3", "\"\\ufffd\"");
    ESC("\xc3\xc3\xa9", "\"\\ufffd\\u00e9\"");

    /* Capacity: 6 * len + 3 always fits; one byte less fails with "". */
    char in[40];
    memset(in, 0xff, sizeof(in));
    char out[6 * sizeof(in) + 3];
    size_t len = 1;
    CHECK(tlsrpt_json_string(out, sizeof(out), &len, in, sizeof(in)));
    CHECK_INT(len, 6 * sizeof(in) + 2);
    CHECK(!tlsrpt_json_string(out, sizeof(out) - 1, &len, in, sizeof(in)));
    CHECK_STR(out, "");
    CHECK_INT(len, 0);
    CHECK(!tlsrpt_json_string(out, 2, &len, "", 0));
    CHECK(tlsrpt_json_string(out, 3, &len, "", 0));
    CHECK(!tlsrpt_json_string(out, 0, &len, "", 0));
}

/* ---- TLSA strings, file names ---- */

static void test_tlsa_string(void)
{
    const uint8_t data[] = {0x1f, 0x85, 0x0a, 0x00, 0xff};
    char out[32];
    CHECK(tlsrpt_tlsa_string(out, sizeof(out), 3, 1, 1, data, sizeof(data)));
    CHECK_STR(out, "3 1 1 1F850A00FF");
    CHECK(tlsrpt_tlsa_string(out, 17, 3, 1, 1, data, sizeof(data)));
    CHECK(!tlsrpt_tlsa_string(out, 16, 3, 1, 1, data, sizeof(data)));
    CHECK_STR(out, "");
    CHECK(tlsrpt_tlsa_string(out, sizeof(out), 255, 254, 253, data, 0));
    CHECK_STR(out, "255 254 253 -");
}

static void check_name(int line, const char *sender, const char *domain, int64_t b, int64_t e,
                       const char *uid, bool gz, int want_rc, const char *want)
{
    char out[TLSRPT_FILE_NAME_BUF];
    int rc = tlsrpt_file_name(out, sizeof(out), sender, domain, b, e, uid, gz);
    if (rc != want_rc || strcmp(out, want) != 0) {
        fprintf(stderr, "line %d: %d \"%s\"\n", line, rc, out);
    }
    CHECK_INT(rc, want_rc);
    CHECK_STR(out, want);
}

static void test_file_name(void)
{
    check_name(__LINE__, "mail.sndr.example.com", "example.net", 1470013207, 1470186007, "001",
               true, 0, "mail.sndr.example.com!example.net!1470013207!1470186007!001.json.gz");
    check_name(__LINE__, "Mail.Sndr.Example.COM.", "EXAMPLE.net.", DAY0, DAY0 + DAY - 1, NULL,
               false, 0, "mail.sndr.example.com!example.net!1796083200!1796169599.json");
    check_name(__LINE__, "a", "b", 0, 0, "AbC9", false, 0, "a!b!0!0!AbC9.json");
    const int e = -EINVAL;
    check_name(__LINE__, "mx/../etc", "example.net", 0, 1, NULL, false, e, "");
    check_name(__LINE__, "mx.example", "..", 0, 1, NULL, false, e, "");
    check_name(__LINE__, "mx.example", "a!b.example", 0, 1, NULL, false, e, "");
    check_name(__LINE__, "mx.example", "*.example", 0, 1, NULL, false, e, "");
    check_name(__LINE__, "mx.example",
               "b\xc3\xbc"
               "cher.example",
               0, 1, NULL, false, e, "");
    check_name(__LINE__, "", "example.net", 0, 1, NULL, false, e, "");
    check_name(__LINE__, "mx.example", "example.net", -1, 1, NULL, false, e, "");
    check_name(__LINE__, "mx.example", "example.net", 0, -1, NULL, false, e, "");
    check_name(__LINE__, "mx.example", "example.net", 0, 1, "", false, e, "");
    check_name(__LINE__, "mx.example", "example.net", 0, 1, "a-b", false, e, "");
    check_name(__LINE__, "mx.example", "example.net", 0, 1, "a/b", false, e, "");
    char uid[TLSRPT_UNIQUE_ID_MAX + 2];
    memset(uid, 'u', sizeof(uid) - 1);
    uid[sizeof(uid) - 1] = '\0';
    check_name(__LINE__, "mx.example", "example.net", 0, 1, uid, false, e, "");
    CHECK_INT(tlsrpt_file_name(NULL, 0, NULL, "x", 0, 0, NULL, false), -EINVAL);

    /* Long domains make names past NAME_MAX. */
    char longd[DNSNAME_BUF];
    memset(longd, 'a', DNSNAME_MAX);
    for (int i = 63; i < DNSNAME_MAX; i += 64) {
        longd[i] = '.';
    }
    longd[DNSNAME_MAX] = '\0';
    char out[TLSRPT_FILE_NAME_BUF];
    CHECK_INT(tlsrpt_file_name(out, sizeof(out), longd, longd, 0, 0, NULL, false), -ENAMETOOLONG);
    CHECK_STR(out, "");
    /* "a!" + domain + "!0!0.json": 255 bytes with a 244-byte domain. */
    longd[245] = '\0';
    CHECK_INT(tlsrpt_file_name(out, sizeof(out), "a", longd, 0, 0, NULL, false), -ENAMETOOLONG);
    longd[244] = '\0';
    CHECK_INT(tlsrpt_file_name(out, sizeof(out), "a", longd, 0, 0, NULL, false), 0);
    CHECK_INT(strlen(out), TLSRPT_FILE_NAME_MAX);
    CHECK_INT(tlsrpt_file_name(out, 12, "a", "b", 0, 0, NULL, false), -ENAMETOOLONG);
    CHECK_INT(tlsrpt_file_name(out, 13, "a", "b", 0, 0, NULL, false), 0);
    CHECK_STR(out, "a!b!0!0.json");
}

/* ---- the _smtp._tls record ---- */

static enum tlsrpt_rua_result rua(struct tlsrpt_rua *out, const char *const *recs,
                                  const size_t *lens, size_t n)
{
    char *copies[8] = {0};
    for (size_t i = 0; i < n; i++) {
        copies[i] = malloc(lens[i] == 0 ? 1 : lens[i]);
        CHECK(copies[i] != NULL);
        memcpy(copies[i], recs[i], lens[i]);
    }
    enum tlsrpt_rua_result r = tlsrpt_rua_parse(out, (const char *const *)copies, lens, n);
    for (size_t i = 0; i < n; i++) {
        free(copies[i]);
    }
    return r;
}

static enum tlsrpt_rua_result rua1(struct tlsrpt_rua *out, int line, const char *rec, size_t len,
                                   enum tlsrpt_rua_result want)
{
    const char *recs[1] = {rec};
    size_t lens[1] = {len};
    enum tlsrpt_rua_result r = rua(out, recs, lens, 1);
    if (r != want) {
        fprintf(stderr, "line %d: \"%.*s\": %s\n", line, (int)len, rec, tlsrpt_rua_result_name(r));
    }
    CHECK_INT(r, want);
    if (r != TLSRPT_RUA_OK) {
        CHECK_INT(out->n_uris, 0);
    }
    return r;
}

#define RUA(s, want) rua1(&out, __LINE__, s, sizeof(s) - 1, want)

static void test_rua(void)
{
    struct tlsrpt_rua out;
    /* RFC 8460 section 3's examples. */
    RUA("v=TLSRPTv1;rua=mailto:reports@example.com", TLSRPT_RUA_OK);
    CHECK_INT(out.n_uris, 1);
    CHECK_INT(out.uris[0].scheme, TLSRPT_RUA_MAILTO);
    CHECK_STR(out.uris[0].uri, "mailto:reports@example.com");
    CHECK_STR(out.uris[0].address, "reports@example.com");
    CHECK_STR(out.uris[0].host, "");
    RUA("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt", TLSRPT_RUA_OK);
    CHECK_INT(out.uris[0].scheme, TLSRPT_RUA_HTTPS);
    CHECK_STR(out.uris[0].host, "reporting.example.com");
    CHECK_INT(out.uris[0].port, 443);
    CHECK_STR(out.uris[0].path, "/v1/tlsrpt");
    CHECK_STR(out.uris[0].address, "");

    RUA("v=TLSRPTv1; rua=mailto:a@b.example,https://c.example/d", TLSRPT_RUA_OK);
    CHECK_INT(out.n_uris, 2);
    CHECK_STR(out.uris[1].uri, "https://c.example/d");
    RUA("v=TLSRPTv1 ;\trua=mailto:a@b.example \t, \thttps://c.example ;ext=1;", TLSRPT_RUA_OK);
    CHECK_INT(out.n_uris, 2);
    CHECK_STR(out.uris[1].path, "/");
    RUA("v=TLSRPTv1;rua=https://C.Example:8443?x=1#frag", TLSRPT_RUA_OK);
    CHECK_STR(out.uris[0].host, "c.example");
    CHECK_INT(out.uris[0].port, 8443);
    CHECK_STR(out.uris[0].path, "/?x=1");
    RUA("v=TLSRPTv1;rua=https://[2001:DB8::1]:443/r", TLSRPT_RUA_OK);
    CHECK_STR(out.uris[0].host, "2001:db8::1");
    RUA("v=TLSRPTv1;rua=https://192.0.2.1:/r", TLSRPT_RUA_OK);
    CHECK_STR(out.uris[0].host, "192.0.2.1");
    CHECK_INT(out.uris[0].port, 443);
    /* Schemes are case-insensitive; addresses percent-decoded; hfields ignored. */
    RUA("v=TLSRPTv1;rua=MAILTO:tls%2Brpt@Example.COM?subject=x&to=other@example.org",
        TLSRPT_RUA_OK);
    CHECK_STR(out.uris[0].address, "tls+rpt@example.com");
    CHECK_STR(out.uris[0].uri, "MAILTO:tls%2Brpt@Example.COM?subject=x&to=other@example.org");
    /* Two rua fields both count; duplicates are dropped. */
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;rua=mailto:c@d.example,mailto:a@B.example",
        TLSRPT_RUA_OK);
    CHECK_INT(out.n_uris, 2);
    CHECK_STR(out.uris[1].address, "c@d.example");
    /* Other schemes, and URIs this module cannot use, are ignored. */
    RUA("v=TLSRPTv1;rua=http://a.example/x,ftp://b.example,mailto:r@c.example", TLSRPT_RUA_OK);
    CHECK_INT(out.n_uris, 1);
    CHECK_STR(out.uris[0].address, "r@c.example");
    RUA("v=TLSRPTv1;rua=http://a.example/x", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=urn:x", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=mailto:", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=mailto:a%0D%0ARCPT%20TO:%3Cx%3E@evil.example", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=mailto:a%2Cb@x.example", TLSRPT_RUA_UNUSABLE);       /* two addresses */
    RUA("v=TLSRPTv1;rua=mailto:%22a%20b%22@x.example", TLSRPT_RUA_UNUSABLE); /* quoted */
    RUA("v=TLSRPTv1;rua=mailto:a..b@x.example", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=mailto:a@[192.0.2.1]", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=mailto:a@x_y.example", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=https://user@a.example/", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=https:a.example/", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=https:///x", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=https://a.example:65536/", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=https://a.example:0/", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=https://[fe80::1%25eth0]/", TLSRPT_RUA_UNUSABLE);
    RUA("v=TLSRPTv1;rua=https://a%2Eexample/", TLSRPT_RUA_UNUSABLE);

    /* TLSRPT_RUA_MAX destinations are kept. */
    RUA("v=TLSRPTv1;rua=mailto:a@x.example,mailto:b@x.example,mailto:c@x.example,mailto:d@"
        "x.example,mailto:e@x.example,mailto:f@x.example,mailto:g@x.example,mailto:h@x.example,"
        "mailto:i@x.example",
        TLSRPT_RUA_OK);
    CHECK_INT(out.n_uris, TLSRPT_RUA_MAX);
    CHECK_STR(out.uris[TLSRPT_RUA_MAX - 1].address, "h@x.example");

    /* Not the ABNF. */
    RUA("v=TLSRPTv1;", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1; ", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;;rua=mailto:a@b.example", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;;", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example ", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example,", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=,mailto:a@b.example", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example mailto:c@d.example", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a!b@b.example", TLSRPT_RUA_INVALID); /* "!" MUST be encoded */
    RUA("v=TLSRPTv1;rua=mailto:a<b>@b.example", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a%zz@b.example", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example%2", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=1mailto:a@b.example", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=a@b.example", TLSRPT_RUA_INVALID); /* no scheme */
    RUA("v=TLSRPTv1;rua=mailto:\xc3\xa9@b.example", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;ext=1", TLSRPT_RUA_INVALID);                  /* no rua */
    RUA("v=TLSRPTv1;RUA=mailto:a@b.example", TLSRPT_RUA_INVALID); /* case-sensitive */
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;ext=", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;ext=a=b", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;-ext=1", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;abcdefghijklmnopqrstuvwxyz0123456=1",
        TLSRPT_RUA_INVALID); /* a 33-byte name */
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;abcdefghijklmnopqrstuvwxyz012345=1",
        TLSRPT_RUA_OK); /* 32 */
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;a_b-c.d=!\"#$%&'()*+,-./0:<>?@[\\]^_`{|}~",
        TLSRPT_RUA_OK);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;ext=\xc3\xa9", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example;ext=a b", TLSRPT_RUA_INVALID);
    RUA("v=TLSRPTv1;rua=mailto:a@b.example\0", TLSRPT_RUA_INVALID);

    /* Not TLSRPTv1 records at all. */
    RUA("v=TLSRPTv1", TLSRPT_RUA_NONE);
    RUA("v=TLSRPTv1 rua=mailto:a@b.example", TLSRPT_RUA_NONE);
    RUA("v=TLSRPTv10;rua=mailto:a@b.example", TLSRPT_RUA_NONE);
    RUA("v=tlsrptv1;rua=mailto:a@b.example", TLSRPT_RUA_NONE);
    RUA(" v=TLSRPTv1;rua=mailto:a@b.example", TLSRPT_RUA_NONE);
    RUA("", TLSRPT_RUA_NONE);
    CHECK_INT(tlsrpt_rua_parse(&out, NULL, NULL, 0), TLSRPT_RUA_NONE);

    /* Several records: others are discarded; two TLSRPTv1 records mean none. */
    const char *recs[] = {"v=spf1 -all", "v=TLSRPTv1;rua=mailto:a@b.example", "v=TLSRPTv1"};
    size_t lens[] = {11, 33, 10};
    CHECK_INT(rua(&out, recs, lens, 3), TLSRPT_RUA_OK);
    CHECK_STR(out.uris[0].address, "a@b.example");
    const char *two[] = {"v=TLSRPTv1;rua=mailto:a@b.example",
                         "v=TLSRPTv1 ; rua=mailto:c@d.example"};
    size_t two_lens[] = {33, 35};
    CHECK_INT(rua(&out, two, two_lens, 2), TLSRPT_RUA_MULTIPLE);
    CHECK_INT(out.n_uris, 0);
    const char *bad[] = {"v=TLSRPTv1;rua=mailto:a@b.example", "v=TLSRPTv1;"};
    size_t bad_lens[] = {33, 11};
    CHECK_INT(rua(&out, bad, bad_lens, 2), TLSRPT_RUA_MULTIPLE);

    CHECK_STR(tlsrpt_rua_result_name(TLSRPT_RUA_UNUSABLE), "unusable");
}

int main(void)
{
    test_days_and_domains();
    test_rows_merge();
    test_policy_change();
    test_bounds();
    test_invalid();
    test_text_cut();
    test_snapshot();
    test_json();
    test_escape();
    test_tlsa_string();
    test_file_name();
    test_rua();
    return check_exit("test_tlsrpt");
}
