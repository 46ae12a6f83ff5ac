/* cna_heap_destroy racing every other call, from C threads: three threads allocate, write, pin (short and long
 * term) and read back, unpin, free, compact and read statistics on one heap (background compactor on) until the
 * heap is gone, while the main thread destroys it (retrying while it answers CNA_E_BUSY). A call either completes
 * or answers CNA_E_BAD_HEAP; memory a pin granted is read and written in full and must be mapped (a crash is the
 * failure this program exists to catch). Prints "cabi_destroy_race: N rounds, N calls, N failed" and exits 0 only
 * when nothing failed. Built and run by scripts/cabi.sh (tests/Interop/CAbiTests.cs). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "compaction_heap.h"

typedef struct { uint64_t heap; unsigned seed; long calls; int bad; } racer;

static int expected(cna_status s)
{
    return s == CNA_OK || s == CNA_E_BAD_HEAP || s == CNA_E_NO_MEMORY || s == CNA_E_BAD_HANDLE || s == CNA_E_PINNED;
}

static void* race(void* arg)
{
    racer* r = arg;
    uint64_t mine[64];
    int n = 0;
    for (;;) {
        cna_status s = CNA_OK;
        int op = (int)(rand_r(&r->seed) % 8);
        if (op <= 1 || n == 0) {
            uint64_t h = 0;
            int64_t size = rand_r(&r->seed) % 5 == 0 ? 20000 + rand_r(&r->seed) % 100000 : 1 + rand_r(&r->seed) % 2000;
            s = cna_alloc(r->heap, size, (int32_t)(rand_r(&r->seed) % 4 == 0), &h);
            if (s == CNA_OK) { if (n < 64) mine[n++] = h; else { s = cna_free(r->heap, h); } }
        } else if (op == 2) {
            int i = (int)(rand_r(&r->seed) % (unsigned)n);
            s = cna_free(r->heap, mine[i]);
            mine[i] = mine[--n];
        } else if (op <= 4) {
            cna_pin_info p;
            memset(&p, 0, sizeof p);
            p.size = sizeof p;
            uint64_t h = mine[rand_r(&r->seed) % (unsigned)n];
            s = op == 3 ? cna_pin(r->heap, h, &p) : cna_pin_long_term(r->heap, h, &p);
            if (s == CNA_OK) {
                /* Granted: the whole block must be mapped until the unpin. */
                memset((void*)p.address, 0x5A, (size_t)p.length);
                volatile unsigned char* b = (volatile unsigned char*)p.address;
                if (b[0] != 0x5A || b[p.length - 1] != 0x5A) r->bad++;
                cna_status u = cna_unpin(r->heap, p.token);
                if (u != CNA_OK) { printf("FAILED: cna_unpin of a granted pin answered %d\n", u); r->bad++; }
            }
        } else if (op == 5) {
            s = rand_r(&r->seed) % 16 == 0 ? cna_compact(r->heap, NULL) : CNA_OK;
        } else {
            cna_stats st;
            memset(&st, 0, sizeof st);
            st.size = sizeof st;
            s = cna_get_stats(r->heap, &st);
        }
        r->calls++;
        if (s == CNA_E_BAD_HEAP) return NULL;
        if (!expected(s)) { printf("FAILED: a call racing destroy answered %d\n", s); r->bad++; return NULL; }
    }
}

int main(int argc, char** argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 40, failed = 0;
    long calls = 0;
    unsigned seed = (unsigned)time(NULL);
    printf("cabi_destroy_race: seed %u\n", seed);
    for (int round = 0; round < rounds; round++) {
        cna_heap_options o;
        memset(&o, 0, sizeof o);
        o.size = sizeof o;
        o.arena_bytes = 64 << 20;
        o.background = 1;
        uint64_t heap = 0;
        if (cna_heap_create(&o, &heap) != CNA_OK) { printf("FAILED: cna_heap_create\n"); return 1; }
        racer r[3];
        pthread_t t[3];
        for (int i = 0; i < 3; i++) {
            r[i] = (racer){ heap, seed + (unsigned)(round * 7 + i), 0, 0 };
            pthread_create(&t[i], NULL, race, &r[i]);
        }
        struct timespec pause = { 0, (long)(rand_r(&seed) % 5) * 1000000L };
        nanosleep(&pause, NULL);
        cna_status d;
        while ((d = cna_heap_destroy(heap)) == CNA_E_BUSY) { }
        if (d != CNA_OK) { printf("FAILED: cna_heap_destroy answered %d\n", d); failed++; }
        for (int i = 0; i < 3; i++) {
            pthread_join(t[i], NULL);
            failed += r[i].bad;
            calls += r[i].calls;
        }
        if (cna_heap_destroy(heap) != CNA_E_BAD_HEAP) { printf("FAILED: a second destroy was not CNA_E_BAD_HEAP\n"); failed++; }
    }
    printf("cabi_destroy_race: %d rounds, %ld calls, %d failed\n", rounds, calls, failed);
    return failed == 0 ? 0 : 1;
}
