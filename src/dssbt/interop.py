"""S4D layers of state-spaces/s4 <-> dssbt's (Lambda, B, C, D, dt), and balanced truncation of S4D state dicts.

S4D (state-spaces/s4) stores M = N/2 modes per channel and outputs twice the real part:

    K[l] = 2 Re( sum_m C_m B_m (exp(dt A_m) - 1) / A_m exp(dt A_m l) )       (disc "zoh")

dssbt's channel is ``K[l] = Re(sum_n C_n B_bar_n Lambda_bar_n^l)`` with the same ZOH ``B_bar``, and no factor 2. The
conversion is ``Lambda = A``, ``dt = dt``, ``C = C``, ``B = 2 B_s4d`` (the factor 2 goes into B), ``D = D``; back,
``B_s4d = B / 2``. Both directions are exact (up to round-off).

Two layouts are recognised by their key names (``<p>`` = any prefix, e.g. ``layers.0.layer.``):

- ``minimal`` (models/s4/s4d.py, ``S4DKernel``): ``<p>kernel.log_dt`` (H,), ``<p>kernel.log_A_real`` (H, M),
  ``<p>kernel.A_imag`` (H, M), ``<p>kernel.C`` (H, M, 2), ``<p>D`` (H,). ``A = -exp(log_A_real) + i A_imag``,
  ``dt = exp(log_dt)``, B = 1 (not a parameter: writing back, B is absorbed into C as ``C B / 2``, exact for the
  kernel).
- ``ssm`` (src/models/sequence/kernels/ssm.py, ``SSMKernelDiag`` inside ``FFTConv``): ``<p>kernel.inv_dt`` (H, 1),
  ``<p>kernel.A_real`` (H, M), ``<p>kernel.A_imag`` (H, M), ``<p>kernel.B`` (1, H, M, 2), ``<p>kernel.C``
  (1, H, M, 2), ``<p>D`` (1, H). ``A = -T_re(A_real) - i T_im(A_imag)``, ``dt = T_dt(inv_dt)``.

Supported options of ``SSMKernelDiag`` (they are not in the state dict: pass the ones the model was built with):
``disc="zoh"``; ``real_transform``, ``imag_transform``, ``dt_transform`` each one of ``none`` / ``exp`` / ``relu``
(``relu(x) + 1e-4``) / ``softplus``. Rejected with a ValueError: ``disc`` bilinear or dss; ``sigmoid`` transforms;
``is_real`` (no ``A_imag`` key); ``dt_tie=False`` (inv_dt of shape (H, M)); ``n_ssm < H`` (A shared by several
channels: a reduction gives each channel its own poles); ``channels > 1`` (a multi-output kernel is not SISO);
``bandlimit`` and ``dt_fast`` cannot be seen in the state dict: do not use this on models built with them. The
learning-rate settings (``lr``: a parameter with lr 0 is a buffer under the same key) do not change the kernel.

Writing back with an imag transform other than ``none`` needs ``-Im A > 0``; a mode with ``Im A > 0`` is replaced by
its conjugate (``2 Re`` of a term is unchanged when A, B, C are all conjugated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .io import atomic_path

TRANSFORMS = ("none", "exp", "relu", "softplus")
_RELU_FLOOR = 1e-4  # S4's param_transform('relu') = relu(x) + 1e-4


@dataclass(frozen=True)
class S4DOptions:
    """The ``SSMKernelDiag`` options the kernel was built with (ignored for the ``minimal`` layout, whose
    parameterisation is fixed: exp for the real part and dt, none for the imaginary part)."""

    disc: str = "zoh"
    real_transform: str = "exp"
    imag_transform: str = "none"
    dt_transform: str = "exp"

    def check(self) -> None:
        if self.disc != "zoh":
            raise ValueError(f"S4D option disc={self.disc!r} is not supported (only 'zoh': dssbt's layers are ZOH)")
        for name in ("real_transform", "imag_transform", "dt_transform"):
            v = getattr(self, name)
            if v not in TRANSFORMS:
                raise ValueError(f"S4D option {name}={v!r} is not supported; supported: {list(TRANSFORMS)}")


def _forward(x: np.ndarray, transform: str) -> np.ndarray:
    """S4's ``param_transform``: the positive quantity from its parameter."""
    if transform == "exp":
        return np.exp(x)
    if transform == "relu":
        return np.maximum(x, 0.0) + _RELU_FLOOR
    if transform == "softplus":
        return np.logaddexp(0.0, x)
    return x


def _inverse(p: np.ndarray, transform: str, what: str) -> np.ndarray:
    """The parameter whose ``_forward`` is p; ValueError naming ``what`` where p cannot be represented."""
    if transform in ("exp", "softplus") and (p <= 0).any():
        raise ValueError(f"{what}: value {p[p <= 0].flat[0]:.3g} <= 0 cannot be written under transform {transform}")
    if transform == "exp":
        return np.log(p)
    if transform == "relu":
        if (p < _RELU_FLOOR).any():
            raise ValueError(f"{what}: value {p[p < _RELU_FLOOR].flat[0]:.3g} below relu's floor {_RELU_FLOOR}")
        return p - _RELU_FLOOR
    if transform == "softplus":
        return np.log(np.expm1(p))
    return p


def _key(sd: dict[str, Any], name: str) -> np.ndarray:
    if name not in sd:
        raise ValueError(f"S4D state dict: key {name!r} is missing")
    return sd[name].detach().cpu().double().numpy() if torch.is_tensor(sd[name]) else np.asarray(sd[name], float)


def find_s4d_kernels(sd: dict[str, Any]) -> dict[str, str]:
    """Prefixes of the S4D kernels in a state dict -> layout ("minimal" | "ssm"). The prefix is what precedes
    ``kernel.``; D is at ``<prefix>D``. Raises ValueError for a real-valued (is_real) SSMKernelDiag."""
    found = {}
    for k in sd:
        if k.endswith("kernel.log_A_real"):
            found[k[: -len("kernel.log_A_real")]] = "minimal"
        elif k.endswith("kernel.A_real"):
            p = k[: -len("kernel.A_real")]
            if p + "kernel.A_imag" not in sd:
                raise ValueError(f"{k}: a real-valued SSM kernel (is_real, no A_imag) is not supported")
            if p + "kernel.inv_dt" in sd:  # SSMKernelDiag; a DPLR kernel also has P
                if p + "kernel.P" in sd:
                    raise ValueError(f"{p}kernel: a DPLR (S4) kernel, not S4D's diagonal kernel")
                found[p] = "ssm"
    return found


def s4d_to_dss(sd: dict[str, Any], prefix: str, layout: str, opts: S4DOptions = S4DOptions()) -> dict[str, np.ndarray]:
    """dssbt parameters of the S4D kernel at ``prefix``: Lambda, B, C complex128 (H, M); D, dt float64 (H,).

    The kernel of these under dssbt's formula equals the S4D kernel exactly (B carries the factor 2).
    """
    where = f"S4D kernel {prefix}kernel"
    if layout == "minimal":
        A = -np.exp(_key(sd, prefix + "kernel.log_A_real")) + 1j * _key(sd, prefix + "kernel.A_imag")
        dt = np.exp(_key(sd, prefix + "kernel.log_dt"))
        C = _key(sd, prefix + "kernel.C")
        B = np.ones(A.shape, complex)
    elif layout == "ssm":
        opts.check()
        A = -_forward(_key(sd, prefix + "kernel.A_real"), opts.real_transform) - 1j * _forward(
            _key(sd, prefix + "kernel.A_imag"), opts.imag_transform
        )
        dt = _forward(_key(sd, prefix + "kernel.inv_dt"), opts.dt_transform)
        if dt.ndim == 2 and dt.shape[1] != 1:
            raise ValueError(f"{where}: inv_dt has shape {dt.shape}: one dt per mode (dt_tie=False) is not supported")
        dt = dt.reshape(-1)
        Bv = _key(sd, prefix + "kernel.B")
        if Bv.ndim != 4 or Bv.shape[0] != 1:
            raise ValueError(f"{where}: B has shape {Bv.shape}, expected (1, H, M, 2)")
        B = Bv[0, ..., 0] + 1j * Bv[0, ..., 1]
        C = _key(sd, prefix + "kernel.C")
        if C.ndim == 4:
            if C.shape[0] != 1:
                raise ValueError(f"{where}: C has {C.shape[0]} output channels; only channels=1 (SISO) is supported")
            C = C[0]
    else:
        raise ValueError(f"unknown S4D layout {layout!r}")
    H, M = A.shape
    if A.shape[0] != dt.shape[0] or B.shape != A.shape:
        raise ValueError(
            f"{where}: A has {A.shape[0]} rows but dt has {dt.shape[0]} (n_ssm < H, A shared by several "
            f"channels, is not supported) or B has shape {B.shape}"
        )
    if C.shape != (H, M, 2):
        raise ValueError(f"{where}: C has shape {C.shape}, expected ({H}, {M}, 2) (real view of complex)")
    D = _key(sd, prefix + "D")
    if D.ndim == 2:
        if D.shape[0] != 1:
            raise ValueError(f"{prefix}D: {D.shape[0]} output channels; only channels=1 is supported")
        D = D[0]
    if D.shape != (H,):
        raise ValueError(f"{prefix}D: shape {D.shape}, expected ({H},)")
    return {"Lambda": A, "B": 2.0 * B, "C": C[..., 0] + 1j * C[..., 1], "D": D, "dt": dt}


def dss_to_s4d(
    ss: dict[str, np.ndarray],
    prefix: str,
    layout: str,
    opts: S4DOptions = S4DOptions(),
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """The S4D entries (keys with ``prefix``) of dssbt parameters ``ss`` (Lambda, B, C (H, M); D, dt (H,)).

    minimal: B is absorbed into C (``C B / 2``, B = 1 in S4D); ssm: ``B / 2`` and C as they are. Modes with
    ``Im Lambda > 0`` are conjugated where the imag transform needs ``-Im A > 0``.
    """
    Lam, B, C = (np.asarray(ss[k], complex) for k in ("Lambda", "B", "C"))
    if (Lam.real >= 0).any():
        raise ValueError(f"{prefix}kernel: Re Lambda >= 0 cannot be written as S4D's -T(A_real)")
    t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
    pairs = lambda z: np.stack([z.real, z.imag], -1)  # noqa: E731
    out = {}
    if layout == "minimal":
        out[prefix + "kernel.log_A_real"] = t(np.log(-Lam.real))
        out[prefix + "kernel.A_imag"] = t(Lam.imag)
        out[prefix + "kernel.log_dt"] = t(np.log(ss["dt"]))
        out[prefix + "kernel.C"] = t(pairs(C * B / 2.0))
        out[prefix + "D"] = t(ss["D"])
        return out
    opts.check()
    if opts.imag_transform != "none":  # S4 keeps -Im A >= 0: use the conjugate mode where Im Lambda > 0
        flip = Lam.imag > 0
        Lam, B, C = (np.where(flip, np.conj(a), a) for a in (Lam, B, C))
    where = f"{prefix}kernel"
    out[prefix + "kernel.A_real"] = t(_inverse(-Lam.real, opts.real_transform, where + ".A_real"))
    out[prefix + "kernel.A_imag"] = t(_inverse(-Lam.imag, opts.imag_transform, where + ".A_imag"))
    out[prefix + "kernel.inv_dt"] = t(
        _inverse(np.asarray(ss["dt"], float), opts.dt_transform, where + ".inv_dt")[:, None]
    )
    out[prefix + "kernel.B"] = t(pairs(B / 2.0)[None])
    out[prefix + "kernel.C"] = t(pairs(C)[None])
    out[prefix + "D"] = t(np.asarray(ss["D"])[None])
    return out


def s4d_kernel(ss: dict[str, np.ndarray], L: int) -> np.ndarray:
    """dssbt's kernel of parameters ``ss`` (Lambda, B, C (H, M); dt (H,)) in float64: real (H, L)."""
    from .dss import ss_kernel

    arg = {k: torch.as_tensor(np.asarray(ss[k])) for k in ("Lambda", "B", "C", "dt")}
    return ss_kernel(
        arg["Lambda"], arg["B"].to(torch.complex128), arg["C"].to(torch.complex128), arg["dt"].double(), L, naive=True
    ).numpy()


def _unwrap(payload: Any, path: str) -> tuple[dict[str, Any], str | None]:
    """The state dict inside a loaded torch file: the file itself, or its 'state_dict' / 'model' entry."""
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict) and any(torch.is_tensor(v) for v in payload[key].values()):
                return payload[key], key
        if any(torch.is_tensor(v) for v in payload.values()):
            return payload, None
    raise ValueError(f"{path}: not a state dict (nor a dict with 'state_dict' / 'model' holding one)")


def reduce_s4d_state_dict(
    sd: dict[str, Any], r: int, opts: S4DOptions = S4DOptions(), route: str = "discrete", where: str = "state dict"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every S4D kernel of ``sd`` reduced to r modes by balanced truncation (``dssbt.reduction.reduce``, method
    "bt"; ``route`` discrete: Gramians of the ZOH system, or continuous). Other entries are copied.

    Returns (new state dict, {prefix: {layout, H, modes, r, hsv (H, M), bound (H,), worst_bound}}). The bound is
    BT's ``2 * sum`` of the discarded HSVs of dssbt's complex channel (B = 2 B_s4d), bounding the sup over the unit
    circle (discrete route) of the S4D kernel's transfer-function error.
    """
    from .reduction import reduce

    found = find_s4d_kernels(sd)
    if not found:
        raise ValueError(f"{where}: no S4D kernel found (keys ending in kernel.log_A_real or kernel.A_real)")
    if route not in ("discrete", "continuous"):
        raise ValueError(f"unknown route {route!r}; choose discrete or continuous")
    out = dict(sd)
    report = {}
    for prefix, layout in found.items():
        ss = s4d_to_dss(sd, prefix, layout, opts)
        H, M = ss["Lambda"].shape
        if not (isinstance(r, int) and 1 <= r < M):
            raise ValueError(f"{prefix}kernel: order r={r!r} must satisfy 1 <= r < N/2 = {M}")
        res = reduce(ss["Lambda"], ss["B"], ss["C"], r, method="bt", dt=ss["dt"] if route == "discrete" else None)
        red = {"Lambda": res.Lambda, "B": res.B, "C": res.C, "D": ss["D"], "dt": ss["dt"]}
        dtype = sd[prefix + "D"].dtype if torch.is_tensor(sd[prefix + "D"]) else torch.float32
        out.update(dss_to_s4d(red, prefix, layout, opts, dtype))
        report[prefix] = {
            "layout": layout,
            "H": H,
            "modes": M,
            "r": r,
            "hsv": res.hsv,
            "bound": res.bound,
            "worst_bound": float(np.max(res.bound)),
        }
    return out, report


def reduce_s4d_file(
    path: str | os.PathLike, out: str | os.PathLike, r: int, opts: S4DOptions = S4DOptions(), route: str = "discrete"
) -> dict[str, dict[str, Any]]:
    """``reduce_s4d_state_dict`` of a torch file, written atomically to ``out`` in the same wrapping (a bare state
    dict, or the same dict with its 'state_dict' / 'model' entry replaced). Returns the report per prefix."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from None
    sd, key = _unwrap(payload, str(path))
    new, report = reduce_s4d_state_dict(sd, r, opts, route, where=str(path))
    payload = new if key is None else {**payload, key: new}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return report


__all__ = [
    "S4DOptions",
    "dss_to_s4d",
    "find_s4d_kernels",
    "reduce_s4d_file",
    "reduce_s4d_state_dict",
    "s4d_to_dss",
    "s4d_kernel",
]
