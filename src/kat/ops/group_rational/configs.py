"""The kernels' candidate tile configs on a GPU (kernels.py picks the interpreter's short lists
instead). Plain data, no Triton: the host times the candidates per shape (function.py, tuning.py)."""

# Candidate tiles (BLOCK_S, BLOCK_C, num_warps, variant flag); the host times them on first use of
# a shape (function.py) and then keeps using the winner. Tiles with BLOCK_C = 32 * warps * vector
# width give each thread one 16-byte column vector across all BLOCK_S rows, so the backward's
# ten accumulators stay per-thread and the final row reduction needs no shuffles.
#
# GPU lists. First entry: the default when tuning is off (KAT_AUTOTUNE=0); the best measured on an
# H200 (Triton 3.6) for bf16 (128, 197, 3072) at commit 4056780: forward 165 us, backward 279 us
# (BENCHMARKS.md). Forward configs: (BLOCK_S, BLOCK_C, warps, SELECT).
GPU_FWD_CONFIGS = [(32, 128, 4, False), (8, 256, 1, False), (64, 64, 4, False), (16, 128, 4, False),
                   (16, 256, 4, False), (8, 512, 4, False), (4, 1024, 4, False), (32, 256, 8, False),
                   (16, 512, 8, False), (8, 256, 2, False), (4, 256, 1, False), (4, 256, 2, False),
                   (8, 128, 1, False), (2, 256, 1, False), (2, 1024, 4, False), (4, 512, 2, False),
                   (32, 128, 4, True), (16, 128, 4, True), (16, 256, 4, True), (8, 256, 2, True),
                   (8, 256, 1, True), (4, 256, 1, True), (8, 128, 1, True),
                   # 32 wide: divides the group size of C = 768 (96), so the UNIFORM
                   # (scalar-coefficient) variant applies there too; (64, 32, 2) won at 768 on the
                   # H200 (2026-11-29), (128, 32, 4) in the tuning of 2026-11-30 (same time)
                   (32, 32, 1, False), (16, 32, 1, False), (64, 32, 2, False), (128, 32, 4, False),
                   # 16 elements a thread instead of 32: sm_90 bf16 at group size 96 (C = 768) 58-64
                   # registers against 168 for (64, 32, 2) (scripts/kernel_regs.py, Triton 3.8,
                   # 2026-11-30), so ~2.5x the warps per SM; and the SELECT form (no tile-wide
                   # overflow test). Timed on the H200 on 2026-12-01 (bf16, C = 768): not picked
                   # ((64, 32, 2) again); kept for dtypes and shapes not timed yet
                   (32, 32, 2, False), (64, 32, 4, False), (128, 32, 8, False), (64, 32, 4, True),
                   # 8 and 16 wide: the only widths that divide the group sizes of C = 192 (24) and
                   # 384 (48), so KAT-T's and KAT-S's first rational get scalar coefficients too;
                   # timed only where they are UNIFORM (function._fwd_candidates). sm_90 bf16: 47-64
                   # registers against 208 for (64, 32, 2) per column at group size 24
                   # (scripts/kernel_regs.py, Triton 3.8, 2026-11-30). On the H200 (2026-12-01,
                   # bf16, C = 192) a 64-wide per-column config still won; C = 384 not yet timed
                   (128, 8, 4, False), (256, 8, 4, False), (64, 16, 2, False), (128, 16, 4, False)]
# Backward configs: (BLOCK_S, BLOCK_C, warps, ROW_REDUCE[, STAGES[, FOLD]]). Those whose sm_90
# build spills registers to the stack in the uniform bf16 variant (ptxas via Triton 3.8,
# 2026-11-29: (4, 256, 1, False) 1440 bytes; ROW_REDUCE (32, 128, 4), (16, 256, 4), (8, 256, 2),
# (8, 512, 4), (32, 64, 2) 496-784 bytes; (16, 128, 4), (8, 256, 4), (16, 256, 8) at 255
# registers plus a spill) were dropped: never chosen on the H200, they only cost tuning time. Two
# ROW_REDUCE configs stay for shapes where they might still win.
GPU_BWD_CONFIGS = [(8, 64, 4, False), (4, 128, 4, False), (2, 256, 1, False),
                   (2, 512, 2, False), (1, 1024, 4, False), (2, 1024, 4, False), (2, 128, 1, False),
                   (4, 128, 1, False), (16, 64, 4, False),
                   (8, 128, 4, True), (16, 64, 2, True),
                   (4, 32, 1, False), (8, 32, 2, False), (16, 32, 4, False),  # 32 wide: see above
                   # fifth entry STAGES: loads pipelined through shared memory (sm_90 bf16 uniform:
                   # 80 registers against 95, ~56 instructions per element against ~50, more bytes
                   # in flight per SM); (8, 32, 2, 3) won at C = 768 and 192 on 2026-11-29
                   (4, 128, 4, False, 3), (4, 128, 4, False, 4), (8, 64, 4, False, 3),
                   (2, 128, 2, False, 3), (8, 32, 2, False, 3), (4, 32, 1, False, 4),
                   # two elements per thread: 64 registers (sm_90, bf16, uniform), so eight 4-warp
                   # programs per SM instead of five, for ~57 instructions per element against ~50
                   (2, 128, 4, False), (2, 64, 2, False), (2, 32, 1, False),
                   # sixth entry FOLD: where a block lies in one group, each thread sums its 8
                   # neighbouring columns into one accumulator per term, one partial per block. On
                   # the H200 (2026-11-30) (8, 128, 4, F, 3, 8) won at C = 3072 and (8, 32, 1, F, 3,
                   # 8) at 768 (bf16), 8-13% faster than the same configs unfolded. Their
                   # neighbours (8, 128, 4, F, 4, 8), (4, 128, 4, F, 3, 8), (8, 32, 1, F, 4, 8) and
                   # (4, 32, 1, F, 3, 8) were timed the same day and lost; dropped again.
                   (16, 64, 4, False, 0, 8), (16, 64, 4, False, 3, 8), (8, 128, 4, False, 3, 8),
                   (16, 32, 2, False, 3, 8), (8, 32, 1, False, 3, 8),
                   # narrow folded blocks for group sizes 24 and 48 (C = 192, 384), where no 32-wide
                   # block lies in one group: one 16-byte bf16 vector per thread and row, 64-96
                   # registers (sm_90, bf16; the per-column (8, 32, 2) takes 141 at group size 24).
                   # H200, 2026-12-01, bf16 C = 192: not picked ((8, 32, 2, F, 3) won); C = 384 not
                   # yet timed
                   (8, 8, 1, False, 3, 8), (16, 8, 1, False, 3, 8), (32, 8, 2, False, 3, 8),
                   (64, 8, 4, False, 3, 8), (16, 16, 2, False, 3, 8), (32, 16, 4, False, 3, 8)]
