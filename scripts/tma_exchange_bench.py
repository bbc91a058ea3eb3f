"""What a weight tile fetched in each phase adds to a grid exchange, by plain loads, TMA or cp.async (GPU, sm_90)

A persistent kernel of P programs runs phases that chain like the decoding step's: each waits for the previous
phase's grid barrier, reads that phase's 768 fp32 sums (in three chunks of 256), multiplies them into its weight tile
(64 x 256 bf16, 32 KB; the programs cycle through 200 MB of tiles, so every tile comes from HBM), adds its 256 column
sums three times over into the phase's 768-sum accumulator (one of COPIES copies) with atomics and arrives at the
barrier. The accumulators rotate through three slots, the last program clearing each one phase before it is added to
again (as the step kernels do), so that they stay in L2. Modes:

    ldg        the tile loaded with plain loads right after the arrival, before the polls (the fused step's way)
    tma        the tile of phase i + STAGES - 1 asked by TMA (4 copies of 16 rows) into a ring of STAGES shared-memory
               tiles while phase i runs; the release fence and the polls do not wait for it
    tma_paced  the same, its 4 copies asked at four points of the phase (after the sums are read, after the arithmetic,
               after the atomics, after the arrival), so that the tiles stream over the whole phase
    cp, cp_paced: as tma and tma_paced with cp.async (LDGSTS, through the SM's load path) instead of TMA
    ldg_ahead  the next phase's tile loaded into registers (plain loads) right after this phase's arithmetic, so
               that it is in flight through the atomics, the arrival and the polls
    ldg_ahead_nofence: the same, but each thread waits for its atomics to return (performed at L2) and the arrival is
               a relaxed atomic: no release fence, which would wait for the tile's loads
    none       no tile: the exchange alone
    none_indep no tile, and the sums added do not depend on the sums read (scripts/grid_sync_bench.py's atomic_768)
    ldg_nowait, tma_nowait: as ldg and tma without barrier waits (sums wrong by design)
    read_shared, read_own: only the reads of the sums, each after the last, from sums nobody writes: the same ones
               for every program, or each program its own

Each mode runs with the sums read by every warp (as the tile's columns; the step kernel's loads are laid out by the
compiler) and spread over the threads, one element each. Prints us per phase, median of several launches.

    python scripts/tma_exchange_bench.py [--programs 128] [--phases 960] [--stages 2 3 4] [--copies 1 8]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

ROWS = 64
COLS = 256
PIECES = 4  # TMA copies a tile (16 rows each)
PRIVATE = 256  # sum vectors of mode read_own (one a program)
SUMS = 768  # sums exchanged a phase, as out_proj's at d_model 768 (a multiple of COLS)
# mode: (0 plain-load tile, 1 TMA ring, 2 no tile, 3 no tile and sums added not from those read, 4 / 5 no tile,
# read-only sums, 6 TMA ring paced, 7 / 8 cp.async ring paced / not, 9 / 10 plain loads a phase ahead with / without
# the release fence; barrier waits; atomics)
MODES = {"ldg": (0, True, True), "tma": (1, True, True), "none": (2, True, True), "none_indep": (3, True, True),
         "ldg_nowait": (0, False, True), "tma_nowait": (1, False, True),
         "read_shared": (4, False, False), "read_own": (5, False, False),
         "tma_paced": (6, True, True), "cp_paced": (7, True, True), "cp": (8, True, True),
         "ldg_ahead": (9, True, True), "ldg_ahead_nofence": (10, True, True)}


@gluon.jit
def _ask_piece(w_desc, ring, ready, tile, stage, pid, nprog, piece, ROWS: gl.constexpr, COLS: gl.constexpr,
               PIECES: gl.constexpr):
    """Asks TMA for piece `piece` (ROWS // PIECES rows) of this program's tile number `tile` into ring stage `stage`,
    whose mbarrier expects the whole tile (said with piece 0)."""
    if piece == 0:
        mbarrier.expect(ready.index(stage), ROWS * COLS * 2)
    rows: gl.constexpr = ROWS // PIECES
    tma.async_copy_global_to_shared(w_desc, [(tile * nprog + pid) * ROWS + piece * rows, 0], ready.index(stage),
                                    ring.index(stage).slice(piece * rows, rows))


@gluon.jit
def _fetch_piece(w_ptr, w_desc, ring, ready, tile, stage, pid, nprog, piece, asking, CP: gl.constexpr,
                 ROWS: gl.constexpr, COLS: gl.constexpr, PIECES: gl.constexpr):
    """Piece `piece` of tile `tile` into ring stage `stage` if `asking`: by TMA (_ask_piece), or under CP by cp.async
    (LDGSTS, through the SM's load path), one commit group a piece, empty when not asking, so that every phase
    commits PIECES groups."""
    if CP:
        rows: gl.constexpr = ROWS // PIECES
        piece_layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
        r = gl.arange(0, rows, layout=gl.SliceLayout(1, piece_layout))
        c = gl.arange(0, COLS, layout=gl.SliceLayout(0, piece_layout))
        first = (tile * nprog + pid) * ROWS + piece * rows
        if asking:
            async_copy.async_copy_global_to_shared(ring.index(stage).slice(piece * rows, rows),
                                                   w_ptr + (first + r).to(gl.int64)[:, None] * COLS + c[None, :])
        async_copy.commit_group()
    elif asking:
        _ask_piece(w_desc, ring, ready, tile, stage, pid, nprog, piece, ROWS, COLS, PIECES)


@gluon.jit
def _exchange_kernel(w_ptr, w_desc, acc_ptr, ro_ptr, bar_ptr, phases, tiles, MODE: gl.constexpr, WAIT: gl.constexpr,
                     ATOMICS: gl.constexpr, STAGES: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr,
                     COPIES: gl.constexpr, SUMS: gl.constexpr, PRIVATE: gl.constexpr,
                     SPREAD_READS: gl.constexpr, PIECES: gl.constexpr):
    """`phases` phases of the mode's chain (module docstring). w_ptr / w_desc: the tiles, (tiles * P * ROWS, COLS)
    bf16; acc_ptr: the sums, (3, COPIES, SUMS) fp32, zeroed (phase i adds into slot i % 3); ro_ptr: read-only sums,
    (PRIVATE, COPIES, SUMS) fp32; bar_ptr: the barrier counter, int64, zeroed."""
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    tile_layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
    col_layout: gl.constexpr = gl.SliceLayout(0, tile_layout)
    row_layout: gl.constexpr = gl.SliceLayout(1, tile_layout)
    cols = gl.arange(0, COLS, layout=col_layout)
    add_layout: gl.constexpr = gl.BlockedLayout([4], [32], [gl.num_warps()], [0])
    add_cols = gl.arange(0, COLS, layout=add_layout)
    # SPREAD_READS: the sums read one a thread (each element by one thread), else as the tile's columns (every warp
    # reads all of them)
    read_layout: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0]) if SPREAD_READS else col_layout
    read_cols = gl.arange(0, COLS, layout=read_layout)
    rows = gl.arange(0, ROWS, layout=row_layout)

    ring = gl.allocate_shared_memory(gl.bfloat16, [STAGES, ROWS, COLS], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    RING: gl.constexpr = MODE == 1 or (MODE >= 6 and MODE <= 8)  # the tiles through a shared-memory ring
    PACED: gl.constexpr = MODE == 6 or MODE == 7
    CP: gl.constexpr = MODE == 7 or MODE == 8  # cp.async instead of TMA
    if RING:
        for k in gl.static_range(STAGES):
            mbarrier.init(ready.index(k), count=1)
        fence_async_shared()
        for k in gl.static_range(STAGES - 1):
            for piece in gl.static_range(PIECES):
                _fetch_piece(w_ptr, w_desc, ring, ready, k, k, pid, nprog, piece, True, CP, ROWS, COLS, PIECES)

    AHEAD: gl.constexpr = MODE == 9 or MODE == 10  # plain loads a phase ahead, into registers
    NO_FENCE: gl.constexpr = MODE == 10
    READ_ONLY: gl.constexpr = MODE == 4 or MODE == 5
    if AHEAD:
        tile_next = gl.load(w_ptr + (pid * ROWS + rows).to(gl.int64)[:, None] * COLS + cols[None, :])
    target = nprog.to(gl.int64) * 0
    chain = 0.0
    for i in range(phases):
        if AHEAD:
            tile = tile_next
        if MODE == 0:
            first_row = ((i % tiles) * nprog + pid) * ROWS
            tile = gl.load(w_ptr + (first_row + rows).to(gl.int64)[:, None] * COLS + cols[None, :])
        if WAIT:
            if i > 0:
                while gl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu") < target:
                    pass
                gl.thread_barrier()
        src = acc_ptr + ((i + 2) % 3) * COPIES * SUMS  # the previous phase's slot
        if READ_ONLY:  # sums that nobody writes: the same for every program, or its own; each read after the last
            src = ro_ptr + (pid % PRIVATE if MODE == 5 else 0) * COPIES * SUMS + (chain > 1e30).to(gl.int32) * 1024
        sums = gl.zeros([COLS], gl.float32, read_layout)
        for g in gl.static_range(COPIES * SUMS // COLS):  # every copy of every chunk of COLS sums
            sums += gl.load(src + g * COLS + read_cols, mask=(read_cols >= 0) & ((i > 0) | READ_ONLY), other=1.0,
                            cache_modifier=".cg")
        if pid == nprog - 1:  # slot (i + 1) % 3 was read in phase i - 1, before the barrier: clear it for phase i + 1
            spent = acc_ptr + ((i + 1) % 3) * COPIES * SUMS
            for g in gl.static_range(COPIES * SUMS // COLS):
                if NO_FENCE:  # performed at L2 before the arrival without a fence (see the atomics below)
                    old0 = gl.atomic_xchg(spent + g * COLS + add_cols, gl.zeros([COLS], gl.float32, add_layout))
                    gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [old0], dtype=gl.float32, is_pure=False,
                                              pack=1)
                else:
                    gl.store(spent + g * COLS + add_cols, gl.zeros([COLS], gl.float32, add_layout))
        sums = gl.convert_layout(sums, col_layout)
        chain = gl.sum(sums, axis=0)
        sums = sums * gl.rsqrt(gl.sum(sums * sums, axis=0) / COLS + 1e-20)  # unit rms: no overflow, no denormals
        # the tile of phase i + STAGES - 1 goes into the stage phase i - 1 used, all at once or (PACED) a piece at
        # each of four points of the phase: here, after the arithmetic, after the atomics, after the arrival
        ahead = i + STAGES - 1
        asking = ahead < phases
        if RING:
            stage = i % STAGES
            if CP:
                async_copy.wait_group(PIECES * (STAGES - 2))  # the tiles of the phases after this one may be on the way
                gl.thread_barrier()  # and every thread's copies of this one are in
            else:
                mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
            tile = ring.index(stage).load(tile_layout)
            gl.thread_barrier()  # every warp has read stage (i - 1) % STAGES: it may be refilled
            for piece in gl.static_range(1 if PACED else PIECES):
                _fetch_piece(w_ptr, w_desc, ring, ready, ahead % tiles, ahead % STAGES, pid, nprog, piece, asking, CP,
                             ROWS, COLS, PIECES)
        if MODE == 2 or READ_ONLY:  # no tile
            part = sums * (1.0 / nprog)
        elif MODE == 3:
            part = add_cols.to(gl.float32) + pid  # not waiting for the sums read
        else:
            part = gl.sum(tile.to(gl.float32) * sums[None, :], axis=0) * (1.0 / (ROWS * nprog))
        if AHEAD:  # the next phase's tile, in flight through the atomics, the arrival and the polls
            first_next = (((i + 1) % tiles) * nprog + pid) * ROWS
            tile_next = gl.load(w_ptr + (first_next + rows).to(gl.int64)[:, None] * COLS + cols[None, :])
        if MODE != 3:
            part = gl.convert_layout(part, add_layout)  # 4 floats a thread: one v4 atomic each
        if PACED:
            _fetch_piece(w_ptr, w_desc, ring, ready, ahead % tiles, ahead % STAGES, pid, nprog, 1, asking, CP, ROWS,
                         COLS, PIECES)
        dest = acc_ptr + ((i % 3) * COPIES + pid % COPIES) * SUMS + add_cols
        if ATOMICS:
            for k in gl.static_range(SUMS // COLS):
                old = gl.atomic_add(dest + k * COLS, part, sem="relaxed")
                if NO_FENCE:  # wait here for the add to return, i.e. to have been performed at L2
                    gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [old], dtype=gl.float32, is_pure=False,
                                              pack=1)
        else:
            gl.store(dest, part)  # racy and wrong: the read modes time the reads alone
        if PACED:
            _fetch_piece(w_ptr, w_desc, ring, ready, ahead % tiles, ahead % STAGES, pid, nprog, 2, asking, CP, ROWS,
                         COLS, PIECES)
        if WAIT:
            gl.thread_barrier()
            if NO_FENCE:  # every add has been performed at L2 (above): a relaxed arrival, no fence to wait for loads
                gl.atomic_add(bar_ptr, 1, sem="relaxed", scope="gpu")
            else:
                gl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
            target += nprog
        if PACED:
            _fetch_piece(w_ptr, w_desc, ring, ready, ahead % tiles, ahead % STAGES, pid, nprog, 3, asking, CP, ROWS,
                         COLS, PIECES)


def time_mode(mode: str, programs: int, phases: int, tiles: int, stages: int, copies: int, spread: bool,
              weights: torch.Tensor, desc, reps: int) -> float:
    """Median microseconds per phase over `reps` launches (events around the kernel alone)."""
    code, wait, atomics = MODES[mode]
    acc = torch.zeros(3, copies, SUMS, device="cuda", dtype=torch.float32)
    bar = torch.zeros(1, device="cuda", dtype=torch.int64)
    ro = torch.rand(PRIVATE, copies, SUMS, device="cuda", dtype=torch.float32)
    times = []
    for _ in range(reps):
        acc.zero_()
        bar.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _exchange_kernel[(programs,)](weights, desc, acc, ro, bar, phases, tiles, MODE=code, WAIT=wait, ATOMICS=atomics,
                                      STAGES=stages, ROWS=ROWS, COLS=COLS, COPIES=copies, SUMS=SUMS, PRIVATE=PRIVATE,
                                      SPREAD_READS=spread, PIECES=PIECES, num_warps=8)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / phases)
    return statistics.median(times[reps // 4:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", type=int, default=128)
    p.add_argument("--phases", type=int, default=960,
                   help="phases a launch (many: the host's launch time, which the events include, is spread thin)")
    p.add_argument("--tiles", type=int, default=48, help="distinct tiles a program cycles through (48: 200 MB in all)")
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--copies", type=int, nargs="+", default=[1, 8],
                   help="copies of each accumulator (program p adds into copy p %% copies; readers add them all)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--reads", choices=("every", "spread", "both"), default="both",
                   help="the sums read by every warp, spread one element a thread, or both in turn")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    weights = torch.randn(args.tiles * args.programs * ROWS, COLS, device="cuda", dtype=torch.bfloat16)
    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)
    desc = TensorDescriptor.from_tensor(weights, [ROWS // PIECES, COLS], layout)
    warm = torch.randn(4096, 4096, device="cuda")
    for _ in range(200):  # half a second or more of work first, so that the clocks have risen
        warm @ warm
    torch.cuda.synchronize()
    tile_kb = ROWS * COLS * 2 / 1024
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"{args.programs} programs, {args.phases} phases over {args.tiles} tiles, {tile_kb:.0f} KB a tile a program")
    for spread in {"every": (False,), "spread": (True,), "both": (False, True)}[args.reads]:
        for copies in args.copies:
            for mode in args.modes:
                for stages in (args.stages if mode.startswith(("tma", "cp")) else [2]):
                    us = time_mode(mode, args.programs, args.phases, args.tiles, stages, copies, spread, weights, desc,
                                   args.reps)
                    print(f"reads {'spread' if spread else 'by every warp'}, copies {copies:2d}  {mode:11s} "
                          f"stages {stages}: {us:6.2f} us a phase", flush=True)


if __name__ == "__main__":
    main()
