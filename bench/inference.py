"""Compressed inference: a full-N model vs its BT-reduced order-r models, recurrent and convolution mode.

A freshly initialised S4Model (default 6 layers x H=256, N=64) is reduced by ``ModelReducer`` (discrete
route, the default) to every r in {4, 8, 16, 32}; the reduced models are the order-r architecture with every non-SSM
weight copied. Figures, all variants timed interleaved in one process:

* ``DSS.step`` alone (one layer, discretised parameters precomputed as ``S4Model.init_state`` does): time per step
  at batch 1 (streaming latency) and at a larger batch; target: full / reduced >= 0.5 * N / r;
* ``S4Model.step`` (whole model: encoder, per block norm + DSS step + GELU + output GLU + residual, pooling,
  decoder): time per step, the whole-model speed-up;
* memory of recurrent inference, exactly from the tensors: weights (all, and SSM only) and the per-sequence state
  (complex SSM states + the discretised step parameters);
* convolution mode (``S4Model.forward``, no grad) on long sequences: sequences per second;
* the fused step (``dssbt.deploy.stream.FusedStream``: precomputed Lambda_bar, B_bar, C; per diagonal system one
  compiled C call, or four numpy ufunc calls on preallocated buffers) per layer at batch 1 beside the unfused ``DSS.step``, and the whole model
  per token at batch 1: fused torch, onnxruntime (the exported graph, 1 thread) and ``S4Model.step``, beside two
  floors measured here: the bytes a step reads (weights, step parameters and the state, float32) over the measured
  read bandwidth of an array of that size, and its FLOPs over the measured single-thread matmul peak.

Checks: every model's recurrent outputs equal its convolution-mode outputs (prefix logits) to 1e-4; the fused and
the ONNX steps equal them too (1e-4).

    python bench/inference.py [--quick] [--layers 6] [--H 256] [--N 64] [--orders 4 8 16 32] [--batch 1 32]
    python bench/inference.py --profile     # torch.profiler of DSS.step and S4Model.step at batch 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import check, finish, fmt_s, header, interleaved, ratio, time_line

from dssbt.deploy import ckernel
from dssbt.deploy.export import export_onnx
from dssbt.deploy.predict import OnnxStream
from dssbt.deploy.stream import FusedStream, real_step_params
from dssbt.model import ModelConfig, S4Model, count_parameters
from dssbt.reduction.apply import ModelReducer

TOL = 1e-4


def build(a) -> dict[str, S4Model]:
    """{"N=64": full, "r=32": reduced, ...}, all in eval mode."""
    torch.manual_seed(0)
    full = S4Model(ModelConfig(d_input=1, d_output=10, d_model=a.H, d_state=a.N, n_layers=a.layers)).eval()
    models = {f"N={a.N}": full}
    if a.fresh:  # same shapes, so the same timings; no reduction
        for r in sorted(a.orders, reverse=True):
            torch.manual_seed(r)
            models[f"r={r}"] = S4Model(full.cfg.replace(d_state=r)).eval()
        print("   order-r models freshly initialised (--fresh), not BT-reduced: timings only")
        return models
    t = time.perf_counter()
    reducer = ModelReducer(full, kernel_length=256)
    reduced = {r: reducer.reduce("bt", r) for r in sorted(a.orders, reverse=True)}
    print(
        f"   ModelReducer.reduce (discrete route, {len(a.orders)} orders, incl. the kernel-error report): "
        f"{fmt_s(time.perf_counter() - t)}"
    )
    for r in sorted(a.orders, reverse=True):
        model, report = reduced[r]
        models[f"r={r}"] = model.eval()
        errs = torch.tensor([e for lay in report["layers"] for e in lay["rel_kernel_error"][0]])
        print(
            f"   r={r}: median relative kernel error of the reduced channels {errs.median():.2g} "
            "(a fresh, untrained model: informative only)"
        )
    return models


def order(name: str) -> int:
    return int(name.split("=")[1])


def check_recurrent_equals_convolution(models: dict[str, S4Model], L: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, L)
    worst = 0.0
    for name, m in models.items():
        state = m.init_state(2)
        for t in range(L):
            logits = m.step(x[:, t], state)
            if t + 1 in (L // 2, L):
                with torch.no_grad():
                    ref = m(x[:, : t + 1])
                worst = max(worst, ((logits - ref).norm() / ref.norm()).item())
    check(
        "inference recurrent step equals convolution mode",
        worst <= TOL,
        f"{len(models)} models, prefixes {L // 2} and {L}; worst relative difference {worst:.1e} (tol {TOL:g})",
    )
    ok = all(layer.N == order(n) for n, m in models.items() for layer in m.dss_layers())
    check("inference reduced models have state size r", ok)


def memory_report(models: dict[str, S4Model], N: int) -> None:
    """Exact bytes: weights, SSM weights, and recurrent state per sequence (SSM states + step parameters)."""
    full = None
    for name, m in models.items():
        counts = count_parameters(m)
        w = sum(p.numel() * p.element_size() for p in m.parameters())
        st = m.init_state(1)
        state = sum(s.numel() * s.element_size() for s in st["ssm"])  # complex SSM states, one sequence
        pool = st["sum"].numel() * st["sum"].element_size()  # running sum for mean pooling (size H, any order)
        params = sum(p.numel() * p.element_size() for ps in st["params"] for p in ps)
        full = full or (state, params, w, pool)
        print(
            f"MEMORY inference {name}: weights {w / 1024:.0f} KiB ({counts['total']} params, SSM {counts['ssm']}); "
            f"SSM state per sequence {state / 1024:.1f} KiB (+ {pool / 1024:.1f} KiB pooling sum); "
            f"discretised step parameters {params / 1024:.0f} KiB per model"
        )
        if name != f"N={N}":
            print(
                f"RATIO inference memory N={N} / {name}: SSM state {full[0] / state:.2f}x, "
                f"weights + step parameters + one sequence's state {sum(full) / (state + params + w + pool):.2f}x"
                "  no target: info"
            )


def time_dss_step(models: dict[str, S4Model], batch: int, steps: int, repeats: int) -> dict[str, list[float]]:
    """Per-step time of DSS.step of the first layer of each model (parameters discretised once, as in inference)."""
    fns = {}
    for name, m in models.items():
        layer = m.dss_layers()[0]
        with torch.no_grad():
            params = layer.step_params()
        u = torch.randn(batch, layer.H)

        def run(layer=layer, params=params, u=u):
            with torch.no_grad():
                x = layer.initial_state(u.shape[0])
                for _ in range(steps):
                    _, x = layer.step(u, x, params)

        fns[name] = run
    return {k: [t / steps for t in v] for k, v in interleaved(fns, repeats).items()}


def time_model_step(models: dict[str, S4Model], batch: int, steps: int, repeats: int) -> dict[str, list[float]]:
    fns = {}
    for name, m in models.items():
        x = torch.randn(batch)

        def run(m=m, x=x):
            state = m.init_state(x.shape[0])
            for _ in range(steps):
                m.step(x, state)

        fns[name] = run
    return {k: [t / steps for t in v] for k, v in interleaved(fns, repeats).items()}


def time_convolution(models: dict[str, S4Model], batch: int, L: int, repeats: int) -> dict[str, list[float]]:
    x = torch.randn(batch, L)

    def fn(m):
        def run():
            with torch.no_grad():
                m(x)

        return run

    return interleaved({name: fn(m) for name, m in models.items()}, repeats)


def profile(a, models: dict[str, S4Model]) -> None:
    names = [f"N={a.N}", f"r={min(a.orders)}"]
    for name in names:
        m = models[name]
        layer = m.dss_layers()[0]
        with torch.no_grad():
            params = layer.step_params()
            x, u = layer.initial_state(1), torch.randn(1, layer.H)
            state, xt = m.init_state(1), torch.randn(1)
            for _ in range(20):
                _, x = layer.step(u, x, params)
                m.step(xt, state)
            cases = (("DSS.step", lambda: layer.step(u, x, params)), ("S4Model.step", lambda: m.step(xt, state)))
            for what, fn in cases:
                with torch.profiler.profile() as prof:
                    for _ in range(200):
                        fn()
                print(f"== profile {what}, {name}, batch 1, 200 steps")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


# ----- fused step, ONNX, floors -------------------------------------------------------------------------------------


def check_fused_and_onnx(models: dict[str, S4Model], streams: dict[str, tuple], L: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, L)
    worst = {"fused": 0.0, "onnx": 0.0}
    for name, m in models.items():
        fused, ort = streams[name]
        st = fused.init_state(2)
        ort.reset(2)
        for t in range(L):
            got = {"fused": fused.step(x[:, t], st), "onnx": torch.from_numpy(ort.step(x[:, t].numpy()))}
            if t + 1 in (L // 2, L):
                with torch.no_grad():
                    ref = m(x[:, : t + 1])
                for k, v in got.items():
                    worst[k] = max(worst[k], ((v - ref).norm() / ref.norm()).item())
    for k, w in worst.items():
        check(
            f"inference {k} step equals convolution mode",
            w <= TOL,
            f"{len(models)} models; worst relative difference {w:.1e} (tol {TOL:g})",
        )


def time_fused_layer(models: dict[str, S4Model], backend: str, steps: int, repeats: int) -> dict[str, list[float]]:
    """Per-step time of the first layer's fused diagonal system (with D u) at batch 1: backend "c" (one compiled
    call) or "numpy" (four ufunc calls)."""
    from dssbt.deploy.ckernel import CLayer

    fns = {}
    for name, m in models.items():
        fused = FusedStream(real_step_params(m), backend="numpy")
        lay = fused.p.layers[0]
        u = torch.from_numpy(np.random.default_rng(0).standard_normal((1, fused.p.H)).astype(np.float32))
        if backend == "c":
            c, y = CLayer(lay.Lambda_bar, lay.B_bar, lay.C, lay.D, 1), torch.zeros(1, fused.p.H)

            def run(c=c, u=u, y=y):  # u and y held here: the C call writes through their addresses
                up, yp = u.data_ptr(), y.data_ptr()
                c.xr[...] = 0
                c.xi[...] = 0
                for _ in range(steps):
                    c.step(up, yp)
        else:
            x = np.zeros((1, fused.p.H, lay.N), np.complex64)
            tmp = np.zeros((1, fused.p.H, 2 * lay.N), np.float32)
            un = u.numpy()

            def run(fused=fused, x=x, tmp=tmp, un=un):
                x[...] = 0
                for _ in range(steps):
                    fused.ssm_step(0, un, x, tmp)

        fns[name] = run
    return {k: [t / steps for t in v] for k, v in interleaved(fns, repeats).items()}


def time_token(
    models: dict[str, S4Model], streams: dict[str, tuple], steps: int, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Whole-model per-token time at batch 1: fused torch, onnxruntime, S4Model.step, interleaved."""
    fns = {}
    x = torch.randn(1)
    xn = x.numpy()
    for name, m in models.items():
        fused, ort = streams[name]

        def run_fused(fused=fused):
            st = fused.init_state(1)
            for _ in range(steps):
                fused.step(x, st)

        def run_onnx(ort=ort):
            ort.reset(1)
            for _ in range(steps):
                ort.step(xn)

        def run_step(m=m):
            st = m.init_state(1)
            for _ in range(steps):
                m.step(x, st)

        fns[(name, "fused")], fns[(name, "onnx")], fns[(name, "step")] = run_fused, run_onnx, run_step
    t = interleaved(fns, repeats)
    out: dict[str, dict[str, list[float]]] = {}
    for (name, kind), ts in t.items():
        out.setdefault(name, {})[kind] = [v / steps for v in ts]
    return out


def step_bytes_and_flops(fused: FusedStream) -> tuple[int, int]:
    """float32 bytes one batch-1 step reads (every weight it uses once, step parameters, the state read and written)
    and its FLOPs (2 per multiply-add of each linear; 14 per complex mode: x*Lambda_bar 6, B_bar*u 2, add 2, output
    dot 4)."""
    p = fused.p
    H = p.H
    nbytes = (H if p.encoder == "embedding" else p.enc_weight.size + H) * 4  # one embedding row, or the linear
    flops = 0 if p.encoder == "embedding" else 2 * p.enc_weight.size
    for lay in p.layers:
        nbytes += 4 * (2 * 3 * H * lay.N + 2 * 2 * H * lay.N)  # Lambda_bar, B_bar, C complex; state read + written
        nbytes += 4 * (H + 2 * H + lay.out_weight.size + lay.out_bias.size)  # D, norm, output linear
        flops += 14 * H * lay.N + 2 * lay.out_weight.size + 10 * H  # + norm, activation, GLU, residual (~10 per H)
    nbytes += 4 * (2 * H + p.dec_weight.size + p.dec_bias.size)
    flops += 2 * p.dec_weight.size
    return nbytes, flops


def measured_read_bandwidth(nbytes: int, repeats: int = 20) -> float:
    """Bytes per second of summing a float32 array of ``nbytes`` (at least 1 MiB), best of ``repeats``."""
    a = np.ones(max(nbytes, 1 << 20) // 4, np.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


def measured_matmul_peak(n: int = 512, repeats: int = 5) -> float:
    """FLOP/s of a float32 (n, n) @ (n, n) torch matmul at the current thread count, best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def deploy_report(a, models: dict[str, S4Model]) -> None:
    full = f"N={a.N}"
    tmp = Path(tempfile.mkdtemp(prefix="dssbt_bench_"))
    streams = {}
    for name, m in models.items():
        export_onnx(m, tmp / f"{name}.onnx")
        streams[name] = (FusedStream(real_step_params(m)), OnnxStream(tmp / f"{name}.onnx", threads=1))
    print(
        f"   fused step backend: {streams[full][0].backend}"
        + ("" if ckernel.available() else f" (C step unavailable: {ckernel.error()})")
    )
    check_fused_and_onnx(models, streams, 16 if a.quick else 64)

    # per layer, batch 1: unfused DSS.step vs the fused diagonal system (numpy and C), each timed side by side
    unfused = time_dss_step(models, 1, a.steps, a.repeats)
    backends = ["numpy"] + (["c"] if ckernel.available() else [])
    fused = {b: time_fused_layer(models, b, a.steps, a.repeats) for b in backends}
    for b in backends:
        for name in models:
            time_line(f"inference fused SSM step per layer ({b}), batch 1, {name}", fused[b][name])
    for b in backends:
        for name in models:
            if name != full:
                r = order(name)
                ratio(
                    f"inference fused ({b}) step speed-up {full} vs {name}, batch 1",
                    fused[b][full],
                    fused[b][name],
                    0.5 * a.N / r,
                )
                ratio(
                    f"inference step speed-up {full} (DSS.step) vs {name} (fused, {b}), batch 1",
                    unfused[full],
                    fused[b][name],
                    0.5 * a.N / r,
                )
        for name in models:
            ratio(f"inference fused ({b}) vs DSS.step, {name}, batch 1", unfused[name], fused[b][name])

    # whole model per token at batch 1, beside its floors
    t = time_token(models, streams, a.steps, a.repeats)
    peak = measured_matmul_peak(128 if a.quick else 512)
    print(f"   measured single-thread matmul peak {peak / 1e9:.1f} GFLOP/s (float32 512x512 @ 512x512)")
    for name in models:
        nbytes, flops = step_bytes_and_flops(streams[name][0])
        bw = measured_read_bandwidth(nbytes)
        floor_mem, floor_flop = nbytes / bw, flops / peak
        for kind, label in (("fused", "fused torch"), ("onnx", "onnxruntime"), ("step", "S4Model.step")):
            time_line(f"inference per token, batch 1, {name}, {label}", t[name][kind])
        best = min(min(t[name]["fused"]), min(t[name]["onnx"]))
        print(
            f"FLOOR inference per token, batch 1, {name}: {nbytes / 1024:.0f} KiB read at {bw / 1e9:.1f} GB/s "
            f"(measured on {max(nbytes, 1 << 20) / 1024:.0f} KiB) -> {fmt_s(floor_mem)}; {flops / 1e6:.2f} MFLOP at "
            f"matmul peak -> {fmt_s(floor_flop)}; best measured {fmt_s(best)} = "
            f"{best / max(floor_mem, floor_flop):.1f}x the larger floor"
        )
    for name in models:
        if name != full:
            ratio(
                f"inference whole-model per-token speed-up {full} vs {name}, fused torch, batch 1",
                t[full]["fused"],
                t[name]["fused"],
            )
            ratio(
                f"inference whole-model per-token speed-up {full} vs {name}, onnxruntime, batch 1",
                t[full]["onnx"],
                t[name]["onnx"],
            )
    for name in models:
        ratio(f"inference whole-model fused torch vs S4Model.step, {name}, batch 1", t[name]["step"], t[name]["fused"])
        ratio(f"inference whole-model onnxruntime vs S4Model.step, {name}, batch 1", t[name]["step"], t[name]["onnx"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (keeps the script working in tests)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--orders", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes of the recurrent timings")
    ap.add_argument("--steps", type=int, default=200, help="steps per timed block")
    ap.add_argument(
        "--conv",
        nargs="+",
        default=["4096x4", "16384x1"],
        help="convolution-mode sizes as LENGTHxBATCH (16K input steps per forward by default)",
    )
    ap.add_argument("--conv-repeats", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: an edge core; 0: torch's default)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only-deploy", action="store_true", help="only the fused / ONNX / floors part")
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="fresh order-r models instead of BT-reduced ones (same shapes and timings, no reduction)",
    )
    a = ap.parse_args()
    if a.quick:
        a.layers, a.H, a.N, a.orders, a.batch, a.steps, a.repeats = 2, 16, 16, [2, 4], [1, 4], 20, 2
        a.conv, a.conv_repeats = ["256x2"], 2
    if a.threads:
        torch.set_num_threads(a.threads)
    header(
        "Compressed inference: full-N model vs BT-reduced order-r models (recurrent and convolution mode)",
        layers=a.layers,
        H=a.H,
        N=a.N,
        orders=a.orders,
        threads=torch.get_num_threads(),
        repeats=a.repeats,
        steps_per_block=a.steps,
    )
    models = build(a)
    if a.profile:
        return profile(a, models)
    full = f"N={a.N}"
    if a.only_deploy:
        deploy_report(a, models)
        return finish()
    check_recurrent_equals_convolution(models, 16 if a.quick else 64)
    memory_report(models, a.N)

    for b in a.batch:
        t = time_dss_step(models, b, a.steps, a.repeats)
        for name, ts in t.items():
            time_line(f"inference DSS.step per layer, batch {b}, {name}", ts)
        for name in t:
            if name != full:
                r = order(name)
                ratio(f"inference DSS.step speed-up {full} vs {name}, batch {b}", t[full], t[name], 0.5 * a.N / r)
    for b in a.batch:
        t = time_model_step(models, b, a.steps, a.repeats)
        for name, ts in t.items():
            time_line(f"inference S4Model.step, batch {b}, {name}", ts, extra=f"  -> {b / min(ts):.0f} steps/s at min")
        for name in t:
            if name != full:
                ratio(f"inference whole-model step speed-up {full} vs {name}, batch {b}", t[full], t[name])
    for size in a.conv:
        L, cb = (int(v) for v in size.split("x"))
        t = time_convolution(models, cb, L, a.conv_repeats)
        for name, ts in t.items():
            time_line(
                f"inference convolution mode L={L} batch {cb}, {name}",
                ts,
                extra=f"  -> {cb / min(ts):.2f} sequences/s, {cb * L / min(ts):.0f} steps/s at min",
            )
        for name in t:
            if name != full:
                ratio(f"inference convolution-mode speed-up L={L} {full} vs {name}", t[full], t[name])
    deploy_report(a, models)
    finish()


if __name__ == "__main__":
    main()
