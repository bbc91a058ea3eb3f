"""A whole decoding step of a Mamba language model as one kernel launch: `FusedDecodeStep` and the check
`fused_decode_supported(model, batch)`.

Dimensions: B batch (1..8), Dm d_model, Di d_inner, N d_state, R dt_rank, W d_conv, V vocabulary.

    token ids (B,) --embed--> [rmsnorm, in_proj, conv step, x_proj, SSM step, out_proj] x layers --norm_f, head-->
    logits (B, V) fp32, every layer's conv window and SSM state advanced in place

The step computes exactly what `embed -> MambaBackbone.step -> head` computes (the same roundings to the activation
dtype, sums in fp32), in one persistent Triton kernel with grid-wide barriers between its phases
(kernels/decode_triton.py). It reads the model's parameters and the cache's state tensors where they lie, through
tables of their addresses: a decoder built on it sees in-place weight updates, and a CUDA graph captures one kernel.

Measured on an H200 (scripts/decode_gpu_check.py; 90.7M-parameter wave LM, d_model 768, 24 layers, bf16; weight-read
floor 44.2 us; CUDA-graph step medians, 2026-11-29, BENCHMARKS.md): at batch 1 the fused step takes 270 us (6.1x the
floor) against 592 us layer by layer and 1,237 us for upstream's generate(cg=True); at batch 8, 1,311 us against
576 us layer by layer. A trace from inside the kernel (--trace) puts ~7 us of a layer's ~11 us into the slowest
program's work in the three phases (chains of dependent round trips to memory) and ~4 us into releasing the three
barriers; the weights themselves take ~1.8 us a layer to read. Each further batch row adds work to every item, hence
the rule: SEQBACKBONE_FUSED_DECODE unset = automatic (the fused step at batch 1 only), =1 forces it for batches up to
8, =0 turns it off (the decoder then runs the layer-by-layer step). On the CPU it runs only through the Triton
interpreter (SEQBACKBONE_KERNELS=triton, TRITON_INTERPRET=1), with one program.
"""

from __future__ import annotations

import functools
import os
import random

import torch
from torch import nn

from .decode_blocks import ColumnBlocks
from .dispatch import backend, forced_backend, interpreting, triton_available

MAX_BATCH = 8
# largest batch run fused when SEQBACKBONE_FUSED_DECODE is unset: on the H200 the fused step beat the layer-by-layer
# step only at batch 1 (each further row adds ~9.5 us per layer)
AUTO_MAX_BATCH = 1
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# weight elements one program holds per tile (8 warps: 64 per thread); in_proj and out_proj take half of it (at
# d_model 768: in_proj 8 rows, out_proj 4 rows). On the H200 out_proj at 4 rows took 531 us a step against 561 us at
# 2, although sm_90 ptxas (offline) then reports 48 bytes of spills, against none at 2
_TILE = 16384
_NUM_WARPS = 8
# constexpr overrides for tuning on a GPU (scripts/decode_gpu_check.py --tune, --variants, --breakdown); empty = the
# plan below.
# - tile sizes ROWS_IN, CH_CONV, CH_SSM, ROWS_OUT, ROWS_HEAD (powers of two) and num_warps;
# - MERGE_IN_CONV=1: in_proj inside the conv phase (three grid barriers per layer instead of four, but more partial
#   x_proj sums for the SSM phase to add: under ONE_ITEM one conv item of ceil(Di / programs) channels a program,
#   128 at d_inner 1536 on 132 SMs, read in one tile under JOINT_READS). On by default at batch 1 only
#   (_DEFAULT_MAX_BATCH; H200: 270 us against 288-291 us unmerged; at batch 8 its tiles spill: 2,880 against 1,292),
#   and only where those items come one a program (ONE_ITEM's plan; not for d_model 2048, say).
#   It gives way to PREFETCH, LOCAL_P2, FLAGGED and SKIP_P1, which need in_proj as a phase of its own;
# - breakdown flags, timing only (the results are wrong): NO_WAIT=1 drops every grid barrier (no arrival, no wait);
#   SKIP_P1 .. SKIP_P4, SKIP_HEAD=1 drop the loads and the work of in_proj, conv + x_proj, SSM, out_proj or the head,
#   while every program still meets every barrier (SKIP_P2 under MERGE_IN_CONV drops the merged phase; SKIP_P1 has
#   no phase of its own there and is refused);
# - variants, same results (timings in BENCHMARKS.md; DEFAULT_TUNE says which are on unless TUNE says otherwise):
#   BARRIER=1: grid barriers on per-program arrival flags (a release store of the program's epoch into its own slot,
#     one vector of acquire loads of every slot to wait) instead of the shared counter's atomics;
#   ONE_ITEM=1: in_proj, SSM, out_proj and head items sized from the grid (any count, masked to a power-of-two
#     tile), so that each program has one item whose whole weight tile it loads before the barrier; a tile over
#     _ONE_ITEM_TILE elements keeps the usual plan (several items a program);
#   BATCH_TILE=1: the batch rows of every phase as one (BLOCK_B, ...) tile instead of a loop over the rows;
#   LOCAL_P2=1 (needs BARRIER=1): no grid barrier between in_proj and the conv phase; a conv item waits on ready
#     flags of the in_proj items that wrote its channels (three grid barriers per layer).
# - ARRIVE_FIRST=1: each counter barrier in two halves, the arrival (release fence + count) before the next phase's
#   weight loads and the polls after them: the fence waits for every load in flight, so loads issued before it (the
#   default) cannot overlap the barrier. On by default (H200, batch 1: 408 us alone, 379 with EARLY_LOADS, 368 with
#   both and ONE_ITEM, against 442 without any).
# - EARLY_LOADS=1 (needs BATCH_TILE): a conv item's window and bias and an SSM item's state, D and dt bias are loaded
#   with its weights before the barrier (by default after it: two or three more dependent round trips to memory a
#   phase). On by default (alone 436 us against 442 at batch 1; see ARRIVE_FIRST).
# - PREFETCH=k (1..4, not with MERGE_IN_CONV): each program asks L2 (PTX prefetch.global.L2) for its share of the
#   in_proj, x_proj, dt_proj and out_proj weights of the layer k ahead while this layer's in_proj phase waits at its
#   barrier, so that every phase's weight loads hit L2 instead of memory. Slower (H200, batch 1: 376-413 us against
#   365 us), and the phases' traced work did not change: they do not wait for their weights (BENCHMARKS.md).
# - FLAGGED=1 (with BATCH_TILE; ARRIVE_FIRST gives way): no grid barrier at all. Every value a program writes for
#   others (xz, the conv output, x_proj's partial sums, y, the residual) is a 64-bit word holding the fp32 value and
#   the writing layer's tag, and a reader reads again until all the words it needs carry the tag it expects: a
#   phase waits for exactly its inputs, without the release fence, the counter's round trips and the wait for the
#   slowest program of the grid (the scratch buffers double in size). Slower on the H200 (batch 1: 383-405 us
#   against 345-364 us for the default of the same runs, 2026-11-29).
# - JOINT_READS=1 (with BATCH_TILE, not with FLAGGED): every value a phase reads from other programs is requested at
#   once after its barrier: the SSM phase loads x and z with all the partial x_proj sums (by default each sum, ending
#   in a reduction across warps whose bar.sync no load passes, came before the next load: four round trips to L2);
#   out_proj loads its residual rows, which the same program wrote a layer earlier, with its weights before the
#   barrier. As the SSM phase then reads every partial sum in one tile (BLOCK_J up to _TILE), the conv phase plans
#   about one item a program (16 channels at d_inner 1536 on 132 SMs, not 64). On by default (H200, batch 1: 290 us
#   against 345 us without). Under FLAGGED it gave wrong results at batch 8, so the pair is refused.
# - L2_TILES=1: in_proj's and out_proj's weight tiles are asked into L2 (prefetch.global.L2) before the barrier and
#   loaded into registers after it, so that the barrier's polls are not queued behind 36 KB of loads a program. The
#   release after the last arrival falls (out_proj -> in_proj: 1.67 -> 0.94 us) but the phases' work grows more
#   (in_proj 2.0 -> 3.0 us): slower (H200, batch 1: 296 us against 290 us).
# - SPLIT=1: the other kernel, kernels/decode_split_triton.py: every phase on channel blocks, x_proj's and out_proj's
#   sums split over them and added with float atomics, two grid barriers per layer (runs agree to rounding, not bit
#   for bit); its own settings PER_C (channels per item), ROWS_HEAD, COPIES (of each accumulator), num_warps and the
#   timing flags NO_WAIT and SKIP_ATOMICS (1: no out_proj atomics, 2: no x_proj atomics, 3: neither; in the warp
#   layout also 4 and 8: phase A's and phase B's arrivals without their release fence), ARRIVE_FIRST
#   (as below), FIXED=1 (the sums as int64 fixed point: exact, so runs are bit-identical; a contribution that is
#   not finite or reaches 2^20 makes its sum NaN), TRACE=1 (with ARRIVE_FIRST: its arrivals and departures timed,
#   two barriers a layer), PREFETCHERS and AHEAD (below), WARP_SUMS, SUMS_1D, TMA_SUMS, SPIN, BLOCKS, GATE_EARLY and
#   TALLY (batch 1, below; TALLY=k: x_proj's sums in k copies of fp64 words that count their contributions, read
#   without a barrier), no other. With one
#   channel block a program (132 SMs) a block's conv output and gate stay in registers between the phases.
#   H200, batch 1 (2026-11-29, BENCHMARKS.md): first 251-258 us with ARRIVE_FIRST and 2 copies (263 with FIXED) against
#   267 us for the default; then with 36 prefetchers (PREFETCHERS=36, AHEAD=2) and at batch 1 the phases in a layout
#   with each channel's sums inside one warp (decode_split_triton's _layers_in_warps; WARP_SUMS=0 keeps the general
#   tiles), 192-194 us against 229 us with the general tiles and 255 us for the default kernel in the same run; then
#   with the residual stream and its sums read once a program, not once a warp (SUMS_1D, on in the warp layout;
#   SUMS_1D=0 for the per-warp reads): 174.6 us against 197.0 us, and 214.2 us with FIXED (bit-identical runs) against
#   273.1 us with FIXED's int64 sums read and converted in every warp, 262.8 us for the default kernel in the same run;
#   then 4 copies of each accumulator there: 164.4-165.0 us, 3.8x the floor, against 170.0-171.3 us with 2 (2 again
#   since 2026-11-30, _SPLIT_COPIES). At first not the default: without FIXED its runs are not bit-identical, and with
#   FIXED it lost to the other kernel at other sizes (d_model 512 x 12 layers: 126 against 98 us; 1024 x 16: 338
#   against 244). Since 2026-11-30 the default at batch 1 on sm_90 where its warp layout holds (split_default; TUNE's
#   SPLIT=0 keeps the other kernel): it then won at every size measured, with FIXED too (SPLIT_DEFAULT_TUNE's note),
#   and under torch.use_deterministic_algorithms(True) it runs with FIXED. GREEDY (FusedDecodeStep's greedy steps,
#   not a TUNE setting): the head also takes each row's argmax and the last program to finish writes the token into
#   the next launch's input and a history, so that greedy generate runs nothing between its steps.
#   TMA_SUMS=1 (there, on sm_90, d_model a multiple of 128): each program adds its out_proj sums by one TMA bulk
#   reduction (cp.reduce.async.bulk) instead of 192 four-wide float atomics (768 int64 ones under FIXED), waited for
#   before the barrier's arrival: with FIXED 197.8 against 214.4 us; with float sums slower (174.2-180.6 against 165.7
#   us), so opt-in. Then the gate's in_proj products taken before phase B's polls: FIXED with TMA_SUMS 182.7 against
#   197.6 us, float sums unchanged (165.3-165.5 against 165.2-165.4); on a slower GPU draw 194.2-197.5 against 212.8 us,
#   float 172.3-173.9 against 174.3.
#   In the warp layout two more settings. BLOCKS (bits: 1 out_proj's, 2 x_proj's columns; default 3) reads a
#   program's weight columns from FusedDecodeStep's copies of them in per-program blocks (decode_blocks.ColumnBlocks:
#   whole 128-byte lines instead of a 32-byte piece of every row; out_proj's copy is as large as the weight, and
#   StepDecoder refreshes the copies before every prompt): 157.0-159.2 us against 168.7-171.1 with BLOCKS=0, 159.6
#   with out_proj's alone. SPIN (default on; SPIN=0 for the scalar poll with two block barriers a round) polls each
#   barrier from the first warp in one PTX loop (decode_triton._spin_wait): at first slower with float sums
#   (161.2-163.6 us) and faster with FIXED and TMA_SUMS (187.8-188.0 against 192.8-192.9; 209.0 with neither
#   setting); since the fast math of 2026-11-30 faster with float sums too (with 2 copies 140.6-142.5 against
#   145.0 us). GATE_EARLY (default on where a warp's gate rows are at most _GATE_EARLY_MAX_ELEMS elements) loads
#   in_proj's gate rows right after phase A's sums instead of after its arrival.
#   ROLES=1 (on in split_default): each program takes the role (channel block or prefetcher share) that
#   FusedDecodeStep.roles gives the SM it runs on (PTX %smid), a fixed permutation (sm_roles), where the GPU numbers
#   its SMs 0..grid-1 (%nsmid) and the compiled kernel keeps to one program an SM; else its program id.
# - TRACE=1 (the counter barrier, whole or split by ARRIVE_FIRST, three or four a layer; or FLAGGED): each
#   program records its clock (%clock64) and the global timer (%globaltimer) at its start, on arriving at and leaving
#   each barrier (under ARRIVE_FIRST the next phase's weight loads are issued in between; under FLAGGED before and
#   after each wait for other programs' values, in the slot of the barrier it replaces, the two equal where the
#   program has no item to wait for), and at its end, into FusedDecodeStep.trace (programs, barriers + 2, 4) int64,
#   and its SM (%smid) beside the start (scripts/decode_gpu_check.py --trace); same results.
# - PREFETCHERS=k (either kernel; the counter barrier only): the grid's last k programs do no work and meet no
#   barrier; they ask L2 (cp.async.bulk.prefetch.L2, sm_90) for every tensor of each layer once the working
#   programs have begun the layer AHEAD=a layers before it (the first a + 1 at once), so that the working programs'
#   loads come from L2. The working programs' items are planned over grid - k. Each prefetcher counts the launches
#   it served in its own word, so its pacing never waits for a later launch. H200, batch 1 (2026-11-29,
#   BENCHMARKS.md): the default kernel 254 us with 4 prefetchers 2 layers ahead against 271 us without (more
#   prefetchers leave items of awkward sizes: 292 us with 36); the split kernel with ARRIVE_FIRST 225-230 us with 36
#   (96 working programs, 16 channels an item) against 250-255 us without, and 244 us with FIXED too. Below sm_90
#   FusedDecodeStep refuses PREFETCHERS and leaves out the default's.
TUNE: dict[str, int] = {}
# settings under TUNE's (H200, 90M LM, CUDA-graph step medians, 2026-11-29): the batch rows as one tile (467 us
# against 540 at batch 1, 1,353 against 2,069 at batch 8); then the barrier's arrival before the next phase's weight
# loads, the states loaded with the weights and one item a program: 368 us against 442 at batch 1 (1,337 against
# 1,282 at batch 8, where the layer-by-layer step, 569 us, is the automatic choice anyway). The flag barrier was
# slower (632 / 2,162 us), the SPLIT kernel too (583 us at batch 1 with ARRIVE_FIRST). Then every read of a phase at
# once (JOINT_READS) and, for any kernel, a batch of one multiplied as a 2-d product: 290 us at batch 1; then in_proj
# merged into the conv phase at batch 1 (MERGE_IN_CONV with ARRIVE_FIRST): 270 us; then 4 prefetchers 2 layers
# ahead: 254 us.
DEFAULT_TUNE: dict[str, int] = {"BATCH_TILE": 1, "ARRIVE_FIRST": 1, "EARLY_LOADS": 1, "ONE_ITEM": 1, "JOINT_READS": 1,
                                "MERGE_IN_CONV": 1, "PREFETCHERS": 4, "AHEAD": 2}
# DEFAULT_TUNE's PREFETCHERS holds on grids of at least this many programs (it was measured on 132; a small grid,
# e.g. under an MPS share or the interpreter's one program, keeps every program working) and on sm_90 or newer
# (cp.async.bulk.prefetch); an explicit PREFETCHERS is refused below sm_90
_DEFAULT_PREFETCHERS_MIN_PROGRAMS = 64
_PREFETCHERS_MIN_CAPABILITY = (9, 0)
# DEFAULT_TUNE's switches that hold only up to a batch size: in_proj merged into the conv phase (batch 1: 270 us
# against 288; batch 8: 2,880 against 1,292, its merged tiles spilling)
_DEFAULT_MAX_BATCH = {"MERGE_IN_CONV": 1}
# DEFAULT_TUNE's switches that give way to an explicit TUNE setting they do not combine with: (switch, setting,
# the setting's values that turn the switch off); set explicitly, the pair is refused by plan_constexprs (SKIP_P1
# times the four-phase layer)
_DEFAULT_YIELDS = (("ARRIVE_FIRST", "BARRIER", "truthy"), ("ARRIVE_FIRST", "LOCAL_P2", "truthy"),
                   ("ARRIVE_FIRST", "FLAGGED", "truthy"), ("EARLY_LOADS", "BATCH_TILE", "falsy"),
                   ("JOINT_READS", "BATCH_TILE", "falsy"), ("JOINT_READS", "FLAGGED", "truthy"),
                   ("MERGE_IN_CONV", "PREFETCH", "truthy"), ("MERGE_IN_CONV", "LOCAL_P2", "truthy"),
                   ("MERGE_IN_CONV", "FLAGGED", "truthy"), ("MERGE_IN_CONV", "SKIP_P1", "truthy"),
                   ("PREFETCHERS", "BARRIER", "truthy"), ("PREFETCHERS", "LOCAL_P2", "truthy"),
                   ("PREFETCHERS", "FLAGGED", "truthy"))
BREAKDOWN_FLAGS = ("NO_WAIT", "SKIP_P1", "SKIP_P2", "SKIP_P3", "SKIP_P4", "SKIP_HEAD")
VARIANT_FLAGS = ("BARRIER", "ONE_ITEM", "BATCH_TILE", "LOCAL_P2", "SPLIT", "ARRIVE_FIRST", "EARLY_LOADS",
                 "PREFETCH", "FLAGGED", "JOINT_READS", "L2_TILES")
# the per-layer pointer tables FusedDecodeStep passes the kernels (norm_tab, in_tab, ..., ssm_tab), in order
_TABLES = ("norm", "in", "convw", "convb", "xproj", "dtw", "dtb", "alog", "d", "out", "conv", "ssm")
# SPLIT's channels per item: at most this many (a BLOCK_C x BLOCK_DM in_proj tile twice, and out_proj's transpose)
_SPLIT_MAX_C = 32
# SPLIT's copies of each accumulator (item i adds into copy i % COPIES; readers add the copies): one copy queues every
# program's atomics at the same addresses, many make every reader add more (H200, batch 1, ARRIVE_FIRST: 258 us with
# 1 or 2 copies, 282 with 8, 373 with 32). The batch-1 warp layout took 4 from 2026-11-29 (166.7 against 173.5-176.8
# us with 2) until its fast math and spin poll made 2 the faster again (2026-11-30: 140.6-142.5 against 143.6-146.1
# us with 4, 153.0-153.7 with 1)
_SPLIT_COPIES = 2
# columns of FusedDecodeStep.history, the tokens of greedy steps (the caller copies them out at least this often)
GREEDY_HISTORY = 1024
# every setting the split kernel takes (plan_split_constexprs refuses others)
SPLIT_SETTINGS = frozenset({"SPLIT", "PER_C", "ROWS_HEAD", "COPIES", "NO_WAIT", "SKIP_ATOMICS", "ARRIVE_FIRST", "FIXED",
                            "TRACE", "PREFETCHERS", "AHEAD", "WARP_SUMS", "SUMS_1D", "TMA_SUMS", "SPIN", "BLOCKS",
                            "GATE_EARLY", "ROLES", "TALLY", "num_warps"})
# the split kernel as the default step (split_default): batch 1 on sm_90 or newer in its warp layout, with this share
# of the programs as prefetchers (36 of the H200's 132). H200, batch 1 (2026-11-30, BENCHMARKS.md), against the other
# kernel: d_model 256 x 8 layers 36.9 against 60.7 us a step, 512 x 12 67.6 against 95.9, 768 x 24 132.8-135.0
# against 258.2, 1024 x 16 178.3 against 247.1; with FIXED and TMA_SUMS 74.8, 158.5 and 218.0 at 512, 768 and 1024
# ROLES: each program takes its work (a channel block, or a prefetcher's share) from a table by SM (sm_roles), not
# from its program id, whose placement on the SMs the block scheduler chooses and which changes from process to
# process. H200, 768 x 24, twelve processes on three machines (2026-11-30, BENCHMARKS.md): the step 1.5 us faster on
# average (paired medians: from 6.2 us faster to 1.3 us slower), the slowest process 138.3 against 143.9 us: it cuts
# the slow placements and costs up to ~1 us where the scheduler's was a good one
# TALLY: x_proj's sums count their own contributions, so phase B reads them without a grid barrier (one barrier a layer
# instead of two); with it out_proj's sums take 4 copies. H200, 768 x 24 (2026-11-30, BENCHMARKS.md), four processes on
# two machines: 124.9-127.0 against 133.4-134.9 us a step without TALLY (2 copies) in the same processes
SPLIT_DEFAULT_TUNE: dict[str, int] = {"SPLIT": 1, "ARRIVE_FIRST": 1, "AHEAD": 2, "ROLES": 1, "TALLY": 4, "COPIES": 4}
_SPLIT_DEFAULT_PREFETCH_SHARE = 36 / 132
# the seed of sm_roles' permutation (the table measured above)
_ROLES_SEED = 1
# GATE_EARLY's default holds up to this many gate-row elements a warp (WARP_CH x BLOCK_DM): the rows then stay in
# registers from phase A's sums to phase B's polls. H200, batch 1 (2026-11-30, BENCHMARKS.md): d_model 768 (2 x 1024)
# 132.8-135.0 us against 136.6 with the rows loaded after phase A's arrival; d_model 1024 (4 x 1024, 56 bytes of
# spills) 188.4 against 178.3
_GATE_EARLY_MAX_ELEMS = 2048
# FIXED's int64 words hold at most this many contributions each (decode_split_triton._FIXED_POISON)
_FIXED_MAX_ADDS = 256
# TALLY's fp64 words hold at most this many contributions each (decode_split_triton._TALLY_LIMIT)
_TALLY_MAX_ADDS = 64
# largest weight tile (elements) of one ONE_ITEM item: in_proj at d_model 768 on 132 SMs is 24 rows of 768 (a 32 x
# 1024 tile)
_ONE_ITEM_TILE = 2 * _TILE
_ONE_ITEM_SUMS = 64  # BLOCK_B x rows of one ONE_ITEM item (see plan_constexprs)
_SETTINGS = {"": "auto", "auto": "auto", "1": "on", "true": "on", "on": "on", "yes": "on",
             "0": "off", "false": "off", "off": "off", "no": "off"}


def fused_decode_setting() -> str:
    """SEQBACKBONE_FUSED_DECODE read: "auto" (unset or empty: the fused step up to batch AUTO_MAX_BATCH), "on"
    (1 / true / on / yes: up to batch MAX_BATCH) or "off" (0 / false / off / no)."""
    raw = os.environ.get("SEQBACKBONE_FUSED_DECODE", "")
    setting = _SETTINGS.get(raw.strip().lower())
    if setting is None:
        raise ValueError(f"SEQBACKBONE_FUSED_DECODE must be 1, 0 or unset (auto), got {raw!r}")
    return setting


def fused_decode_max_batch() -> int:
    """Largest batch the decoder runs fused under the current SEQBACKBONE_FUSED_DECODE (0 when off)."""
    return {"off": 0, "auto": AUTO_MAX_BATCH, "on": MAX_BATCH}[fused_decode_setting()]


def fused_decode_enabled() -> bool:
    """False when SEQBACKBONE_FUSED_DECODE is set to 0 / false / off / no."""
    return fused_decode_setting() != "off"


def _embedding_encoders() -> tuple[type, ...]:
    # encoders whose embed(ids) is exactly self.embedding(ids)
    from seqbackbone.encoders.audio import MuLawEncoder
    from seqbackbone.encoders.dna import DnaEncoder

    return (MuLawEncoder, DnaEncoder)


def fused_decode_unsupported_reason(model: nn.Module, batch: int) -> str | None:
    """Why the fused step cannot run `model` at batch size `batch` (None when it can)."""
    from seqbackbone.backbone import Block, MambaBackbone
    from seqbackbone.heads import LMHead
    from seqbackbone.layers.norm import RMSNorm
    from seqbackbone.mamba import Mamba

    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        return f"batch must be an int in [1, {MAX_BATCH}], got {batch!r}"
    if not triton_available():
        return "triton is not available"
    encoder, backbone, head = (getattr(model, k, None) for k in ("encoder", "backbone", "head"))
    if not isinstance(encoder, _embedding_encoders()) or not isinstance(getattr(encoder, "embedding", None),
                                                                        nn.Embedding):
        return f"the encoder must embed by a table lookup, got {type(encoder).__name__}"
    emb = encoder.embedding
    if emb.max_norm is not None:
        return "the embedding renormalises rows (max_norm)"
    if not isinstance(backbone, MambaBackbone) or not backbone.causal:
        return "the backbone must be a causal MambaBackbone"
    if len(backbone.layers) < 1:
        return "the backbone has no layers"
    if isinstance(head, LMHead):
        head_w, head_b = head.weight, None
    elif isinstance(head, nn.Linear):
        head_w, head_b = head.weight, head.bias
    else:
        return f"the head must be a tied LMHead or an nn.Linear, got {type(head).__name__}"
    act = emb.weight.dtype
    if act not in _DTYPES:
        return f"the embedding's dtype must be one of {_DTYPES}, got {act}"
    if not isinstance(backbone.norm_f, RMSNorm):
        return "the norms must be RMSNorm"
    if not backbone.residual_in_fp32 and act != torch.float32:
        return "a low-precision residual stream (residual_in_fp32=False) is not supported"
    eps = backbone.norm_f.eps
    device = emb.weight.device
    tensors = [emb.weight, head_w, backbone.norm_f.weight] + ([head_b] if head_b is not None else [])
    for i, block in enumerate(backbone.layers):
        mixer = getattr(block, "mixer", None)
        if type(block) is not Block or type(mixer) is not Mamba or not isinstance(block.norm, RMSNorm):
            return f"layer {i} is not a plain Mamba block with an RMSNorm"
        if block.norm.eps != eps:
            return f"layer {i}'s norm eps {block.norm.eps} differs from norm_f's {eps}"
        if mixer.bidirectional is not None or mixer.activation != "silu":
            return f"layer {i} is not a causal silu Mamba layer"
        if mixer.in_proj.bias is not None or mixer.out_proj.bias is not None or mixer.x_proj.bias is not None:
            return f"layer {i} has in_proj / x_proj / out_proj biases"
        if mixer.d_model != backbone.d_model:
            return f"layer {i} has d_model {mixer.d_model}"
        for w in (block.norm.weight, mixer.in_proj.weight, mixer.conv1d.weight, mixer.x_proj.weight,
                  mixer.dt_proj.weight, mixer.out_proj.weight):
            if w.dtype != act:
                return f"layer {i}'s weights must share the embedding's dtype {act}, got {w.dtype}"
        tensors += [block.norm.weight, mixer.in_proj.weight, mixer.conv1d.weight, mixer.x_proj.weight,
                    mixer.dt_proj.weight, mixer.dt_proj.bias, mixer.A_log, mixer.D, mixer.out_proj.weight]
        if mixer.conv1d.bias is not None:
            tensors.append(mixer.conv1d.bias)
    if head_w.dtype != act or head_w.shape[1] != backbone.d_model:
        return f"the head weight must be (V, {backbone.d_model}) in {act}, got {tuple(head_w.shape)} {head_w.dtype}"
    first = backbone.layers[0].mixer
    for i, block in enumerate(backbone.layers):
        m = block.mixer
        same = (m.d_inner, m.d_state, m.d_conv, m.dt_rank, m.conv1d.bias is None) == (
            first.d_inner, first.d_state, first.d_conv, first.dt_rank, first.conv1d.bias is None)
        if not same:
            return f"layer {i}'s shapes differ from layer 0's"
        for a, b in ((m.A_log, first.A_log), (m.D, first.D), (m.dt_proj.bias, first.dt_proj.bias)):
            if a.dtype != b.dtype or a.dtype not in _DTYPES:
                return f"layer {i}'s A_log / D / dt bias dtypes differ from layer 0's or are unsupported"
        if m.conv1d.bias is not None and (m.conv1d.bias.dtype != first.conv1d.bias.dtype
                                          or m.conv1d.bias.dtype not in _DTYPES):
            return f"layer {i}'s conv bias dtype differs from layer 0's or is unsupported"
    for t in tensors:
        if t.device != device:
            return f"all parameters must be on one device, found {t.device} and {device}"
        if not t.is_contiguous():
            return "every parameter must be contiguous"
        if t.data_ptr() % 16:  # the kernels' vector loads (PyTorch allocates at 512-byte boundaries; a view may not)
            return "every parameter must start on a 16-byte boundary"
    if device.type == "cuda":
        if backend(emb.weight) != "triton":
            return "SEQBACKBONE_KERNELS=torch"
    elif not (forced_backend() == "triton" and interpreting()):
        return f"on {device.type} the fused step runs only under the Triton interpreter"
    return None


def fused_decode_supported(model: nn.Module, batch: int) -> bool:
    """True when the decoder should run `model` at batch size `batch` on `FusedDecodeStep`: it can (a causal Mamba
    LM with a token-lookup encoder, plain pre-norm RMSNorm blocks without projection biases, a tied LMHead or
    nn.Linear head, bf16 / fp16 / fp32 weights, on CUDA or the CPU under the Triton interpreter, 1 <= batch <= 8) and
    SEQBACKBONE_FUSED_DECODE allows the batch: unset, batch 1 only (where it measured faster); 1, up to 8; 0, never.
    """
    return fused_decode_unsupported_reason(model, batch) is None and batch <= fused_decode_max_batch()


def resident_programs(sm_count: int, mps_percentage: str | None) -> int:
    """Programs of the persistent step that surely run at once: one per SM, or under CUDA MPS with
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE set the share of SMs the process may use, rounded down to whole pairs of SMs
    (a TPC) to be safe: the grid barriers would wait forever for programs that cannot start."""
    try:
        share = float(mps_percentage) if mps_percentage not in (None, "") else 100.0
    except ValueError:
        share = 100.0
    if share >= 100.0:
        return sm_count
    return max(1, int(sm_count * share / 100.0) // 2 * 2)


def sm_roles(programs: int) -> torch.Tensor:
    """The split kernel's table of roles by SM id (ROLES): a fixed permutation of range(programs), int32; entry s is
    the role (program id) of the program that runs on SM s."""
    order = list(range(programs))
    random.Random(_ROLES_SEED).shuffle(order)  # order[role] = SM
    roles = torch.empty(programs, dtype=torch.int32)
    roles[torch.tensor(order)] = torch.arange(programs, dtype=torch.int32)
    return roles


def one_program_an_sm(n_regs: int, shared: int, num_warps: int, regs_per_sm: int, shared_per_sm: int) -> bool:
    """Whether a kernel with these resources runs at most one program on an SM (ROLES needs it: two programs on one SM
    would take the same role)."""
    return 2 * n_regs * num_warps * 32 > regs_per_sm or 2 * shared > shared_per_sm


@functools.cache
def _sm_count(index: int | None) -> int:
    sms = torch.cuda.get_device_properties(index).multi_processor_count
    return resident_programs(sms, os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"))


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _block(items: int, programs: int, lo: int, hi: int) -> int:
    """Power-of-two block of `items` rows giving about one block per program, within [lo, hi]."""
    want = _pow2(-(-items // max(1, programs)))
    return max(lo, min(max(lo, hi), want))


def _one_item(items: int, programs: int, width: int, block: int, max_rows: int) -> tuple[int, int]:
    """(rows per item, power-of-two tile rows) for ONE_ITEM: ceil(items / programs) rows, so that each program has
    one item, unless its tile (rows x width) would pass _ONE_ITEM_TILE elements or its rows `max_rows`; then the
    usual `block`."""
    per = -(-items // max(1, programs))
    if _pow2(per) * width > _ONE_ITEM_TILE or _pow2(per) > max(block, max_rows):
        return block, block
    return per, _pow2(per)


def resolved_tune(tune: dict[str, int], batch: int = 1) -> dict[str, int]:
    """`tune` (decode.TUNE) over DEFAULT_TUNE at batch size `batch`, less the defaults that cannot combine with one of
    its settings or hold only at smaller batches, so that e.g. {"BARRIER": 1} times the flag barrier without
    ARRIVE_FIRST and {"BATCH_TILE": 0} runs without EARLY_LOADS."""
    merged = {**DEFAULT_TUNE, **tune}
    for switch, max_batch in _DEFAULT_MAX_BATCH.items():
        if switch not in tune and batch > max_batch:
            merged.pop(switch, None)
    for switch, setting, off_when in _DEFAULT_YIELDS:
        if switch in tune or setting not in tune:
            continue
        if bool(tune[setting]) == (off_when == "truthy"):
            merged.pop(switch, None)
    return merged


def plan_constexprs(Dm: int, Di: int, N: int, R: int, W: int, V: int, batch: int, programs: int,
                    tune: dict[str, int]) -> dict[str, int]:
    """The step kernel's tile sizes and variant switches for these model sizes, `programs` programs and batch
    `batch`, with `tune`'s overrides (decode.TUNE) applied over DEFAULT_TUNE (resolved_tune); num_warps is not among
    them."""
    asked, tune = tune, resolved_tune(tune, batch)
    if "PREFETCHERS" not in asked and programs < _DEFAULT_PREFETCHERS_MIN_PROGRAMS:
        tune["PREFETCHERS"] = 0
    prefetchers = _prefetchers(tune, programs)
    programs, all_programs = programs - prefetchers, programs  # items are planned over the working programs
    X = R + 2 * N
    block_dm, block_di = _pow2(Dm), _pow2(Di)
    block_n, block_r, block_x = _pow2(N), _pow2(R), _pow2(X)
    merge = bool(tune.get("MERGE_IN_CONV", False))
    if merge:  # in_proj's u and z rows of each channel block computed in the conv phase: one item per program
        ch_conv = _block(Di, programs, 2, min(_TILE // block_x, _TILE // (2 * block_dm)))
    elif tune.get("JOINT_READS"):  # about one item a program: the SSM phase reads all their partials at once
        ch_conv = _block(Di, programs, 2, _TILE // block_x)
    else:  # few items: the SSM phase sums their partials, BLOCK_J items a round trip
        ch_conv = _block(Di, 32, 2, _TILE // block_x)
    if tune.get("BATCH_TILE"):  # x_proj's partial sums take a (BLOCK_B, CH, BLOCK_X) product
        ch_conv = max(2, min(ch_conv, _TILE // (_pow2(batch) * block_x)))
    ch_conv = tune.get("CH_CONV") or ch_conv
    c = dict(
        BLOCK_DM=block_dm, BLOCK_DI=block_di, BLOCK_N=block_n, BLOCK_R=block_r,
        BLOCK_W=max(2, _pow2(W)), BLOCK_X=block_x,
        ROWS_IN=_block(2 * Di, programs, 2, _TILE // (2 * block_dm)),
        CH_CONV=ch_conv,
        CH_SSM=_block(Di, programs, 2, _TILE // max(block_n, block_r)),
        ROWS_OUT=_block(Dm, programs, 2, _TILE // (2 * block_di)),
        ROWS_HEAD=_block(V, programs, 2, _TILE // block_dm),
        MERGE_IN_CONV=merge,
        **{flag: 0 for flag in BREAKDOWN_FLAGS},
        BARRIER=0, ONE_ITEM=False, BATCH_TILE=False, BLOCK_B=1, LOCAL_P2=False, BLOCK_Q=1, TRACE=False,
        ARRIVE_FIRST=False, EARLY_LOADS=False, PREFETCH=0, FLAGGED=False, JOINT_READS=False, L2_TILES=False,
        PREFETCHERS=0, AHEAD=1,
    )
    unknown = sorted(set(tune) - set(c) - {"num_warps", "BLOCK_J", "SPLIT"})
    if unknown:  # a misspelt setting would time the default kernel under another name
        raise ValueError(f"TUNE: unknown settings {unknown}, expected some of {sorted(c)}, BLOCK_J or num_warps")
    c.update({k: v for k, v in tune.items() if k in c})
    one_item = bool(c["ONE_ITEM"])
    c["BATCH_TILE"] = bool(c["BATCH_TILE"])
    if c["BATCH_TILE"]:
        c["BLOCK_B"] = _pow2(batch)
    # a batch tile keeps BLOCK_B x rows fp32 sums per thread in the projections and the SSM's dt (sm_90 ptxas,
    # d_model 768, batch 8: in_proj items of 32 rows spill 1.7 KB), so ONE_ITEM's items stop at _ONE_ITEM_SUMS sums
    max_rows = _ONE_ITEM_SUMS // c["BLOCK_B"]
    per = {}
    for key, block, items, width in (("IN", "ROWS_IN", 2 * Di, block_dm), ("CONV", "CH_CONV", Di, 0),
                                     ("SSM", "CH_SSM", Di, max(block_n, block_r)), ("OUT", "ROWS_OUT", Dm, block_di),
                                     ("HEAD", "ROWS_HEAD", V, block_dm)):
        if one_item and block not in tune and not (key == "CONV" and not merge):
            # (the conv phase's items stay few unless merged: the SSM phase sums one partial x_proj per item)
            width = width or max(block_x, 2 * block_dm)
            per[key], c[block] = _one_item(items, programs, width, c[block], max_rows)
        else:
            per[key] = c[block]
        c[f"PER_{key}"] = per[key]
    c["ONE_ITEM"] = one_item
    if merge and "MERGE_IN_CONV" not in asked and -(-Di // per["CONV"]) > programs:
        # the merged default holds where its conv items come one a program (the plan it was measured with): larger
        # models, or ONE_ITEM off, keep in_proj as a phase of its own
        return plan_constexprs(Dm, Di, N, R, W, V, batch, all_programs, {**asked, "MERGE_IN_CONV": 0})
    c["L2_TILES"] = bool(c["L2_TILES"])
    c["JOINT_READS"] = bool(c["JOINT_READS"])
    if c["JOINT_READS"] and (not c["BATCH_TILE"] or c["FLAGGED"]):
        # (with FLAGGED its polls gave wrong results at batch 8 on the H200, 2026-11-29)
        raise ValueError("TUNE: JOINT_READS reorders the batch-tile code of the barrier kernel's SSM and out_proj "
                         f"phases: it needs BATCH_TILE=1 and FLAGGED=0, got {dict(tune)}")
    n_conv = -(-Di // per["CONV"])
    # P3 adds the partial sums of BLOCK_J conv items at a time (under BATCH_TILE: of every batch row at once)
    # (JOINT_READS: all of them in one tile as far as _TILE allows, so that one round trip brings them)
    if c["JOINT_READS"]:
        c["BLOCK_J"] = tune.get("BLOCK_J") or min(_pow2(n_conv), max(1, _TILE // (c["BLOCK_B"] * block_r)))
    else:
        c["BLOCK_J"] = tune.get("BLOCK_J") or min(32, _pow2(n_conv))
    if c["BARRIER"] not in (0, 1):
        raise ValueError(f"TUNE: BARRIER must be 0 (the counter) or 1 (the flags), got {c['BARRIER']!r}")
    c["LOCAL_P2"] = bool(c["LOCAL_P2"])
    if c["LOCAL_P2"]:
        if c["BARRIER"] != 1 or c["MERGE_IN_CONV"]:
            raise ValueError("TUNE: LOCAL_P2 needs BARRIER=1 (its epochs) and in_proj as a phase of its own "
                             f"(MERGE_IN_CONV=0), got BARRIER={c['BARRIER']}, MERGE_IN_CONV={int(c['MERGE_IN_CONV'])}")
        # a conv item's channels span ceil(PER_CONV / PER_IN) in_proj items, one more where they straddle a border
        c["BLOCK_Q"] = _pow2(-(-per["CONV"] // per["IN"]) + 1)
    c["TRACE"] = bool(c["TRACE"])
    c["ARRIVE_FIRST"] = bool(c["ARRIVE_FIRST"])
    c["EARLY_LOADS"] = bool(c["EARLY_LOADS"])
    if isinstance(c["PREFETCH"], bool) or not isinstance(c["PREFETCH"], int) or not 0 <= c["PREFETCH"] <= 4:
        raise ValueError(f"TUNE: PREFETCH is how many layers ahead to ask L2 for weights, 0..4, got {c['PREFETCH']!r}")
    if c["PREFETCH"] and c["MERGE_IN_CONV"]:
        raise ValueError("TUNE: PREFETCH asks for the next layer's weights in the in_proj phase: it needs "
                         "MERGE_IN_CONV=0")
    if c["EARLY_LOADS"] and not c["BATCH_TILE"]:
        raise ValueError("TUNE: EARLY_LOADS loads the batch rows' states as one tile: it needs BATCH_TILE=1")
    if c["ARRIVE_FIRST"] and (c["BARRIER"] or c["LOCAL_P2"]):
        raise ValueError("TUNE: ARRIVE_FIRST splits the counter barrier; it does not combine with BARRIER=1 or "
                         "LOCAL_P2")
    c["FLAGGED"] = bool(c["FLAGGED"])
    if c["FLAGGED"]:
        skips = [flag for flag in BREAKDOWN_FLAGS if c[flag]]
        if (not c["BATCH_TILE"] or c["MERGE_IN_CONV"] or c["LOCAL_P2"] or c["BARRIER"] or c["ARRIVE_FIRST"]
                or skips):
            raise ValueError("TUNE: FLAGGED (no barriers: tagged values) needs BATCH_TILE=1 and none of MERGE_IN_CONV, "
                             f"LOCAL_P2, BARRIER=1, ARRIVE_FIRST or the breakdown flags, got {dict(tune)}")
        c["NO_WAIT"] = 1  # the kernel's path without grid barriers
    elif c["TRACE"] and (c["BARRIER"] != 0 or c["NO_WAIT"]):
        raise ValueError("TUNE: TRACE records the counter barrier's arrivals and departures, got "
                         f"BARRIER={c['BARRIER']}, NO_WAIT={c['NO_WAIT']}")
    if c["MERGE_IN_CONV"] and c["SKIP_P1"]:
        raise ValueError("TUNE: SKIP_P1 needs in_proj as a phase of its own, got MERGE_IN_CONV=1 (use SKIP_P2)")
    c["AHEAD"] = _ahead(tune)
    if c["PREFETCHERS"] and (c["BARRIER"] or c["LOCAL_P2"] or c["FLAGGED"]):
        raise ValueError("TUNE: PREFETCHERS pace themselves by the counter barrier; it does not combine with "
                         f"BARRIER=1, LOCAL_P2 or FLAGGED, got {dict(tune)}")
    return c


def _device_tune(device: torch.device) -> dict[str, int]:
    """TUNE for the step on `device`: below sm_90, which has no bulk L2 prefetch, without DEFAULT_TUNE's prefetchers
    (an explicit PREFETCHERS is refused there); the interpreter's prefetchers do nothing, so they are left as asked."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) >= _PREFETCHERS_MIN_CAPABILITY:
        return TUNE
    if TUNE.get("PREFETCHERS"):
        raise ValueError(f"TUNE: PREFETCHERS needs sm_{_PREFETCHERS_MIN_CAPABILITY[0]}0 or newer (bulk L2 prefetch), "
                         f"this GPU is sm_{''.join(map(str, torch.cuda.get_device_capability(device)))}")
    return {**TUNE, "PREFETCHERS": 0}


def _prefetchers(tune: dict[str, int], programs: int) -> int:
    """TUNE's PREFETCHERS (default 0), checked to leave at least one of `programs` programs working."""
    prefetchers = tune.get("PREFETCHERS", 0)
    if isinstance(prefetchers, bool) or not isinstance(prefetchers, int) or not 0 <= prefetchers < programs:
        raise ValueError(f"TUNE: PREFETCHERS is how many of the {programs} programs only prefetch, 0..{programs - 1} "
                         f"(at least one works), got {prefetchers!r}")
    return prefetchers


def _ahead(tune: dict[str, int]) -> int:
    """TUNE's AHEAD (default 1): how many layers before the working programs the prefetchers may run."""
    ahead = tune.get("AHEAD", 1)
    if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 0:
        raise ValueError(f"TUNE: AHEAD is a count of layers, >= 0, got {ahead!r}")
    return ahead


def plan_split_constexprs(Dm: int, Di: int, N: int, R: int, W: int, V: int, batch: int, programs: int,
                          tune: dict[str, int]) -> dict[str, int]:
    """decode_split_triton's tile sizes for these model sizes, `programs` programs and batch `batch`, with `tune`'s
    overrides (decode.TUNE; DEFAULT_TUNE's settings are the other kernel's): about ceil(Di / programs) channels per
    item (one item per program), at most _SPLIT_MAX_C."""
    prefetchers = _prefetchers(tune, programs)
    working = programs - prefetchers
    per_c = int(tune.get("PER_C") or min(-(-Di // max(1, working)), _SPLIT_MAX_C))
    if not 1 <= per_c <= Di:
        raise ValueError(f"TUNE: PER_C must lie in [1, d_inner={Di}], got {per_c}")
    c = dict(
        BLOCK_B=_pow2(batch), BLOCK_DM=_pow2(Dm), BLOCK_N=_pow2(N), BLOCK_R=_pow2(R), BLOCK_W=max(2, _pow2(W)),
        BLOCK_X=_pow2(R + 2 * N), BLOCK_C=max(2, _pow2(per_c)), PER_C=per_c,
        ROWS_HEAD=int(tune.get("ROWS_HEAD") or _block(V, working, 2, _TILE // _pow2(Dm))),
        COPIES=int(tune.get("COPIES") or _SPLIT_COPIES), NO_WAIT=int(tune.get("NO_WAIT", 0)),
        SKIP_ATOMICS=int(tune.get("SKIP_ATOMICS", 0)), ARRIVE_FIRST=bool(tune.get("ARRIVE_FIRST", 0)),
        FIXED=bool(tune.get("FIXED", 0)), TRACE=bool(tune.get("TRACE", 0)), PREFETCHERS=prefetchers,
        AHEAD=_ahead(tune), TMA_SUMS=bool(tune.get("TMA_SUMS", 0)), ROLES=bool(tune.get("ROLES", 0)),
    )
    if int(tune.get("BLOCKS", 0)) not in (0, 1, 2, 3):
        raise ValueError(f"TUNE: BLOCKS is a bit mask (1: out_proj's columns, 2: x_proj's), 0..3, got "
                         f"{tune['BLOCKS']!r}")
    if c["TRACE"] and (not c["ARRIVE_FIRST"] or c["NO_WAIT"]):
        raise ValueError(f"TUNE: TRACE in the split kernel records ARRIVE_FIRST's arrivals and departures: it needs "
                         f"ARRIVE_FIRST=1 and no NO_WAIT, got {dict(tune)}")
    if c["COPIES"] < 1 or c["COPIES"] & (c["COPIES"] - 1):
        raise ValueError(f"TUNE: COPIES must be a power of two, got {c['COPIES']}")
    if c["FIXED"] and -(-working // c["COPIES"]) > _FIXED_MAX_ADDS:
        raise ValueError(f"TUNE: FIXED's sums take at most {_FIXED_MAX_ADDS} contributions a word: {working} working "
                         f"programs need COPIES >= {-(-working // _FIXED_MAX_ADDS)}")
    unknown = sorted(set(tune) - SPLIT_SETTINGS)
    if unknown:
        raise ValueError(f"TUNE: settings {unknown} do not apply with SPLIT=1 (it takes "
                         f"{', '.join(sorted(SPLIT_SETTINGS))})")
    return c


def split_default(tune: dict[str, int], device: torch.device, sizes: tuple[int, ...], batch: int,
                  programs: int) -> dict[str, int] | None:
    """The split kernel's settings where it is the default step, else None: on a GPU of sm_90 or newer (bulk L2
    prefetch), at batch 1, where its warp layout holds (one channel block a program and at least a channel a warp;
    plan_split_passes), unless `tune` (decode.TUNE) says SPLIT or holds a setting the split kernel does not take.
    SPLIT_DEFAULT_TUNE with a share of the programs as prefetchers, over which `tune` applies, without TALLY (and with
    _SPLIT_COPIES copies) where `tune` leaves them unset and TALLY does not apply; under
    torch.use_deterministic_algorithms(True) with FIXED (integer sums: bit-identical runs) and TMA_SUMS where
    d_model allows, and so without TALLY. sizes: (Dm, Di, N, R, W, V)."""
    if "SPLIT" in tune or set(tune) - SPLIT_SETTINGS or batch != 1 or device.type != "cuda":
        return None
    if torch.cuda.get_device_capability(device) < _PREFETCHERS_MIN_CAPABILITY:
        return None
    Dm, Di = sizes[0], sizes[1]
    settings = {**SPLIT_DEFAULT_TUNE, "PREFETCHERS": round(programs * _SPLIT_DEFAULT_PREFETCH_SHARE)}
    if torch.are_deterministic_algorithms_enabled():
        settings.update(FIXED=1, TMA_SUMS=int(Dm % 128 == 0))
    settings.update(tune)
    # TALLY (and its 4 copies of out_proj's sums) where it applies: not with FIXED, TRACE, NO_WAIT, SUMS_1D=0 or
    # more working programs than its words count (plan_split_passes refuses those)
    no_tally = {k: v for k, v in (("TALLY", 0), ("COPIES", _SPLIT_COPIES)) if k not in tune}
    for attempt in (settings, {**settings, **no_tally}):
        try:
            c = plan_split_constexprs(*sizes, batch, programs, attempt)
            passes = plan_split_passes(c, Di, programs - c["PREFETCHERS"], attempt)
        except ValueError:
            continue
        return attempt if passes["WARP_CH"] else None
    return None


def _warp_layout_holds() -> bool:
    """Whether this Triton lays _layers_in_warps' tiles out as that path needs (warps on the first axis). Checked for
    Triton 3.6, which orders equally contiguous axes first to last (offline TTGIR; the GPU runs); 3.8 orders them
    last to first, which puts the warps on the d_model chunks and the sums back across warps, and other versions are
    unchecked. The interpreter has no layouts."""
    import triton

    return interpreting() or tuple(int(p) for p in triton.__version__.split(".")[:2]) == (3, 6)


def plan_split_passes(constexprs: dict[str, int], Di: int, working: int, tune: dict[str, int]) -> dict[str, int]:
    """The split kernel's settings that hang on the real grid: ONE_PASS (every working program has at most one
    channel block, whose conv output and gate then stay in registers) and, at batch 1 with one pass and at least a
    channel a warp, the warp layout of _layers_in_warps: WARP_CH channels a warp, d_model in chunks of KCH, dt_low,
    B, C and the SSM state over VW lanes (tune's WARP_SUMS=0 or a Triton that lays it out otherwise leaves it off:
    WARP_CH=0), there with the residual stream and its sums once a program (SUMS_1D; tune's SUMS_1D=0: in every
    warp); there too BLOCKS (tune's, default 3: both weights' columns in blocks) and SPIN (tune's, default on), both
    off outside the warp layout; and GATE_EARLY (tune's; by default on where a warp's gate rows take at most
    _GATE_EARLY_MAX_ELEMS elements: its registers are held through phase A)."""
    c = constexprs
    one_pass = -(-Di // c["PER_C"]) <= working
    warps = int(tune.get("num_warps", _NUM_WARPS))
    in_warps = (one_pass and c["BLOCK_B"] == 1 and c["BLOCK_C"] >= warps and _warp_layout_holds()
                and tune.get("WARP_SUMS", 1))
    sums_1d = bool(in_warps and tune.get("SUMS_1D", 1))
    warp_ch = c["BLOCK_C"] // warps if in_warps else 0
    gate_early = tune.get("GATE_EARLY", int(warp_ch * c["BLOCK_DM"] <= _GATE_EARLY_MAX_ELEMS))
    tally = tune.get("TALLY", 0)
    if isinstance(tally, bool) or not isinstance(tally, int) or tally < 0 or tally & (tally - 1):
        raise ValueError(f"TUNE: TALLY is 0 or the copies of x_proj's counting sums, a power of two, got {tally!r}")
    if tally and not (sums_1d and c["ARRIVE_FIRST"] and not c["NO_WAIT"] and not c["FIXED"] and not c["TRACE"]
                      and -(-working // tally) <= _TALLY_MAX_ADDS):
        raise ValueError(f"TUNE: TALLY (x_proj's sums read without a barrier) needs the batch-1 warp layout with "
                         f"SUMS_1D, ARRIVE_FIRST=1, no NO_WAIT, FIXED or TRACE, and at most {_TALLY_MAX_ADDS} "
                         f"contributions a word ({working} working programs in TALLY={tally} copies)")
    vw = max(128, c["BLOCK_R"], c["BLOCK_N"])
    return dict(ONE_PASS=one_pass, WARP_CH=warp_ch, KCH=min(128, c["BLOCK_DM"]), VW=vw, SUMS_1D=sums_1d,
                COPIES=c["COPIES"],
                BLOCKS=int(tune.get("BLOCKS", 3)) if in_warps else 0, SPIN=bool(in_warps and tune.get("SPIN", 1)),
                GATE_EARLY=bool(in_warps and gate_early), TALLY=tally,
                TALLY_ROWS=min(vw, max(c["BLOCK_R"], c["BLOCK_N"], vw // 8, 32 * warps // max(1, tally))))


def plan_any(Dm: int, Di: int, N: int, R: int, W: int, V: int, batch: int, programs: int,
             tune: dict[str, int]) -> dict[str, int]:
    """The constexprs of whichever kernel `tune` (over DEFAULT_TUNE) selects: plan_split_constexprs under SPLIT=1,
    else plan_constexprs. Raises ValueError for a setting that does not apply."""
    if resolved_tune(tune).get("SPLIT"):
        return plan_split_constexprs(Dm, Di, N, R, W, V, batch, programs, tune)
    return plan_constexprs(Dm, Di, N, R, W, V, batch, programs, tune)


class FusedDecodeStep:
    """One decoding step of `model` in one kernel launch, on static buffers.

    token: (B,) long, read at every call; conv_states[l]: (B, Di, W) and ssm_states[l]: (B, Di, N) fp32, both
    contiguous, advanced in place. `__call__()` returns the logits (B, V) fp32 (a static buffer, overwritten by the
    next call). `programs` sets how many programs the work is planned for (default: the SM count on CUDA, 1 under
    the interpreter, which always launches one program); tests use it to cut the work into many small items.
    """

    def __init__(
        self,
        model: nn.Module,
        token: torch.Tensor,
        conv_states: list[torch.Tensor],
        ssm_states: list[torch.Tensor],
        programs: int | None = None,
    ) -> None:
        batch = token.shape[0] if isinstance(token, torch.Tensor) and token.dim() == 1 else None
        reason = fused_decode_unsupported_reason(model, batch) if batch is not None else "token must be (B,)"
        if reason is not None:
            raise ValueError(f"the fused decoding step cannot run this model: {reason}")
        if token.dtype != torch.long:
            raise TypeError(f"token must be int64 token ids (B,), got {token.dtype}")
        backbone = model.backbone
        mixers = [block.mixer for block in backbone.layers]
        m0 = mixers[0]
        emb = model.encoder.embedding.weight
        self.device = emb.device
        if token.device != self.device:
            raise ValueError(f"token must be on the model's device {self.device}, got {token.device}")
        Dm, Di, N, R, W = backbone.d_model, m0.d_inner, m0.d_state, m0.dt_rank, m0.d_conv
        if len(conv_states) != len(mixers) or len(ssm_states) != len(mixers):
            raise ValueError(f"need {len(mixers)} conv and SSM states, got {len(conv_states)} and {len(ssm_states)}")
        conv_dtype = conv_states[0].dtype
        for name, states, shape in (("conv_states", conv_states, (batch, Di, W)),
                                    ("ssm_states", ssm_states, (batch, Di, N))):
            for t in states:
                dtype_ok = t.dtype == (torch.float32 if name == "ssm_states" else conv_dtype)
                if tuple(t.shape) != shape or not t.is_contiguous() or not dtype_ok or t.device != self.device:
                    kind = "fp32" if name == "ssm_states" else "one dtype"
                    raise ValueError(
                        f"{name} must be contiguous {shape} tensors ({kind}) on {self.device}, got "
                        f"{tuple(t.shape)} {t.dtype} on {t.device}"
                    )
        if conv_dtype not in _DTYPES:
            raise ValueError(f"conv_states dtype must be one of {_DTYPES}, got {conv_dtype}")

        head = model.head
        head_w = head.weight
        head_b = getattr(head, "bias", None) if isinstance(head, nn.Linear) else None
        V = head_w.shape[0]
        self.token = token
        self.conv_states, self.ssm_states = conv_states, ssm_states

        def table(tensors: list[torch.Tensor]) -> torch.Tensor:
            # the kernels assume 16-byte aligned tensors (vector loads); PyTorch's allocations are, views may not be
            for t in tensors:
                if t.data_ptr() % 16:
                    raise ValueError(f"the fused decoding step needs 16-byte aligned parameters and states, got a "
                                     f"{tuple(t.shape)} {t.dtype} tensor at address {t.data_ptr():#x} (a view?)")
            # one row past the last layer, a copy of it: a look-ahead load for the layer after the last (masked off)
            # reads its table row in bounds
            ptrs = [t.data_ptr() for t in tensors]
            return torch.tensor(ptrs + ptrs[-1:], dtype=torch.int64, device=self.device)

        self._tables = [  # in _TABLES' order, the kernels' *_tab arguments
            table([b.norm.weight for b in backbone.layers]),
            table([m.in_proj.weight for m in mixers]),
            table([m.conv1d.weight for m in mixers]),
            table([m.conv1d.bias if m.conv1d.bias is not None else m.conv1d.weight for m in mixers]),
            table([m.x_proj.weight for m in mixers]),
            table([m.dt_proj.weight for m in mixers]),
            table([m.dt_proj.bias for m in mixers]),
            table([m.A_log for m in mixers]),
            table([m.D for m in mixers]),
            table([m.out_proj.weight for m in mixers]),
            table(conv_states),
            table(ssm_states),
        ]
        # keep every tensor the tables point to alive for as long as the step exists
        self._params = list(model.parameters())
        self._blocks: list[ColumnBlocks] = []  # BLOCKS' weight copies (refresh_weights)

        on_gpu = self.device.type == "cuda"
        self.grid = _sm_count(self.device.index) if on_gpu else 1
        tune = _device_tune(self.device)
        if on_gpu:
            tune = split_default(tune, self.device, (Dm, Di, N, R, W, V), batch, programs or self.grid) or tune
        self.tune = dict(tune)  # the settings the step runs with
        prefetch_only = tune.get("PREFETCHERS", 0)  # (checked by the plan)
        if not on_gpu and isinstance(prefetch_only, int):
            self.grid += prefetch_only  # the interpreter's one working program, then the prefetchers (idle there)
        plan = programs if programs is not None else self.grid
        X = R + 2 * N
        self.split = bool(resolved_tune(tune).get("SPLIT"))
        f32 = dict(dtype=torch.float32, device=self.device)
        self.logits = torch.empty(batch, V, **f32)
        import triton.language as tl

        tl_dtype = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
        dtypes = dict(
            ADT=tl_dtype[emb.dtype], CONV_DT=tl_dtype[conv_dtype], ALOG_DT=tl_dtype[m0.A_log.dtype],
            D_DT=tl_dtype[m0.D.dtype], DTB_DT=tl_dtype[m0.dt_proj.bias.dtype],
            CB_DT=tl_dtype[m0.conv1d.bias.dtype if m0.conv1d.bias is not None else emb.dtype],
            HAS_CONV_BIAS=m0.conv1d.bias is not None, HAS_HEAD_BIAS=head_b is not None,
        )
        self._num_warps = tune.get("num_warps", _NUM_WARPS)
        head_args = (token, emb, head_w, head_b if head_b is not None else head_w, backbone.norm_f.weight, self.logits)
        sizes = (batch, len(mixers), Dm, Di, N, R, W, V, float(backbone.norm_f.eps))
        if self.split:
            # the inputs of phase B that phase A writes, and the per-layer accumulators of the split sums (zero
            # between launches: the kernel zeroes each once it is read)
            self._xc = torch.empty(batch, Di, **f32)
            self._z = torch.empty(batch, Di, **f32)
            # A = -exp(A_log), fp32, in copies of its own: the kernel reads A, so no exp of it lies on its path
            # (refresh_weights)
            self._a_logs = [m.A_log for m in mixers]
            self._a = [torch.empty(a.shape, dtype=torch.float32, device=self.device) for a in self._a_logs]
            self._refresh_a()
            self._tables[_TABLES.index("alog")] = table(self._a)
            dtypes.pop("ALOG_DT")
            self._constexprs = {**dtypes, "A_DT": tl.float32,
                                **plan_split_constexprs(Dm, Di, N, R, W, V, batch, plan, tune),
                                "ASM": on_gpu}  # PTX clocks (TRACE) and prefetches only where there is a GPU
            prefetchers = self._constexprs["PREFETCHERS"]
            self._constexprs.update(plan_split_passes(self._constexprs, Di, self.grid - prefetchers, tune))
            # BLOCKS: out_proj's and x_proj's columns from copies in per-program blocks (refresh_weights)
            for bit, name, weights in ((1, "out", [m.out_proj.weight for m in mixers]),
                                       (2, "xproj", [m.x_proj.weight for m in mixers])):
                if self._constexprs["BLOCKS"] & bit:
                    blocks = ColumnBlocks([w.detach() for w in weights], self._constexprs["PER_C"],
                                          self._constexprs["BLOCK_C"])
                    self._tables[_TABLES.index(name)] = table([blocks.layer(i) for i in range(len(mixers))])
                    self._blocks.append(blocks)
            copies = self._constexprs["COPIES"]
            acc = dict(f32, dtype=torch.int64) if self._constexprs["FIXED"] else f32
            if self._constexprs["TALLY"]:  # x_proj's sums in fp64 words that count their contributions
                self._xacc = torch.zeros(len(mixers), self._constexprs["TALLY"], batch, X,
                                         **dict(f32, dtype=torch.float64))
            else:
                self._xacc = torch.zeros(len(mixers), copies, batch, X, **acc)
            self._oacc = torch.zeros(len(mixers), copies, batch, Dm, **acc)
            if self._constexprs["TMA_SUMS"]:
                self._constexprs["oacc_desc"] = self._bulk_sums_descriptor(Dm, on_gpu)
            # the arrival counter, then (a cache line on) each prefetcher's count of the launches it served
            self._bar_words = torch.zeros(16 + prefetchers, dtype=torch.int64, device=self.device)
            self._barrier = self._bar_words[:1]
            # TRACE: per program, the clock and global time at its start, at each barrier (arrived, left) and at its
            # end (two barriers a layer: TRACE runs without TALLY)
            self.trace = torch.zeros(self.grid, 2 * len(mixers) + 2, 4, dtype=torch.int64,
                                     device=self.device) if self._constexprs["TRACE"] else None
            # greedy steps (__call__(greedy=True)): the launches counted in, the next history column and each row's
            # best argmax key (reset by the kernel); the picked tokens by column; a bias added before the argmax
            self._greedy_words = torch.zeros(2 + batch, dtype=torch.int64, device=self.device)
            self._greedy_words[2:] = torch.iinfo(torch.int64).min
            self.history = torch.zeros(batch, GREEDY_HISTORY, dtype=torch.long, device=self.device)
            self.greedy_bias = torch.zeros(V, **f32)
            # ROLES: the role of the program on each SM (read where the SMs are numbered 0..grid-1)
            self.roles = sm_roles(self.grid).to(self.device)
            self._args = (*head_args, *self._tables, self._xc, self._z, self._xacc, self._oacc, self._bar_words,
                          self.trace if self.trace is not None else self._barrier, self._greedy_words, self.history,
                          self.greedy_bias, self.roles, *sizes, GREEDY_HISTORY)
            self._launch_constexprs = {False: self._constexprs, True: {**self._constexprs, "GREEDY": True}}
            self._roles_checked: set[bool] = set()  # the launch kinds (greedy or not) whose ROLES was checked
            return
        tiles = plan_constexprs(Dm, Di, N, R, W, V, batch, plan, tune)
        n_conv = -(-Di // tiles["PER_CONV"])
        def scratch(*shape: int) -> torch.Tensor:
            # FLAGGED: 64-bit tagged words, filled with a tag no layer writes (-1)
            if tiles["FLAGGED"]:
                return torch.full(shape, -1, dtype=torch.int64, device=self.device)
            return torch.empty(shape, **f32)

        self._resid = scratch(batch, Dm)
        self._xz = scratch(batch, 2 * Di)
        self._xc = scratch(batch, Di)
        self._part = scratch(n_conv, batch, X)
        self._y = scratch(batch, Di)
        # arrivals at grid barriers, ever growing (2^63 of them): stays a multiple of the grid between launches
        # (FLAGGED: programs that ended a launch);
        # BARRIER=1: one slot per program, each its program's count of barriers met (all equal between launches);
        # LOCAL_P2: then one ready flag per in_proj item
        n_slots = self.grid if tiles["BARRIER"] == 1 else 1
        if tiles["LOCAL_P2"]:
            n_slots += -(-2 * Di // tiles["PER_IN"])
        # PREFETCHERS (the counter only): then, a cache line on, each prefetcher's count of the launches it served
        prefetchers = tiles["PREFETCHERS"]
        self._bar_words = torch.zeros(16 + prefetchers if prefetchers else n_slots, dtype=torch.int64,
                                      device=self.device)
        self._barrier = self._bar_words[:n_slots]
        # TRACE: per program, the clock and global time at its start, at each barrier (arrived, left) and at its end
        # (three barriers a layer under MERGE_IN_CONV)
        per_layer = 3 if tiles["MERGE_IN_CONV"] else 4
        self.trace = torch.zeros(self.grid, per_layer * len(mixers) + 2, 4, dtype=torch.int64,
                                 device=self.device) if tiles["TRACE"] else None
        self._constexprs = dict(
            **dtypes,
            # the flags barrier's vector of every slot; PTX only where there is a GPU (the interpreter runs none)
            BLOCK_P=_pow2(self.grid), ASM=on_gpu,
            LINE_ELEMS=128 // emb.element_size(),  # weight elements in a 128-byte line (PREFETCH)
            **tiles,
        )
        self._args = (*head_args, *self._tables, self._resid, self._xz, self._xc, self._part, self._y,
                      self._bar_words, self.trace if self.trace is not None else self._barrier, *sizes)

    def _check_roles(self, greedy: bool) -> None:
        """Before a kind of launch first runs: keeps ROLES only where the split kernel, compiled as it will run (the
        compile is cached for the launch), keeps to one program an SM, and only on a GPU (the interpreter ignores
        it)."""
        self._roles_checked.add(greedy)
        constexprs = self._launch_constexprs[greedy]
        if not constexprs["ROLES"]:
            return
        holds = self.device.type == "cuda"
        if holds:
            from .decode_split_triton import compiled

            props = torch.cuda.get_device_properties(self.device)
            try:  # compiled() reaches into Triton's CompiledKernel: a Triton without it runs without ROLES
                kernel = compiled(self.grid, self._args, constexprs, self._num_warps)
                n_regs, shared = kernel.n_regs, kernel.metadata.shared
            except AttributeError:
                holds = False
            else:
                holds = one_program_an_sm(n_regs, shared, self._num_warps,
                                          getattr(props, "regs_per_multiprocessor", 65536),
                                          getattr(props, "shared_memory_per_multiprocessor", 228 * 1024))
        if not holds:
            constexprs["ROLES"] = False
            self.tune["ROLES"] = 0

    def _bulk_sums_descriptor(self, Dm: int, on_gpu: bool):
        """TMA_SUMS: a TMA descriptor of the out_proj accumulators as (layers x copies, Dm / KCH, KCH) rows, for the
        split kernel's bulk reductions (FIXED's int64 words as uint64: the same sums)."""
        c = self._constexprs
        if not (on_gpu and torch.cuda.get_device_capability(self.device) >= (9, 0)):
            raise ValueError("TUNE: TMA_SUMS needs a GPU with TMA (sm_90 or newer)")
        if not c["SUMS_1D"] or Dm % c["KCH"]:
            raise ValueError(f"TUNE: TMA_SUMS runs in the batch-1 warp layout with SUMS_1D and d_model a multiple of "
                             f"{c['KCH']}, got SUMS_1D={c['SUMS_1D']}, d_model {Dm}")
        from triton.tools.tensor_descriptor import TensorDescriptor

        acc = self._oacc.view(torch.uint64) if c["FIXED"] else self._oacc
        return TensorDescriptor(acc, shape=[acc.numel() // Dm, Dm // c["KCH"], c["KCH"]], strides=[Dm, c["KCH"], 1],
                                block_shape=[1, c["BLOCK_DM"] // c["KCH"], c["KCH"]])

    def refresh_weights(self) -> None:
        """Copies the weights the step reads through copies of its own (the split kernel's column blocks, BLOCKS, and
        its A = -exp(A_log)) again: call after changing the model's weights in place (StepDecoder does before every
        prompt). The copies keep their addresses, so a captured graph stays valid."""
        for blocks in self._blocks:
            blocks.refresh()
        if self.split:
            self._refresh_a()

    def _refresh_a(self) -> None:
        """The split kernel's A = -exp(A_log) from the model's A_log, fp32, into the same tensors."""
        with torch.inference_mode():  # like ColumnBlocks.refresh: the decoder's buffers may be inference tensors
            for a, a_log in zip(self._a, self._a_logs, strict=True):
                torch.neg(torch.exp(a_log.detach().float()), out=a)

    def scratch(self) -> list[torch.Tensor]:
        """The buffers the kernel writes before it reads them (tests poison them): the logits and the scratch of
        the chosen kernel; SPLIT's accumulators are state, not scratch."""
        if self.split:
            return [self.logits, self._xc, self._z]
        return [self.logits, self._resid, self._xz, self._xc, self._part, self._y]

    @property
    def greedy_supported(self) -> bool:
        """Whether __call__(greedy=True) can run: the split kernel's."""
        return self.split

    def start_greedy(self, token: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Sets up greedy steps: `token` (B,) long is fed to the first, the history starts again at column 0 and
        `bias` (V,) fp32 (None: zeros; -inf keeps a token from being picked) is added to the logits before each argmax.
        Stream-ordered copies, so this may be followed by graph replays of greedy steps at once."""
        if not self.greedy_supported:
            raise RuntimeError("greedy steps run on the split kernel (decode.TUNE's SPLIT=1, the default at batch 1 "
                               "on sm_90 or newer)")
        if token.shape != self.token.shape or token.dtype != torch.long:
            raise ValueError(f"token must be int64 token ids of shape {tuple(self.token.shape)}, got "
                             f"{token.dtype} {tuple(token.shape)}")
        if bias is not None and (bias.shape != self.greedy_bias.shape or not bias.is_floating_point()):
            raise ValueError(f"bias must be a float tensor of shape {tuple(self.greedy_bias.shape)} (one per token), "
                             f"got {bias.dtype} {tuple(bias.shape)}")
        self.token.copy_(token)
        self._greedy_words[1] = 0
        if bias is None:
            self.greedy_bias.zero_()
        else:
            self.greedy_bias.copy_(bias)

    def __call__(self, greedy: bool = False) -> torch.Tensor:
        """Runs the step: logits (B, V) fp32 for the tokens in `token`; the states advance in place. With `greedy`
        the kernel also picks each row's next token, torch.argmax of its logits plus `greedy_bias`, and writes it to
        `token` (the next step's input) and to `history[:, c]`, c the launch's column: 0 after start_greedy, then
        one more a launch, modulo GREEDY_HISTORY."""
        if self.split:
            from .decode_split_triton import launch

            if bool(greedy) not in self._roles_checked:
                self._check_roles(bool(greedy))
            launch(self.grid, self._args, self._launch_constexprs[bool(greedy)], self._num_warps)
            return self.logits
        if greedy:
            raise RuntimeError("greedy steps run on the split kernel (decode.TUNE's SPLIT=1)")
        from .decode_triton import launch

        launch(self.grid, self._args, self._constexprs, self._num_warps)
        return self.logits
