"""dssbt.eager: the training jobs' AdamW is torch's AdamW, and a training process never imports torch._dynamo."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train import HP, make_task

from dssbt.eager import AdamW


def _groups(model):
    return [
        {"params": [model[0].weight], "lr": 0.01, "weight_decay": 0.0},
        {"params": [model[0].bias, model[1].weight], "lr": 0.03, "weight_decay": 0.1},
    ]


@pytest.fixture(params=["step_body", "public_step"])
def step_path(request, monkeypatch):
    """Each test using it runs twice: with torch's step body (this torch) and with the public step, the path taken
    on a torch whose AdamW does not run Adam's body (dssbt.eager.ADAM_STEP_BODY None)."""
    import dssbt.eager

    assert dssbt.eager.ADAM_STEP_BODY is not None  # the pinned torch (2.13) takes the fast path
    if request.param == "public_step":
        monkeypatch.setattr(dssbt.eager, "ADAM_STEP_BODY", None)
    return request.param


def test_eager_adamw_takes_the_same_steps_as_torch_adamw_and_swaps_state_dicts_with_it(step_path):
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3, bias=False)).double()
    ours = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3, bias=False)).double()
    ours.load_state_dict(ref.state_dict())
    opt_ref, opt = torch.optim.AdamW(_groups(ref)), AdamW(_groups(ours))
    x = torch.randn(16, 5, dtype=torch.float64)
    for step in range(6):
        for model, o in ((ref, opt_ref), (ours, opt)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
        for p, q in zip(ref.parameters(), ours.parameters()):
            assert torch.equal(p, q), f"step {step}"
        assert torch.is_grad_enabled()  # step leaves autograd as it found it
    # a resume file written by either loads into the other and continues identically
    sd = opt.state_dict()
    assert json.dumps(sd["param_groups"]) == json.dumps(opt_ref.state_dict()["param_groups"])
    for k, state in sd["state"].items():
        for name, v in state.items():
            assert torch.equal(v, opt_ref.state_dict()["state"][k][name]), (k, name)
    swapped = torch.optim.AdamW(_groups(ours))
    swapped.load_state_dict(sd)
    opt_ref.zero_grad()
    ref(x).sum().backward()
    opt_ref.step()
    swapped.zero_grad()
    ours(x).sum().backward()
    swapped.step()
    for p, q in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_a_training_process_never_imports_torch_dynamo(tmp_path):
    # the whole `dssbt train` command in one process (plateau schedule), then what a resume adds (an optimizer's
    # load_state_dict); torch.optim imports torch._dynamo lazily, so it would show up here
    task = make_task(tmp_path / "task")
    hp = json.loads(json.dumps(HP))
    hp["optim"].update(epochs=2, schedule="plateau")
    args = [
        "train",
        "--data",
        str(task),
        "--hparams",
        json.dumps(hp),
        "--init",
        "skew_hippo",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "run"),
    ]
    script = textwrap.dedent(f"""
        import sys
        from dssbt.cli import main
        assert main({args!r}) == 0
        import torch
        from dssbt.eager import AdamW
        o = AdamW([torch.nn.Parameter(torch.ones(2))])
        o.load_state_dict(o.state_dict())
        print("dynamo imported:", "torch._dynamo" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dynamo imported: False" in r.stdout, r.stdout
    # the same process without dssbt.eager's measures does import it (so the check above can fail)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import sys, torch
        p = torch.nn.Parameter(torch.ones(2))
        torch.optim.AdamW([p]).step()
        print("dynamo imported:", "torch._dynamo" in sys.modules)
    """),
        ],
        capture_output=True,
        text=True,
    )
    assert "dynamo imported: True" in r.stdout, r.stdout + r.stderr
