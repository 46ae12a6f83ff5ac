/* The soak through the C ABI: several C threads (pthreads) for a given number of seconds on one heap with the
 * background compactor on, allocating (16 B-256 KiB, some unmovable), writing a pattern, verifying it under pins
 * (a nested pin must see the same address: a pinned block never moves) and long-term pins, and freeing at random,
 * while the main thread compacts every 0.7 s. Every wrong byte, every unexpected status and a heap that does not
 * end empty is a failure. Started by the bench's soak command beside the managed soak (scripts/cabi.sh builds it).
 *   cabi_soak SECONDS [THREADS]
 * Prints a progress line every 10 s and ends with the line the soak parses:
 *   cabi_soak: operations N verifications N failures N threads N seconds N
 * Exits 0 only when failures is 0. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "compaction_heap.h"

#define LIVE 2048            /* blocks one thread holds at most */
#define MAX_SIZE (256 * 1024)

static atomic_llong operations, verifications, failures;
static atomic_int stop;

static void fail(const char* what, uint64_t handle, int status)
{
    if (atomic_fetch_add(&failures, 1) < 10) fprintf(stderr, "cabi_soak: FAILED %s (handle %llx, status %d)\n", what, (unsigned long long)handle, status);
}

static cna_pin_info new_pin(void) { cna_pin_info p; memset(&p, 0, sizeof p); p.size = sizeof p; return p; }
static cna_stats new_stats(void) { cna_stats s; memset(&s, 0, sizeof s); s.size = sizeof s; return s; }

static unsigned char pattern(uint64_t h, int64_t i) { return (unsigned char)((h * 0x9E3779B97F4A7C15ull >> 56) ^ (uint64_t)i * 31); }

static uint64_t next(uint64_t* r) { *r ^= *r << 13; *r ^= *r >> 7; *r ^= *r << 17; return *r; }

/* Every 61st byte and the last, like the managed soak's check. */
static int intact(const cna_pin_info* p, uint64_t h)
{
    const unsigned char* b = p->address;
    for (int64_t i = 0; i < p->length; i += 61) if (b[i] != pattern(h, i)) return 0;
    return p->length == 0 || b[p->length - 1] == pattern(h, p->length - 1);
}

/* Pins the block, checks its bytes, pins it again and checks that the address held still; unpins both. */
static void verify(uint64_t heap, uint64_t h, int long_term)
{
    cna_pin_info p = new_pin(), q = new_pin();
    int st = long_term ? cna_pin_long_term(heap, h, &p) : cna_pin(heap, h, &p);
    /* A long-term pin may be refused, as documented: a block another pin holds in place (PINNED), or no unmovable
     * memory left to move it into (NO_MEMORY). Neither is a failure; every other status is. */
    if (long_term && (st == CNA_E_PINNED || st == CNA_E_NO_MEMORY)) return;
    if (st != CNA_OK) { fail(long_term ? "cna_pin_long_term" : "cna_pin", h, st); return; }
    if (!intact(&p, h)) fail("a block's bytes changed", h, 0);
    if ((st = cna_pin(heap, h, &q)) != CNA_OK) fail("nested cna_pin", h, st);
    else
    {
        if (q.address != p.address) fail("a pinned block moved", h, 0);
        if ((st = cna_unpin(heap, q.token)) != CNA_OK) fail("cna_unpin (nested)", h, st);
    }
    if ((st = cna_unpin(heap, p.token)) != CNA_OK) fail("cna_unpin", h, st);
    atomic_fetch_add(&verifications, 1);
}

typedef struct { uint64_t heap; uint64_t seed; } worker_args;

static void* worker(void* arg)
{
    worker_args* a = arg;
    uint64_t r = a->seed * 0x2545F4914F6CDD1Dull + 1, live[LIVE];
    int count = 0;
    while (!atomic_load(&stop))
    {
        int op = (int)(next(&r) % 100);
        if (op < 40 && count < LIVE)
        {
            /* Sizes spread evenly over their logarithm, 16 B to 256 KiB. */
            int64_t size = 16;
            for (int bits = (int)(next(&r) % 15); bits > 0; bits--) size <<= 1;
            size += (int64_t)(next(&r) % (uint64_t)size);
            if (size > MAX_SIZE) size = MAX_SIZE;
            uint64_t h;
            int st = cna_alloc(a->heap, size, next(&r) % 10 == 0 ? CNA_UNMOVABLE : CNA_MOVABLE, &h);
            if (st == CNA_E_NO_MEMORY) continue;
            if (st != CNA_OK) { fail("cna_alloc", 0, st); continue; }
            cna_pin_info p = new_pin();
            if ((st = cna_pin(a->heap, h, &p)) != CNA_OK) { fail("cna_pin (fill)", h, st); continue; }
            if (p.length != size) fail("a pinned block's length is not its size", h, 0);
            for (int64_t i = 0; i < p.length; i++) ((unsigned char*)p.address)[i] = pattern(h, i);
            if ((st = cna_unpin(a->heap, p.token)) != CNA_OK) fail("cna_unpin (fill)", h, st);
            live[count++] = h;
        }
        else if (op < 75 && count > 0)
        {
            verify(a->heap, live[next(&r) % (uint64_t)count], op < 45);
        }
        else if (count > 0)
        {
            int j = (int)(next(&r) % (uint64_t)count);
            int st = cna_free(a->heap, live[j]);
            if (st != CNA_OK) fail("cna_free", live[j], st);
            live[j] = live[--count];
        }
        atomic_fetch_add(&operations, 1);
    }
    for (int j = 0; j < count; j++)
    {
        verify(a->heap, live[j], 0);
        int st = cna_free(a->heap, live[j]);
        if (st != CNA_OK) fail("cna_free (end)", live[j], st);
    }
    return NULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char** argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 10, threads = argc > 2 ? atoi(argv[2]) : 2;
    if (seconds < 1 || threads < 1 || threads > 64) { fprintf(stderr, "usage: cabi_soak SECONDS [THREADS (1-64)]\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    cna_heap_options o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    o.arena_bytes = 1LL << 30;
    o.background = 1;
    uint64_t heap;
    int st = cna_heap_create(&o, &heap);
    if (st != CNA_OK) { fprintf(stderr, "cabi_soak: cna_heap_create failed (%d)\n", st); return 1; }

    pthread_t t[64];
    worker_args args[64];
    for (int i = 0; i < threads; i++)
    {
        args[i] = (worker_args){ heap, (uint64_t)i + 1 };
        if (pthread_create(&t[i], NULL, worker, &args[i]) != 0) { fprintf(stderr, "cabi_soak: pthread_create failed\n"); return 1; }
    }
    double start = now(), next_compact = start + 0.7;
    int reported = 0;
    while (now() - start < seconds)
    {
        struct timespec nap = { 0, 20 * 1000 * 1000 };
        nanosleep(&nap, NULL);
        if (now() >= next_compact)
        {
            if ((st = cna_compact(heap, NULL)) != CNA_OK) fail("cna_compact", 0, st);
            next_compact += 0.7;
        }
        int elapsed = (int)(now() - start);
        if (elapsed / 10 > reported)
        {
            reported = elapsed / 10;
            printf("cabi_soak: %d s, %lld operations, %lld verifications, %lld failures\n", elapsed,
                   (long long)atomic_load(&operations), (long long)atomic_load(&verifications), (long long)atomic_load(&failures));
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);

    cna_stats s = new_stats();
    if ((st = cna_background_stop(heap)) != CNA_OK) fail("cna_background_stop", 0, st);
    if ((st = cna_get_stats(heap, &s)) != CNA_OK) fail("cna_get_stats", 0, st);
    else if (s.live_bytes != 0 || s.live_blocks != 0) fail("the heap is not empty at the end", 0, (int)s.live_blocks);
    if ((st = cna_heap_destroy(heap)) != CNA_OK) fail("cna_heap_destroy", 0, st);
    printf("cabi_soak: operations %lld verifications %lld failures %lld threads %d seconds %d bytes_moved %lld long_term_pin_migrations %lld\n",
           (long long)atomic_load(&operations), (long long)atomic_load(&verifications), (long long)atomic_load(&failures),
           threads, seconds, (long long)s.bytes_moved, (long long)s.long_term_pin_migrations);
    return atomic_load(&failures) == 0 ? 0 : 1;
}
