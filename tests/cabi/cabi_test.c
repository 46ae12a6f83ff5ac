/* Exercises every entry point of compaction_heap.h, every error path, and two threads, through the real
 * NativeAOT library. Built and run by tests/Interop/CAbiTests.cs (gcc); prints one line per failed check and a closing
 * "cabi: N checks, N failed" line; exits 0 only when nothing failed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "compaction_heap.h"

static int checks, failed;
#define CHECK(cond) do { checks++; if (!(cond)) { failed++; printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); } } while (0)

static cna_pin_info new_pin(void) { cna_pin_info p; memset(&p, 0, sizeof p); p.size = sizeof p; return p; }
static cna_stats new_stats(void) { cna_stats s; memset(&s, 0, sizeof s); s.size = sizeof s; return s; }

static unsigned char pattern(uint64_t h, int64_t i) { return (unsigned char)(h * 2654435761u + (uint64_t)i * 31); }

static int fill(uint64_t heap, uint64_t h)
{
    cna_pin_info p = new_pin();
    if (cna_pin(heap, h, &p) != CNA_OK) return 0;
    for (int64_t i = 0; i < p.length; i++) ((unsigned char*)p.address)[i] = pattern(h, i);
    return cna_unpin(heap, p.token) == CNA_OK;
}

static int intact(uint64_t heap, uint64_t h)
{
    cna_pin_info p = new_pin();
    if (cna_pin(heap, h, &p) != CNA_OK) return 0;
    int ok = 1;
    for (int64_t i = 0; i < p.length; i++) if (((unsigned char*)p.address)[i] != pattern(h, i)) { ok = 0; break; }
    return cna_unpin(heap, p.token) == CNA_OK && ok;
}

typedef struct { uint64_t heap; int seed; int bad; } worker_args;

/* A mutator: allocate, write, pin and verify, free at random, while the other thread and the compactor run. */
static void* worker(void* arg)
{
    worker_args* a = arg;
    uint64_t live[256] = {0};
    unsigned r = (unsigned)a->seed;
    for (int step = 0; step < 20000; step++)
    {
        r = r * 1103515245u + 12345u;
        int slot = (int)((r >> 8) % 256);
        if (live[slot])
        {
            if (!intact(a->heap, live[slot])) a->bad++;
            if (cna_free(a->heap, live[slot]) != CNA_OK) a->bad++;
            live[slot] = 0;
        }
        else
        {
            int64_t size = 1 + (int64_t)((r >> 4) % ((r & 15) == 0 ? 70000 : 1500));
            if (cna_alloc(a->heap, size, CNA_MOVABLE, &live[slot]) != CNA_OK || !fill(a->heap, live[slot])) a->bad++;
        }
        if (step % 2000 == 0)
        {
            cna_stats s = new_stats();
            if (cna_compact(a->heap, &s) != CNA_OK) a->bad++;
        }
    }
    for (int i = 0; i < 256; i++)
        if (live[i] && (!intact(a->heap, live[i]) || cna_free(a->heap, live[i]) != CNA_OK)) a->bad++;
    return NULL;
}

int main(void)
{
    /* Creation: defaults, bad options, bad pointers. */
    uint64_t heap = 0, other = 0;
    CHECK(cna_heap_create(NULL, NULL) == CNA_E_BAD_ARGUMENT);
    cna_heap_options o; memset(&o, 0, sizeof o); o.size = sizeof o; o.arena_bytes = 256ll << 20;
    heap = 77;
    CHECK(cna_heap_create(NULL, &heap) == CNA_E_BAD_ARGUMENT && heap == 0);   /* options are required (the header says so) */
    cna_heap_options bad = o; bad.arena_bytes = 12345;
    CHECK(cna_heap_create(&bad, &heap) == CNA_E_BAD_ARGUMENT);
    bad = o; bad.movable_zone_percent = 101;
    CHECK(cna_heap_create(&bad, &heap) == CNA_E_BAD_ARGUMENT);
    bad = o; bad.use_huge_pages = 7;
    CHECK(cna_heap_create(&bad, &heap) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_heap_create(&o, &heap) == CNA_OK && heap != 0);
    cna_heap_options defaults; memset(&defaults, 0, sizeof defaults); defaults.size = sizeof defaults;
    CHECK(cna_heap_create(&defaults, &other) == CNA_OK && other != 0 && other != heap);

    /* The struct-size contract, both ways: an older, shorter struct is read as far as it goes (the rest defaults);
     * a longer one (a newer header than this library) and one too short for its size field are refused. */
    {
        struct { cna_heap_options o; int64_t newer_field; } longer;
        memset(&longer, 0, sizeof longer); longer.o.size = sizeof longer; longer.o.arena_bytes = 64ll << 20;
        uint64_t x = 0;
        CHECK(cna_heap_create(&longer.o, &x) == CNA_E_BAD_ARGUMENT && x == 0);
        cna_heap_options tooshort = o; tooshort.size = 2;
        CHECK(cna_heap_create(&tooshort, &x) == CNA_E_BAD_ARGUMENT);
        /* Only the size field: every option its default (a 1 GiB arena). The bytes past it are poison. */
        cna_heap_options old4; memset(&old4, 0x7f, sizeof old4); old4.size = 4;
        cna_stats st; memset(&st, 0, sizeof st); st.size = sizeof st;
        CHECK(cna_heap_create(&old4, &x) == CNA_OK && cna_get_stats(x, &st) == CNA_OK && st.reserved_bytes == 1ll << 30);
        CHECK(cna_heap_destroy(x) == CNA_OK);
        /* Up to arena_bytes: that is read, use_huge_pages and background (poison past the size) are not. */
        cna_heap_options old16; memset(&old16, 0x7f, sizeof old16); old16.size = 16; old16.movable_zone_percent = 50; old16.arena_bytes = 64ll << 20;
        CHECK(cna_heap_create(&old16, &x) == CNA_OK && cna_get_stats(x, &st) == CNA_OK && st.reserved_bytes == 64ll << 20);
        CHECK(cna_heap_destroy(x) == CNA_OK);
        /* Output structs: a shorter cna_stats is written as far as it goes and no further; a longer one is refused. */
        struct { cna_stats s; int64_t newer_field; } longstats;
        memset(&longstats, 0, sizeof longstats); longstats.s.size = sizeof longstats;
        CHECK(cna_get_stats(heap, &longstats.s) == CNA_E_BAD_ARGUMENT);
        CHECK(cna_compact(heap, &longstats.s) == CNA_E_BAD_ARGUMENT);
        cna_stats part; memset(&part, 0x55, sizeof part); part.size = 16;   /* size, fragmentation_score, live_bytes */
        CHECK(cna_get_stats(heap, &part) == CNA_OK && part.size == 16 && part.live_bytes == 0);
        CHECK(part.live_blocks == 0x5555555555555555ll && part.bytes_moved == 0x5555555555555555ll);   /* untouched */
        cna_pin_info nopin; memset(&nopin, 0, sizeof nopin); nopin.size = sizeof nopin - 8;   /* no room for the token */
        uint64_t blk = 0;
        CHECK(cna_alloc(heap, 10, CNA_MOVABLE, &blk) == CNA_OK && cna_pin(heap, blk, &nopin) == CNA_E_BAD_ARGUMENT);
        struct { cna_pin_info p; int64_t newer_field; } longpin;
        memset(&longpin, 0, sizeof longpin); longpin.p.size = sizeof longpin;
        CHECK(cna_pin(heap, blk, &longpin.p) == CNA_E_BAD_ARGUMENT && cna_free(heap, blk) == CNA_OK);
    }

    /* Status strings and the version. */
    CHECK(strncmp(cna_status_string(CNA_OK), "CNA_OK", 6) == 0);
    CHECK(strncmp(cna_status_string(CNA_E_BAD_HEAP), "CNA_E_BAD_HEAP:", 15) == 0);
    CHECK(strncmp(cna_status_string(CNA_E_BAD_PIN), "CNA_E_BAD_PIN:", 14) == 0);
    CHECK(strncmp(cna_status_string(CNA_E_INTERNAL), "CNA_E_INTERNAL:", 15) == 0);
    CHECK(strcmp(cna_status_string(12345), "unknown cna_status") == 0);
    CHECK(cna_status_string(CNA_E_BUSY) == cna_status_string(CNA_E_BUSY));   /* static: the same string every time */
    CHECK(cna_version() != NULL && cna_version() == cna_version());
#ifdef CNA_EXPECTED_VERSION
    CHECK(strncmp(cna_version(), CNA_EXPECTED_VERSION, strlen(CNA_EXPECTED_VERSION)) == 0);   /* pkg-config's version */
#endif
    printf("cabi: library version %s\n", cna_version());

    /* The memory limit: allocations fail with CNA_E_NO_MEMORY once live bytes reach it, and committed bytes never
     * pass it; a negative limit is refused. */
    {
        cna_heap_options lo; memset(&lo, 0, sizeof lo); lo.size = sizeof lo; lo.arena_bytes = 64ll << 20;
        lo.memory_limit = 8ll << 20;
        uint64_t lh = 0;
        CHECK(cna_heap_create(&lo, &lh) == CNA_OK);
        uint64_t got[4096];
        int n = 0;
        cna_status ls = CNA_OK;
        while (n < 4096 && (ls = cna_alloc(lh, 4000, CNA_MOVABLE, &got[n])) == CNA_OK) n++;
        CHECK(ls == CNA_E_NO_MEMORY);
        CHECK(n > 1000);
        cna_stats ls_ = new_stats();
        CHECK(cna_get_stats(lh, &ls_) == CNA_OK && ls_.committed_bytes <= lo.memory_limit);
        for (int i = 0; i < n; i++) CHECK(cna_free(lh, got[i]) == CNA_OK);
        CHECK(cna_heap_destroy(lh) == CNA_OK);
        lo.memory_limit = -1;
        CHECK(cna_heap_create(&lo, &lh) == CNA_E_BAD_ARGUMENT);
    }

    /* Allocation and its errors. */
    uint64_t h = 0, u = 0, big = 0;
    CHECK(cna_alloc(heap, 100, CNA_MOVABLE, NULL) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_alloc(heap, 0, CNA_MOVABLE, &h) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_alloc(heap, -5, CNA_MOVABLE, &h) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_alloc(heap, 100, 7, &h) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_alloc(heap, 1ll << 40, CNA_MOVABLE, &h) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_alloc(0, 100, CNA_MOVABLE, &h) == CNA_E_BAD_HEAP);
    CHECK(cna_alloc(987654321, 100, CNA_MOVABLE, &h) == CNA_E_BAD_HEAP);
    CHECK(cna_alloc(heap, 100, CNA_MOVABLE, &h) == CNA_OK && h != 0);
    CHECK(cna_alloc(heap, 300, CNA_UNMOVABLE, &u) == CNA_OK && u != 0);
    CHECK(cna_alloc(heap, 1 << 20, CNA_MOVABLE, &big) == CNA_OK);
    CHECK(fill(heap, h) && fill(heap, u) && fill(heap, big));

    /* Pins: short and long-term, their errors. */
    cna_pin_info p = new_pin(), lt = new_pin();
    CHECK(cna_pin(heap, h, NULL) == CNA_E_BAD_ARGUMENT);
    cna_pin_info shortpin = new_pin(); shortpin.size = 8;
    CHECK(cna_pin(heap, h, &shortpin) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_pin(heap, 0, &p) == CNA_E_BAD_HANDLE);
    CHECK(cna_pin(heap, 0xdeadbeefcafef00dull, &p) == CNA_E_BAD_HANDLE);
    CHECK(cna_pin(other, h, &p) == CNA_E_BAD_HANDLE);             /* another heap's handle */
    CHECK(cna_pin(heap, h, &p) == CNA_OK && p.address != NULL && p.length == 100 && p.token != 0);
    CHECK(cna_free(heap, h) == CNA_E_PINNED);
    CHECK(cna_pin_long_term(heap, h, &lt) == CNA_E_PINNED);       /* held in place by the short pin */
    CHECK(cna_unpin(heap, p.token) == CNA_OK);
    CHECK(cna_unpin(heap, p.token) == CNA_E_BAD_PIN);             /* twice */
    CHECK(cna_unpin(heap, 424242) == CNA_E_BAD_PIN);
    CHECK(cna_unpin(0, p.token) == CNA_E_BAD_HEAP);
    CHECK(cna_pin_long_term(heap, h, &lt) == CNA_OK && lt.length == 100);
    cna_stats s = new_stats();
    CHECK(cna_get_stats(heap, &s) == CNA_OK && s.long_term_pins == 1 && s.long_term_pin_migrations == 1);
    CHECK(cna_compact(heap, NULL) == CNA_OK);
    cna_pin_info again = new_pin();
    CHECK(cna_pin(heap, h, &again) == CNA_OK && again.address == lt.address);   /* a long-term pinned block never moves */
    CHECK(cna_unpin(heap, again.token) == CNA_OK);
    CHECK(intact(heap, h));
    CHECK(cna_heap_destroy(heap) == CNA_E_BUSY);                  /* pins held */
    CHECK(cna_unpin(heap, lt.token) == CNA_OK);
    CHECK(cna_get_stats(heap, &s) == CNA_OK && s.long_term_pins == 0);

    /* Free and stale handles. */
    CHECK(cna_free(heap, h) == CNA_OK);
    CHECK(cna_free(heap, h) == CNA_E_BAD_HANDLE);                 /* double free */
    CHECK(cna_pin(heap, h, &p) == CNA_E_BAD_HANDLE);              /* stale */
    CHECK(cna_free(other, u) == CNA_E_BAD_HANDLE);                /* foreign */
    CHECK(cna_free(heap, 0) == CNA_E_BAD_HANDLE);

    /* A million random 64-bit values, as handles and as pin tokens: every one refused, none accepted. */
    {
        uint64_t x = 0x9E3779B97F4A7C15ull;
        int accepted = 0;
        for (int i = 0; i < 1000000; i++)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;   /* xorshift64 */
            cna_pin_info fp = new_pin();
            int r = (i & 1) ? cna_free(heap, x) : cna_pin(heap, x, &fp);
            if (r != CNA_E_BAD_HANDLE) accepted++;
            if ((i & 1023) == 0 && cna_unpin(heap, x) != CNA_E_BAD_PIN) accepted++;
        }
        CHECK(accepted == 0);
        CHECK(intact(heap, u) && intact(heap, big));
    }

    /* Statistics and compaction: their errors. */
    cna_stats tiny = new_stats(); tiny.size = 2;
    CHECK(cna_get_stats(heap, NULL) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_get_stats(heap, &tiny) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_compact(heap, &tiny) == CNA_E_BAD_ARGUMENT);
    CHECK(cna_release_free_memory(31337, NULL) == CNA_E_BAD_HEAP);
    CHECK(cna_get_stats(31337, &s) == CNA_E_BAD_HEAP);
    CHECK(cna_compact(31337, NULL) == CNA_E_BAD_HEAP);
    CHECK(cna_background_start(31337) == CNA_E_BAD_HEAP);
    CHECK(cna_background_stop(31337) == CNA_E_BAD_HEAP);

    /* Two threads beside the background compactor. */
    CHECK(cna_background_start(heap) == CNA_OK);
    CHECK(cna_background_start(heap) == CNA_OK);                  /* already running: nothing to do */
    pthread_t t1, t2;
    worker_args a1 = { heap, 1, 0 }, a2 = { heap, 2, 0 };
    pthread_create(&t1, NULL, worker, &a1);
    pthread_create(&t2, NULL, worker, &a2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK(a1.bad == 0 && a2.bad == 0);
    CHECK(cna_background_stop(heap) == CNA_OK);
    CHECK(intact(heap, u) && intact(heap, big));
    CHECK(cna_free(heap, u) == CNA_OK && cna_free(heap, big) == CNA_OK);
    s = new_stats();
    CHECK(cna_compact(heap, &s) == CNA_OK && s.live_blocks == 0 && s.live_bytes == 0 && s.reserved_bytes == 256ll << 20);
    printf("cabi: moved %lld bytes in %lld pages (pgmigrate_success) while the threads ran\n", (long long)s.bytes_moved, (long long)s.pgmigrate_success);

    /* Giving free memory back: everything is free now, so committed memory falls. */
    int64_t before = s.committed_bytes, released = -1;
    CHECK(cna_release_free_memory(heap, &released) == CNA_OK && released > 0);
    CHECK(cna_release_free_memory(heap, NULL) == CNA_OK);
    s = new_stats();
    CHECK(cna_get_stats(heap, &s) == CNA_OK && s.decommitted_bytes + s.purged_bytes > 0);
    printf("cabi: released %lld bytes (committed %lld -> %lld)\n", (long long)released, (long long)before, (long long)s.committed_bytes);

    /* Destroy: then every call on it is refused, and a new heap never gets its id. */
    CHECK(cna_heap_destroy(heap) == CNA_OK);
    CHECK(cna_heap_destroy(heap) == CNA_E_BAD_HEAP);
    CHECK(cna_alloc(heap, 10, CNA_MOVABLE, &h) == CNA_E_BAD_HEAP);
    uint64_t third = 0;
    CHECK(cna_heap_create(&defaults, &third) == CNA_OK && third != heap && third != other);
    CHECK(cna_free(third, u) == CNA_E_BAD_HANDLE);                /* a dead heap's handle */
    CHECK(cna_heap_destroy(third) == CNA_OK && cna_heap_destroy(other) == CNA_OK);

    printf("cabi: %d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
