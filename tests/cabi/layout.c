/* Prints the size and every field offset of compaction_heap.h's structs, one "struct.field offset" per line, for
 * tests/Interop/CAbiTests.cs to compare with the C# declarations. */
#include <stddef.h>
#include <stdio.h>
#include "compaction_heap.h"

#define F(s, f) printf(#s "." #f " %zu\n", offsetof(s, f))
int main(void)
{
    printf("cna_heap_options.sizeof %zu\n", sizeof(cna_heap_options));
    F(cna_heap_options, size); F(cna_heap_options, movable_zone_percent); F(cna_heap_options, arena_bytes);
    F(cna_heap_options, use_huge_pages); F(cna_heap_options, background); F(cna_heap_options, memory_limit);
    printf("cna_pin_info.sizeof %zu\n", sizeof(cna_pin_info));
    F(cna_pin_info, size); F(cna_pin_info, reserved); F(cna_pin_info, address); F(cna_pin_info, length); F(cna_pin_info, token);
    printf("cna_stats.sizeof %zu\n", sizeof(cna_stats));
    F(cna_stats, size); F(cna_stats, fragmentation_score); F(cna_stats, live_bytes); F(cna_stats, live_blocks);
    F(cna_stats, committed_bytes); F(cna_stats, reserved_bytes); F(cna_stats, decommitted_bytes); F(cna_stats, purged_bytes);
    F(cna_stats, metadata_bytes); F(cna_stats, long_term_pins); F(cna_stats, long_term_pin_migrations);
    F(cna_stats, compact_stall); F(cna_stats, compact_success); F(cna_stats, pgmigrate_success); F(cna_stats, pgmigrate_fail);
    F(cna_stats, bytes_moved);
    return 0;
}
