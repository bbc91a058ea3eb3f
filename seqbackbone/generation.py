"""Autoregressive generation on the recurrent state: prefill with the parallel scan, then one O(1) step per token.

Dimensions: B batch, L prompt length, T new tokens, V vocabulary (code book) size.

    prompt --embed--> backbone.forward(cache=...)   one parallel scan; leaves the last conv window and SSM state
           --head---> logits of the last position --sample--> token 1
    token t --embed--> backbone.step(cache) --head--> logits --sample--> token t + 1      (T - 1 times)

The step runs on static buffers (the cache, the input token, the logits), so on CUDA it is captured once as a CUDA
graph and replayed per token; on the CPU the same code runs eagerly. Where `fused_decode_supported(model, batch)`
holds (a plain causal Mamba LM on CUDA; by default at batch 1 only, where it measured faster;
SEQBACKBONE_FUSED_DECODE=1 forces it up to batch 8, =0 turns it off) the whole step is one persistent Triton kernel
(seqbackbone.kernels.decode). On the CPU a plain Mamba LM steps through `PlainBackboneStep` (seqbackbone.plain_step):
the same PyTorch arithmetic without the modules' per-op argument checks, about twice as fast for small models.
Sampling (temperature, top-k, top-p) happens outside the graph so that any `torch.Generator` can drive it. Greedy
decoding (temperature 0) on the fused step's split kernel (the default at batch 1 on sm_90 GPUs) takes the argmax in
the kernel itself: each step writes its token into the next step's input and into a history, so that nothing runs
between the steps (`StepDecoder.greedy_steps`, GREEDY_CHUNK steps a graph replay), unless the logits are to be
returned.

Waveform language models take and return float waveforms in [-1, 1]: the prompt is mu-law encoded into the model's
codes, codes are generated, and the new codes are decoded back with `torchaudio.functional.mu_law_decoding`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .cache import InferenceCache, MambaCache
from .kernels.decode import FusedDecodeStep, fused_decode_setting, fused_decode_supported
from .kernels.dispatch import forced_backend
from .plain_step import PlainBackboneStep, plain_step_unsupported_reason

__all__ = [
    "StepDecoder",
    "generate",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
]

# greedy steps a CUDA graph of StepDecoder.greedy_steps replays at once: one replay a step leaves a launch gap and the
# host's work between the steps (H200, 90M LM, batch 1: 133.6 us a step replayed one by one against 132.6-132.8 by 8 or
# 32 at once, BENCHMARKS.md)
GREEDY_CHUNK = 16


# ----------------------------------------------------------------------------------------------------------- sampling
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the k largest logits of each row and sets the rest to -inf (exactly k survive, ties broken by index).
    logits: (B, V) -> (B, V). k >= V leaves the logits unchanged."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an int >= 1 or None, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    values, indices = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, -math.inf).scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability sums to at least p (the most
    likely token always survives) and sets the rest to -inf. logits: (B, V) -> (B, V); p in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1] or None, got {p!r}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # mass strictly before each token: a token is dropped once the tokens above it already reach p
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a float in (0, 1] or None, got {top_p!r}")


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draws one token per row. logits: (B, V) -> (B,) long. temperature 0 is greedy (argmax; top_k / top_p are
    then irrelevant). Otherwise logits / temperature, then the top-k filter, then the top-p filter, then a draw."""
    _check_sampling(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    if generator is not None and generator.device.type != logits.device.type:
        raise ValueError(f"generator must be on the logits' device ({logits.device.type}), got {generator.device}")
    scores = logits.float() / temperature
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None:
        scores = top_p_filter(scores, top_p)
    probs = torch.softmax(scores, dim=-1)
    # argmax(p / E) with E ~ Exp(1) draws index i with probability p_i (what torch.multinomial does for one sample),
    # with no validity check that would wait for the device every token
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


# ----------------------------------------------------------------------------------------------------- model adapter
@dataclass(frozen=True)
class _LMParts:
    """What decoding needs from a language model: token ids -> embeddings, the causal backbone, hidden -> logits."""

    embed: Callable[[torch.Tensor], torch.Tensor]  # (B, L) long -> (B, L, d_model)
    backbone: nn.Module  # prefill: backbone(x, cache=cache); step: backbone.step(x_t, cache)
    head: Callable[[torch.Tensor], torch.Tensor]  # (..., d_model) -> (..., V)
    vocab_size: int
    waveform: bool  # prompt and result are float waveforms (mu-law codes inside)


def _lm_parts(model: nn.Module) -> _LMParts:
    """The decoding hooks of a language model (see seqbackbone.model: encoder.embed, backbone, tied head)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a language model (nn.Module), got {type(model).__name__}")
    encoder, backbone, head = (getattr(model, k, None) for k in ("encoder", "backbone", "head"))
    vocab_size = getattr(model, "vocab_size", None)
    if not getattr(model, "is_lm", False) or encoder is None or not hasattr(encoder, "embed") or not vocab_size:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        raise ValueError(
            f"generate needs a language model (task 'lm': token encoder with embed(), causal backbone, LM head), got "
            f"a {type(model).__name__} with task {cfg.get('task')!r}"
        )
    if not getattr(backbone, "causal", False):
        raise ValueError("generate needs a causal backbone (bidirectional=None): a bidirectional one reads ahead")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    waveform = cfg.get("modality") == "audio" or hasattr(encoder, "quantization_channels")
    return _LMParts(encoder.embed, backbone, head, int(vocab_size), waveform)


# ----------------------------------------------------------------------------------------------------------- decoder
def _param_key(model: nn.Module) -> tuple:
    # Graphs read weights by address: a moved or re-created parameter needs a fresh capture.
    return tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())


def _step_logits(
    embed: Callable[[torch.Tensor], torch.Tensor],
    backbone: nn.Module,
    head: Callable[[torch.Tensor], torch.Tensor],
    token: torch.Tensor,
    conv_states: list[torch.Tensor],
    ssm_states: list[torch.Tensor],
) -> torch.Tensor:
    """One token per row through the model: token (B,) long -> logits (B, V) fp32; the states advance in place.

    Takes the state tensors rather than the cache object so that a compiled version does not guard on the cache's
    token count (which changes every step)."""
    cache = InferenceCache([MambaCache(c, s) for c, s in zip(conv_states, ssm_states, strict=True)])
    x_t = embed(token[:, None])[:, 0]  # (B, d_model)
    return head(backbone.step(x_t, cache)).float()  # (B, V)


class StepDecoder:
    """One decoding step of a language model on static buffers, captured as a CUDA graph when `cuda_graph`.

    `prefill(codes (B, L))` resets the cache, runs the parallel forward over the prompt (which leaves its final conv
    and SSM states in the cache) and returns the last position's logits (B, V) in fp32. `step(tokens (B,))` feeds one
    token per row and returns the next logits (B, V) in fp32 (a view of a static buffer, overwritten by the next step).
    """

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        cuda_graph: bool = False,
        compile: bool = False,
        dtype: torch.dtype | None = None,
        warmup_steps: int = 2,
    ) -> None:
        self.parts = _lm_parts(model)
        param = next(model.parameters())
        self.device = param.device
        self.dtype = dtype or param.dtype
        self.batch_size = batch_size
        self.key = _decoder_key(model, batch_size, cuda_graph, compile)
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a model on a CUDA device, got {self.device}")
        # torch.compile only fuses the step's many small element-wise kernels; the graph (if any) is captured around
        # the compiled code, so graph breaks cost nothing at replay.
        self._fn = torch.compile(_step_logits, dynamic=False) if compile else _step_logits
        with torch.inference_mode():
            self.cache = self.parts.backbone.allocate_inference_cache(batch_size, dtype=self.dtype)
            self._states = (
                [layer.conv_state for layer in self.cache.layers],
                [layer.ssm_state for layer in self.cache.layers],
            )
            self.token = torch.zeros(batch_size, dtype=torch.long, device=self.device)
            # the whole step as one kernel where the model allows it (it reads and advances the cache's own tensors)
            self.fused: FusedDecodeStep | None = None
            if not compile and fused_decode_supported(model, batch_size):
                self.fused = FusedDecodeStep(model, self.token, *self._states)
            # elsewhere (the CPU) the backbone's step without the modules' per-op checks, where it is bitwise the same
            self.plain: PlainBackboneStep | None = None
            if self.fused is None and not compile and plain_step_unsupported_reason(self.parts.backbone) is None:
                self.plain = PlainBackboneStep(self.parts.backbone, *self._states)
            self.logits: torch.Tensor | None = None
            self.graph: torch.cuda.CUDAGraph | None = None
            self.greedy_graph: torch.cuda.CUDAGraph | None = None  # a greedy step (greedy_steps)
            self.greedy_chunk = GREEDY_CHUNK
            self.greedy_chunk_graph: torch.cuda.CUDAGraph | None = None  # greedy_chunk greedy steps
            if cuda_graph:
                self._capture(warmup_steps)

    def _buffers(self) -> list[int]:
        return [t.data_ptr() for layer in self.cache.layers for t in (layer.conv_state, layer.ssm_state)]

    def _run_step(self) -> None:
        if self.fused is not None:
            self.logits = self.fused()
            return
        parts = self.parts
        if self.plain is not None:
            self.logits = parts.head(self.plain(parts.embed(self.token[:, None])[:, 0])).float()
            return
        self.logits = self._fn(parts.embed, parts.backbone, parts.head, self.token, *self._states)

    def _capture(self, warmup_steps: int) -> None:
        # Warm up on a side stream (Triton compiles, allocator settles), then capture one step. Both touch the cache,
        # so it is reset afterwards; prefill overwrites it in place anyway.
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self._run_step()
            if self.greedy:
                for _ in range(warmup_steps):
                    self.fused(greedy=True)
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run_step()
        if self.greedy:
            self.greedy_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.greedy_graph):
                self.fused(greedy=True)
            self.greedy_chunk_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.greedy_chunk_graph):
                for _ in range(self.greedy_chunk):
                    self.fused(greedy=True)
        self.cache.reset()

    @property
    def greedy(self) -> bool:
        """Whether greedy_steps can run: the fused step picks the tokens itself (FusedDecodeStep.greedy_supported)."""
        return self.fused is not None and self.fused.greedy_supported

    @torch.inference_mode()
    def prefill(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, L) long, L >= 1 -> logits of the last position (B, V), fp32."""
        if codes.shape[0] != self.batch_size:
            raise ValueError(f"prompt batch must be {self.batch_size} for this decoder, got {codes.shape[0]}")
        before = self._buffers()
        if self.fused is not None:
            self.fused.refresh_weights()  # weights changed in place since (training) reach its weight copies
        self.cache.reset()
        hidden = self.parts.backbone(self.parts.embed(codes), cache=self.cache)  # (B, L, d_model)
        if self._buffers() != before:
            raise RuntimeError("the backbone replaced the cache tensors during prefill; it must copy into them")
        return self.parts.head(hidden[:, -1]).float()

    @torch.inference_mode()
    def greedy_steps(self, tokens: torch.Tensor, bias: torch.Tensor | None = None, progress=None) -> None:
        """Greedy decoding with no work between the steps: tokens (B, T) long holds the first new token in column 0
        (picked from prefill's logits); each step feeds column t - 1 and the kernel itself writes the argmax of the
        logits + bias (V,) into column t, t = 1 .. T - 1 (by way of its history, copied out every GREEDY_HISTORY
        steps). The steps go `greedy_chunk` (GREEDY_CHUNK) at a time where they fit (one graph replay under CUDA
        graphs), one at a time otherwise. `progress`: a tqdm bar advanced once a step."""
        if not self.greedy:
            raise RuntimeError("greedy_steps needs the fused step's split kernel (StepDecoder.greedy)")
        fused = self.fused
        fused.start_greedy(tokens[:, 0], bias)
        per_copy = fused.history.shape[1]
        n, t = self.greedy_chunk, 1  # t: the column of `tokens` the next step writes
        while t < tokens.shape[1]:
            column = (t - 1) % per_copy  # of the history
            # a chunk stays within one pass over the history, so that it is copied out before being overwritten
            chunk = n if column + n <= per_copy and t + n <= tokens.shape[1] else 1
            self._greedy_run(chunk)
            self.cache.seqlen_offset += chunk
            t += chunk
            column += chunk - 1  # the last column written
            if column == per_copy - 1 or t == tokens.shape[1]:
                tokens[:, t - 1 - column:t] = fused.history[:, :column + 1]
            if progress is not None:
                progress.update(chunk)

    def _greedy_run(self, steps: int) -> None:
        """`steps` greedy steps (1 or greedy_chunk): one replay of the captured chunk or step where there is one."""
        if steps == self.greedy_chunk and self.greedy_chunk_graph is not None:
            self.greedy_chunk_graph.replay()
        elif self.greedy_graph is not None:
            for _ in range(steps):
                self.greedy_graph.replay()
        else:
            for _ in range(steps):
                self.fused(greedy=True)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B,) long -> next logits (B, V), fp32."""
        self.token.copy_(tokens)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run_step()
        self.cache.seqlen_offset += 1
        assert self.logits is not None
        return self.logits


# One decoder per model is kept (weakly), so repeated calls at the same batch size reuse the captured graph.
_DECODERS: weakref.WeakKeyDictionary[nn.Module, StepDecoder] = weakref.WeakKeyDictionary()


def _decoder_key(model: nn.Module, batch_size: int, cuda_graph: bool, compile: bool) -> tuple:
    # the backend and the fused-step switch decide which step runs, so a change of either needs a new decoder
    # and so does anything that decides between the plain step and the modules' (a hook added later, say), or
    # between the fused step's float and integer sums (torch.use_deterministic_algorithms)
    plain = plain_step_unsupported_reason(getattr(model, "backbone", None)) is None
    return (batch_size, cuda_graph, compile, fused_decode_setting(), forced_backend(), plain, _param_key(model),
            torch.are_deterministic_algorithms_enabled())


def _decoder_for(model: nn.Module, batch_size: int, cuda_graph: bool, compile: bool = False) -> StepDecoder:
    decoder = _DECODERS.get(model)
    if decoder is None or decoder.key != _decoder_key(model, batch_size, cuda_graph, compile):
        _DECODERS.pop(model, None)  # free the old graph's memory before capturing a new one
        decoder = StepDecoder(model, batch_size, cuda_graph=cuda_graph, compile=compile)
        _DECODERS[model] = decoder
    return decoder


# -------------------------------------------------------------------------------------------------------- generation
def _prompt_codes(parts: _LMParts, prompt: object, device: torch.device) -> torch.Tensor:
    """The prompt as (B, L) long codes on `device`."""
    if not isinstance(prompt, torch.Tensor):
        raise TypeError(f"prompt must be a torch.Tensor, got {type(prompt).__name__}")
    if prompt.dim() != 2 or prompt.shape[0] < 1 or prompt.shape[1] < 1:
        kind = "waveform (B, T)" if parts.waveform else "token ids (B, L)"
        raise ValueError(f"prompt must be {kind} with B >= 1 and at least one step, got shape {tuple(prompt.shape)}")
    prompt = prompt.to(device)
    if parts.waveform:
        if not prompt.is_floating_point():
            raise TypeError(f"prompt of a waveform model must be a float waveform in [-1, 1], got {prompt.dtype}")
        import torchaudio.functional as AF

        return AF.mu_law_encoding(prompt.float().clamp(-1.0, 1.0), parts.vocab_size)
    if prompt.is_floating_point() or prompt.is_complex() or prompt.dtype == torch.bool:
        raise TypeError(f"prompt of a token model must hold integer token ids, got {prompt.dtype}")
    lo, hi = int(prompt.min()), int(prompt.max())
    if lo < 0 or hi >= parts.vocab_size:
        raise ValueError(f"prompt token ids must lie in [0, {parts.vocab_size}), got values in [{lo}, {hi}]")
    return prompt.long()


def _suppress_bias(tokens: Sequence[int] | None, vocab_size: int, device: torch.device) -> torch.Tensor | None:
    """(V,) fp32: -inf at the suppressed ids, 0 elsewhere (None when nothing is suppressed)."""
    if tokens is None:
        return None
    ids = sorted({int(t) for t in tokens})
    if not ids:
        return None
    if ids[0] < 0 or ids[-1] >= vocab_size:
        raise ValueError(f"suppress_tokens must be ids in [0, {vocab_size}), got {ids}")
    if len(ids) == vocab_size:
        raise ValueError(f"suppress_tokens must leave at least one of the {vocab_size} tokens, got all of them")
    bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
    bias[ids] = -math.inf
    return bias


def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    cuda_graph: bool | None = None,
    return_logits: bool = False,
    suppress_tokens: Sequence[int] | None = None,
    compile: bool = False,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Continues each prompt row by `max_new_tokens` tokens (samples for waveform models).

    prompt: token ids (B, L) for token models; float waveform (B, T) in [-1, 1] for waveform models.
    temperature 0 is greedy; otherwise each token is drawn from softmax(logits / temperature) after the optional
    top-k and top-p (nucleus) filters, with `generator` as the source of randomness (on the model's device).
    cuda_graph: replay a captured CUDA graph per step (None = on for CUDA models).
    suppress_tokens: ids never to generate (e.g. the special tokens of a DNA model), greedy or sampled.
    compile: run the step through torch.compile (fewer, fused kernels; the first call compiles for a while).
    progress: show a tqdm bar over the new tokens (on stderr; tqdm hides it where stderr is not a terminal).
    Returns prompt + new tokens: (B, L + max_new_tokens) long, or for waveform models (B, T + max_new_tokens)
    float (the prompt as given, then the decoded new samples). With return_logits, also the fp32 logits that each
    new token was drawn from (before temperature and filters): (B, max_new_tokens, V).
    Repeat runs give the same bits, except at batch 1 on an sm_90 GPU, where the fused step's split kernel adds its
    sums by float atomics in a varying order; torch.use_deterministic_algorithms(True) makes it add them as integers
    (bit-identical runs, ~20 % slower there).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k, top_p)
    parts = _lm_parts(model)
    device = next(model.parameters()).device
    codes = _prompt_codes(parts, prompt, device)
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    batch, length = codes.shape
    bias = _suppress_bias(suppress_tokens, parts.vocab_size, device)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            new = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
            all_logits = (
                torch.empty(batch, max_new_tokens, parts.vocab_size, dtype=torch.float32, device=device)
                if return_logits else None
            )
            if max_new_tokens > 0:
                decoder = _decoder_for(model, batch, bool(cuda_graph), bool(compile))
                logits = decoder.prefill(codes)
                bar = None
                if progress:
                    from tqdm.auto import tqdm

                    unit = "sample" if parts.waveform else "token"
                    bar = tqdm(total=max_new_tokens, desc="generate", unit=unit, disable=None, mininterval=0.5)
                if temperature == 0 and all_logits is None and decoder.greedy:
                    # the kernel picks each token and feeds it to the next step itself: no work between the steps
                    first = logits + bias if bias is not None else logits
                    new[:, 0] = sample_next_token(first, temperature, top_k, top_p, generator)
                    if bar is not None:
                        bar.update(1)
                    decoder.greedy_steps(new, bias, bar)
                else:
                    for t in range(max_new_tokens):
                        if t > 0:
                            logits = decoder.step(new[:, t - 1])
                        if all_logits is not None:
                            all_logits[:, t] = logits
                        if bias is not None:
                            logits = logits + bias
                        new[:, t] = sample_next_token(logits, temperature, top_k, top_p, generator)
                        if bar is not None:
                            bar.update(1)
                if bar is not None:
                    bar.close()
    finally:
        model.train(was_training)

    if parts.waveform:
        import torchaudio.functional as AF

        samples = AF.mu_law_decoding(new, parts.vocab_size).to(prompt.dtype)
        out = torch.cat([prompt.to(device), samples], dim=1)
    else:
        out = torch.cat([codes, new], dim=1)
    if return_logits:
        return out, all_logits.clone()  # a normal tensor, not an inference-mode one
    return out
