import json
import subprocess
import sys

import numpy as np
from test_model import small_model

from dssbt.checkpoint import load_model, save_model


def run(*args):
    return subprocess.run([sys.executable, "-m", "dssbt", *args], capture_output=True, text=True)


def test_reduce_command_writes_model_and_report(tmp_path):
    model = small_model()
    save_model(tmp_path / "pre.pt", model, {"l_max": 64})
    out, rep = tmp_path / "r4.pt", tmp_path / "r4.json"
    p = run("reduce", "--model", str(tmp_path / "pre.pt"), "--order", "4", "--out", str(out), "--report", str(rep))
    assert p.returncode == 0, p.stderr
    reduced, meta = load_model(out)
    assert reduced.cfg.d_state == 4
    assert meta["reduction"] == {
        "method": "bt",
        "route": "discrete",
        "r": 4,
        "layer_orders": [4, 4],
        "order_spec": "4",
        "N": 12,
    }
    report = json.loads(rep.read_text())
    assert report["kernel_length"] == 64 and report["r"] == 4 and len(report["layers"]) == 2
    layer = report["layers"][0]
    assert np.asarray(layer["hsv"]).shape == (1, 6, 12)
    assert np.asarray(layer["rel_kernel_error"]).shape == (1, 6)
    hsv = np.asarray(layer["hsv"])
    np.testing.assert_allclose(layer["bound"], 2 * hsv[..., 4:].sum(-1), rtol=1e-12)


def test_reduce_command_rejects_order_at_least_n_and_writes_nothing(tmp_path):
    save_model(tmp_path / "pre.pt", small_model(), {"l_max": 64})
    out, rep = tmp_path / "r.pt", tmp_path / "r.json"
    p = run("reduce", "--model", str(tmp_path / "pre.pt"), "--order", "12", "--out", str(out), "--report", str(rep))
    assert p.returncode == 2
    assert "1 <= r < N = 12, got r=12" in p.stderr
    assert not out.exists() and not rep.exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["pre.pt"]  # no temporary left behind


def test_reduce_command_needs_a_kernel_length(tmp_path):
    save_model(tmp_path / "pre.pt", small_model())
    p = run(
        "reduce",
        "--model",
        str(tmp_path / "pre.pt"),
        "--order",
        "2",
        "--out",
        str(tmp_path / "o.pt"),
        "--report",
        str(tmp_path / "o.json"),
    )
    assert p.returncode == 2 and "pass --kernel-length" in p.stderr


def test_a_job_limits_numpy_blas_to_its_threads(monkeypatch):
    from threadpoolctl import threadpool_info

    from dssbt import cli

    seen = []
    monkeypatch.setattr(
        cli,
        "cmd_orders",
        lambda args: seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
    )
    assert cli.main(["orders", "--model", "x", "--spec", "tol:0.1", "--out", "y", "--threads", "1"]) == 0
    assert seen and set(seen) == {1}


# ----- the command line's conventions (dssbt.cli: one flag per role, no abbreviations, complete help) -------------

# Flags that named a role differently before the command line was made consistent; none may come back.
OLD_FLAGS = {"--checkpoint", "--reduced", "--out-dir"}
# --metrics was reduce's output and deploy-measure's input: now it is only an input, reduce writes --metrics-out
WHERE = {"--metrics": {"deploy-measure"}, "--metrics-out": {"reduce"}, "--report": {"reduce", "reduce-s4d"}}


def all_parsers(parser=None, path=("dssbt",)):
    """(command path, parser) of the main parser and every subcommand, nested ones included."""
    import argparse

    from dssbt.cli import build_parser

    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


def test_every_subcommand_uses_the_shared_flag_names_and_has_complete_help():
    import argparse

    commands = {" ".join(path[1:]) for path, _ in all_parsers()}
    seen = {flag: set() for flag in WHERE}
    assert {"train", "evaluate", "reduce", "orders", "export", "predict", "deploy-measure", "reduce-s4d"} <= commands
    for path, parser in all_parsers():
        where = " ".join(path)
        assert parser.allow_abbrev is False, where
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:  # the one-line help of each subcommand
                    assert choice.help, f"{where} {choice.dest}: no help"
                continue
            assert action.help and action.help.strip(), f"{where}: {action.option_strings or action.dest} has no help"
            # a positional names a choice (download's archive); files and folders are given by flags
            assert action.option_strings or action.choices, f"{where}: positional {action.dest!r} is not a choice"
            assert not OLD_FLAGS & set(action.option_strings), f"{where}: old flag {action.option_strings}"
            for flag in WHERE.keys() & set(action.option_strings):
                seen[flag].add(" ".join(path[1:]))
        parser.format_help()  # every help string formats (no stray %)
    assert seen == WHERE  # no flag is an input in one subcommand and an output in another


def test_every_model_input_is_model_and_every_primary_output_is_out():
    from dssbt.cli import build_parser

    p = build_parser()
    io = ["--model", "m.pt", "--out", "o"]
    for argv in (
        ["train", "--data", "d", "--init", "from_reduced", *io],
        ["evaluate", "--data", "d", *io],
        ["reduce", "--report", "r.json", *io],
        ["orders", "--spec", "tol:0.1", *io],
        ["export", *io],
        ["deploy-measure", "--onnx", "m.onnx", "--data", "d", *io],
        ["reduce-s4d", "--order", "4", *io],
    ):
        a = p.parse_args(argv)
        assert (a.model, a.out) == ("m.pt", "o"), argv
    a = p.parse_args(["reduce", "--model", "m", "--out", "r.pt", "--report", "r.json", "--metrics-out", "x.json"])
    assert a.metrics_out == "x.json"
    a = p.parse_args(["predict", "--onnx", "m.onnx", "--input", "x.png"])
    assert (a.onnx, a.input) == ("m.onnx", "x.png")


def test_an_abbreviated_flag_is_refused():
    p = run("train", "--data", "d", "--init", "skew_hippo", "--out-d", "X")  # not taken for --out
    assert p.returncode == 2 and "the following arguments are required: --out" in p.stderr, p.stderr
    p = run("train", "--data", "d", "--init", "skew_hippo", "--out", "o", "--out-d", "X")
    assert p.returncode == 2 and "unrecognized arguments: --out-d X" in p.stderr, p.stderr
    p = run("reduce", "--mod", "m.pt", "--order", "2", "--out", "o.pt", "--report", "o.json")
    assert p.returncode == 2 and "--model" in p.stderr and "required" in p.stderr, p.stderr
    p = run("generate", "listops", "--o", "X")  # a nested subcommand too
    assert p.returncode == 2 and "--out" in p.stderr, p.stderr


def test_orders_spec_help_lists_every_form():
    p = run("orders", "--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "tol:<x>" in text and "budget:<f>" in text and "8" in text


def test_hparams_inline_json_json_file_and_yaml_file(tmp_path):
    from dssbt.cli import build_parser

    p = build_parser()
    inline = '{"optim": {"epochs": 3, "lr": 0.01}}'
    (tmp_path / "hp.json").write_text(inline)
    (tmp_path / "hp.yaml").write_text("optim:\n  epochs: 3\n  lr: 1.0e-2\n")
    (tmp_path / "hp.yml").write_text("optim: {epochs: 3, lr: 0.01}\n")
    want = {"optim": {"epochs": 3, "lr": 0.01}}
    for value in (inline, tmp_path / "hp.json", tmp_path / "hp.yaml", tmp_path / "hp.yml"):
        a = p.parse_args(["evaluate", "--model", "m", "--data", "d", "--out", "o", "--hparams", str(value)])
        assert a.hparams == want, value
    assert p.parse_args(["evaluate", "--model", "m", "--data", "d", "--out", "o"]).hparams == {}


def test_hparams_errors_name_the_file_or_the_value(tmp_path):
    def error(value):
        p = run("evaluate", "--model", "m", "--data", "d", "--out", "o", "--hparams", str(value))
        assert p.returncode == 2
        return p.stderr

    missing = tmp_path / "nope.json"
    assert f"--hparams {missing}: no such file" in error(missing)
    (tmp_path / "bad.json").write_text("{optim: 1}")
    assert f"--hparams {tmp_path / 'bad.json'}: not valid JSON" in error(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("optim: [1\n")
    assert f"--hparams {tmp_path / 'bad.yaml'}: not valid YAML" in error(tmp_path / "bad.yaml")
    (tmp_path / "key.yaml").write_text("optim:\n  lr: 1e-3\n")
    e = error(tmp_path / "key.yaml")
    assert f"--hparams {tmp_path / 'key.yaml'}: hyper-parameters: optim.lr must be float" in e and "1.0e-3" in e
    assert "--hparams {optim: 1}: not valid JSON" in error("{optim: 1}")
    assert "--hparams 'hp.txt': neither inline JSON" in error("hp.txt")
    assert "unknown section(s) ['optm']" in error('{"optm": {}}')
