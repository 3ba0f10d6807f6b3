"""The DSS layer: H independent SISO diagonal state-space channels (per direction).

Channel h (direction d) is the continuous system

    x'(t) = diag(Lambda[d, h]) x(t) + B[d, h] u(t),      y(t) = Re(C[d, h] x(t)) + D[h] u(t)

with N complex modes (the equivalent real state has 2N entries; we never add a factor 2 in front of Re).
Zero-order hold with step ``dt[h] = exp(log_dt[h])`` gives

    Lambda_bar = exp(dt Lambda),   B_bar = (Lambda_bar - 1) / Lambda * B,   K[l] = Re(sum_n C_n B_bar_n Lambda_bar_n^l)

and the layer output ``y = K * u + D u`` (causal convolution, by FFT). In bidirectional mode the second direction
runs the same kind of system over the time-reversed input (anti-causal, including the current step), and the
two outputs are added. ``forward_recurrent`` / ``step`` compute the same outputs one step at a time.

``Re Lambda = -exp(Lambda_log_neg_re) < 0`` by construction, so every channel is stable.

Two convolution paths compute the same ``y``: ``DSS.forward`` (training path: ``FFTConv``, an autograd function
with a hand-written backward -- four real FFTs over the batch per step, at a fast FFT size >= 2L - 1, D folded
into the kernel's lag-0 tap) and
``DSS.forward_reference`` (the original: autograd through ``torch.fft`` at size 2L, whose backward of ``rfft``
is a full complex FFT). Tests compare them; ``bench/train_step.py`` times them side by side.

Mixed precision (``optim.amp``): every entry point of the layer leaves autocast (``float32_region``) and casts a
low-precision input to the parameters' dtype, so the kernel (its exps and its real matmul, which autocast would
run in bfloat16 / float16), the FFT convolution and the recurrence run in float32 (float64 for a float64 layer)
and return it; the surrounding blocks run autocast's low precision.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hippo import init_lambda


def vandermonde_kernel(dtL: Tensor, W: Tensor, L: int) -> Tensor:
    """Fast kernel ``K[..., l] = Re(sum_n W[..., n] exp(dtL[..., n] * l))`` for l < L.

    The powers are factored as ``l = a*M + b`` with ``M = ceil(sqrt(L))``: ``exp(dtL*l) = exp(dtL*M*a) exp(dtL*b)``,
    so only ``N*(M + L/M)`` complex exps are taken per channel (instead of ``N*L``) and the sum over modes becomes one
    real batched matmul with inner size 2N.

    dtL, W: complex (..., N). Returns real (..., L).
    """
    M = max(1, math.ceil(math.sqrt(L)))
    A = math.ceil(L / M)
    real = torch.float64 if dtL.dtype == torch.complex128 else torch.float32
    b = torch.arange(M, device=dtL.device, dtype=real)
    a = torch.arange(A, device=dtL.device, dtype=real) * M
    V = torch.exp(dtL.unsqueeze(-1) * b)  # (..., N, M)
    P = W.unsqueeze(-1) * torch.exp(dtL.unsqueeze(-1) * a)  # (..., N, A)
    # Re(P^T V) = Re(P)^T Re(V) - Im(P)^T Im(V): one real matmul over 2N.
    P_real = torch.cat([P.real, -P.imag], dim=-2).transpose(-1, -2)  # (..., A, 2N)
    V_real = torch.cat([V.real, V.imag], dim=-2)  # (..., 2N, M)
    K = torch.matmul(P_real, V_real)  # (..., A, M)
    return K.flatten(-2)[..., :L]  # (..., L)


def vandermonde_kernel_real(dtL: Tensor, W: Tensor, L: int) -> Tensor:
    """``vandermonde_kernel`` in real arithmetic: the same factored powers, each ``exp(x + iy)`` taken as
    ``exp(x) (cos y + i sin y)`` on real tensors, which torch vectorises (its complex ``exp`` took ~3.5 ms for
    the 32 K entries of one H=N=32, L=1024 layer). Same contract: dtL, W complex (..., N) -> real (..., L).
    """
    M = max(1, math.ceil(math.sqrt(L)))
    A = math.ceil(L / M)
    re, im = dtL.real.unsqueeze(-1), dtL.imag.unsqueeze(-1)  # (..., N, 1)
    b = torch.arange(M, device=dtL.device, dtype=re.dtype)
    a = torch.arange(A, device=dtL.device, dtype=re.dtype) * M
    mag_b, ph_b = torch.exp(re * b), im * b  # (..., N, M)
    V_real = torch.cat([mag_b * torch.cos(ph_b), mag_b * torch.sin(ph_b)], dim=-2)  # (..., 2N, M): Re V, Im V
    mag_a, ph_a = torch.exp(re * a), im * a  # (..., N, A)
    Er, Ei = mag_a * torch.cos(ph_a), mag_a * torch.sin(ph_a)
    Wr, Wi = W.real.unsqueeze(-1), W.imag.unsqueeze(-1)
    # P = W exp(dtL a); Re(P^T V) = Re(P)^T Re(V) - Im(P)^T Im(V): one real matmul over 2N.
    P_real = torch.cat([Wr * Er - Wi * Ei, -(Wr * Ei + Wi * Er)], dim=-2).transpose(-1, -2)  # (..., A, 2N)
    return torch.matmul(P_real, V_real).flatten(-2)[..., :L]  # (..., L)


def naive_kernel(dtL: Tensor, W: Tensor, L: int) -> Tensor:
    """Reference kernel with one complex exp per (channel, mode, step). Same contract as ``vandermonde_kernel``."""
    real = torch.float64 if dtL.dtype == torch.complex128 else torch.float32
    l = torch.arange(L, device=dtL.device, dtype=real)  # noqa: E741 (the paper's time index)
    return torch.einsum("...n,...nl->...l", W, torch.exp(dtL.unsqueeze(-1) * l)).real  # (..., L)


def zoh_log(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """ZOH discretisation in log form: ``log Lambda_bar = dt*Lambda`` and ``B_bar = (exp(dt Lambda) - 1) / Lambda * B``
    (the kernel takes powers of Lambda_bar as ``exp(dt Lambda l)``; ``reduction.gramians.zoh`` returns Lambda_bar).

    Lambda, B: complex (..., N); dt: real (...,) broadcastable to Lambda's leading dims. Returns complex (..., N) twice.
    """
    dtL = Lambda * dt.unsqueeze(-1)  # (..., N)
    return dtL, torch.expm1(dtL) / Lambda * B


def ss_kernel(
    Lambda: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, naive: bool = False, reference: bool = False
) -> Tensor:
    """Kernel of continuous diagonal systems under ZOH with step dt. Lambda, B, C: complex (..., N) -> real (..., L).

    Default: ``vandermonde_kernel_real``; ``reference``: the original ``vandermonde_kernel`` (complex exps);
    ``naive``: ``naive_kernel`` (one complex exp per step).
    """
    dtL, B_bar = zoh_log(Lambda, B, dt)
    fn = naive_kernel if naive else vandermonde_kernel if reference else vandermonde_kernel_real
    return fn(dtL, C * B_bar, L)


def next_fast_len(n: int) -> int:
    """The smallest 5-smooth integer (2^a 3^b 5^c) >= n: an FFT size that torch's FFT backends handle fast."""
    if n < 1:
        raise ValueError(f"next_fast_len: need n >= 1, got {n}")
    best = 1 << (n - 1).bit_length()  # the next power of two is always a candidate
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35  # smallest p35 * 2^a >= n
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def circular_kernel(k: Tensor, n: int) -> Tensor:
    """Kernels of a layer laid out for a circular convolution of size n >= 2L - 1.

    k: real (n_dir, H, L). Unidirectional: k[0], (H, L) (the zero padding is left to the FFT). Bidirectional: real
    (H, n) with the causal kernel at [0, L) and the anti-causal kernel K1[m] (lag -m) at index n - m, K1[0] added
    at index 0 (the reverse direction also sees the current step).
    """
    L = k.shape[-1]
    if k.shape[0] == 1:
        return k[0]
    k_rev = torch.roll(F.pad(k[1].flip(-1), (n - L, 0)), 1, dims=-1)  # K1[m] at n - m, K1[0] at 0
    return F.pad(k[0], (0, n - L)) + k_rev  # (H, n)


# Working-set budget of one channel chunk of ``FFTConv`` (its padded input, spectrum, product and output): small
# enough to stay in a core's L2 cache (2 MiB on the machine measured), so the elementwise complex products and the
# zero padding run on cached data instead of streaming (H, B, n) tensors through memory between separate ops.
# Measured on the loaded 2-core box: image step on one thread ~10 % faster than one chunk; paper-size layer unit
# on one thread 0.66 vs 0.86 s, but on two threads 1.65 vs 1.30 s (every chunk's small ops are parallel regions).
# So chunks are used on CPU with at most CHUNK_THREADS torch threads (training jobs run one), else one chunk (and
# always one chunk on a GPU, where small ops cost kernel launches); at most MAX_CHUNKS chunks.
CHUNK_BYTES = 1 << 20
CHUNK_THREADS = 1
MAX_CHUNKS = 8


def _channel_chunks(H: int, B: int, n: int, device: torch.device) -> list[slice]:
    """Slices of channels whose FFT working set (~16 B n bytes per channel, float32) fits ``CHUNK_BYTES``, at most
    ``MAX_CHUNKS`` of them; one slice of all H off CPU, above ``CHUNK_THREADS`` threads, or under ``torch.compile``
    (``optim.compile``: inductor fuses the padding and products itself; ``get_num_threads`` would break its graph)."""
    if device.type != "cpu" or torch.compiler.is_compiling() or torch.get_num_threads() > CHUNK_THREADS:
        return [slice(0, H)]
    per = max(1, CHUNK_BYTES // (16 * B * n), -(-H // MAX_CHUNKS))
    return [slice(h, min(h + per, H)) for h in range(0, H, per)]


class FFTConv(torch.autograd.Function):
    """``y = irfft(rfft(u, n) * rfft(k, n), n)[..., :L]`` with a hand-written backward, in channel chunks.

    u: real (B, H, L), any strides; k: real (H, Lk), Lk <= n, a circular-layout kernel (``circular_kernel``, with
    the skip term D folded into k[:, 0]); n: FFT size >= 2L - 1 (no output step t < L wraps around).
    Returns real (B, H, L): a view of a channel-major (H, B, L) tensor. The computation runs on
    ``u.transpose(0, 1)``, so channel-major input memory (the model's training path) is read without a transpose.

    Backward, with g = dLoss/dy zero-padded to n (all FFTs real, length n):
      du = irfft(rfft(g) conj(rfft(k)))[:L]           (correlation of g with k)
      dk = irfft(sum_B rfft(g) conj(rfft(u)))[:Lk]    (correlation of g with u, summed over the batch)
    i.e. two FFTs over the batch (rfft(g), one irfft), where autograd through ``torch.fft`` takes a full complex
    FFT for the backward of rfft; rfft(u) is kept from the forward. Both directions run over chunks of channels
    (``_channel_chunks``) so that each chunk's padding, FFTs and products stay in cache.
    """

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor, n: int) -> Tensor:  # type: ignore[override]
        ut = u.transpose(0, 1)  # (H, B, L)
        H, B, L = ut.shape
        Kf = torch.fft.rfft(k, n=n)  # (H, n//2 + 1)
        y = torch.empty(H, B, L, dtype=u.dtype, device=u.device)
        chunks = _channel_chunks(H, B, n, u.device)
        Uf = []  # per chunk (h, B, n//2 + 1), kept as they come: rfft(out=) into one tensor took an extra copy
        buf = None
        for c in chunks:
            buf = _padded(ut[c], n, buf)
            Uf.append(torch.fft.rfft(buf))
            y[c] = torch.fft.irfft(Uf[-1] * Kf[c].unsqueeze(1), n=n)[..., :L]
        ctx.save_for_backward(Kf, *Uf)
        ctx.n, ctx.Lk, ctx.chunks = n, k.shape[-1], chunks
        return y.transpose(0, 1)  # (B, H, L)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        Kf, *Uf = ctx.saved_tensors
        n = ctx.n
        gt = g.transpose(0, 1)  # (H, B, L)
        H, B, L = gt.shape
        want_du, want_dk = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        du = torch.empty(H, B, L, dtype=g.dtype, device=g.device) if want_du else None
        dk_f = torch.empty(H, n // 2 + 1, dtype=Kf.dtype, device=g.device) if want_dk else None
        Kf_conj = Kf.conj().unsqueeze(1)  # (H, 1, n//2 + 1)
        buf = None
        for c, Uf_c in zip(ctx.chunks, Uf):
            buf = _padded(gt[c], n, buf)
            Gf = torch.fft.rfft(buf)  # (h, B, n//2 + 1)
            if want_dk:
                dk_f[c] = torch.linalg.vecdot(Uf_c, Gf, dim=1)  # sum_B conj(Uf) Gf
            if want_du:
                du[c] = torch.fft.irfft(Gf.mul_(Kf_conj[c]), n=n)[..., :L]
        dk = torch.fft.irfft(dk_f, n=n)[..., : ctx.Lk] if want_dk else None
        return (du.transpose(0, 1) if want_du else None), dk, None


def _padded(x: Tensor, n: int, buf: Tensor | None) -> Tensor:
    """x (h, B, L) copied into a zero-padded (h, B, n) buffer; ``buf`` (from the previous chunk, its tail still
    zero) is reused when it has room."""
    h, L = x.shape[0], x.shape[-1]
    if buf is None or buf.shape[0] < h:
        buf = x.new_zeros(h, *x.shape[1:-1], n)
    buf = buf[:h]
    buf[..., :L] = x
    return buf


def fft_conv_autograd(u: Tensor, k: Tensor, n: int) -> Tensor:
    """What ``FFTConv.apply(u, k, n)`` computes, in plain torch ops (autograd through ``torch.fft``), the spectra
    multiplied in real arithmetic: the training path under ``torch.compile`` (``optim.compile``), traced without
    graph breaks, the backward derived by the compiler. Inductor (torch 2.13, CPU) has no code generation for
    complex elementwise ops, and its fallback gave wrong kernel gradients (|error| ~ the gradient) both for
    ``FFTConv`` traced whole and for this function with a complex product, depending on the input's layout;
    tests/test_speed.py checks compiled = eager on every pipeline shape in float64.
    u: real (B, H, L), any strides; k: real (H, Lk), Lk <= n. Returns real (B, H, L).
    """
    L = u.shape[-1]
    Ur = torch.view_as_real(torch.fft.rfft(u, n=n))  # (B, H, n//2 + 1, 2)
    Kr = torch.view_as_real(torch.fft.rfft(k, n=n))  # (H, n//2 + 1, 2)
    a, b, c, d = Ur[..., 0], Ur[..., 1], Kr[..., 0], Kr[..., 1]
    Yr = torch.stack([a * c - b * d, a * d + b * c], dim=-1)  # (B, H, n//2 + 1, 2): the product in real arithmetic
    return torch.fft.irfft(torch.view_as_complex(Yr), n=n)[..., :L]  # (B, H, L)


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Reference convolution ``y[..., t] = sum_m k[..., m mod 2L] u[..., t - m]`` by FFT, zero-padded to 2L
    (autograd through ``torch.fft``; the training path is ``FFTConv``).

    u: real (B, H, L); k: real (H, L) (causal) or (H, 2L) (circular layout, anti-causal part at the end).
    Returns real (B, H, L).
    """
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)  # (B, H, 2L)
    return y[..., :L]


def float32_region(method):
    """Run a ``DSS`` method outside autocast (on the device of its parameters), with every floating-point tensor
    argument in the parameters' dtype: under ``optim.amp`` the layer's complex math, kernel and FFTs stay float32.
    Outside autocast the method runs as it is (no context, no cast)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        device = self.log_dt.device.type
        if not torch.is_autocast_enabled(device):
            return method(self, *args, **kwargs)
        dtype = self.log_dt.dtype
        args = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
        with torch.autocast(device_type=device, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


class DSS(nn.Module):
    """Diagonal state-space layer (DSS, ZOH discretisation), acting on (B, H, L) inputs.

    Parameters (n_dir = 2 when bidirectional, else 1):
      Lambda_log_neg_re, Lambda_im: (n_dir, H, N) real  -> Lambda = -exp(log_neg_re) + i Lambda_im
      B, C: (n_dir, H, N, 2) real views of complex (n_dir, H, N)
      D: (H,), log_dt: (H,)
    """

    def __init__(
        self,
        H: int,
        N: int,
        init: str = "skew_hippo",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"DSS: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.H, self.N, self.bidirectional = H, N, bidirectional
        n_dir = 2 if bidirectional else 1
        # The numpy generator for the 'random' init is seeded from torch's RNG so torch.manual_seed fixes it.
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        if init == "random":
            Lambda = np.stack([init_lambda(init, N, rng) for _ in range(n_dir * H)]).reshape(n_dir, H, N)
        else:
            Lambda = np.broadcast_to(init_lambda(init, N), (n_dir, H, N))
        Lambda = torch.tensor(np.array(Lambda), dtype=torch.complex128)
        self.Lambda_log_neg_re = nn.Parameter(torch.log(-Lambda.real).float())
        self.Lambda_im = nn.Parameter(Lambda.imag.float())
        self.B = nn.Parameter(torch.view_as_real(torch.ones(n_dir, H, N, dtype=torch.complex64)).clone())
        self.C = nn.Parameter(torch.randn(n_dir, H, N, 2) * math.sqrt(0.5))  # complex normal, E|C|^2 = 1
        self.D = nn.Parameter(torch.randn(H))
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))

    # ----- state-space parameters -------------------------------------------------------------------------------

    def Lambda(self) -> Tensor:
        """Continuous state matrix diagonal, complex (n_dir, H, N)."""
        return torch.complex(-torch.exp(self.Lambda_log_neg_re), self.Lambda_im)

    @float32_region
    def kernel(self, L: int, naive: bool = False, reference: bool = False) -> Tensor:
        """Convolution kernels, real (n_dir, H, L). ``naive``: the full-exp path; ``reference``: the original
        factored kernel in complex arithmetic (see ``ss_kernel``)."""
        B, C = torch.view_as_complex(self.B), torch.view_as_complex(self.C)
        return ss_kernel(self.Lambda(), B, C, torch.exp(self.log_dt), L, naive, reference)

    def ss_params(self) -> dict[str, Tensor]:
        """Continuous parameters of every channel, detached, in complex128/float64.

        Returns Lambda, B, C: (n_dir, H, N); D: (H,); dt: (H,).
        """
        with torch.no_grad():
            ss = {
                "Lambda": self.Lambda().to(torch.complex128),
                "B": torch.view_as_complex(self.B).to(torch.complex128),
                "C": torch.view_as_complex(self.C).to(torch.complex128),
                "D": self.D.double(),
                "dt": torch.exp(self.log_dt.double()),
            }
        return {k: v.detach().clone() for k, v in ss.items()}

    def load_ss_params(
        self,
        Lambda: Tensor | np.ndarray,
        B: Tensor | np.ndarray,
        C: Tensor | np.ndarray,
        D: Tensor | np.ndarray | None = None,
        dt: Tensor | np.ndarray | None = None,
        where: str = "DSS",
    ) -> None:
        """Set the parameters from continuous ones (shapes as in ``ss_params``); validates before writing anything.

        Raises ValueError naming ``where``, the direction, channel and mode of the first non-finite value,
        unstable (Re Lambda >= 0) mode, or wrong shape.
        """
        arrays = {"Lambda": Lambda, "B": B, "C": C, "D": D, "dt": dt}
        arrays = {k: torch.as_tensor(v) for k, v in arrays.items() if v is not None}
        check_ss_params(arrays, tuple(self.Lambda_im.shape), where)
        with torch.no_grad():
            Lam = arrays["Lambda"]
            self.Lambda_log_neg_re.copy_(torch.log(-Lam.real))
            self.Lambda_im.copy_(Lam.imag)
            self.B.copy_(torch.view_as_real(arrays["B"].to(torch.complex128)))
            self.C.copy_(torch.view_as_real(arrays["C"].to(torch.complex128)))
            if "D" in arrays:
                self.D.copy_(arrays["D"])
            if "dt" in arrays:
                self.log_dt.copy_(torch.log(arrays["dt"]))

    # ----- convolution mode ---------------------------------------------------------------------------------------

    @float32_region
    def forward(self, u: Tensor) -> Tensor:
        """u: real (B, H, L) -> y: real (B, H, L). Training path (``FFTConv``); equals ``forward_reference``."""
        L = u.shape[-1]
        n = next_fast_len(2 * L - 1)
        k = circular_kernel(self.kernel(L), n)  # (H, L) or (H, n)
        k = torch.cat([k[:, :1] + self.D.unsqueeze(-1), k[:, 1:]], dim=-1)  # D u is the lag-0 tap
        if torch.compiler.is_compiling():  # optim.compile: plain ops, the backward derived by the compiler
            return fft_conv_autograd(u.to(k.dtype), k, n)
        return FFTConv.apply(u.to(k.dtype), k, n)  # torch's FFTs take no bfloat16 (and FFTConv needs one dtype)

    @float32_region
    def forward_reference(self, u: Tensor) -> Tensor:
        """The original convolution path (complex-arithmetic kernel, autograd through ``torch.fft`` at size 2L).
        u: real (B, H, L) -> (B, H, L)."""
        L = u.shape[-1]
        k = self.kernel(L, reference=True)  # (n_dir, H, L)
        if self.bidirectional:
            # Circular layout of length 2L: causal kernel at [0, L), anti-causal kernel K1[m] at index 2L - m
            # (and K1[0] added at index 0, so the reverse direction also sees the current step).
            k_rev = torch.roll(F.pad(k[1].flip(-1), (L, 0)), 1, dims=-1)  # (H, 2L)
            k = F.pad(k[0], (0, L)) + k_rev  # (H, 2L)
        else:
            k = k[0]  # (H, L)
        return fft_conv(u, k) + self.D.unsqueeze(-1) * u

    # ----- recurrent mode -----------------------------------------------------------------------------------------

    @float32_region
    def step_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """Discrete ``(Lambda_bar, B_bar, C)``, each complex (n_dir, H, N); compute once, reuse for every step."""
        dtL, B_bar = zoh_log(self.Lambda(), torch.view_as_complex(self.B), torch.exp(self.log_dt))
        return torch.exp(dtL), B_bar, torch.view_as_complex(self.C)

    def initial_state(self, batch: int) -> Tensor:
        """Zero state, complex (batch, H, N)."""
        dtype = torch.complex128 if self.Lambda_im.dtype == torch.float64 else torch.complex64
        return torch.zeros(batch, self.H, self.N, dtype=dtype, device=self.Lambda_im.device)

    @float32_region
    def step(
        self, u_t: Tensor, state: Tensor, params: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """One causal step: u_t real (B, H), state complex (B, H, N) -> (y_t real (B, H), new state).

        Only for a unidirectional layer (the reverse direction needs the future of the sequence).
        """
        if self.bidirectional:
            raise ValueError("DSS.step: a bidirectional layer cannot run step by step; use forward_recurrent")
        Lambda_bar, B_bar, C = params if params is not None else self.step_params()
        state = Lambda_bar[0] * state + B_bar[0] * u_t.unsqueeze(-1)  # (B, H, N)
        y_t = (C[0] * state).sum(-1).real + self.D * u_t  # (B, H)
        return y_t, state

    @float32_region
    def forward_recurrent(self, u: Tensor) -> Tensor:
        """Same result as ``forward`` computed by the recurrence. u: real (B, H, L) -> real (B, H, L)."""
        Lambda_bar, B_bar, C = self.step_params()  # (n_dir, H, N)
        L = u.shape[-1]
        y = self.D.unsqueeze(-1) * u
        for d in range(Lambda_bar.shape[0]):
            times = range(L) if d == 0 else range(L - 1, -1, -1)
            x = self.initial_state(u.shape[0])
            outs = [None] * L
            for t in times:
                x = Lambda_bar[d] * x + B_bar[d] * u[..., t].unsqueeze(-1)  # (B, H, N)
                outs[t] = (C[d] * x).sum(-1).real  # (B, H)
            y = y + torch.stack(outs, dim=-1)
        return y


def check_ss_params(ss: dict[str, Tensor], shape: tuple[int, int, int], where: str) -> None:
    """Validate continuous SSM parameters (keys among Lambda, B, C: ``shape`` = (n_dir, H, N); D, dt: (H,)).

    Raises ValueError naming ``where``, the key, and the direction/channel/mode of the first wrong shape,
    non-finite value, unstable mode (Re Lambda >= 0) or non-positive step.
    """
    for name, v in ss.items():
        want = shape if name in ("Lambda", "B", "C") else shape[1:2]
        if tuple(v.shape) != want:
            raise ValueError(f"{where}: {name} has shape {tuple(v.shape)}, expected {want}")
        finite = torch.isfinite(v.real) & torch.isfinite(v.imag) if v.is_complex() else torch.isfinite(v)
        if not finite.all():
            raise ValueError(f"{where}: {name} is not finite at {_index_name(~finite)}")
    if "Lambda" in ss and (ss["Lambda"].real >= 0).any():
        raise ValueError(
            f"{where}: Lambda has Re >= 0 (unstable) at {_index_name(ss['Lambda'].real >= 0)}; "
            "a DSS layer needs Re Lambda < 0"
        )
    if "dt" in ss and (ss["dt"] <= 0).any():
        raise ValueError(f"{where}: dt must be > 0, got a non-positive step at {_index_name(ss['dt'] <= 0)}")


def _index_name(mask: Tensor) -> str:
    """Human name of the first True entry of a (n_dir, H, N) or (H,) mask."""
    idx = [int(i) for i in torch.nonzero(mask)[0]]
    if len(idx) == 3:
        return f"direction {idx[0]}, channel {idx[1]}, mode {idx[2]}"
    return f"channel {idx[0]}"
