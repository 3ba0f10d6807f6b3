import numpy as np
import pytest
import torch

from dssbt.checkpoint import load_model, save_model
from dssbt.model import ModelConfig, S4Model, count_parameters
from dssbt.oracles import run_recording_dss_io, simulate_dense
from dssbt.reduction import reduce
from dssbt.reduction.apply import reduce_model

SSM = ("Lambda_log_neg_re", "Lambda_im", "B", "C")


def small_model(seed=0, **kw) -> S4Model:
    torch.manual_seed(seed)
    cfg = dict(d_input=3, d_output=5, d_model=6, d_state=12, n_layers=2, norm="batch", output="glu")
    cfg.update(kw)
    model = S4Model(ModelConfig(**cfg))
    # Perturb every weight so "copied" and "re-initialised" cannot coincide (batch-norm stats included).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] not in SSM:
                p.add_(0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['d_hidden'\]"):
        ModelConfig.from_dict({"d_input": 1, "d_output": 2, "d_hidden": 4})
    with pytest.raises(ValueError, match="norm='group' is not one of"):
        ModelConfig(d_input=1, d_output=2, norm="group")
    with pytest.raises(ValueError, match="d_state must be int, got '64'"):
        ModelConfig(d_input=1, d_output=2, d_state="64")
    with pytest.raises(ValueError, match="prenorm must be bool"):
        ModelConfig(d_input=1, d_output=2, prenorm=1)
    with pytest.raises(ValueError, match="missing 1 required positional argument: 'd_output'"):
        ModelConfig.from_dict({"d_input": 1})
    assert ModelConfig.from_dict(ModelConfig(d_input=1, d_output=2).to_dict()) == ModelConfig(d_input=1, d_output=2)


def test_parameter_count_matches_a_hand_count():
    # H=6, N=12, 2 layers, GLU, batch norm, linear encoder from 3 features, 5 classes, unidirectional.
    model = small_model()
    H, N, d_in, d_out, n_layers = 6, 12, 3, 5, 2
    ssm_per_layer = H * N * (2 + 2 + 2) + H + H  # Lambda (re, im), B, C (complex: 2 reals each); D, log_dt
    block = ssm_per_layer + 2 * H + (H * 2 * H + 2 * H)  # + batch norm (weight, bias) + GLU output linear
    total = (d_in * H + H) + n_layers * block + 2 * H + (H * d_out + d_out)  # encoder, blocks, final norm, decoder
    assert count_parameters(model) == {"total": total, "ssm": n_layers * ssm_per_layer}


@pytest.mark.parametrize("bidirectional", [False, True])
def test_state_count_is_the_number_of_complex_modes_the_model_holds(bidirectional):
    cfg = ModelConfig(d_input=3, d_output=5, d_model=6, d_state=12, n_layers=2, bidirectional=bidirectional)
    for c in (cfg, cfg.with_layer_orders([5, 12]), cfg.with_layer_orders([3, 3])):
        modes = sum(b.dss.Lambda_im.numel() for b in S4Model(c).blocks)  # (n_dir, H, r) per layer
        assert c.n_states() == modes
    assert cfg.n_states([5, 12]) == (5 + 12) * 6 * (2 if bidirectional else 1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("route", ["continuous", "discrete"])
def test_reduced_model_runs_each_reduced_channel_system(bidirectional, route):
    model = small_model(bidirectional=bidirectional)
    r = 4
    reduced, report = reduce_model(model, r, route=route, kernel_length=50)

    # Reference: reduce the same channels independently and simulate each with the dense expm model.
    x = torch.randn(2, 50, 3)
    logits, inputs, outputs = run_recording_dss_io(reduced, x)
    for k, full_layer in enumerate(model.dss_layers()):
        ss = {a: v.numpy() for a, v in full_layer.ss_params().items()}
        dt = np.broadcast_to(ss["dt"], ss["Lambda"].shape[:-1]) if route == "discrete" else None
        res = reduce(ss["Lambda"], ss["B"], ss["C"], r, dt=dt)
        u = inputs[k].double().numpy()  # (B, H, L)
        y = np.empty_like(u)
        for b in range(u.shape[0]):
            for h in range(u.shape[1]):
                y[b, h] = simulate_dense(res.Lambda[0, h], res.B[0, h], res.C[0, h], ss["D"][h], ss["dt"][h], u[b, h])
                if bidirectional:
                    y[b, h] += simulate_dense(
                        res.Lambda[1, h], res.B[1, h], res.C[1, h], 0.0, ss["dt"][h], u[b, h, ::-1]
                    )[::-1]
        np.testing.assert_allclose(outputs[k].numpy(), y, rtol=1e-4, atol=1e-4 * np.abs(y).max())
        assert np.asarray(report["layers"][k]["hsv"]).shape == (2 if bidirectional else 1, 6, 12)
    # The whole model also agrees with its own recurrent mode.
    with torch.no_grad():
        torch.testing.assert_close(reduced(x, recurrent=True), logits, rtol=1e-4, atol=1e-4)


def test_reduced_model_is_a_fresh_order_r_architecture_with_copied_weights():
    model = small_model(dual=True, encoder="embedding", d_input=20)
    reduced, _ = reduce_model(model, 3, kernel_length=30)
    torch.manual_seed(1)
    fresh = S4Model(model.cfg.replace(d_state=3))
    assert reduced.cfg == fresh.cfg
    assert count_parameters(reduced) == count_parameters(fresh)
    assert {k: v.shape for k, v in reduced.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    full_sd, red_sd = model.state_dict(), reduced.state_dict()
    for k, v in full_sd.items():
        if k.split(".")[-1] in SSM:
            assert red_sd[k].shape[-2 if k.endswith((".B", ".C")) else -1] == 3
        else:
            assert torch.equal(red_sd[k], v), k  # D, log_dt, encoder, norms, output maps, decoder: identical
    x = torch.randint(1, 20, (2, 2, 30))
    assert reduced(x).shape == (2, 5)


def test_report_errors_shrink_with_order_and_respect_the_bound_on_a_trained_like_model():
    model = small_model()
    with torch.no_grad():  # fast-decaying output weights, as after training
        for layer in model.dss_layers():
            layer.C.mul_(torch.logspace(0, -6, 12).view(1, 1, 12, 1))
    errs = [np.max(reduce_model(model, r, kernel_length=200)[1]["layers"][0]["rel_kernel_error"]) for r in (2, 6, 10)]
    assert errs[0] > errs[1] > errs[2]


def test_bad_orders_are_rejected():
    model = small_model()
    for r in (12, 13, 0, -1):
        with pytest.raises(ValueError, match=rf"1 <= r < N = 12, got r={r}"):
            reduce_model(model, r)
    with pytest.raises(ValueError, match="unknown Gramian route 'hankel'"):
        reduce_model(model, 4, route="hankel")


def test_nan_parameter_is_reported_with_layer_and_channel():
    model = small_model()
    with torch.no_grad():
        model.blocks[1].dss.C[0, 3, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 1 .*C is not finite at index \(0, 3, 2\)"):
        reduce_model(model, 4)


def test_unstable_or_nan_lambda_in_a_file_is_rejected_naming_layer_and_channel(tmp_path):
    model = small_model()
    with torch.no_grad():
        model.blocks[1].dss.Lambda_log_neg_re[0, 4, 7] = -float("inf")  # Re Lambda = -exp(-inf) = 0: unstable
    save_model(tmp_path / "bad.pt", model)
    with pytest.raises(
        ValueError, match=r"bad.pt: layer 1: Lambda has Re >= 0 \(unstable\) at direction 0, channel 4, mode 7"
    ):
        load_model(tmp_path / "bad.pt")
    with torch.no_grad():
        model.blocks[1].dss.Lambda_log_neg_re[0, 4, 7] = 0.0
        model.blocks[0].dss.log_dt[2] = float("nan")
    save_model(tmp_path / "nan.pt", model)
    with pytest.raises(ValueError, match=r"nan.pt: layer 0: dt is not finite at channel 2"):
        load_model(tmp_path / "nan.pt")


def test_checkpoint_round_trip_and_architecture_mismatch(tmp_path):
    model = small_model()
    save_model(tmp_path / "m.pt", model, {"l_max": 50})
    loaded, meta = load_model(tmp_path / "m.pt", expect=model.cfg)
    assert meta == {"l_max": 50}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match=r"m.pt: architecture differs .*'d_state': \(12, 8\)"):
        load_model(tmp_path / "m.pt", expect=model.cfg.replace(d_state=8))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt: not a readable model file"):
        load_model(tmp_path / "junk.pt")


@pytest.mark.parametrize(
    "options",
    [
        dict(norm="layer", prenorm=True, output="linear", pool="mean"),
        dict(norm="layer", prenorm=False, output="glu", pool="last"),
        dict(norm="batch", prenorm=False, output="linear", pool="mean", bidirectional=True),
        dict(norm="batch", prenorm=True, output="glu", pool="last", init="s4d_inv"),
    ],
)
def test_every_block_variant_trains_and_matches_its_recurrent_mode(options):
    model = small_model(**options)
    x = torch.randn(3, 40, 3)
    logits = model(x)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x, recurrent=True), logits.detach(), rtol=1e-4, atol=1e-4)


def test_padding_after_the_length_does_not_change_a_causal_token_model():
    model = small_model(encoder="embedding", d_input=11, norm="layer")
    x = torch.randint(2, 11, (2, 30))
    lengths = torch.tensor([30, 17])
    padded = torch.cat([x, torch.zeros(2, 25, dtype=torch.long)], 1)  # 0 = padding id
    x[1, 17:] = 0
    padded[1, 17:] = 0
    with torch.no_grad():
        for pool in ("mean", "last"):
            model.cfg = model.cfg.replace(pool=pool)
            torch.testing.assert_close(model(padded, lengths), model(x, lengths), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "last"])
@pytest.mark.parametrize("encoder", ["linear", "embedding"])
def test_step_by_step_inference_equals_the_convolution_on_every_prefix(pool, encoder):
    model = small_model(pool=pool, encoder=encoder, d_input=9 if encoder == "embedding" else 3)
    x = torch.randint(1, 9, (2, 25)) if encoder == "embedding" else torch.randn(2, 25, 3)
    state = model.init_state(2)
    for t in range(25):
        logits = model.step(x[:, t], state)
        if t in (0, 11, 24):
            with torch.no_grad():
                torch.testing.assert_close(logits, model(x[:, : t + 1]), rtol=1e-4, atol=1e-5)


def test_step_inference_refuses_bidirectional_models():
    with pytest.raises(ValueError, match="unidirectional"):
        small_model(bidirectional=True).init_state(1)


@pytest.mark.parametrize("method", ["bsp", "modal", "h2"])
@pytest.mark.parametrize("route", ["continuous", "discrete"])
def test_other_methods_at_model_level(method, route):
    model = small_model(bidirectional=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reduced, report = reduce_model(model, 4, method=method, route=route, kernel_length=60)
    assert report["method"] == method and reduced.cfg.d_state == 4
    assert count_parameters(reduced) == count_parameters(S4Model(model.cfg.replace(d_state=4)))
    for k, v in model.state_dict().items():
        if k.split(".")[-1] not in SSM and not k.endswith("dss.D"):
            assert torch.equal(reduced.state_dict()[k], v), k
    for layer_full, layer_red, rep in zip(model.dss_layers(), reduced.dss_layers(), report["layers"]):
        ss = {a: v.numpy() for a, v in layer_full.ss_params().items()}
        dt = None if route == "continuous" else np.broadcast_to(ss["dt"], ss["Lambda"].shape[:-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = reduce(ss["Lambda"], ss["B"], ss["C"], 4, method=method, dt=dt)
        expect_D = ss["D"] + (0 if res.D is None else res.D.real.sum(0))
        np.testing.assert_allclose(layer_red.D.detach().double().numpy(), expect_D, rtol=1e-6, atol=1e-6)
        if method == "bsp":  # the stored reduced layer keeps each channel's DC gain + D
            # Re(-sum C B / Lambda) + D; ZOH keeps the DC gain, so this is also the discrete kernel's sum
            # sum_l K[l] = Re(sum C B_bar / (1 - Lambda_bar)) (+ D) that the discrete route matches
            def dc(layer):
                p = layer.ss_params()
                return (-(p["C"] * p["B"] / p["Lambda"]).sum(-1)).real.sum(0) + p["D"]  # (H,)

            torch.testing.assert_close(dc(layer_red), dc(layer_full), rtol=1e-4, atol=1e-4)
        assert np.all(np.isfinite(rep["rel_kernel_error"]))


def test_reported_kernel_error_counts_a_changed_feedthrough():
    """bsp moves part of the response into D: the reported error is that of the impulse responses (dense reference)."""
    model = small_model()
    reduced, report = reduce_model(model, 3, method="bsp", route="discrete", kernel_length=80)
    impulse = np.zeros(80)
    impulse[0] = 1.0
    for full, red, rep in zip(model.dss_layers(), reduced.dss_layers(), report["layers"]):
        f, g = ({a: v.numpy() for a, v in layer.ss_params().items()} for layer in (full, red))
        assert not np.allclose(f["D"], g["D"])  # the feedthrough did change
        for h in range(6):
            y_full = simulate_dense(f["Lambda"][0, h], f["B"][0, h], f["C"][0, h], f["D"][h], f["dt"][h], impulse)
            y_red = simulate_dense(g["Lambda"][0, h], g["B"][0, h], g["C"][0, h], g["D"][h], g["dt"][h], impulse)
            kernel = y_full - f["D"][h] * impulse
            want = np.linalg.norm(y_full - y_red) / np.linalg.norm(kernel)
            assert rep["rel_kernel_error"][0][h] == pytest.approx(want, rel=1e-6)
