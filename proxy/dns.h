/*
 * dns: DNSSEC-validating lookups for the downgrade gate, with libunbound (Debian's
 * libunbound8: its crypto is nettle, no OpenSSL enters the process). One unbound context
 * per worker loop, in threaded async mode; its answers are collected on the loop through
 * ub_fd(), so no lookup ever blocks a session.
 *
 * Every query ends in exactly one callback: the answer, or DNS_FAILED when unbound cannot
 * answer within the configured timeout, unless dns_cancel() comes first.
 */
#ifndef PROXY_DNS_H
#define PROXY_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define DNS_TYPE_A 1
#define DNS_TYPE_MX 15
#define DNS_TYPE_TXT 16
#define DNS_TYPE_AAAA 28
#define DNS_TYPE_TLSA 52

/* How far an answer can be trusted (RFC 4035). */
enum dns_security {
    DNS_SECURE = 0, /* validated: the data, or its absence, is signed */
    DNS_INSECURE,   /* no DNSSEC for this name (an unsigned zone or delegation) */
    DNS_BOGUS,      /* validation failed: the answer must not be used */
    DNS_FAILED,     /* no answer: SERVFAIL, a timeout, or unbound refused the query */
};

struct dns_answer {
    enum dns_security security;
    int rcode;                   /* 0 NOERROR, 3 NXDOMAIN, ... */
    bool nxdomain;               /* the name does not exist */
    size_t n;                    /* records of the asked type (0: none, or nxdomain) */
    const uint8_t *const *rdata; /* n records' RDATA, wire format, valid in the callback */
    const size_t *rdata_len;
    const char *why; /* for BOGUS/FAILED: unbound's reason, or "timeout" */
};

typedef void dns_answer_fn(void *arg, const struct dns_answer *answer);

struct dns;
struct dns_query;

/*
 * dns_new makes the resolver of one loop. |unbound_config| names an unbound.conf(5) file
 * (trust anchors, stub or forward zones, ...) or is NULL: then the system's resolv.conf
 * servers are used as forwarders, with the root trust anchor from |root_anchor| (Debian's
 * dns-root-data: /usr/share/dns/root.key) when that file exists. |timeout_ms| bounds each
 * query. Returns NULL with |err| set on failure.
 */
struct dns *dns_new(uv_loop_t *loop, const char *unbound_config, const char *root_anchor,
                    uint64_t timeout_ms, char *err, size_t err_len);

/* dns_unref lets the loop end while queries could still be made (a draining worker). */
void dns_unref(struct dns *d);

/* dns_close cancels every query (no callbacks) and closes the handles; run the loop, then
 * dns_free(). */
void dns_close(struct dns *d);
void dns_free(struct dns *d);

/* dns_resolve asks for |name| (a host name, no trailing dot needed) of |rrtype|. Returns a
 * handle, or NULL when the query could not even be started (then nothing is called). The
 * callback never runs from within dns_resolve(). */
struct dns_query *dns_resolve(struct dns *d, const char *name, int rrtype, dns_answer_fn *fn,
                              void *arg);

/* dns_cancel forgets a query: its callback will not run. */
void dns_cancel(struct dns_query *q);

/* dns_security_name: "secure", "insecure", "bogus", "failed". */
const char *dns_security_name(enum dns_security security);

#endif
