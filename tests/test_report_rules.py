"""Every output the rules mark with report(...) can be toggled in `snakemake --report`: it has a caption that exists,
a category, a subcategory and labels, and no two results of one subcategory share their labels (the report would
show only one of them). Read from the rule files' text, so it needs no finished run (test_workflow builds a real
report from its tiny run)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "workflow" / "rules"


def report_calls() -> list[tuple[str, dict]]:
    """(rule file, keyword arguments) of every report(...) call, the arguments parsed as Python literals."""
    calls = []
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"\breport\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = ast.parse("report(" + text[m.end() : i], mode="eval").body
            args = {"path": call.args[0]} | {k.arg: k.value for k in call.keywords}
            calls.append((smk.name, {k: ast.literal_eval(v) for k, v in args.items()}))
    return calls


def test_every_report_output_has_caption_category_subcategory_and_labels():
    calls = report_calls()
    assert len(calls) >= 13, calls
    seen = {}
    for smk, kw in calls:
        assert {"caption", "category", "subcategory", "labels"} <= set(kw), (smk, kw)
        assert (RULES / kw["caption"]).resolve().is_file(), (smk, kw["caption"])
        assert isinstance(kw["labels"], dict) and kw["labels"], (smk, kw)
        key = (kw["category"], kw["subcategory"], tuple(sorted(kw["labels"].items())))
        assert key not in seen, (smk, kw["path"], seen.get(key))
        seen[key] = kw["path"]
    paths = {kw["path"] for _, kw in calls}
    for wanted in (
        "results/tables/accuracy.csv",
        "results/tables/differences.csv",
        "results/tables/methods.md",
        "results/tables/deploy.csv",
        "results/plots/deploy_pareto.png",
        "results/tables/compress.csv",
        "results/plots/compress_hsv_decay.png",
        "results/tables/correlation.csv",
        "results/plots/accuracy_vs_order.png",
    ):
        assert wanted in paths, wanted
