/*
 * test_buf: the byte buffer's contract: an empty buffer owns no memory, growth stops at
 * the caller's cap with -ENOBUFS, consumed bytes are reclaimed, and no byte is lost or
 * reordered by compaction or regrowth.
 */
#include "buf.h"

#include <errno.h>
#include <string.h>

#include "check.h"

#define CHECK_BUF(b, lit) CHECK_MEM(buf_head(b), buf_len(b), (lit), sizeof(lit) - 1)

static void test_init_cleanup(void)
{
    struct buf b;
    buf_init(&b);
    CHECK_INT(buf_len(&b), 0);
    CHECK(buf_head(&b) == NULL);
    CHECK_INT(buf_tail_len(&b), 0);
    CHECK(b.data == NULL);
    buf_cleanup(&b);
    buf_cleanup(&b);
    CHECK_INT(buf_len(&b), 0);

    /* A cleaned-up buffer may be used again. */
    CHECK_INT(buf_append(&b, "abc", 3, 100), 0);
    CHECK_BUF(&b, "abc");
    buf_cleanup(&b);
    CHECK_INT(buf_len(&b), 0);
    CHECK(b.data == NULL);
    CHECK_INT(buf_append(&b, "de", 2, 100), 0);
    CHECK_BUF(&b, "de");
    buf_cleanup(&b);
}

static void test_reserve(void)
{
    struct buf b;
    buf_init(&b);
    CHECK_INT(buf_reserve(&b, 10, 100), 0);
    CHECK(buf_tail(&b) != NULL);
    CHECK(buf_tail_len(&b) >= 10);
    CHECK(b.cap <= 100);
    CHECK_INT(buf_len(&b), 0);

    /* Write through the tail, then commit. */
    memcpy(buf_tail(&b), "0123456789", 10);
    buf_commit(&b, 10);
    CHECK_BUF(&b, "0123456789");
    CHECK(buf_head(&b) != NULL);

    /* Up to the cap exactly, and not one byte further. */
    CHECK_INT(buf_reserve(&b, 90, 100), 0);
    CHECK(buf_tail_len(&b) >= 90);
    CHECK(b.cap <= 100);
    CHECK_BUF(&b, "0123456789");
    CHECK_INT(buf_reserve(&b, 91, 100), -ENOBUFS);
    CHECK_BUF(&b, "0123456789");
    CHECK(b.cap <= 100);
    CHECK_INT(buf_reserve(&b, (size_t)-1, 100), -ENOBUFS);
    CHECK_INT(buf_reserve(&b, (size_t)-1, (size_t)-1), -ENOBUFS);
    CHECK_BUF(&b, "0123456789");
    buf_cleanup(&b);

    /* On an empty buffer too. */
    buf_init(&b);
    CHECK_INT(buf_reserve(&b, 101, 100), -ENOBUFS);
    CHECK_INT(buf_len(&b), 0);
    CHECK_INT(buf_reserve(&b, 100, 100), 0);
    CHECK_INT(buf_tail_len(&b), 100);
    CHECK_INT(b.cap, 100);
    CHECK_INT(buf_reserve(&b, 0, 100), 0);
    buf_cleanup(&b);

    /* A small cap is honoured exactly, even below any default allocation size. */
    buf_init(&b);
    CHECK_INT(buf_reserve(&b, 3, 5), 0);
    CHECK(b.cap >= 3 && b.cap <= 5);
    buf_cleanup(&b);
}

static void test_append_consume(void)
{
    struct buf b;
    buf_init(&b);
    CHECK_INT(buf_append(&b, "", 0, 100), 0);
    CHECK_INT(buf_len(&b), 0);
    CHECK_INT(buf_append(&b, "hello", 5, 100), 0);
    CHECK_INT(buf_append(&b, " world", 6, 100), 0);
    CHECK_BUF(&b, "hello world");

    /* NUL is an ordinary byte. */
    CHECK_INT(buf_append(&b, "\0x", 2, 100), 0);
    CHECK_BUF(&b, "hello world\0x");

    /* Past the cap: refused, nothing changed. */
    char big[100];
    memset(big, 'z', sizeof(big));
    CHECK_INT(buf_append(&b, big, 88, 100), -ENOBUFS);
    CHECK_BUF(&b, "hello world\0x");
    CHECK_INT(buf_append(&b, big, 87, 100), 0);
    CHECK_INT(buf_len(&b), 100);
    CHECK_INT(buf_append(&b, "!", 1, 100), -ENOBUFS);
    CHECK_INT(buf_len(&b), 100);

    /* Consuming part keeps the rest in order. */
    buf_consume(&b, 6);
    CHECK_INT(buf_len(&b), 94);
    CHECK_MEM(buf_head(&b), 7, "world\0x", 7);
    buf_consume(&b, 7);
    CHECK_INT(buf_len(&b), 87);
    CHECK_MEM(buf_head(&b), 87, big, 87);

    /* Consuming everything releases the memory. */
    buf_consume(&b, 87);
    CHECK_INT(buf_len(&b), 0);
    CHECK(b.data == NULL);
    CHECK(buf_head(&b) == NULL);
    CHECK_INT(buf_tail_len(&b), 0);

    /* Consuming nothing from an empty buffer is harmless. */
    buf_consume(&b, 0);
    CHECK_INT(buf_len(&b), 0);
    buf_cleanup(&b);
}

static void test_compaction(void)
{
    struct buf b;
    buf_init(&b);
    CHECK_INT(buf_append(&b, "0123456789abcdef", 16, 16), 0);
    CHECK_INT(b.cap, 16);
    buf_consume(&b, 10);
    CHECK_BUF(&b, "abcdef");

    /* 6 held + 10 new = the cap: fits only by moving the held bytes to the front. */
    CHECK_INT(buf_append(&b, "ghijklmnop", 10, 16), 0);
    CHECK_BUF(&b, "abcdefghijklmnop");
    CHECK(b.cap <= 16);
    CHECK_INT(buf_append(&b, "q", 1, 16), -ENOBUFS);
    CHECK_BUF(&b, "abcdefghijklmnop");

    /* The same through reserve + commit. */
    buf_consume(&b, 12);
    CHECK_BUF(&b, "mnop");
    CHECK_INT(buf_reserve(&b, 12, 16), 0);
    CHECK(buf_tail_len(&b) >= 12);
    CHECK_BUF(&b, "mnop");
    memcpy(buf_tail(&b), "qrstuvwxyz01", 12);
    buf_commit(&b, 12);
    CHECK_BUF(&b, "mnopqrstuvwxyz01");
    CHECK(b.cap <= 16);
    buf_cleanup(&b);
}

/* Growth over many appends and consumes never loses, duplicates or reorders a byte. */
static void test_growth(void)
{
    enum { TOTAL = 100000, MAX = 1 << 20 };
    struct buf b;
    buf_init(&b);
    size_t written = 0;
    size_t read = 0;
    int bad = 0;
    while (written < TOTAL || read < written) {
        char chunk[37];
        size_t n = 1 + (written * 7) % sizeof(chunk);
        if (written < TOTAL) {
            for (size_t i = 0; i < n; i++) {
                chunk[i] = (char)((written + i) % 251);
            }
            if (buf_append(&b, chunk, n, MAX) != 0) {
                bad++;
                break;
            }
            written += n;
        }
        /* Consume a little less than was added, so the buffer both grows and slides. */
        size_t take = buf_len(&b) > 20 || written >= TOTAL ? buf_len(&b) / 2 + 1 : 0;
        if (take > buf_len(&b)) {
            take = buf_len(&b);
        }
        const char *head = buf_head(&b);
        for (size_t i = 0; i < take; i++) {
            bad += head[i] != (char)((read + i) % 251);
        }
        buf_consume(&b, take);
        read += take;
        bad += b.cap > MAX;
    }
    CHECK_INT(bad, 0);
    CHECK_INT(read, written);
    CHECK_INT(buf_len(&b), 0);
    CHECK(b.data == NULL);
    buf_cleanup(&b);
}

int main(void)
{
    test_init_cleanup();
    test_reserve();
    test_append_consume();
    test_compaction();
    test_growth();
    return check_exit("test_buf");
}
