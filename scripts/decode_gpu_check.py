"""GPU check of the one-kernel decoding step (seqbackbone.kernels.decode) on the ~90M-parameter wave LM, bf16.

    python scripts/decode_gpu_check.py [--n-layer 24] [--d-model 768] [--steps 50] [--replays 300] [--timeout 420]
        [--tune KEY=VALUE ...] [--variants K=V,K=V ...] [--breakdown] [--trace] [--ptxas]

1. Agreement: from the same prefilled state, 50 steps of the fused kernel and of the layer-by-layer step
   (`backbone.step`) on the same tokens, at batch 1 and 8: max abs difference of the logits and of every layer's conv
   and SSM state, and the relative error; and the fused step run twice from the same state gives bit-identical
   results (no float atomics).
2. Speed: one CUDA-graph replay of the decoder's step, fused (SEQBACKBONE_FUSED_DECODE=1: forced, since by default
   only batch 1 runs fused) and layer-by-layer (SEQBACKBONE_FUSED_DECODE=0), at batch 1 and 8: median of many
   replays timed with CUDA events; and the fused step launched without a graph, timed the same way.
3. The weight-read floor (2 bytes x parameters / copy bandwidth) and each step's ratio to it.
4. Optionally, other settings of the fused kernel (--variants, each a comma-joined set of decode.TUNE keys): a short
   agreement check and the step time of each, then one table of every variant's step time against the default's.
   Tile sizes (ROWS_IN=16), the code variants BARRIER=1 (flag barriers), ONE_ITEM=1 (items sized from the grid),
   BATCH_TILE=1 (batch rows as one tile) and their combinations, e.g.
       --variants BARRIER=1 BATCH_TILE=1 ONE_ITEM=1 BARRIER=1,BATCH_TILE=1,ONE_ITEM=1

--breakdown instead runs a short agreement check (10 steps) and then times the fused step with each of the
breakdown flags of decode.TUNE (results wrong, timing only): all work, NO_WAIT (no grid barriers), each phase's work
skipped (SKIP_P1 in_proj, SKIP_P2 conv + x_proj, SKIP_P3 SSM, SKIP_P4 out_proj, SKIP_HEAD), barriers only (every
phase skipped), nothing (barriers dropped too), and the layer-by-layer step; one table of the CUDA-graph step medians
and their differences to the full step. One Triton compile per setting (both batch sizes share it). Where in_proj
is merged into the conv phase (MERGE_IN_CONV, the default at batch 1) SKIP_P2 drops the merged phase and SKIP_P1 has
no phase to drop (nan; the rows that skip every phase leave it out).

--trace times each phase from inside the kernel (decode.TUNE's TRACE=1: every program's clock on arriving at and
leaving each grid barrier): per phase, the slowest and the median program's work, the spread of the arrivals, the
median wait and the release after the last arrival, averaged over the layers (summarise_trace; three phases a layer
where in_proj runs inside the conv phase, MERGE_IN_CONV, the default at batch 1; two with --tune SPLIT=1
ARRIVE_FIRST=1). Then, per phase, the programs that arrive last on average, with their SMs (lateness): whether the
same ones hold every barrier up. With --tune FLAGGED=1 it traces the kernel without barriers: "arriving" is
beginning to poll for the values the phase reads and "leaving" is having them all (a program with nothing to read
in a phase arrives and leaves at once), so the work column is a phase's own time and the release the time from the
last program's start of a wait to the median end.

--ptxas needs no GPU: it compiles the kernel for sm_90a (Triton's bundled ptxas) at the model's sizes on 132
programs, default and each --variants setting at each batch size, and prints registers and spill bytes.

A watchdog ends the process (with every thread's traceback) if anything hangs, e.g. a grid barrier that deadlocks.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import statistics
import sys

import torch


def _reference_step(model: torch.nn.Module, token: torch.Tensor, cache) -> torch.Tensor:
    x_t = model.encoder.embed(token[:, None])[:, 0]
    return model.head(model.backbone.step(x_t, cache)).float()


def _clone_states(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.conv_state.clone(), layer.ssm_state.clone()) for layer in cache.layers]


def _load_states(cache, states) -> None:
    for layer, (conv, ssm) in zip(cache.layers, states, strict=True):
        layer.conv_state.copy_(conv)
        layer.ssm_state.copy_(ssm)


@torch.inference_mode()
def check_agreement(model: torch.nn.Module, batch: int, steps: int) -> None:
    from seqbackbone.kernels.decode import FusedDecodeStep

    backbone = model.backbone
    prompt = torch.randint(0, model.vocab_size, (batch, 32), generator=torch.Generator().manual_seed(batch)).cuda()
    ref_cache = backbone.allocate_inference_cache(batch)
    backbone(model.encoder.embed(prompt), cache=ref_cache)  # prefill
    start = _clone_states(ref_cache)
    fused_cache = backbone.allocate_inference_cache(batch)
    _load_states(fused_cache, start)
    token = torch.zeros(batch, dtype=torch.long, device="cuda")
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers])
    tokens, worst_logit, worst_rel = [], 0.0, 0.0
    next_tok = prompt[:, -1]
    for _ in range(steps):
        tokens.append(next_tok.clone())
        want = _reference_step(model, next_tok, ref_cache)
        token.copy_(next_tok)
        got = step()
        worst_logit = max(worst_logit, (got - want).abs().max().item())
        worst_rel = max(worst_rel, ((got - want).norm() / want.norm()).item())
        next_tok = want.argmax(-1)
    torch.cuda.synchronize()
    conv_diff = max((f.conv_state.float() - r.conv_state.float()).abs().max().item()
                    for f, r in zip(fused_cache.layers, ref_cache.layers, strict=True))
    ssm_diff = max((f.ssm_state - r.ssm_state).abs().max().item()
                   for f, r in zip(fused_cache.layers, ref_cache.layers, strict=True))
    ssm_rel = max(((f.ssm_state - r.ssm_state).norm() / r.ssm_state.norm()).item()
                  for f, r in zip(fused_cache.layers, ref_cache.layers, strict=True))
    print(f"batch {batch}: {steps} steps, logits max abs diff {worst_logit:.3e} (max rel {worst_rel:.3e}); "
          f"conv state max abs diff {conv_diff:.3e}; SSM state max abs diff {ssm_diff:.3e} (max rel {ssm_rel:.3e})",
          flush=True)

    # determinism: the same steps from the same state twice
    runs = []
    for _ in range(2):
        _load_states(fused_cache, start)
        outs = []
        for t in tokens[:10]:
            token.copy_(t)
            outs.append(step().clone())
        runs.append((torch.stack(outs), _clone_states(fused_cache)))
    same = torch.equal(runs[0][0], runs[1][0]) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    print(f"batch {batch}: two runs bit-identical: {same}", flush=True)


def _time_launches(launch, count: int) -> tuple[float, float]:
    """(median us of one launch timed alone with CUDA events, mean us per launch over `count` back to back)."""
    torch.cuda.synchronize()
    times = []
    for _ in range(count):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        launch()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) * 1e3)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(count):
        launch()
    end.record()
    end.synchronize()
    return statistics.median(times), begin.elapsed_time(end) * 1e3 / count


@torch.inference_mode()
def time_graph_step(model: torch.nn.Module, batch: int, fused: bool, replays: int) -> tuple[float, float, bool]:
    """(median us per replay, mean us per replay over a back-to-back run, whether the fused kernel ran)."""
    from seqbackbone.generation import StepDecoder

    os.environ["SEQBACKBONE_FUSED_DECODE"] = "1" if fused else "0"
    decoder = StepDecoder(model, batch, cuda_graph=True)
    prompt = torch.randint(0, model.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0)).cuda()
    decoder.prefill(prompt)
    tok = torch.zeros(batch, dtype=torch.long, device="cuda")
    for _ in range(20):
        decoder.step(tok)
    median, mean = _time_launches(decoder.graph.replay, replays)
    ran_fused = decoder.fused is not None
    del decoder
    torch.cuda.empty_cache()
    return median, mean, ran_fused


@torch.inference_mode()
def time_eager_fused(model: torch.nn.Module, batch: int, launches: int) -> tuple[float, float] | None:
    """(median us per launch, mean us per launch over a back-to-back run) of the fused step launched directly, no
    CUDA graph: beside time_graph_step, what the graph around the one kernel costs or saves; None where the fused
    step does not run."""
    from seqbackbone.generation import StepDecoder

    os.environ["SEQBACKBONE_FUSED_DECODE"] = "1"
    decoder = StepDecoder(model, batch, cuda_graph=False)
    if decoder.fused is None:
        return None
    prompt = torch.randint(0, model.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0)).cuda()
    decoder.prefill(prompt)
    for _ in range(20):
        decoder.fused()
    median, mean = _time_launches(decoder.fused, launches)
    del decoder
    torch.cuda.empty_cache()
    return median, mean


# (label, decode.TUNE flags) of the --breakdown rows; the first is the reference the others are compared with. Each
# setting compiles on its own, so register allocation can differ (sm_90 ptxas offline, d_model 768: the full kernel
# 255 registers and 48 bytes of spills, SKIP_P2's 128 registers and 176 bytes): a difference is not only the work
BREAKDOWN = [
    ("all work", {}),
    ("NO_WAIT (no grid barriers)", {"NO_WAIT": 1}),
    ("SKIP_P1 (in_proj)", {"SKIP_P1": 1}),
    ("SKIP_P2 (conv + x_proj)", {"SKIP_P2": 1}),
    ("SKIP_P3 (SSM)", {"SKIP_P3": 1}),
    ("SKIP_P4 (out_proj)", {"SKIP_P4": 1}),
    ("SKIP_HEAD (norm_f + head)", {"SKIP_HEAD": 1}),
    ("barriers only (every SKIP)", {"SKIP_P1": 1, "SKIP_P2": 1, "SKIP_P3": 1, "SKIP_P4": 1, "SKIP_HEAD": 1}),
    ("nothing (every SKIP + NO_WAIT)", {"SKIP_P1": 1, "SKIP_P2": 1, "SKIP_P3": 1, "SKIP_P4": 1, "SKIP_HEAD": 1,
                                        "NO_WAIT": 1}),
]


def breakdown(model: torch.nn.Module, batch_sizes: list[int], replays: int) -> None:
    """Times the fused step under each BREAKDOWN setting (on top of the --tune overrides) and the layer-by-layer
    step, printing each result as it comes and then one table."""
    from seqbackbone.kernels import decode

    base = dict(decode.TUNE)
    n_layer = len(model.backbone.layers)
    times: dict[tuple[str, int], float] = {}
    # the split kernel (SPLIT=1) has no phase switches, only NO_WAIT
    steps = BREAKDOWN[:2] if decode.resolved_tune(base).get("SPLIT") else BREAKDOWN
    rows = [*steps, ("layer by layer (not fused)", None)]
    for label, flags in rows:
        decode.TUNE.clear()
        decode.TUNE.update(base)
        decode.TUNE.update(flags or {})
        for batch in batch_sizes:
            if flags and flags.get("SKIP_P1") and decode.resolved_tune(base, batch).get("MERGE_IN_CONV"):
                if len(flags) == 1:
                    times[label, batch] = float("nan")  # the merged layer has no in_proj phase to skip
                    continue
                # the merged phase goes with SKIP_P2 (SKIP_P1 would time the four-phase layer)
                decode.TUNE.pop("SKIP_P1")
            median, _, ran = time_graph_step(model, batch, flags is not None, replays)
            decode.TUNE.update(flags or {})
            if ran != (flags is not None):
                raise RuntimeError(f"{label} at batch {batch}: the fused step {'did not run' if ran else 'ran'}")
            times[label, batch] = median
            print(f"breakdown batch {batch} {label}: {median:8.1f} us", flush=True)
    decode.TUNE.clear()
    decode.TUNE.update(base)
    ref = BREAKDOWN[0][0]
    head = f"{'setting':<32}" + "".join(f"{f'batch {b} us':>13}{'diff':>9}{'per layer':>11}" for b in batch_sizes)
    print(f"\nbreakdown: CUDA-graph step medians ({replays} replays), diff = setting - all work, per layer = diff / "
          f"{n_layer}; tile overrides {base or 'none'}\n{head}")
    for label, _ in rows:
        line = f"{label:<32}"
        for b in batch_sizes:
            t, d = times[label, b], times[label, b] - times[ref, b]
            line += f"{t:13.1f}{d:+9.1f}{d / n_layer:+11.2f}"
        print(line, flush=True)


PHASES = ("P1 in_proj", "P2 conv + x_proj", "P3 SSM", "P4 out_proj")
MERGED_PHASES = ("P1+P2 in_proj, conv, x_proj", "P3 SSM", "P4 out_proj")  # MERGE_IN_CONV: three barriers a layer
SPLIT_PHASES = ("A in_proj, conv, x_proj", "B SSM, out_proj")  # SPLIT=1: two barriers a layer


def _phase_names(barriers: int, n_layer: int) -> tuple[str, ...]:
    """The phases of a layer, by the trace's barriers a layer: 2 in the split kernel, 3 with in_proj merged into the
    conv phase, else 4."""
    return {2: SPLIT_PHASES, 3: MERGED_PHASES}.get(barriers // n_layer, PHASES)


def summarise_trace(trace: torch.Tensor, n_layer: int) -> tuple[dict[str, list[float]], float, float]:
    """One step's trace (programs, barriers + 2, 4) int64 of FusedDecodeStep (TRACE=1; 4 or, with in_proj merged into
    the conv phase, 3 barriers a layer; 2 in the split kernel) -> per phase name the means over the layers of [slowest
    program's work, median program's work, arrival spread, median wait, release] in us, the step's median length on
    the global timer in us, and the global timer's smallest step seen (ns)."""
    t = trace.double()
    nb = trace.shape[1] - 2
    phases = _phase_names(nb, n_layer)
    clk, ns = t[:, :, 0:2], t[:, :, 2:4]  # (programs, slots, arrived / left)
    scale = (ns[:, -1, 0] - ns[:, 0, 0]) / (clk[:, -1, 0] - clk[:, 0, 0])  # ns per cycle, per program
    leave_prev = torch.cat([clk[:, :1, 0], clk[:, 1:nb, 1]], dim=1)  # (programs, nb)
    work = (clk[:, 1:nb + 1, 0] - leave_prev) * scale[:, None] / 1e3
    wait = (clk[:, 1:nb + 1, 1] - clk[:, 1:nb + 1, 0]) * scale[:, None] / 1e3
    arrive_ns, leave_ns = ns[:, 1:nb + 1, 0], ns[:, 1:nb + 1, 1]
    spread = (arrive_ns.max(0).values - arrive_ns.min(0).values) / 1e3
    release = (leave_ns.median(0).values - arrive_ns.max(0).values) / 1e3
    head = (clk[:, -1, 0] - clk[:, nb, 1]) * scale / 1e3
    steps_seen = torch.diff(torch.unique(ns.flatten()))
    resolution = steps_seen[steps_seen > 0].min().item() if (steps_seen > 0).any() else float("nan")
    total = ((ns[:, -1, 0] - ns[:, 0, 0]) / 1e3).median().item()
    acc: dict[str, list[list[float]]] = {}
    for i in range(nb):
        name = phases[i % len(phases)]  # layer 0 has nothing before its first phase: barrier i ends phase i % len
        acc.setdefault(name, []).append([work[:, i].max().item(), work[:, i].median().item(), spread[i].item(),
                                         wait[:, i].median().item(), release[i].item()])
    acc["head"] = [[head.max().item(), head.median().item(), 0.0, 0.0, 0.0]]
    return {name: [statistics.mean(v[k] for v in vals) for k in range(5)] for name, vals in acc.items()}, total, \
        resolution


def lateness(trace: torch.Tensor, n_layer: int) -> dict[str, torch.Tensor]:
    """Who arrives last, from one step's trace (as summarise_trace's; slot 0's second entry is each program's SM):
    per phase name a (programs, 4) float64 of each program's SM id, its mean arrival after the phase's first arrival
    (ns), the share of the layers in which it arrived last (ties count for each), and its mean start of the phase
    (leaving the barrier before, or the launch's start for layer 0's first phase) after the first program's (ns)."""
    t = trace.double()
    nb = trace.shape[1] - 2
    phases = _phase_names(nb, n_layer)
    arrive = t[:, 1:nb + 1, 2]
    began = torch.cat([t[:, :1, 2], t[:, 1:nb, 3]], dim=1)
    late = arrive - arrive.min(0).values
    last = (arrive == arrive.max(0).values).double()
    behind = began - began.min(0).values
    out = {}
    for k, name in enumerate(phases):
        cols = list(range(k, nb, len(phases)))  # barrier i ends phase i % len(phases)
        out[name] = torch.stack([t[:, 0, 1], late[:, cols].mean(1), last[:, cols].mean(1), behind[:, cols].mean(1)],
                                dim=1)
    return out


@torch.inference_mode()
def trace_report(model: torch.nn.Module, batch: int, steps: int) -> None:
    """Times every phase of the counter-barrier kernel from inside it (decode.TUNE's TRACE=1): per program, the clock on
    arriving at and leaving each grid barrier. Prints, per phase and averaged over the layers: the slowest program's
    work (from leaving the previous barrier to arriving at this one), the median program's, the spread of the
    arrivals, the median wait, and the release (median leave - last arrival, on the global timer); medians over
    `steps` traced steps after 20 untraced ones."""
    from seqbackbone.kernels import decode
    from seqbackbone.kernels.decode import FusedDecodeStep

    if decode.TUNE.get("LOCAL_P2") or (decode.TUNE.get("SPLIT") and not decode.TUNE.get("ARRIVE_FIRST")):
        raise SystemExit("--trace: the counter-barrier kernels only (no LOCAL_P2; SPLIT with ARRIVE_FIRST)")
    base = dict(decode.TUNE)
    decode.TUNE["TRACE"] = 1
    n_layer = len(model.backbone.layers)
    cache = model.backbone.allocate_inference_cache(batch)
    prompt = torch.randint(0, model.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0)).cuda()
    model.backbone(model.encoder.embed(prompt), cache=cache)
    token = prompt[:, -1].clone()
    step = FusedDecodeStep(model, token, [c.conv_state for c in cache.layers], [c.ssm_state for c in cache.layers])
    for _ in range(20):
        step()
    rows: dict[str, list[list[float]]] = {}
    late: dict[str, torch.Tensor] = {}
    totals, resolution = [], []
    for _ in range(steps):
        step.trace.zero_()
        step()
        torch.cuda.synchronize()
        working = step.grid - step._constexprs.get("PREFETCHERS", 0)  # prefetchers meet no barrier: no trace
        trace = step.trace[:working].cpu()
        per_phase, total, res = summarise_trace(trace, n_layer)
        for name, per_program in lateness(trace, n_layer).items():
            late[name] = late.get(name, 0) + per_program / steps
        totals.append(total)
        resolution.append(res)
        for name, vals in per_phase.items():
            rows.setdefault(name, []).append(vals)
    decode.TUNE.clear()
    decode.TUNE.update(base)
    print(f"\ntrace, batch {batch}: step {statistics.median(totals):.1f} us on the global timer (median of {steps} "
          f"traced steps; its resolution seen: {statistics.median(resolution):.0f} ns); per phase, the mean over the "
          f"layers of (us):")
    print(f"{'phase':<18}{'work, slowest':>15}{'work, median':>14}{'arrival spread':>16}{'wait, median':>14}"
          f"{'release':>9}{'x layers':>10}")
    for name, per_step in rows.items():
        vals = [statistics.median(v[k] for v in per_step) for k in range(5)]
        count = 1 if name == "head" else n_layer
        print(f"{name:<18}{vals[0]:15.2f}{vals[1]:14.2f}{vals[2]:16.2f}{vals[3]:14.2f}{vals[4]:9.2f}{count:10d}",
              flush=True)
    print("the latest arrivals per phase (means over the layers and steps): the median program's arrival after the "
          "first; then the four latest programs: program (SM), arrival after the first, share of the layers it came "
          "last, its start of the phase after the first program's")
    for name, per_program in late.items():
        order = torch.argsort(per_program[:, 1], descending=True)[:4].tolist()
        latest = "; ".join(f"{p} (SM {int(per_program[p, 0])}) {per_program[p, 1]:.0f} ns, {per_program[p, 2]:.0%}, "
                           f"{per_program[p, 3]:.0f} ns" for p in order)
        print(f"{name}: median {per_program[:, 1].median():.0f} ns; {latest}", flush=True)


def ptxas_report(model: torch.nn.Module, settings: list[tuple[str, dict[str, int]]], batch_sizes: list[int],
                 programs: int = 132) -> None:
    """Registers and spill bytes of the step kernel compiled offline for sm_90a (bf16 weights), per setting and batch.
    The same constexprs as FusedDecodeStep on `programs` SMs, without a GPU."""
    import glob
    import re
    import subprocess
    import tempfile

    import triton
    import triton.language as tl
    from seqbackbone.kernels import decode, decode_split_triton, decode_triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mixer = model.backbone.layers[0].mixer
    sizes = (model.backbone.d_model, mixer.d_inner, mixer.d_state, mixer.dt_rank, mixer.d_conv,
             model.head.weight.shape[0])
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas = next(iter(glob.glob(os.path.join(bin_dir, "ptxas"))), None)
    if ptxas is None:
        raise SystemExit(f"--ptxas: no ptxas under {bin_dir}")
    pointers = {"tok_ptr": "*i64", "logits_ptr": "*fp32", "resid_ptr": "*fp32", "xz_ptr": "*fp32", "xc_ptr": "*fp32",
                "part_ptr": "*fp32", "y_ptr": "*fp32", "bar_ptr": "*i64", "trace_ptr": "*i64", "z_ptr": "*fp32",
                "xacc_ptr": "*fp32", "oacc_ptr": "*fp32", "greedy_ptr": "*i64", "hist_ptr": "*i64", "bias_ptr": "*fp32"}
    print(f"sm_90a ptxas, {programs} programs, sizes (Dm, Di, N, R, W, V) {sizes}, bf16")
    for label, tune in settings:
        for batch in batch_sizes:
            consts = dict(ADT=tl.bfloat16, CONV_DT=tl.bfloat16, ALOG_DT=tl.bfloat16, D_DT=tl.bfloat16,
                          DTB_DT=tl.bfloat16, CB_DT=tl.bfloat16, HAS_CONV_BIAS=mixer.conv1d.bias is not None,
                          HAS_HEAD_BIAS=getattr(model.head, "bias", None) is not None,
                          **decode.plan_any(*sizes, batch, programs, tune))
            if decode.resolved_tune(tune).get("SPLIT"):
                fn = decode_split_triton._decode_split_kernel
                consts["Dm"] = sizes[0]  # a constexpr there
                del consts["ALOG_DT"]
                consts["A_DT"] = tl.float32  # FusedDecodeStep's A = -exp(A_log)
                working = programs - consts["PREFETCHERS"]  # as FusedDecodeStep plans them:
                consts.update(decode.plan_split_passes(consts, sizes[1], working, tune))
                consts["ASM"] = True
            else:
                fn = decode_triton._decode_step_kernel
                consts.update(BLOCK_P=1 << (programs - 1).bit_length(), ASM=True)
            sig = {}
            if "oacc_desc" in fn.arg_names and not consts.get("TMA_SUMS"):
                consts["oacc_desc"] = None
            for name in fn.arg_names:
                if name in consts:
                    sig[name] = "constexpr"
                elif name == "oacc_desc":  # TMA_SUMS: the out_proj accumulators' descriptor
                    nk = consts["BLOCK_DM"] // consts["KCH"]
                    sig[name] = f"tensordesc<{'u64' if consts.get('FIXED') else 'fp32'}[1,{nk},{consts['KCH']}]>"
                elif name.endswith("_tab"):
                    sig[name] = "*i64"
                elif name.endswith("_ptr"):
                    sig[name] = pointers.get(name, "*bf16")
                    if consts.get("FLAGGED") and name in ("resid_ptr", "xz_ptr", "xc_ptr", "part_ptr", "y_ptr"):
                        sig[name] = "*i64"  # tagged words
                    if consts.get("FIXED") and name in ("xacc_ptr", "oacc_ptr"):
                        sig[name] = "*i64"  # fixed-point sums
                    if consts.get("TALLY") and name == "xacc_ptr":
                        sig[name] = "*fp64"  # sums that count their contributions
                else:
                    sig[name] = "fp32" if name == "eps" else "i32"
            # what the launcher specialises: pointers and integers divisible by 16 are marked so
            values = dict(zip(("batch", "n_layer", "Dm", "Di", "N", "R", "W", "V"), (batch, 24, *sizes), strict=True))
            attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name not in consts
                     and (sig[name].startswith("*") or values.get(name, 1) % 16 == 0)}
            kernel = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs),
                                    target=GPUTarget("cuda", 90, 32), options=dict(num_warps=tune.get("num_warps", 8)))
            with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
                f.write(kernel.asm["ptx"])
                f.flush()
                log = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                                     text=True).stderr
            regs = re.search(r"Used (\d+) registers", log)
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
            print(f"{label:<44} batch {batch}: {regs.group(1) if regs else '?'} registers, spill stores / loads "
                  f"{spill.group(1) if spill else '?'} / {spill.group(2) if spill else '?'} bytes", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mamba_wave_lm_base")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=24)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--replays", type=int, default=300)
    p.add_argument("--tune", nargs="*", default=[], metavar="KEY=VALUE",
                   help="tile-size / num_warps overrides of the fused kernel, e.g. ROWS_IN=8 ROWS_OUT=2 num_warps=4")
    p.add_argument("--variants", nargs="*", default=[], metavar="K=V,K=V",
                   help="further decode.TUNE settings to check (10 steps) and time on the fused path, one "
                        "comma-joined set each, e.g. ROWS_IN=16 BARRIER=1 BARRIER=1,BATCH_TILE=1,ONE_ITEM=1")
    p.add_argument("--breakdown", action="store_true",
                   help="a 10-step agreement check, then the step time with each breakdown flag (results wrong, "
                        "timing only) in one table; skips the other timings")
    p.add_argument("--ptxas", action="store_true",
                   help="no GPU needed: registers and spills of the default kernel and each --variants setting, "
                        "compiled offline for sm_90a")
    p.add_argument("--trace", action="store_true",
                   help="time each phase from inside the kernel (decode.TUNE's TRACE=1) at each batch size")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds before the watchdog ends the process")
    args = p.parse_args()
    # a deadlocked grid barrier would block the host forever: dump every thread's stack and exit instead
    faulthandler.dump_traceback_later(args.timeout, exit=True)

    from seqbackbone.kernels import decode
    from seqbackbone.kernels.decode import fused_decode_unsupported_reason

    import seqbackbone
    from seqbackbone.bench.decode import copy_bandwidth

    decode.TUNE.update(_parse_settings(args.tune, "--tune"))
    variants = [(v, _parse_settings(v.split(","), "--variants")) for v in args.variants]

    torch.manual_seed(0)
    model = seqbackbone.create_model(args.model, d_model=args.d_model, n_layer=args.n_layer)
    mixer = model.backbone.layers[0].mixer
    sizes = (args.d_model, mixer.d_inner, mixer.d_state, mixer.dt_rank, mixer.d_conv, model.head.weight.shape[0])
    for label, tune in [("--tune", {})] + variants:  # a bad setting fails here, not after minutes of GPU work
        tune = {**decode.TUNE, **tune}
        if torch.cuda.is_available():  # as FusedDecodeStep resolves it at batch 1 (the split kernel's default)
            tune = decode.split_default(tune, torch.device("cuda"), sizes, 1, 132) or tune
        try:
            decode.plan_any(*sizes, 1, 132, tune)
        except ValueError as exc:
            raise SystemExit(f"{label}: {exc}") from None
    if args.ptxas:
        ptxas_report(model, [("default", dict(decode.TUNE))]
                     + [(label, {**decode.TUNE, **tune}) for label, tune in variants], args.batch_sizes)
        faulthandler.cancel_dump_traceback_later()
        return 0
    model = model.to("cuda", torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: d_model {args.d_model}, {args.n_layer} layers, {n_params / 1e6:.1f}M parameters, bf16, "
          f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs); "
          f"tile overrides {decode.TUNE or 'none'}",
          flush=True)
    for batch in args.batch_sizes:
        reason = fused_decode_unsupported_reason(model, batch)
        if reason is not None:
            print(f"batch {batch}: fused step not supported: {reason}", flush=True)
            return 1

    if args.trace:
        for batch in args.batch_sizes:
            trace_report(model, batch, steps=5)
        faulthandler.cancel_dump_traceback_later()
        return 0
    if args.breakdown:
        for batch in args.batch_sizes:
            check_agreement(model, batch, 10)
        breakdown(model, args.batch_sizes, args.replays)
        faulthandler.cancel_dump_traceback_later()
        return 0
    for batch in args.batch_sizes:
        check_agreement(model, batch, args.steps)

    bandwidth = copy_bandwidth(torch.device("cuda"))
    floor_us = 2 * n_params / bandwidth * 1e6
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; weight-read floor {floor_us:.1f} us per step", flush=True)
    default_us: dict[int, float] = {}
    for batch in args.batch_sizes:
        for fused in (True, False):
            median, mean, ran = time_graph_step(model, batch, fused, args.replays)
            name = "fused (1 kernel)" if ran else "layer-by-layer"
            if ran:
                default_us[batch] = median
            print(f"batch {batch} {name:>16}: CUDA-graph step median {median:8.1f} us (back-to-back mean {mean:8.1f} "
                  f"us), {median / floor_us:5.2f}x floor, {batch / median * 1e6:,.0f} tokens/s", flush=True)
            eager = time_eager_fused(model, batch, args.replays) if ran else None
            if eager is not None:
                print(f"batch {batch} {'fused, no graph':>16}: launch median {eager[0]:8.1f} us (back-to-back mean "
                      f"{eager[1]:8.1f} us)", flush=True)
    base = dict(decode.TUNE)
    rows: list[tuple[str, int, float | None, str]] = []
    for label, settings in variants:
        decode.TUNE.clear()
        decode.TUNE.update(base)
        decode.TUNE.update(settings)
        print(f"variant {decode.TUNE}:", flush=True)
        for batch in args.batch_sizes:
            try:
                check_agreement(model, batch, 10)
                median, mean, _ = time_graph_step(model, batch, True, args.replays)
            except Exception as exc:  # a variant that fails to compile or run is reported, the others still run
                print(f"batch {batch} variant {label}: FAILED {type(exc).__name__}: {exc}", flush=True)
                rows.append((label, batch, None, f"{type(exc).__name__}"))
                continue
            rows.append((label, batch, median, ""))
            print(f"batch {batch} variant {label}: CUDA-graph step median {median:8.1f} us (back-to-back mean "
                  f"{mean:8.1f} us), {median / floor_us:5.2f}x floor", flush=True)
    decode.TUNE.clear()
    decode.TUNE.update(base)
    if rows:
        print(f"\nvariants: CUDA-graph step medians ({args.replays} replays) against the default fused step "
              f"(overrides {base or 'none'}); floor {floor_us:.1f} us")
        print(f"{'variant':<44}{'batch':>6}{'us':>10}{'vs default':>12}{'x floor':>9}")
        for batch in args.batch_sizes:
            print(f"{'default':<44}{batch:>6}{default_us[batch]:10.1f}{'':>12}{default_us[batch] / floor_us:9.2f}")
        for label, batch, median, err in rows:
            if median is None:
                print(f"{label:<44}{batch:>6}{'failed: ' + err:>31}")
            else:
                print(f"{label:<44}{batch:>6}{median:10.1f}{median / default_us[batch]:11.3f}x"
                      f"{median / floor_us:9.2f}", flush=True)
    faulthandler.cancel_dump_traceback_later()
    return 0


def _parse_settings(items: list[str], option: str) -> dict[str, int]:
    """KEY=VALUE strings -> decode.TUNE entries (ints), by the decoding benchmark's parser."""
    from seqbackbone.bench.decode import parse_tune

    try:
        return parse_tune(items, option)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    code = main()
    sys.stdout.flush()
    os._exit(code)
