"""selective_scan (the chunked CPU path) and selective_scan_ref against an independent float64 loop."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqbackbone.kernels import scan_torch, selective_scan, selective_scan_ref
from seqbackbone.kernels.scan_torch import selective_scan_chunked

from .reference import random_scan_inputs, scan_loop_fp64

TENSORS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    """These tests cover the PyTorch path, whatever the machine."""
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")


def chunked(chunk_size):
    """The chunked scan through its internal entry (takes grouped B/C) with a small chunk, to cross boundaries."""

    def run(**kw):
        kw = dict(kw)
        for name in ("B", "C"):
            if kw[name].dim() == 3:
                kw[name] = kw[name][:, None]
        return selective_scan_chunked(**kw, chunk_size=chunk_size)

    return run


IMPLS = {"ref": selective_scan_ref, "public": selective_scan, "chunk3": chunked(3)}


def leaves(args):
    """Marks the float tensors of `args` as requiring grad; returns their names, in TENSORS order."""
    names = [k for k in TENSORS if k in args]
    for k in names:
        args[k].requires_grad_(True)
    return names


def out_and_grads(fn, args, names, weights):
    out, last = fn(**args, return_last_state=True)
    loss = (out.double() * weights[0]).sum() + (last.double() * weights[1]).sum()
    grads = torch.autograd.grad(loss, [args[k] for k in names])
    return out, last, dict(zip(names, grads, strict=True))


def truth(args, names, **kw):
    """The fp64 loop's output, last state, random loss weights and the gradients of that loss."""
    out, last = scan_loop_fp64(**args, **kw)
    weights = (torch.randn_like(out), torch.randn_like(last))
    loss = (out * weights[0]).sum() + (last * weights[1]).sum()
    grads = torch.autograd.grad(loss, [args[k] for k in names])
    return out, last, weights, dict(zip(names, grads, strict=True))


def rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


OPTIONS = list(itertools.product([None, 2], [False, True], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("groups,mask,initial_state,reverse,softplus", OPTIONS)
def test_matches_fp64_loop(impl, groups, mask, initial_state, reverse, softplus):
    args = random_scan_inputs(
        batch=2,
        dim=4,
        length=11,
        n_state=3,
        groups=groups,
        mask=mask,
        initial_state=initial_state,
        delta_softplus=softplus,
        dtype=torch.float64,
    )
    names = leaves(args)
    want_out, want_last, weights, want_grads = truth(args, names, reverse=reverse)
    out, last, grads = out_and_grads(IMPLS[impl], dict(args, reverse=reverse), names, weights)
    assert out.dtype == torch.float64 and last.dtype == torch.float64
    assert rel_err(out, want_out) < 1e-12
    assert rel_err(last, want_last) < 1e-12
    for k in names:
        assert rel_err(grads[k], want_grads[k]) < 1e-11, k


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("D,z,delta_bias", [(False, False, False), (True, False, False), (False, True, True)])
def test_optional_inputs_absent(impl, D, z, delta_bias):
    args = random_scan_inputs(batch=1, dim=2, length=6, n_state=2, D=D, z=z, delta_bias=delta_bias, dtype=torch.float64)
    names = leaves(args)
    want_out, want_last, weights, want = truth(args, names)
    out, last, grads = out_and_grads(IMPLS[impl], args, names, weights)
    assert rel_err(out, want_out) < 1e-12 and rel_err(last, want_last) < 1e-12
    for k in names:
        assert rel_err(grads[k], want[k]) < 1e-11, k


def test_output_only_and_last_state_only_losses():
    """Gradients flow when only the output, or only the last state, enters the loss."""
    args = random_scan_inputs(batch=1, dim=2, length=9, n_state=2, initial_state=True, dtype=torch.float64)
    names = leaves(args)
    for pick in (0, 1):
        want = scan_loop_fp64(**args)[pick].sum()
        want_g = torch.autograd.grad(want, [args[k] for k in names], allow_unused=True)
        got = chunked(4)(**args, return_last_state=True)[pick].sum()
        got_g = torch.autograd.grad(got, [args[k] for k in names], allow_unused=True)
        for k, w, g in zip(names, want_g, got_g, strict=True):
            w = torch.zeros_like(args[k]) if w is None else w
            g = torch.zeros_like(args[k]) if g is None else g
            assert torch.allclose(g, w, rtol=1e-10, atol=1e-12), (pick, k)


@pytest.mark.parametrize("impl", ["ref", "chunk2"])
@pytest.mark.parametrize("reverse,groups", [(False, None), (True, 2)])
def test_gradcheck(impl, reverse, groups):
    fn = selective_scan_ref if impl == "ref" else chunked(2)
    args = random_scan_inputs(
        batch=1, dim=2, length=5, n_state=2, groups=groups, mask=True, initial_state=True, dtype=torch.float64
    )
    args["mask"][0, 2] = False
    names = leaves(args)
    rest = {k: v for k, v in args.items() if k not in names}

    def f(*tensors):
        return fn(**dict(zip(names, tensors, strict=True)), **rest, reverse=reverse, return_last_state=True)

    assert torch.autograd.gradcheck(f, [args[k] for k in names], eps=1e-6, atol=1e-7)


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 2),
    groups=st.sampled_from([None, 1, 2]),
    per_group=st.integers(1, 3),
    length=st.integers(1, 13),
    n_state=st.integers(1, 4),
    chunk=st.integers(1, 6),
    flags=st.tuples(*[st.booleans()] * 6),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(batch, groups, per_group, length, n_state, chunk, flags, seed):
    mask, initial_state, reverse, softplus, D, z = flags
    dim = (groups or 1) * per_group
    args = random_scan_inputs(
        batch=batch,
        dim=dim,
        length=length,
        n_state=n_state,
        groups=groups,
        mask=mask,
        initial_state=initial_state,
        delta_softplus=softplus,
        D=D,
        z=z,
        dtype=torch.float64,
        seed=seed,
    )
    names = leaves(args)
    want_out, want_last, weights, want = truth(args, names, reverse=reverse)
    for fn in (selective_scan_ref, chunked(chunk)):
        out, last, grads = out_and_grads(fn, dict(args, reverse=reverse), names, weights)
        assert torch.allclose(out, want_out, rtol=1e-10, atol=1e-12)
        assert torch.allclose(last, want_last, rtol=1e-10, atol=1e-12)
        for k in names:
            assert torch.allclose(grads[k], want[k], rtol=1e-9, atol=1e-11), k


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_mask_passes_state_through_and_zeroes_output(impl, reverse):
    args = random_scan_inputs(batch=2, dim=4, length=10, n_state=3, mask=True, initial_state=True, dtype=torch.float64)
    mask = args["mask"]
    mask[0] = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    mask[1] = torch.tensor([1, 0, 1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    out, last = IMPLS[impl](**args, reverse=reverse, return_last_state=True)
    assert (out.transpose(1, 2)[~mask] == 0).all()  # exactly 0, not merely small
    # Dropping the padded steps altogether gives the same real outputs and the same final state.
    for b in range(2):
        keep = mask[b]
        one = {k: (v[b : b + 1] if k not in ("A", "D", "delta_bias", "delta_softplus") else v) for k, v in args.items()}
        one.pop("mask")
        for k in ("u", "delta", "z", "B", "C"):
            one[k] = one[k][..., keep]
        want_out, want_last = scan_loop_fp64(**one, reverse=reverse)
        assert torch.allclose(out[b : b + 1][..., keep], want_out, rtol=1e-12, atol=1e-12)
        assert torch.allclose(last[b : b + 1], want_last, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_padding_content_does_not_matter(impl):
    args = random_scan_inputs(batch=2, dim=4, length=9, n_state=3, mask=True, groups=2, dtype=torch.float64)
    pad = ~args["mask"]
    pad[:, -1] = True
    args["mask"] = ~pad
    names = leaves(args)
    clean = {k: (v.detach().clone().requires_grad_(True) if k in names else v) for k, v in args.items()}
    dirty = {k: (v.detach().clone() if k in names else v) for k, v in args.items()}
    for k, fill in (("u", float("nan")), ("delta", 1e4), ("z", float("inf")), ("B", float("nan")), ("C", -1e30)):
        where = pad[:, None, :] if dirty[k].dim() == 3 else pad[:, None, None, :]
        dirty[k] = torch.where(where, fill, dirty[k])
    for k in names:
        dirty[k].requires_grad_(True)
    outs = []
    for inputs in (clean, dirty):
        out, last = IMPLS[impl](**inputs, return_last_state=True)
        grads = torch.autograd.grad(out.sum() + last.sum(), [inputs[k] for k in names])
        outs.append((out, last, grads))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    for k, g0, g1 in zip(names, outs[0][2], outs[1][2], strict=True):
        assert torch.isfinite(g1).all(), k
        assert torch.allclose(g0, g1, rtol=0, atol=1e-14), k
    for k in ("u", "delta", "z"):
        assert (outs[1][2][names.index(k)].transpose(1, 2)[pad] == 0).all(), k


@pytest.mark.parametrize("impl", list(IMPLS))
def test_reverse_is_flipped_forward(impl):
    args = random_scan_inputs(
        batch=2, dim=4, length=8, n_state=3, groups=2, mask=True, initial_state=True, dtype=torch.float64
    )
    out, last = IMPLS[impl](**args, reverse=True, return_last_state=True)
    flipped = dict(args)
    for k in ("u", "delta", "z", "B", "C", "mask"):
        flipped[k] = args[k].flip(-1)
    out_f, last_f = IMPLS[impl](**flipped, reverse=False, return_last_state=True)
    assert torch.allclose(out, out_f.flip(-1), rtol=1e-12, atol=1e-13)
    assert torch.allclose(last, last_f, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_groups_equal_per_group_shared_scans(impl):
    groups, per_group = 3, 2
    args = random_scan_inputs(
        batch=2, dim=groups * per_group, length=7, n_state=3, groups=groups, initial_state=True, dtype=torch.float64
    )
    out, last = IMPLS[impl](**args, return_last_state=True)
    for g in range(groups):
        ch = slice(g * per_group, (g + 1) * per_group)
        part = dict(args)
        for k in ("u", "delta", "z", "initial_state"):
            part[k] = args[k][:, ch]
        for k in ("A", "D", "delta_bias"):
            part[k] = args[k][ch]
        part["B"], part["C"] = args["B"][:, g], args["C"][:, g]  # shared (batch, N, L)
        o, h = IMPLS[impl](**part, return_last_state=True)
        assert torch.allclose(out[:, ch], o, rtol=1e-13, atol=1e-14)
        assert torch.allclose(last[:, ch], h, rtol=1e-13, atol=1e-14)
    # One group that holds every channel is the shared form.
    shared = dict(args, B=args["B"][:, 0], C=args["C"][:, 0])
    one = dict(args, B=args["B"][:, :1], C=args["C"][:, :1])
    assert torch.equal(IMPLS[impl](**shared), IMPLS[impl](**one))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3), (torch.float32, 1e-5)])
def test_low_precision_inputs(impl, dtype, tol):
    args = random_scan_inputs(
        batch=2, dim=8, length=40, n_state=4, groups=2, mask=True, initial_state=True, dtype=dtype
    )
    args["A"] = args["A"].float()  # A is kept in fp32 by the layer
    names = leaves(args)
    out, last = IMPLS[impl](**args, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    ref = {k: (v.detach().double().requires_grad_(True) if k in names else v) for k, v in args.items()}
    want_out, want_last = scan_loop_fp64(**ref)
    assert rel_err(out, want_out) < tol
    assert rel_err(last, want_last) < 1e-5  # the state is fp32 throughout; only the inputs were rounded
    weights = torch.randn_like(want_out)
    grads = torch.autograd.grad((out.double() * weights).sum(), [args[k] for k in names])
    want_g = torch.autograd.grad((want_out * weights).sum(), [ref[k] for k in names])
    for k, g, w in zip(names, grads, want_g, strict=True):
        assert g.dtype == args[k].dtype, k
        assert rel_err(g, w) < 3 * tol, k


def test_long_sequence_is_stable():
    """Sums of delta*A far below -100 over a chunk (where cumulative-product tricks underflow) stay exact."""
    args = random_scan_inputs(batch=1, dim=3, length=300, n_state=2, dtype=torch.float64, delta_softplus=False)
    args["delta"] = args["delta"] + 2.0  # exp(delta*A) tiny at every step
    names = leaves(args)
    want_out, want_last = scan_loop_fp64(**args)
    weights = torch.randn_like(want_out)
    want = torch.autograd.grad((want_out * weights).sum(), [args[k] for k in names])
    f32 = {k: (v.detach().float().requires_grad_(True) if k in names else v) for k, v in args.items()}
    out, last = selective_scan(**f32, return_last_state=True)
    got = torch.autograd.grad((out.double() * weights).sum(), [f32[k] for k in names])
    assert torch.isfinite(out).all() and rel_err(out, want_out) < 1e-5
    for k, g, w in zip(names, got, want, strict=True):
        assert torch.isfinite(g).all() and rel_err(g, w) < 1e-4, k


@pytest.mark.parametrize(
    "batch,dim,groups",
    [(3, 4, None), (1, 6, None), (1, 6, 3), (2, 4, 2)],
    ids=["batch-rows", "channels-shared-BC", "channels-whole-groups", "batch-rows-grouped"],
)
@pytest.mark.parametrize("workers", [2, 3])
def test_split_over_threads(monkeypatch, batch, dim, groups, workers):
    """Large scans are cut into slices (batch rows, else channels) run on worker threads; same results."""
    monkeypatch.setattr(scan_torch, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(scan_torch, "WORKERS", workers)
    threads = torch.get_num_threads()
    for reverse in (False, True):
        args = random_scan_inputs(
            batch=batch, dim=dim, length=9, n_state=3, groups=groups, mask=True, initial_state=True, dtype=torch.float64
        )
        assert scan_torch._split(batch, dim, args["B"].shape[1] if groups else 1, 1)[0] != "none"
        names = leaves(args)
        want_out, want_last, weights, want = truth(args, names, reverse=reverse)
        out, last, grads = out_and_grads(chunked(4), dict(args, reverse=reverse), names, weights)
        assert rel_err(out, want_out) < 1e-12 and rel_err(last, want_last) < 1e-12
        for k in names:
            assert rel_err(grads[k], want[k]) < 1e-11, k
    assert torch.get_num_threads() == threads  # the caller's setting is untouched


def test_split_over_threads_in_inference_mode(monkeypatch):
    """Under torch.inference_mode (a decoding cache is made of inference tensors) the worker threads run in the
    caller's mode too: the split scan works on inference tensors and gives the unsplit result."""
    monkeypatch.setattr(scan_torch, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(scan_torch, "WORKERS", 2)
    args = random_scan_inputs(batch=4, dim=3, length=9, n_state=2, mask=True, initial_state=True)
    want, want_last = chunked(4)(**args, return_last_state=True)
    with torch.inference_mode():
        inputs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        out, last = chunked(4)(**inputs, return_last_state=True)
    assert torch.allclose(out, want, atol=1e-6) and torch.allclose(last, want_last, atol=1e-6)


def test_default_chunk_size_is_used_and_switchable(monkeypatch):
    args = random_scan_inputs(batch=1, dim=2, length=20, n_state=2, dtype=torch.float64)
    want = selective_scan(**args)
    monkeypatch.setattr(scan_torch, "CHUNK_SIZE", 3)
    assert torch.allclose(selective_scan(**args), want, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_non_contiguous_inputs(impl):
    """Views with any strides (as a layer's rearranged projections are) give the same results."""
    args = random_scan_inputs(batch=2, dim=4, length=10, n_state=3, groups=2, mask=True, initial_state=True,
                              dtype=torch.float64)  # fmt: skip
    strided = dict(args)
    for k in ("u", "delta", "z"):
        strided[k] = args[k].transpose(1, 2).contiguous().transpose(1, 2)  # (b, d, l) with d innermost
    strided["B"] = args["B"].permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    strided["A"] = args["A"].t().contiguous().t()
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    out, last = IMPLS[impl](**args, return_last_state=True)
    out_s, last_s = IMPLS[impl](**strided, return_last_state=True)
    assert torch.allclose(out, out_s, rtol=1e-14, atol=1e-15) and torch.allclose(last, last_s, rtol=1e-14, atol=1e-15)


def test_empty_sequence():
    args = random_scan_inputs(batch=1, dim=2, length=0, n_state=2, initial_state=True)
    for fn in (selective_scan_ref, selective_scan):
        out, last = fn(**args, return_last_state=True)
        assert out.shape == (1, 2, 0) and torch.equal(last, args["initial_state"])


BAD = [
    (dict(u=torch.zeros(2, 4)), ValueError, "u must have shape"),
    (dict(u=torch.zeros(2, 4, 7, dtype=torch.int64)), TypeError, "u must have dtype"),
    (dict(u=[1.0]), TypeError, "u must be a torch.Tensor"),
    (dict(delta=torch.zeros(2, 4, 6)), ValueError, "delta must have shape (2, 4, 7)"),
    (dict(A=torch.zeros(4, 3, dtype=torch.complex64)), TypeError, "A must be real"),
    (dict(A=torch.zeros(5, 3)), ValueError, "A must have shape (4, *)"),
    (dict(B=torch.zeros(2, 3, 6)), ValueError, "B must have shape"),
    (dict(B=torch.zeros(2, 4, 7)), ValueError, "B must have N = 3"),
    (dict(C=torch.zeros(2, 3, 3, 7)), ValueError, "C has 3 groups"),
    (dict(C=torch.zeros(2, 3)), ValueError, "C must have shape (batch, N, L) or (batch, groups, N, L)"),
    (dict(D=torch.zeros(3)), ValueError, "D must have shape (4,)"),
    (dict(z=torch.zeros(2, 4, 8)), ValueError, "z must have shape (2, 4, 7)"),
    (dict(delta_bias=torch.zeros(4, 1)), ValueError, "delta_bias must have shape (4,)"),
    (dict(mask=torch.ones(2, 7)), TypeError, "mask must have dtype in (bool)"),
    (dict(mask=torch.ones(2, 6, dtype=torch.bool)), ValueError, "mask must have shape (2, 7)"),
    (dict(initial_state=torch.zeros(2, 4, 2)), ValueError, "initial_state must have shape (2, 4, 3)"),
]


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref])
@pytest.mark.parametrize("bad,error,message", BAD)
def test_bad_inputs_name_the_argument(fn, bad, error, message):
    args = random_scan_inputs(batch=2, dim=4, length=7, n_state=3)
    args.update(bad)
    with pytest.raises(error) as info:
        fn(**args)
    assert message in str(info.value)


def test_chunked_keeps_no_per_step_states():
    """The autograd graph holds inputs and chunk-boundary states only, not a (batch, dim, N, L) tensor."""
    args = random_scan_inputs(batch=1, dim=8, length=256, n_state=4)
    leaves(args)
    out = selective_scan(**args)
    saved = out.grad_fn.saved_tensors
    biggest = max(t.numel() for t in saved if t is not None)
    assert biggest <= max(args[k].numel() for k in ("u", "B"))
    boundaries = saved[-1]
    assert boundaries.shape == (256 // scan_torch.CHUNK_SIZE, 1, 8, 4)
