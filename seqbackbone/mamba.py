"""The Mamba-1 mixer layer (Gu & Dao 2023, arXiv 2312.00752), causal or bidirectional, with masks and a decoding step.

Dimensions: B batch, L length, Dm d_model, Di d_inner = expand * d_model, N d_state, R dt_rank, W d_conv.

    x (B, L, Dm) --in_proj--> u, z (B, Di, L) --conv1d, silu--> u --x_proj--> dt (R), B, C (N) per step
    y = selective_scan(u, dt_proj(dt), A, B, C, D, z)   then out_proj: (B, L, Dm)

Parameter names follow mamba_ssm's mamba_simple.py (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), so state
dicts port both ways; the reverse direction of bidirectional="add" has conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b
(Vim's names). Every fused op comes from seqbackbone.kernels, which picks Triton or PyTorch by itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from seqbackbone.cache import MambaCache
from seqbackbone.kernels import causal_conv1d, causal_conv1d_update, selective_scan
from seqbackbone.kernels.step import selective_state_update_fused

BIDIRECTIONAL_MODES = (None, "add", "tied")


def check_sequence_input(x: object, mask: object, d_model: int, name: str = "x") -> None:
    """Raise TypeError / ValueError naming the argument unless x is float (B, L, d_model) and mask bool (B, L)."""
    wanted = f"(batch, length, d_model={d_model})"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {wanted}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor of shape {wanted}, got dtype {x.dtype} "
            "(embed integer tokens with an encoder first)"
        )
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name} must have shape {wanted}, got {tuple(x.shape)}")
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor of shape (batch, length), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real token), shape (batch, length), got {mask.dtype}")
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"mask must have shape (batch, length) = {tuple(x.shape[:2])} to match {name}, got {tuple(mask.shape)}"
        )
    if mask.device != x.device:
        raise ValueError(f"mask must be on {name}'s device {x.device}, got {mask.device}")


def check_step_input(x_t: object, d_model: int, batch_size: int, name: str = "x_t") -> None:
    """Raise TypeError / ValueError naming the argument unless x_t is float (batch_size, d_model)."""
    wanted = f"(batch={batch_size}, d_model={d_model})"
    if not isinstance(x_t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {wanted}, got {type(x_t).__name__}")
    if not x_t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape {wanted}, got dtype {x_t.dtype}")
    if tuple(x_t.shape) != (batch_size, d_model):
        raise ValueError(f"{name} must have shape {wanted} (one token per cached sequence), got {tuple(x_t.shape)}")


def conv_window(u: torch.Tensor, mask: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last `width` conv inputs of each sequence, oldest first: (B, Di, L) -> (B, Di, W).

    With a mask the window ends at each sequence's last real token (right-padded sequences end at different places);
    padded inputs count as 0, as in the masked conv, and so does history before the start.
    """
    if mask is None:
        return F.pad(u, (width - u.shape[-1], 0))  # a negative pad crops to the last `width` steps
    u = torch.where(mask[:, None, :], u, 0.0)
    positions = torch.arange(1, u.shape[-1] + 1, device=u.device)
    end = (mask * positions).amax(dim=-1)  # (B,) one past the last real token, 0 when none
    index = end[:, None] + torch.arange(width, device=u.device)  # (B, W) in the left-padded-by-W coordinates
    padded = F.pad(u, (width, 0))  # (B, Di, W + L)
    return padded.gather(2, index[:, None, :].expand(-1, u.shape[1], -1))


class Mamba(nn.Module):
    """Mamba-1 mixer: (B, L, d_model) -> (B, L, d_model).

    bidirectional: None (causal), "add" (the reverse direction has its own conv1d_b, x_proj_b, dt_proj_b, A_b_log,
    D_b; in_proj and out_proj are shared) or "tied" (the same SSM parameters run both ways). Both directions read the
    same u and z; the reverse one runs the conv anti-causally and the scan from the end, and the two gated outputs
    are averaged before out_proj, so the layer's output scale at init does not depend on the mode.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: str | None = None,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if bidirectional not in BIDIRECTIONAL_MODES:
            raise ValueError(f"bidirectional must be one of {BIDIRECTIONAL_MODES}, got {bidirectional!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        if self.d_inner < 1:
            raise ValueError(f"expand * d_model must be at least 1, got {expand} * {d_model}")
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        if isinstance(self.dt_rank, bool) or not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        self.bidirectional = bidirectional
        self.layer_idx = layer_idx
        self.activation = "silu"
        init = {"dt_min": dt_min, "dt_max": dt_max, "dt_init": dt_init, "dt_scale": dt_scale, "dt_floor": dt_init_floor}

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = self._ssm_parameters(conv_bias, init, factory)
        if bidirectional == "add":
            self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = self._ssm_parameters(
                conv_bias, init, factory
            )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _ssm_parameters(
        self, conv_bias: bool, init: dict, factory: dict
    ) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]:
        """One direction's conv1d, x_proj, dt_proj, A_log, D with the paper's initialisation."""
        d_inner, n = self.d_inner, self.d_state
        # nn.Conv1d only for its (Di, 1, W) weight layout (mamba_ssm's); the conv itself runs in the kernel
        conv1d = nn.Conv1d(d_inner, d_inner, self.d_conv, groups=d_inner, padding=self.d_conv - 1, bias=conv_bias,
                           **factory)
        x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False, **factory)
        dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True, **factory)

        # dt_proj keeps softplus(dt_proj(.)) near a log-uniform dt in [dt_min, dt_max] at init
        dt_init_std = self.dt_rank**-0.5 * init["dt_scale"]
        if init["dt_init"] == "constant":
            nn.init.constant_(dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
        log_min, log_max = math.log(init["dt_min"]), math.log(init["dt_max"])
        dt = torch.exp(torch.rand(d_inner, device=factory["device"]) * (log_max - log_min) + log_min)
        dt = dt.clamp(min=init["dt_floor"])
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt)
        with torch.no_grad():
            dt_proj.bias.copy_(inv_dt)
        dt_proj.bias._no_reinit = True  # the backbone's init zeroes other Linear biases

        # S4D-real: A = -(1..N) per channel, stored as log so that A stays negative; fp32 like mamba_ssm
        A = repeat(torch.arange(1, n + 1, dtype=torch.float32, device=factory["device"]), "n -> d n", d=d_inner)
        A_log = nn.Parameter(torch.log(A).contiguous())
        A_log._no_weight_decay = True
        D = nn.Parameter(torch.ones(d_inner, device=factory["device"]))
        D._no_weight_decay = True
        return conv1d, x_proj, dt_proj, A_log, D

    def _directions(self) -> list[tuple[bool, nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]]:
        """(reverse, conv1d, x_proj, dt_proj, A_log, D) for each direction the layer runs."""
        forward = (False, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        if self.bidirectional is None:
            return [forward]
        if self.bidirectional == "tied":
            return [forward, (True, *forward[1:])]
        return [forward, (True, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)]

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: MambaCache | None = None
    ) -> torch.Tensor:
        """x: (B, L, d_model); mask: bool (B, L), True = real token. Returns (B, L, d_model), 0 at padded steps.

        With a cache (causal layers only) this is the prefill: the sequence starts from a zero state, and the conv
        window and SSM state after each sequence's last real token are written into the cache, so `step` continues.
        """
        check_sequence_input(x, mask, self.d_model)
        if cache is not None:
            self._check_cache(cache, x.shape[0])
        length = x.shape[1]
        # W @ x^T rather than a Linear, so u and z come out (B, Di, L) with time contiguous, as the kernels read them
        xz = rearrange(self.in_proj.weight @ rearrange(x, "b l d -> d (b l)"), "d (b l) -> b d l", l=length)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        u, z = xz.chunk(2, dim=1)  # (B, Di, L) each

        ys = [
            self._scan(u, z, mask, reverse, conv1d, x_proj, dt_proj, A_log, D, cache)
            for reverse, conv1d, x_proj, dt_proj, A_log, D in self._directions()
        ]
        y = ys[0] if len(ys) == 1 else (ys[0] + ys[1]) * 0.5  # (B, Di, L)
        out = self.out_proj(rearrange(y, "b d l -> b l d"))  # (B, L, Dm)
        if mask is not None:
            out = torch.where(mask[..., None], out, 0.0)  # holds even when out_proj has a bias
        return out

    def _scan(
        self,
        u: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None,
        reverse: bool,
        conv1d: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: nn.Parameter,
        D: nn.Parameter,
        cache: MambaCache | None,
    ) -> torch.Tensor:
        """One direction: conv, projections, selective scan. u, z: (B, Di, L) -> gated y (B, Di, L)."""
        length = u.shape[-1]
        if cache is not None:
            cache.conv_state.copy_(conv_window(u.detach(), mask, self.d_conv))
        u = causal_conv1d(u, conv1d.weight, conv1d.bias, activation=self.activation, mask=mask, reverse=reverse)
        x_dbl = x_proj(rearrange(u, "b d l -> (b l) d"))  # (B*L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(dt_proj.weight @ dt.t(), "d (b l) -> b d l", l=length)  # bias goes in the scan
        B = rearrange(B, "(b l) n -> b n l", l=length).contiguous()
        C = rearrange(C, "(b l) n -> b n l", l=length).contiguous()
        A = -torch.exp(A_log.float())  # (Di, N)
        result = selective_scan(
            u, dt, A, B, C, D.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True,
            reverse=reverse, mask=mask, return_last_state=cache is not None,
        )
        if cache is None:
            return result
        y, last_state = result
        cache.ssm_state.copy_(last_state.detach())  # decoding state, not a path for gradients
        return y

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """One decoding step of a causal layer: x_t (B, d_model) -> (B, d_model); cache updated in place.

        Inference only (no autograd): the cache is overwritten in place at every step."""
        if self.bidirectional is not None:
            raise RuntimeError(
                f"step() needs a causal layer, but this one is bidirectional={self.bidirectional!r}: its output at "
                "t depends on later tokens, so it cannot decode token by token; run forward() on the whole sequence"
            )
        self._check_cache(cache)
        check_step_input(x_t, self.d_model, cache.batch_size)
        # On CUDA this is six kernels with the block's norm: in_proj, conv step, x_proj, SSM step, out_proj. u, z, dt,
        # B and C stay strided views of the projections' outputs; the SSM step projects dt itself, forms A from A_log
        # and reads D and dt_bias in their stored dtype, so no per-step casts or exps run as kernels of their own.
        u, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, Di) each
        u = causal_conv1d_update(u, cache.conv_state, self.conv1d.weight, self.conv1d.bias, self.activation)
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, R), (B, N) x2
        y = selective_state_update_fused(
            cache.ssm_state, u, dt, self.dt_proj.weight, self.A_log, B, C, self.D, z=z, dt_bias=self.dt_proj.bias,
            dt_softplus=True,
        )
        return self.out_proj(y)

    def allocate_inference_cache(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> MambaCache:
        """Zero states for `batch_size` sequences: conv window (B, Di, W) in `dtype` (default: the conv weight's),
        SSM state (B, Di, N) in fp32."""
        if self.bidirectional is not None:
            raise RuntimeError(
                f"a bidirectional={self.bidirectional!r} layer has no inference cache: it cannot decode step by step"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = self.conv1d.weight.device if device is None else device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        return MambaCache(
            conv_state=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype),
            ssm_state=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def _check_cache(self, cache: object, batch: int | None = None) -> None:
        if self.bidirectional is not None:
            raise RuntimeError(
                f"a bidirectional={self.bidirectional!r} layer cannot fill or use an inference cache: its outputs "
                "depend on later tokens; call forward(x, mask) without a cache"
            )
        if not isinstance(cache, MambaCache):
            raise TypeError(f"cache must be a MambaCache (see allocate_inference_cache), got {type(cache).__name__}")
        conv = (cache.batch_size, self.d_inner, self.d_conv)
        ssm = (cache.batch_size, self.d_inner, self.d_state)
        if tuple(cache.conv_state.shape) != conv or tuple(cache.ssm_state.shape) != ssm:
            raise ValueError(
                f"cache must hold conv_state {conv} and ssm_state {ssm} for this layer, got "
                f"{tuple(cache.conv_state.shape)} and {tuple(cache.ssm_state.shape)}"
            )
        if batch is not None and batch != cache.batch_size:
            raise ValueError(f"x has batch size {batch} but the cache was allocated for {cache.batch_size}")

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, bidirectional={self.bidirectional!r}"
        )
