"""In-training reduction (dssbt.shrink): the reduced model is reduce_model's, the optimizer carries over."""

import copy

import pytest
import torch
import torch.nn.functional as F

from dssbt.model import ModelConfig, S4Model
from dssbt.orders import parse_order
from dssbt.reduction.apply import ModelReducer, reduce_model
from dssbt.reduction.budget import budget_states
from dssbt.shrink import move_scheduler, orders_by_budget, orders_by_tol, shrink_model

SSM = ("Lambda_log_neg_re", "Lambda_im", "B", "C", "log_dt")


def trained(steps=3, seed=0, opt_kind="adamw"):
    """A 2-layer model (H=4, N=8) after a few optimizer steps, with train.py's two param groups."""
    torch.manual_seed(seed)
    model = S4Model(ModelConfig(d_input=1, d_output=3, d_model=4, d_state=8, n_layers=2))
    ssm = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[1] in SSM and ".dss." in n]
    rest = [p for n, p in model.named_parameters() if not (n.rsplit(".", 1)[1] in SSM and ".dss." in n)]
    if opt_kind == "adamw":
        opt = torch.optim.AdamW(
            [{"params": ssm, "lr": 1e-3, "weight_decay": 0.0}, {"params": rest, "lr": 4e-3, "weight_decay": 0.05}],
            betas=(0.9, 0.98),
        )
    else:
        opt = torch.optim.SGD([{"params": ssm, "lr": 1e-3}, {"params": rest, "lr": 1e-2}], momentum=0.9)
    x, y = torch.randn(6, 32), torch.randint(0, 3, (6,))
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, (x, y)


def backward(model, x, y):
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()


def test_shrunk_model_is_the_bt_reduced_model_and_adam_state_carries_over():
    model, opt, (x, y) = trained()
    orders = [3, 8]  # layer 0 reduced, layer 1 kept at full order
    rng = torch.get_rng_state()
    new, new_opt, report = shrink_model(model, opt, orders)
    assert torch.equal(torch.get_rng_state(), rng)  # training's random stream untouched
    ref, _ = reduce_model(model, orders, "bt", "discrete")
    for (k, v), (k2, v2) in zip(new.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    u = torch.randn(5, 40)
    with torch.no_grad():
        assert torch.equal(new(u), ref(u))
    assert report["new_basis_params"] == [
        f"blocks.0.dss.{p}" for p in sorted(("B", "C", "Lambda_im", "Lambda_log_neg_re"))
    ]
    assert new.dss_layers()[0].N == 3 and new.dss_layers()[1].N == 8

    # same optimizer kind and groups, every group setting kept
    assert type(new_opt) is torch.optim.AdamW and len(new_opt.param_groups) == 2
    old_names = {id(p): n for n, p in model.named_parameters()}
    new_names = {id(p): n for n, p in new.named_parameters()}
    for g, h in zip(opt.param_groups, new_opt.param_groups):
        assert {k: v for k, v in g.items() if k != "params"} == {k: v for k, v in h.items() if k != "params"}
        assert [old_names[id(p)] for p in g["params"]] == [new_names[id(p)] for p in h["params"]]
    old_params = dict(model.named_parameters())
    for name, q in new.named_parameters():
        st, old_st = new_opt.state[q], opt.state[old_params[name]]
        if name in report["new_basis_params"]:  # a fresh Adam state of the kept shape
            assert st["step"].item() == 0 and st["exp_avg"].shape == q.shape == st["exp_avg_sq"].shape
            assert not st["exp_avg"].any() and not st["exp_avg_sq"].any()
            assert q.shape[2] == 3
        else:
            for k in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(st[k], old_st[k]) and st[k] is not old_st[k], (name, k)

    # one more step: unchanged parameters move exactly as the old optimizer would move them with the same
    # gradient; new-basis parameters exactly as under a fresh AdamW with their group's settings
    old_model, old_opt = copy.deepcopy((model, opt))
    backward(new, x, y)
    grads = {n: q.grad.clone() for n, q in new.named_parameters()}
    basis_before = {n: q.detach().clone() for n, q in new.named_parameters() if n in report["new_basis_params"]}
    new_opt.step()
    for n, p in old_model.named_parameters():
        p.grad = grads[n].clone() if n not in report["new_basis_params"] else torch.zeros_like(p)
    old_opt.step()
    old_after = dict(old_model.named_parameters())
    group_of = {
        new_names[id(p)]: {k: v for k, v in g.items() if k != "params"}
        for g in new_opt.param_groups
        for p in g["params"]
    }
    for n, q in new.named_parameters():
        if n in report["new_basis_params"]:
            fresh = torch.nn.Parameter(basis_before[n].clone())
            fresh.grad = grads[n].clone()
            torch.optim.AdamW([{"params": [fresh], **group_of[n]}]).step()
            assert torch.equal(q, fresh), n
        else:
            assert torch.equal(q, old_after[n]), n
        assert torch.isfinite(q).all()


def test_mean_moments_keep_the_step_count_and_each_channels_second_moment():
    model, opt, _ = trained()
    new, new_opt, report = shrink_model(model, opt, [2, 5], ssm_moments="mean")
    old_params = dict(model.named_parameters())
    for name, q in new.named_parameters():
        st, old = new_opt.state[q], opt.state[old_params[name]]
        if name in report["new_basis_params"]:
            assert torch.equal(st["step"], old["step"]) and not st["exp_avg"].any()
            want = old["exp_avg_sq"].mean(dim=2, keepdim=True).expand_as(q)
            assert st["exp_avg_sq"].shape == q.shape and torch.equal(st["exp_avg_sq"], want)
    assert len(report["new_basis_params"]) == 8


def test_scheduler_continues_on_the_new_optimizer():
    model, opt, _ = trained()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(3):
        opt.step()
        sched.step()
    ref_opt, ref_sched = copy.deepcopy((opt, sched))
    new, new_opt, _ = shrink_model(model, opt, [4, 4])
    assert [g["lr"] for g in new_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    move_scheduler(sched, new_opt)
    for _ in range(2):
        new_opt.step()
        sched.step()
        ref_opt.step()
        ref_sched.step()
    assert [g["lr"] for g in new_opt.param_groups] == [g["lr"] for g in ref_opt.param_groups]
    assert new_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 6 / 10)


def test_sgd_state_is_copied_and_new_basis_state_is_created_lazily():
    model, opt, (x, y) = trained(opt_kind="sgd")
    new, new_opt, report = shrink_model(model, opt, [3, 3])
    old_params = dict(model.named_parameters())
    for name, q in new.named_parameters():
        if name in report["new_basis_params"]:
            assert q not in new_opt.state
        else:
            assert torch.equal(new_opt.state[q]["momentum_buffer"], opt.state[old_params[name]]["momentum_buffer"])
    backward(new, x, y)
    new_opt.step()
    assert all(new_opt.state[q]["momentum_buffer"].shape == q.shape for q in new.parameters())


def test_orders_by_tolerance_and_by_budget():
    model, _, _ = trained()
    assert orders_by_tol(model, 1e-3) == ModelReducer(model).choose_orders(parse_order("tol:0.001"))["layer_orders"]
    for rule in ("energy", "last"):
        orders = orders_by_budget(model, 0.4, rule=rule)
        assert sum(orders) == budget_states([8, 8], 0.4) and all(1 <= r <= 8 for r in orders)
    with pytest.raises(ValueError, match="budget rule"):
        orders_by_budget(model, 0.4, rule="random")


def test_bad_arguments_are_rejected():
    model, opt, _ = trained()
    with pytest.raises(ValueError, match="ssm_moments"):
        shrink_model(model, opt, [3, 3], ssm_moments="project")
    with pytest.raises(ValueError, match="not the model's"):
        shrink_model(model, torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]), [3, 3])
    with pytest.raises(ValueError, match="Adam"):
        shrink_model(model, torch.optim.SGD(model.parameters(), lr=0.1), [3, 3], ssm_moments="mean")
    with pytest.raises(ValueError, match="layer orders"):
        shrink_model(model, opt, [3, 9])


def test_integer_order_above_a_reduced_layer_fails_naming_the_layer_orders():
    model = S4Model(ModelConfig(d_input=1, d_output=2, d_model=4, d_state=8, n_layers=2, layer_orders=(8, 3)))
    with pytest.raises(
        ValueError,
        match=r"1 <= r < N = 3 \(the smallest layer .*layer orders are \[8, 3\].*"
        r"optim.reduce_during.*got r=4",
    ):
        reduce_model(model, 4, "bt", "discrete")
