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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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
    sd: dict[str, Any],
    r: int,
    opts: S4DOptions = S4DOptions(),
    route: str = "discrete",
    where: str = "state dict",
    kernel_length: int = 1024,
    check: PlausibilityCheck | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every S4D kernel of ``sd`` reduced to r modes by balanced truncation (``dssbt.reduction.reduce``, method
    "bt"; ``route`` discrete: Gramians of the ZOH system, or continuous). Other entries are copied.

    Returns (new state dict, {prefix: {layout, H, modes, r, hsv (H, M), bound (H,), worst_bound, kernel_error,
    rel_kernel_error (H,), channels}}). The bound is BT's ``2 * sum`` of the discarded HSVs of dssbt's complex channel
    (B = 2 B_s4d), bounding the sup over the unit circle (discrete route) of the S4D kernel's transfer-function
    error; ``kernel_error`` is the measured l2 error of the S4D kernel over ``kernel_length`` steps (at most the
    bound on the discrete route), ``channels`` the per-channel report entries ``dssbt reduce`` writes. ``check``:
    plausibility of the parameters under ``opts`` (``PlausibilityCheck``), run before anything is reduced.
    """
    from .reduction import reduce
    from .reduction.apply import channel_report, kernel_errors

    found = find_s4d_kernels(sd)
    if not found:
        raise ValueError(f"{where}: no S4D kernel found (keys ending in kernel.log_A_real or kernel.A_real)")
    if route not in ("discrete", "continuous"):
        raise ValueError(f"unknown route {route!r}; choose discrete or continuous")
    systems = {prefix: s4d_to_dss(sd, prefix, layout, opts) for prefix, layout in found.items()}
    for prefix, ss in systems.items():
        M = ss["Lambda"].shape[1]
        if not (isinstance(r, int) and 1 <= r < M):
            raise ValueError(f"{prefix}kernel: order r={r!r} must satisfy 1 <= r < N/2 = {M}")
        if check is not None:
            check(prefix, found[prefix], ss)
    out = dict(sd)
    report = {}
    for prefix, layout in found.items():
        ss = systems[prefix]
        H, M = ss["Lambda"].shape
        res = reduce(ss["Lambda"], ss["B"], ss["C"], r, method="bt", dt=ss["dt"] if route == "discrete" else None)
        red = {"Lambda": res.Lambda, "B": res.B, "C": res.C, "D": ss["D"], "dt": ss["dt"]}
        dtype = sd[prefix + "D"].dtype if torch.is_tensor(sd[prefix + "D"]) else torch.float32
        written = dss_to_s4d(red, prefix, layout, opts, dtype)
        out.update(written)
        # the error of what is written (in its dtype), against the kernel of the stored parameters
        err, rel = kernel_errors(ss, s4d_to_dss(written, prefix, layout, opts), kernel_length)
        report[prefix] = {
            "layout": layout,
            "H": H,
            "modes": M,
            "r": r,
            "hsv": res.hsv,
            "bound": res.bound,
            "worst_bound": float(np.max(res.bound)),
            "kernel_error": err,
            "rel_kernel_error": rel,
            "channels": channel_report(res, err, rel),
        }
    return out, report


# ----- what the options can be checked against ---------------------------------------------------------------------

OPTION_KEYS = {  # S4D option -> the keys that state it in a layer's config (real_type: older S4 versions)
    "disc": ("disc",),
    "real_transform": ("real_transform", "real_type"),
    "imag_transform": ("imag_transform",),
    "dt_transform": ("dt_transform",),
}
DEFAULT_DT_RANGE = (1e-3, 1e-1)  # S4D's dt_min, dt_max: dt is drawn log-uniformly in it at init
MAX_PHASE_PER_STEP = 1e4  # |Im A| dt: S4D's inits stay below ~N^2/pi * dt_max (~130 for N = 64)


def layer_configs(hp: Any) -> list[tuple[str, dict[str, Any]]]:
    """The dicts of a plain hyper-parameter tree that configure an SSM layer (those with a ``d_state`` key),
    with their dotted paths."""
    from .lightning import walk

    return [(p, d) for p, d in walk(hp) if "d_state" in d]


def stated_options(hp: Any) -> dict[str, tuple[str, str]]:
    """The S4D options the hyper-parameters state: {option: (value, dotted path)}. ValueError where two layer
    configs state different values (reduce-s4d applies one set of options to every kernel)."""
    stated: dict[str, tuple[str, str]] = {}
    for path, d in layer_configs(hp):
        for opt, keys in OPTION_KEYS.items():
            for k in keys:
                if k in d and d[k] is not None:
                    v, at = str(d[k]), f"{path}.{k}" if path else k
                    if opt in stated and stated[opt][0] != v:
                        raise ValueError(
                            f"hyper_parameters state {opt} twice with different values: {stated[opt][1]} = "
                            f"{stated[opt][0]!r}, {at} = {v!r}; reduce-s4d applies one set of options to every kernel"
                        )
                    stated[opt] = (v, at)
    return stated


def resolve_options(
    flags: dict[str, str | None], hp: Any = None
) -> tuple[S4DOptions, dict[str, str], dict[str, tuple[str, str]]]:
    """The options to read the kernels with: a flag (not None) or the hyper-parameters' value, else S4's default.

    Returns (options, {option: "flag" | "hyper_parameters" | "default"}, stated). ValueError naming both where a
    flag contradicts the hyper-parameters.
    """
    stated = stated_options(hp) if hp is not None else {}
    default = S4DOptions()
    values, sources = {}, {}
    for opt in OPTION_KEYS:
        flag = flags.get(opt)
        if flag is not None and opt in stated and stated[opt][0] != flag:
            raise ValueError(
                f"--{opt.replace('_', '-')} {flag} contradicts the checkpoint's hyper_parameters "
                f"{stated[opt][1]} = {stated[opt][0]!r} (the options the layers were built with); drop the flag or "
                "correct it"
            )
        if flag is not None:
            values[opt], sources[opt] = flag, "flag"
        elif opt in stated:
            values[opt], sources[opt] = stated[opt][0], "hyper_parameters"
        else:
            values[opt], sources[opt] = getattr(default, opt), "default"
    opts = S4DOptions(**values)
    opts.check()
    return opts, sources, stated


@dataclass
class PlausibilityCheck:
    """Checks of the parameters read under the options, where nothing independent states them.

    Always errors (the kernel cannot be reduced): non-finite A or dt, ``Re A >= 0`` (e.g. real_transform none on
    log-stored values), ``dt <= 0`` (dt_transform none on log-stored values). Errors where the option was not
    stated (``sources[opt] == "default"``), warnings where a flag or the hyper-parameters state it: every decay
    rate (or every dt) at relu's floor 1e-4 (relu applied to values stored under exp or softplus, all <= 0); the
    median dt more than 100x outside [dt_min, dt_max] (the hyper-parameters' or S4D's 1e-3, 1e-1); a phase step
    ``|Im A| dt`` above 1e4 (imag_transform exp on values stored without one). Only warnings: any dt more than 10x
    outside [dt_min, dt_max].

    Not detectable: exp read as softplus or back (softplus(log x) = log(1 + x): equal to first order for small dt;
    the decay rates 0.5 <-> 0.40 are both plausible), relu read as none or back (they differ by 1e-4), values stored
    without a transform (or under relu) read as exp for the real part (decay rates e^0.5 = 1.65 are plausible). Such a
    mismatch gives a plausible but different kernel: state the options (flags, or the checkpoint's hyper-parameters).
    """

    opts: S4DOptions
    sources: dict[str, str]
    dt_range: tuple[float, float] = DEFAULT_DT_RANGE
    warnings: list[str] = field(default_factory=list)

    def __call__(self, prefix: str, layout: str, ss: dict[str, np.ndarray]) -> None:
        """Raise ValueError or append to ``warnings`` for the kernel at ``prefix`` (parameters ``ss`` of
        ``s4d_to_dss``). The minimal layout's parameterisation is fixed: only its hard errors raise."""

        def fail(opt: str, msg: str, hard: bool = False) -> None:
            if layout != "ssm":
                text, source = f"{msg} (minimal layout: exp real part and dt)", "fixed"
            else:
                source = self.sources.get(opt, "default")
                text = f"{msg} under {opt}={getattr(self.opts, opt)!r} ({source})"
            if hard or source == "default":
                raise ValueError(text + "; state the option the model was trained with (flag or hyper_parameters)")
            self.warnings.append(text)

        where = f"{prefix}kernel"
        Lam, dt = ss["Lambda"], np.asarray(ss["dt"], float)
        if not np.isfinite(Lam).all():
            fail(
                "real_transform" if not np.isfinite(Lam.real).all() else "imag_transform",
                f"{where}: A is not finite",
                True,
            )
        if not np.isfinite(dt).all() or (dt <= 0).any():
            h = int(np.argmax(~np.isfinite(dt) | (dt <= 0)))
            fail("dt_transform", f"{where}: dt = {dt[h]:.3g} at channel {h} (dt must be > 0)", True)
        if (Lam.real >= 0).any():
            h, m = np.argwhere(Lam.real >= 0)[0]
            fail(
                "real_transform", f"{where}: Re A = {Lam.real[h, m]:.3g} >= 0 (unstable) at channel {h}, mode {m}", True
            )
        if layout == "ssm" and self.opts.real_transform == "relu" and np.allclose(-Lam.real, _RELU_FLOOR, rtol=1e-9):
            fail("real_transform", f"{where}: every decay rate -Re A is relu's floor {_RELU_FLOOR} (all A_real <= 0)")
        if layout == "ssm" and self.opts.dt_transform == "relu" and np.allclose(dt, _RELU_FLOOR, rtol=1e-9):
            fail("dt_transform", f"{where}: every dt is relu's floor {_RELU_FLOOR} (all inv_dt <= 0)")
        lo, hi = self.dt_range
        med = float(np.median(dt))
        if not lo / 100 <= med <= hi * 100:
            fail("dt_transform", f"{where}: median dt {med:.3g} lies more than 100x outside [{lo:g}, {hi:g}]")
        elif dt.min() < lo / 10 or dt.max() > hi * 10:
            self.warnings.append(
                f"{where}: dt spans [{dt.min():.3g}, {dt.max():.3g}], more than 10x outside [{lo:g}, {hi:g}]"
            )
        phase = float(np.max(np.abs(Lam.imag) * dt[:, None]))
        if phase > MAX_PHASE_PER_STEP:
            fail("imag_transform", f"{where}: a phase step |Im A| dt = {phase:.3g} > {MAX_PHASE_PER_STEP:g} rad")


def reduce_s4d_file(
    path: str | os.PathLike,
    out: str | os.PathLike,
    r: int,
    flags: dict[str, str | None] | None = None,
    route: str = "discrete",
    report: str | os.PathLike | None = None,
    kernel_length: int | None = None,
) -> dict[str, Any]:
    """``reduce_s4d_state_dict`` of a torch file (a bare state dict, a dict with 'state_dict' / 'model', or a
    PyTorch Lightning checkpoint, OmegaConf hyper-parameters included), written atomically to ``out``.

    The file is read without running code from it (``dssbt.lightning.load_checkpoint``). ``flags``: S4D options
    given by the user ({"disc", "real_transform", "imag_transform", "dt_transform"}: value or None); the options are
    taken from the checkpoint's hyper-parameters where they state them (a contradicting flag is an error), else S4's
    defaults, and checked for plausibility (``PlausibilityCheck``). The output has the same wrapping, with: the
    reduced state dict; ``hyper_parameters`` as plain dicts and lists with every ``d_state`` equal to an old state
    size N set to 2 r; ``optimizer_states`` and ``lr_schedulers`` dropped (their buffers have the old state size);
    ``hparams_type`` kept (Lightning rebuilds a DictConfig from the plain dicts). ``report``: JSON with the entries
    ``dssbt reduce`` writes, per kernel and channel. ``kernel_length``: steps of the measured kernel error (default
    the hyper-parameters' ``l_max`` where one layer config states it, else 1024).

    Returns {"kernels": {prefix: report entry}, "options", "sources", "hparams_updated", "dropped", "warnings",
    "kernel_length"}.
    """
    from .io import write_json
    from .lightning import load_checkpoint, save_checkpoint, to_plain

    payload = load_checkpoint(path)
    sd, key = _unwrap(payload, str(path))
    hp = to_plain(payload["hyper_parameters"]) if isinstance(payload, dict) and "hyper_parameters" in payload else None
    opts, sources, stated = resolve_options(flags or {}, hp)
    layers = layer_configs(hp) if hp is not None else []
    dt_min = [d["dt_min"] for _, d in layers if isinstance(d.get("dt_min"), int | float)]
    dt_max = [d["dt_max"] for _, d in layers if isinstance(d.get("dt_max"), int | float)]
    dt_range = (min(dt_min, default=DEFAULT_DT_RANGE[0]), max(dt_max, default=DEFAULT_DT_RANGE[1]))
    if kernel_length is None:
        l_max = {d["l_max"] for _, d in layers if isinstance(d.get("l_max"), int) and d["l_max"] > 0}
        kernel_length = l_max.pop() if len(l_max) == 1 else 1024
    check = PlausibilityCheck(opts, sources, dt_range)
    new, kernels = reduce_s4d_state_dict(sd, r, opts, route, where=str(path), kernel_length=kernel_length, check=check)
    result = {
        "kernels": kernels,
        "options": {k: getattr(opts, k) for k in OPTION_KEYS},
        "sources": sources,
        "hparams_updated": [],
        "dropped": [],
        "warnings": check.warnings,
        "kernel_length": kernel_length,
    }
    if key is None:
        payload = new
    else:
        payload = {**payload, key: new}
        for k in ("optimizer_states", "lr_schedulers"):
            if k in payload:
                del payload[k]
                result["dropped"].append(k)
        if hp is not None:
            old = {2 * info["modes"] for info in kernels.values()}
            for p, d in layers:
                if isinstance(d["d_state"], int) and d["d_state"] in old:
                    result["hparams_updated"].append((f"{p}.d_state" if p else "d_state", d["d_state"], 2 * r))
                    d["d_state"] = 2 * r
            if not result["hparams_updated"]:
                result["warnings"].append(
                    f"hyper_parameters: no d_state equal to the old state size {sorted(old)}: set the layers' "
                    f"d_state to {2 * r} yourself before loading"
                )
            payload["hyper_parameters"] = hp
    rep = None
    if report is not None:
        rep = {
            "method": "bt",
            "route": route,
            "r": r,
            "kernel_length": kernel_length,
            "checkpoint": str(path),
            "options": result["options"],
            "option_sources": sources,
            "stated_in_hyper_parameters": {k: {"value": v, "at": at} for k, (v, at) in stated.items()},
            "hparams_updated": [list(u) for u in result["hparams_updated"]],
            "dropped": result["dropped"],
            "warnings": result["warnings"],
            "layers": [
                {"layer": prefix, "layout": info["layout"], "N": 2 * info["modes"], "r": r, **info["channels"]}
                for prefix, info in kernels.items()
            ],
        }
    save_checkpoint(payload, out)
    if rep is not None:
        write_json(report, rep)
    return result


__all__ = [
    "PlausibilityCheck",
    "S4DOptions",
    "dss_to_s4d",
    "find_s4d_kernels",
    "reduce_s4d_file",
    "reduce_s4d_state_dict",
    "resolve_options",
    "s4d_to_dss",
    "s4d_kernel",
]
