"""One training step (forward + backward) of each pipeline model shape: the fast path vs the reference path vs the
step's own floor; and the paper-size layer vs a textbook layer and (optionally) state-spaces/s4's S4D module.

Steps. For each shape the pipeline trains (image, listops, pathfinder from config.yaml's model section and
task_settings; retrieval from workflow/presets/lra.yaml's dual two-tower head, at the default width), one step is
``zero_grad``, ``cross_entropy(model(x, lengths, reference=...))``, ``backward`` on one torch thread, in the glibc
malloc setting of the training jobs (``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10000000000``; the script re-runs
itself with it if started without). Printed per shape: reference step, fast step, their ratio (target >= 2x for
image), the fast path with the fused C kernels (``optim.kernels: c``, ``dssbt.fused``; where they build), the floor,
and fast / floor (target <= 1.5x for image). The floor is the time of the step's FFTs and
matmuls alone, run in the same process at the step's sizes on fresh tensors: per layer the four real FFTs over
the batch the fast path needs (rfft of u and of dLoss/dy on zero-padded buffers, two irffts) and the output map's
three matmuls (forward, and the two of its backward). Before timing, a float64 copy of each model checks that both
paths give the same logits and parameter gradients (relative 1e-10).

Layer. The paper-size unit (B=32, H=128, N=64 complex modes, L=1024 and 4096, two threads), forward + backward of
``sum(y * g)``, where y = GLU(W GELU(K * u + D u) + b) as in state-spaces/s4's S4D module (SSM convolution, skip,
GELU, position-wise linear to 2H, GLU):
  ours      dssbt's training path as a block runs it: from (B, L, H) activations, one transpose copy to
            channel-major (H, B, L), ``DSS.forward``, GELU, ``linear_from_channel_major``, GLU -> (B, L, H);
  textbook  the full complex exp over (H, N, L) of bench/layer.py, then FFT convolution, GELU, 1x1 conv, GLU;
  s4d       the S4D module loaded from the file named by env var S4D_PATH (a copy of the repository's
            models/s4/s4d.py), with parameters converted from ours (C_s4d = C B / 2, its kernel is 2 Re(...) of
            N modes = d_state/2), so all three compute the same function (checked). Skipped, saying why, when
            S4D_PATH is unset or the file cannot be loaded.

    python bench/train_step.py [--quick] [--repeats 7] [--shapes image listops ...] [--layer-L 1024 4096]
    S4D_PATH=/path/to/s4d.py python bench/train_step.py --shapes    # only the layer comparison
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from common import check, finish, header, interleaved, ratio, time_line
from layer import textbook_forward

from dssbt import fused
from dssbt.dss import DSS, next_fast_len
from dssbt.model import ModelConfig, S4Model, linear_from_channel_major, to_channel_major

JOB_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "10000000000"}  # workflow/rules/common.smk TRAIN_ENV
BASE = dict(d_model=32, d_state=32, n_layers=2, norm="layer", prenorm=True, output="glu", pool="mean")
SHAPES = {  # config.yaml model + task_settings; retrieval: lra.yaml's dual head (batch norm, causal)
    "image": dict(B=50, L=1024, cfg=dict(encoder="linear", d_input=1, d_output=10)),
    "listops": dict(B=50, L=120, cfg=dict(encoder="embedding", d_input=20, d_output=10)),
    "pathfinder": dict(
        B=50, L=1024, cfg=dict(encoder="linear", d_input=1, d_output=2, norm="batch", bidirectional=True)
    ),
    "retrieval": dict(B=16, L=1024, cfg=dict(encoder="embedding", d_input=100, d_output=2, dual=True, norm="batch")),
}
STEP_TARGET, FLOOR_TARGET, LAYER_TARGET = 2.0, 1.5, 3.0
TOL64 = 1e-10


# ----- model steps -------------------------------------------------------------------------------------------------


def batch(shape: dict, B: int, L: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, lengths and labels of one training batch of a shape (token tasks: random lengths, 0-padded)."""
    g = torch.Generator().manual_seed(seed)
    cfg = shape["cfg"]
    lead = (B, 2) if cfg.get("dual") else (B,)
    if cfg["encoder"] == "embedding":
        lengths = torch.randint(L // 2, L + 1, lead, generator=g)
        lengths.view(-1)[0] = L  # the batch is cut to its longest sequence
        x = torch.randint(1, cfg["d_input"], (*lead, L), generator=g)
        x[torch.arange(L) >= lengths.unsqueeze(-1)] = 0
    else:
        lengths = torch.full(lead, L)
        x = torch.randn(*lead, L, generator=g)
    return x, lengths, torch.randint(0, cfg["d_output"], (B,), generator=g)


def step(model: S4Model, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, reference: bool) -> torch.Tensor:
    """One training step (forward + backward); returns the logits (detached)."""
    model.zero_grad(set_to_none=True)
    logits = model(x, lengths, reference=reference)
    F.cross_entropy(logits, y).backward()
    return logits.detach()


def reference_logits(model: S4Model, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The reference path computing what the fast path computes: for dual models, both documents as one 2B batch."""
    if not model.cfg.dual:
        return model(x, lengths, reference=True)
    both = torch.cat([x[:, 0], x[:, 1]])
    a, b = model.features(both, torch.cat([lengths[:, 0], lengths[:, 1]]), reference=True).split(x.shape[0])
    return model.decoder(torch.cat([a, b, a * b, a - b], dim=-1))


def agreement(model: S4Model, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> float:
    """Largest relative difference (float64) of logits and every parameter gradient, fast vs reference path."""
    m = copy.deepcopy(model).double()
    xx = x if x.dtype == torch.long else x.double()
    out = []
    for fn in (lambda: m(xx, lengths), lambda: reference_logits(m, xx, lengths)):
        m.zero_grad(set_to_none=True)
        logits = fn()
        F.cross_entropy(logits, y).backward()
        out.append([logits.detach()] + [p.grad.clone() for p in m.parameters()])
    return max(((a - b).norm() / b.norm().clamp_min(1e-300)).item() for a, b in zip(*out))


def floor_ops(cfg: ModelConfig, B: int, L: int) -> callable:
    """The step's FFTs and matmuls alone, on fresh tensors of the step's sizes (see the module docstring)."""
    H, n = cfg.d_model, next_fast_len(2 * L - 1)
    rows = 2 * B if cfg.dual else B
    H_out = 2 * H if cfg.output == "glu" else H
    per_layer = []
    for _ in range(cfg.n_layers):
        per_layer.append(
            dict(
                pad=[torch.randn(H, rows, n) for _ in range(2)],  # rfft inputs, already zero-padded
                spec=[torch.randn(H, rows, n // 2 + 1, dtype=torch.complex64) for _ in range(2)],  # irfft inputs
                W=torch.randn(H_out, H),
                z=torch.randn(H, rows * L),
                g=torch.randn(H_out, rows * L),
            )
        )

    def run() -> None:
        for t in per_layer:
            for p in t["pad"]:
                torch.fft.rfft(p)
            for s in t["spec"]:
                torch.fft.irfft(s, n=n)
            torch.mm(t["W"], t["z"])  # forward of the output map
            torch.mm(t["W"].t(), t["g"])  # its backward: input gradient
            torch.mm(t["g"], t["z"].t())  # and weight gradient

    return run


def bench_steps(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    for name in a.shapes:
        shape = SHAPES[name]
        B, L = (2, 64) if a.quick else (shape["B"], shape["L"])
        cfg = ModelConfig(**{**BASE, **shape["cfg"], **(dict(d_model=8, d_state=8) if a.quick else {})})
        torch.manual_seed(0)
        model = S4Model(cfg).train()
        x, lengths, y = batch(shape, B, L)
        print(
            f"-- {name}: B={B} L={L} H={cfg.d_model} N={cfg.d_state} layers={cfg.n_layers} norm={cfg.norm} "
            f"bidirectional={cfg.bidirectional} encoder={cfg.encoder} dual={cfg.dual}, FFT size "
            f"{next_fast_len(2 * L - 1)} (reference: {2 * L})"
        )
        with fused.kernels("torch"):
            d = agreement(model, x, lengths, y)
        check(
            f"step {name} fast equals reference",
            d <= TOL64,
            f"float64 max relative difference of logits and every parameter gradient {d:.1e} (tolerance {TOL64:g})",
        )
        variants = {
            "reference": lambda: step(model, x, lengths, y, True),
            "fast": lambda: step(model, x, lengths, y, False),
            "floor": floor_ops(cfg, B, L),
        }
        if fused.load() is not None:
            with fused.kernels("c"):
                d = agreement(model, x, lengths, y)
                check(
                    f"step {name} fast with C kernels equals reference",
                    d <= TOL64,
                    f"float64 max relative difference {d:.1e} (tolerance {TOL64:g})",
                )
                # float32 logits of both against float64's (batch norm: train-mode statistics of this batch)
                exact = copy.deepcopy(model).double()(x if x.dtype == torch.long else x.double(), lengths).detach()
                ours = step(model, x, lengths, y, False).double()
            plain = step(model, x, lengths, y, False).double()
            e_ours, e_torch = (((v - exact).norm() / exact.norm()).item() for v in (ours, plain))
            check(
                f"step {name} C kernels as accurate as torch ops in float32",
                e_ours <= 2 * e_torch + 1e-6,
                f"relative error of the logits against float64: C kernels {e_ours:.1e}, torch ops {e_torch:.1e}",
            )

            def c_kernels() -> torch.Tensor:
                with fused.kernels("c"):
                    return step(model, x, lengths, y, False)

            variants["fast-c-kernels"] = c_kernels
        else:
            print(f"-- no fast-c-kernels variant: {fused.error()}")
        times = interleaved(variants, a.repeats)
        for v, ts in times.items():
            time_line(f"step {name} {v}", ts)
        tgt_step = STEP_TARGET if name == "image" else None
        ratio(f"step {name} speed-up fast vs reference", times["reference"], times["fast"], tgt_step)
        if "fast-c-kernels" in times:
            ratio(
                f"step {name} speed-up fast-c-kernels (optim.kernels: c) vs reference",
                times["reference"],
                times["fast-c-kernels"],
                tgt_step,
            )
            ratio(f"step {name} speed-up fast-c-kernels vs fast", times["fast"], times["fast-c-kernels"], None)
        for v in ("fast", "fast-c-kernels"):
            if v not in times:
                continue
            fr_med = statistics.median(times[v]) / statistics.median(times["floor"])
            fr_min = min(times[v]) / min(times["floor"])
            verdict = (
                ("met" if fr_med <= FLOOR_TARGET else f"MISSED by {fr_med / FLOOR_TARGET:.2f}x")
                if name == "image"
                else "info"
            )
            tgt = f"target <= {FLOOR_TARGET:g}x" if name == "image" else "no target"
            print(f"RATIO step {name} {v} / floor: {fr_med:.2f}x (min/min {fr_min:.2f}x)  {tgt}: {verdict}")


# ----- the paper-size layer --------------------------------------------------------------------------------------


def load_s4d() -> tuple[type | None, str]:
    """The S4D class from the file named by S4D_PATH, or (None, why not)."""
    path = os.environ.get("S4D_PATH")
    if not path:
        return None, "S4D_PATH is not set (point it to a copy of state-spaces/s4's models/s4/s4d.py)"
    if not Path(path).is_file():
        return None, f"S4D_PATH={path} is not a file"
    if importlib.util.find_spec("einops") is None:
        return None, "s4d.py imports einops, which is not installed (pip install einops)"
    if "src.models.nn" not in sys.modules:  # s4d.py imports DropoutNd from its repository; used only for dropout > 0
        stub = types.ModuleType("src.models.nn")

        class DropoutNd(torch.nn.Module):
            def __init__(self, *args, **kwargs):
                raise RuntimeError("bench stub: S4D dropout is not benchmarked")

        stub.DropoutNd = DropoutNd
        for mod in ("src", "src.models"):
            sys.modules.setdefault(mod, types.ModuleType(mod))
        sys.modules["src.models.nn"] = stub
    try:
        spec = importlib.util.spec_from_file_location("s4d_reference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.S4D, f"loaded from {path}"
    except Exception as e:  # a foreign or changed file
        return None, f"could not load S4D from {path}: {type(e).__name__}: {e}"


class Unit(torch.nn.Module):
    """y = GLU(W GELU(DSS(u)) + b): dssbt's DSS layer and output map (the S4D module's computation)."""

    def __init__(self, H: int, N: int) -> None:
        super().__init__()
        self.dss = DSS(H, N)
        self.out = torch.nn.Linear(H, 2 * H)

    def ours(self, u_blh: torch.Tensor) -> torch.Tensor:
        """Training path of a block (without norm and residual): u (B, L, H) -> (B, L, H)."""
        z = F.gelu(self.dss(to_channel_major(u_blh).transpose(0, 1)).transpose(0, 1))  # (H, B, L)
        return F.glu(linear_from_channel_major(z, self.out, 2), dim=0).squeeze(0)

    def textbook(self, u: torch.Tensor) -> torch.Tensor:
        """Literal formulas: u (B, H, L) -> (B, H, L)."""
        z = F.gelu(textbook_forward(self.dss, u))
        return F.glu(F.conv1d(z, self.out.weight.unsqueeze(-1), self.out.bias), dim=1)

    def to_s4d(self, S4D: type) -> torch.nn.Module:
        """An S4D module with the same function: its C is C B / 2 (its kernel is 2 Re(...)), B = 1."""
        H, N = self.dss.H, self.dss.N
        s4d = S4D(H, d_state=2 * N, dropout=0.0, transposed=True)
        with torch.no_grad():
            k = s4d.kernel
            k.log_A_real.copy_(self.dss.Lambda_log_neg_re[0])
            k.A_imag.copy_(self.dss.Lambda_im[0])
            k.log_dt.copy_(self.dss.log_dt)
            CB = torch.view_as_complex(self.dss.C[0]) * torch.view_as_complex(self.dss.B[0]) / 2
            k.C.copy_(torch.view_as_real(CB))
            s4d.D.copy_(self.dss.D)
            s4d.output_linear[0].weight.copy_(self.out.weight.unsqueeze(-1))
            s4d.output_linear[0].bias.copy_(self.out.bias)
        return s4d


def bench_layer(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.layer_threads)
    B, H, N = (2, 16, 8) if a.quick else (32, 128, 64)
    S4D, why = load_s4d()
    print(
        f"-- paper-size unit (DSS + GELU + GLU output map): B={B} H={H} N={N} complex modes, "
        f"{a.layer_threads} threads; S4D: {why}"
    )
    for L in [128, 256] if a.quick else a.layer_L:
        torch.manual_seed(0)
        unit = Unit(H, N)
        u = torch.randn(B, H, L)
        g = torch.randn(B, H, L) / (B * H * L) ** 0.5
        u_blh, g_blh = u.transpose(1, 2).contiguous(), g.transpose(1, 2).contiguous()
        s4d = unit.to_s4d(S4D) if S4D is not None else None
        variants = {
            "ours": (lambda: unit.ours(u_blh), unit, g_blh, True),
            "textbook": (lambda: unit.textbook(u), unit, g, False),
        }
        if s4d is not None:
            variants["s4d"] = (lambda: s4d(u)[0], s4d, g, False)

        def run(v: str) -> torch.Tensor:
            fn, module, grad, blh = variants[v]
            module.zero_grad(set_to_none=True)
            y = fn()
            (y * grad).sum().backward()
            return (y.transpose(1, 2) if blh else y).detach()

        outs = {v: run(v) for v in variants}
        for v in outs:
            if v != "textbook":
                d = ((outs[v].double() - outs["textbook"].double()).norm() / outs["textbook"].double().norm()).item()
                check(
                    f"unit L={L} {v} equals textbook",
                    d <= 1e-4,
                    f"relative difference of y {d:.1e} (float32, tolerance 1e-4)",
                )
        times = interleaved({v: (lambda v=v: run(v)) for v in variants}, a.layer_repeats)
        for v, ts in times.items():
            time_line(f"unit L={L} {v}", ts)
        ratio(f"unit L={L} speed-up ours vs textbook", times["textbook"], times["ours"])
        if s4d is not None:
            ratio(f"unit L={L} speed-up ours vs S4D", times["s4d"], times["ours"], LAYER_TARGET)
        else:
            print(f"RATIO unit L={L} speed-up ours vs S4D: skipped ({why})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (keeps the script working in tests)")
    ap.add_argument(
        "--shapes",
        nargs="*",
        default=list(SHAPES),
        choices=list(SHAPES),
        help="model shapes to time (none: only the layer)",
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the steps (a training job's)")
    ap.add_argument("--no-layer", action="store_true", help="skip the paper-size layer comparison")
    ap.add_argument("--layer-L", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--layer-threads", type=int, default=2)
    ap.add_argument("--layer-repeats", type=int, default=5)
    a = ap.parse_args()
    if any(os.environ.get(k) != v for k, v in JOB_ENV.items()):  # glibc reads these at start: run again with them
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **JOB_ENV})
    if a.quick:
        a.repeats, a.layer_repeats, a.threads, a.layer_threads = 2, 2, 1, 1
    header(
        "training step: fast path vs reference path vs floor (FFTs + matmuls); paper-size layer vs textbook/S4D",
        threads=a.threads,
        repeats=a.repeats,
        malloc=" ".join(f"{k}={v}" for k, v in JOB_ENV.items()),
        dtype="float32",
    )
    if a.shapes:
        bench_steps(a)
    if not a.no_layer:
        bench_layer(a)
    finish()


if __name__ == "__main__":
    main()
