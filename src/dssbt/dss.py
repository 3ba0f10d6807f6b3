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
"""

from __future__ import annotations

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


def naive_kernel(dtL: Tensor, W: Tensor, L: int) -> Tensor:
    """Reference kernel with one complex exp per (channel, mode, step). Same contract as ``vandermonde_kernel``."""
    real = torch.float64 if dtL.dtype == torch.complex128 else torch.float32
    l = torch.arange(L, device=dtL.device, dtype=real)
    return torch.einsum("...n,...nl->...l", W, torch.exp(dtL.unsqueeze(-1) * l)).real  # (..., L)


def zoh(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """ZOH discretisation: ``dt*Lambda`` and ``B_bar = (exp(dt Lambda) - 1) / Lambda * B``.

    Lambda, B: complex (..., N); dt: real (...,) broadcastable to Lambda's leading dims. Returns complex (..., N) twice.
    """
    dtL = Lambda * dt.unsqueeze(-1)  # (..., N)
    return dtL, torch.expm1(dtL) / Lambda * B


def ss_kernel(Lambda: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, naive: bool = False) -> Tensor:
    """Kernel of continuous diagonal systems under ZOH with step dt. Lambda, B, C: complex (..., N) -> real (..., L)."""
    dtL, B_bar = zoh(Lambda, B, dt)
    return (naive_kernel if naive else vandermonde_kernel)(dtL, C * B_bar, L)


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Convolution ``y[..., t] = sum_m k[..., m mod 2L] u[..., t - m]`` by FFT, zero-padded to 2L.

    u: real (B, H, L); k: real (H, L) (causal) or (H, 2L) (circular layout, anti-causal part at the end).
    Returns real (B, H, L).
    """
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)  # (B, H, 2L)
    return y[..., :L]


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

    def kernel(self, L: int, naive: bool = False) -> Tensor:
        """Convolution kernels, real (n_dir, H, L). ``naive`` selects the full-exp reference path."""
        B, C = torch.view_as_complex(self.B), torch.view_as_complex(self.C)
        return ss_kernel(self.Lambda(), B, C, torch.exp(self.log_dt), L, naive)

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

    def forward(self, u: Tensor) -> Tensor:
        """u: real (B, H, L) -> y: real (B, H, L)."""
        L = u.shape[-1]
        k = self.kernel(L)  # (n_dir, H, L)
        if self.bidirectional:
            # Circular layout of length 2L: causal kernel at [0, L), anti-causal kernel K1[m] at index 2L - m
            # (and K1[0] added at index 0, so the reverse direction also sees the current step).
            k_rev = torch.roll(F.pad(k[1].flip(-1), (L, 0)), 1, dims=-1)  # (H, 2L)
            k = F.pad(k[0], (0, L)) + k_rev  # (H, 2L)
        else:
            k = k[0]  # (H, L)
        return fft_conv(u, k) + self.D.unsqueeze(-1) * u

    # ----- recurrent mode -----------------------------------------------------------------------------------------

    def step_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """Discrete ``(Lambda_bar, B_bar, C)``, each complex (n_dir, H, N); compute once, reuse for every step."""
        dtL, B_bar = zoh(self.Lambda(), torch.view_as_complex(self.B), torch.exp(self.log_dt))
        return torch.exp(dtL), B_bar, torch.view_as_complex(self.C)

    def initial_state(self, batch: int) -> Tensor:
        """Zero state, complex (batch, H, N)."""
        dtype = torch.complex128 if self.Lambda_im.dtype == torch.float64 else torch.complex64
        return torch.zeros(batch, self.H, self.N, dtype=dtype, device=self.Lambda_im.device)

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

