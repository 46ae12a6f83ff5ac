/* compaction_heap.h: the C ABI of the compacting native-memory allocator (libcompaction_heap.so).
 *
 * Get the library:     the tarball compaction_heap-VERSION-linux-x64.tar.gz (`dotnet pack` at the root of the source
 *                      tree writes it to out/packages), or the NuGet package Compaction.Allocator.Native
 * Build a program:     export PKG_CONFIG_PATH=/where/it/is/unpacked/compaction_heap-VERSION-linux-x64/lib/pkgconfig
 *                      gcc prog.c $(pkg-config --cflags --libs compaction_heap)
 *                      (or: gcc -I DIR/include prog.c -L DIR/lib -lcompaction_heap -Wl,-rpath,DIR/lib)
 *
 * Every function returns a cna_status: 0 on success, a negative code otherwise. No function crashes on a bad
 * argument or a bad handle, and no exception crosses the boundary. Heaps are named by 64-bit ids that are never
 * reused, blocks by 64-bit handles (the C# BlockHandle's value), pins by 64-bit tokens that are never reused: a
 * stale, forged or foreign id, handle or token is rejected with its own code. Every function may be called from any
 * thread. Structs carry their own size in their first field: set it to sizeof(the struct) before the call. The
 * library reads and writes at most that many bytes: a program built against an older, shorter struct keeps working
 * (options beyond its size take their defaults; statistics beyond it are not written). A size larger than the
 * library's own struct (a program built against a newer header than the library) is refused with
 * CNA_E_BAD_ARGUMENT, as is a size below 4 (the size field itself) and a cna_pin_info without room for its token.
 *
 * Costs: cna_alloc may run direct compaction when the arena has no free run of the size asked (passes of tens of
 * milliseconds were traced on a fragmented 1 GiB arena); a cna_pin and its cna_unpin cost a BlockPin (eight interlocked
 * operations, 32-36 ns in quiet runs) plus a lookup in the heap's pin table; cna_pin_long_term may first migrate the block into unmovable memory (a copy of the
 * block and a process-wide barrier); cna_compact and cna_release_free_memory take as long as the work they find.
 */
#ifndef COMPACTION_HEAP_H
#define COMPACTION_HEAP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t cna_status;
enum {
    CNA_OK = 0,
    CNA_E_BAD_HANDLE = -1,    /* null, stale (freed), forged or another heap's block handle */
    CNA_E_BAD_ARGUMENT = -2,  /* a null pointer, a size of 0 or above the largest block, a bad kind, bad options */
    CNA_E_NO_MEMORY = -3,     /* the arena (or, for a long-term pin, its unmovable memory) is full */
    CNA_E_BAD_HEAP = -4,      /* not a live heap id (never created, or destroyed) */
    CNA_E_PINNED = -5,        /* the block is pinned: freeing it, or long-term pinning a block another pin holds */
    CNA_E_BUSY = -6,          /* destroying a heap whose blocks are still pinned */
    CNA_E_BAD_PIN = -7,       /* not a live pin token of this heap (never issued, or already unpinned) */
    CNA_E_INTERNAL = -99      /* an unexpected failure inside the library; the heap stays consistent */
};

enum { CNA_MOVABLE = 0, CNA_UNMOVABLE = 1 };

/* Options of cna_heap_create (required: a NULL options pointer is CNA_E_BAD_ARGUMENT). Zero means "the default"
 * for every field, and fields beyond the given size are read as zero. */
typedef struct cna_heap_options {
    int32_t size;                 /* sizeof(cna_heap_options) */
    int32_t movable_zone_percent; /* default 75 */
    int64_t arena_bytes;          /* address space reserved (nothing is committed up front); default 1 GiB */
    int32_t use_huge_pages;       /* 0 default (on), 1 on, 2 off */
    int32_t background;           /* 1: start the background compactor at creation */
    int64_t memory_limit;         /* bytes the heap may hold committed, its metadata included (so resident); 0 none. An allocation that would
                                     pass it frees and compacts memory first, and fails with CNA_E_NO_MEMORY only when
                                     live bytes, pins or unmovable blocks leave no room (HeapOptions.MemoryLimit) */
} cna_heap_options;

/* A pinned block: its first byte and its size; the token unpins it. */
typedef struct cna_pin_info {
    int32_t size;                 /* sizeof(cna_pin_info) */
    int32_t reserved;
    void* address;
    int64_t length;
    uint64_t token;
} cna_pin_info;

/* A snapshot of a heap's figures (HeapStatistics and the compaction counters of the C# API). */
typedef struct cna_stats {
    int32_t size;                 /* sizeof(cna_stats) */
    int32_t fragmentation_score;  /* extfrag at pageblock order of the movable zone, percent */
    int64_t live_bytes;
    int64_t live_blocks;
    int64_t committed_bytes;
    int64_t reserved_bytes;
    int64_t decommitted_bytes;
    int64_t purged_bytes;
    int64_t metadata_bytes;
    int64_t long_term_pins;
    int64_t long_term_pin_migrations;
    int64_t compact_stall;
    int64_t compact_success;
    int64_t pgmigrate_success;
    int64_t pgmigrate_fail;
    int64_t bytes_moved;
} cna_stats;

cna_status cna_heap_create(const cna_heap_options* options, uint64_t* heap_out);       /* both required */
cna_status cna_heap_destroy(uint64_t heap);
cna_status cna_alloc(uint64_t heap, int64_t size, int32_t kind, uint64_t* handle_out);
cna_status cna_free(uint64_t heap, uint64_t handle);
cna_status cna_pin(uint64_t heap, uint64_t handle, cna_pin_info* pin_out);            /* holds still until cna_unpin; the compactor skips it */
cna_status cna_pin_long_term(uint64_t heap, uint64_t handle, cna_pin_info* pin_out);  /* for unbounded use: first moved into unmovable memory, unmovable for good */
cna_status cna_unpin(uint64_t heap, uint64_t token);
cna_status cna_compact(uint64_t heap, cna_stats* stats_out);                     /* stats_out may be NULL */
cna_status cna_background_start(uint64_t heap);
cna_status cna_background_stop(uint64_t heap);
cna_status cna_get_stats(uint64_t heap, cna_stats* stats_out);
/* Gives free memory back to the OS: drains the thread caches, decommits every wholly free pageblock and purges free
 * runs of at least 4 pages (madvise(MADV_DONTNEED)); they stay usable. released_out (may be NULL) receives the bytes
 * decommitted or purged. */
cna_status cna_release_free_memory(uint64_t heap, int64_t* released_out);
/* The name and meaning of a status, e.g. "CNA_E_BAD_HEAP: not a live heap id ...": a static string, never freed;
 * an unknown code gives "unknown cna_status". */
const char* cna_status_string(cna_status status);
/* The library's version: "MAJOR.MINOR.PATCH", followed by "+COMMIT" when it was built from a git checkout
 * (pkg-config --modversion compaction_heap gives the MAJOR.MINOR.PATCH part). A static string, never freed. */
const char* cna_version(void);

#ifdef __cplusplus
}
#endif
#endif
