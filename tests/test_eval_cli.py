"""eval.py end to end on tiny checkpoints trained here in seconds: the --quick suite with a reward
model and a baseline (table, JSON line, summary files), the golden-set hook, `eval.py report` on the
run folders (without matplotlib: report still written), `eval.py human` generating responses; and
the log-likelihood scores of nanopost/knowledge.py against a direct float64 computation."""
import json
import math
import os
import sys

import pytest
import torch

import eval as eval_script
from nanopost import knowledge
from nanopost.checkpoint import load_checkpoint, save_checkpoint
from nanopost.model import ScalarModel
from test_train import ROOT, SMALL_BASE, SMALL_SFT, run_script


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/base, runs/sft (tiny, a few seconds each) and runs/rm (the SFT body with a random head)."""
    root = tmp_path_factory.mktemp("runs")
    run_script(["train_base.py", "--out", str(root / "base")] + SMALL_BASE)
    run_script(["train_sft.py", "--init", str(root / "base" / "ckpt"), "--out", str(root / "sft")] + SMALL_SFT)
    state = load_checkpoint(str(root / "sft" / "ckpt"))
    rm = ScalarModel(state["model"])
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.head.weight, std=0.5)
    save_checkpoint(str(root / "rm" / "ckpt"), rm.gpt, state["tok"], 0, {}, "rm",
                    extra={"head": rm.head.state_dict(), "reward_mean": 0.5, "reward_std": 2.0})
    return root


def test_eval_quick_smoke_then_report(runs):
    out = runs / "eval"
    summary, err = run_script(["eval.py", "--ckpt", str(runs / "base" / "ckpt"), "--ckpt", str(runs / "sft" / "ckpt"),
                               "--baseline", str(runs / "base" / "ckpt"), "--rm", str(runs / "rm" / "ckpt"),
                               "--quick", "--out", str(out)])
    assert summary["stage"] == "eval" and summary["wall_s"] > 0 and len(summary["checkpoints"]) == 2
    sft = summary["checkpoints"][str(runs / "sft" / "ckpt")]
    for key in ("tasks", "passk", "ifeval", "mc", "ppl", "prefs", "golden"):
        assert key in sft, key
    assert set(sft["tasks"]) == {"all", "arithmetic", "code", "roots", "steps"}
    assert sft["golden"]["all"]["n"] == 36 and "facts" in sft["golden"]
    assert {"pass@1", "pass@2"} <= set(sft["passk"])
    assert {"prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"} <= set(sft["ifeval"])
    for rate in (sft["tasks"]["all"], sft["ifeval"]["prompt_loose"], sft["mc"]["letter"], sft["prefs"]["gold_rate"]):
        assert 0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1
    assert sft["ifeval"]["instruction_loose"]["rate"] >= sft["ifeval"]["instruction_strict"]["rate"]
    assert sft["ppl"]["ppl"] > 1 and "rm_score" in sft["prefs"] and 1 <= sft["prefs"]["judge_pointwise"]["mean"] <= 5
    assert sft["prefs"]["judge_pairwise"]["n"] == 6
    base = summary["checkpoints"][str(runs / "base" / "ckpt")]
    assert base["prefs"]["judge_pairwise"]["win_rate"] == 0.5  # the baseline against itself: all ties
    assert (out / "details.json").exists() and (out / "metrics.jsonl").exists()
    # the report card: base and sft columns, eval rows landing in the columns of the checkpoints
    report_out = runs / "report"
    result, err = run_script(["eval.py", "report", str(runs / "base"), str(runs / "sft"), str(out),
                              "--out", str(report_out)])
    text = open(result["report"]).read()
    assert result["columns"] == ["base", "sft"]
    header = next(line for line in text.splitlines() if line.startswith("| metric"))
    assert header == "| metric | base | sft |"
    row = next(line for line in text.splitlines() if line.startswith("| eval/tasks/all |"))
    assert row.count("[") == 2  # a value with its interval in both columns
    assert any(line.startswith("| heldout_accuracy/all |") for line in text.splitlines())
    try:
        import matplotlib  # noqa: F401
        assert result["plots"]
    except ImportError:
        assert "matplotlib is not installed" in text and result["plots"] == []


def test_eval_table_and_sections_flag(runs, capsys):
    summary = eval_script.evaluate_checkpoints([str(runs / "sft" / "ckpt")], sections="mc,ifeval", quick=True,
                                               out=str(runs / "eval_mc"))
    res = summary["checkpoints"][str(runs / "sft" / "ckpt")]
    assert set(res) == {"stage", "step", "mc", "ifeval", "eval_s"}
    table = capsys.readouterr().out
    assert "mc/letter" in table and "value [95% interval]" in table
    with pytest.raises(SystemExit, match="unknown --sections"):
        eval_script.evaluate_checkpoints([str(runs / "sft" / "ckpt")], sections="nope", out=str(runs / "x"))


@pytest.mark.parametrize("kind", ["likelihood", "revision"])
def test_eval_pairwise_logprob_judges(runs, kind):
    """--judge_kind likelihood | revision: the baseline against itself ties exactly (the judges are
    antisymmetric); an unknown kind stops before any work."""
    kw = dict(sections="prefs", quick=True, judge_kind=kind, baseline=str(runs / "base" / "ckpt"))
    summary = eval_script.evaluate_checkpoints([str(runs / "base" / "ckpt"), str(runs / "sft" / "ckpt")],
                                               out=str(runs / f"eval_{kind}"), **kw)
    base, sft = (summary["checkpoints"][str(runs / name / "ckpt")]["prefs"] for name in ("base", "sft"))
    assert base["judge_pairwise"]["win_rate"] == 0.5 and base["judge_pairwise"]["ties"] == base["judge_pairwise"]["n"]
    assert sft["judge_pairwise"]["n"] == 6 and 0 <= sft["judge_pairwise"]["win_rate"] <= 1
    with pytest.raises(SystemExit, match="unknown --judge_kind 'vote'"):
        eval_script.evaluate_checkpoints([str(runs / "sft" / "ckpt")], sections="prefs", judge_kind="vote",
                                         out=str(runs / "x"))


def test_golden_section_adds_intervals_to_score_golden(runs, monkeypatch):
    import nanopost.golden
    items = [{"id": i, "family": f, "correct": c} for i, (f, c) in
             enumerate([("facts", 1.0), ("facts", 0.0), ("code", 1.0), ("code", 1.0), ("code", 0.0)])]
    monkeypatch.setattr(nanopost.golden, "score_golden", lambda model, tok: {"accuracy": 0.6, "items": items})
    summary = eval_script.evaluate_checkpoints([str(runs / "sft" / "ckpt")], sections="golden",
                                               out=str(runs / "eval_golden"))
    golden = summary["checkpoints"][str(runs / "sft" / "ckpt")]["golden"]
    assert golden["all"]["rate"] == pytest.approx(0.6) and golden["all"]["n"] == 5
    assert golden["code"]["rate"] == pytest.approx(2 / 3) and golden["facts"]["n"] == 2
    assert golden["all"]["low"] < 0.6 < golden["all"]["high"]
    details = json.load(open(runs / "eval_golden" / "details.json"))
    assert details[str(runs / "sft" / "ckpt")]["golden"] == items


def test_human_cli_generates_responses_once(runs, tmp_path):
    out = tmp_path / "human"
    (tmp_path / "ans.txt").write_text("1\nt\n")
    result = eval_script.main(["human", "--mode", "pairwise", "--ckpt", str(runs / "base" / "ckpt"),
                               "--ckpt", str(runs / "sft" / "ckpt"), "--n", "2", "--annotator", "dan",
                               "--out", str(out), "--answers", str(tmp_path / "ans.txt")])
    assert result["written"] == 2 and len(open(out / "responses.jsonl").readlines()) == 4
    agg = eval_script.main(["human", "--aggregate", "--out", str(out)])
    assert agg["pairwise"]["n"] == 2

# ----------------------------------------------------------------------------- log-likelihood scores


def reference_logprob(model, ids):
    """log π(ids[1:] | prefix), token by token, float64, one unpadded sequence at a time."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).double()[0]
    logp = torch.log_softmax(logits, -1)
    return [float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]


def test_continuations_option_and_letter_scoring_match_a_direct_computation(runs):
    state = load_checkpoint(str(runs / "sft" / "ckpt"))
    model, tok = state["model"].eval(), state["tok"]
    items = knowledge.fact_questions()[:5] + knowledge.fact_questions()[-3:]
    assert {it["family"] for it in items} == {"capitals", "products"}
    option_picks = knowledge.option_choices(model, tok, items, batch_size=3)  # padding across batches
    letter_picks = knowledge.letter_choices(model, tok, items, batch_size=3)
    for it, opick, lpick in zip(items, option_picks, letter_picks):
        ctx = [tok.bos_id] + tok.encode(f"Question: {it['question']}\nAnswer:")
        scores = []
        for o in it["options"]:
            cont = tok.encode(" " + o)
            scores.append(sum(reference_logprob(model, ctx + cont)[len(ctx) - 1:]) / len((" " + o).encode()))
        assert opick == max(range(4), key=scores.__getitem__)
        prompt = [tok.bos_id] + tok.encode(knowledge.letter_prompt(it))
        with torch.no_grad():
            last = model(torch.tensor([prompt]))[0, -1]
        assert lpick == int(torch.argmax(last[[tok.encode(" " + l)[0] for l in "ABCD"]]))
    mc = knowledge.multiple_choice(model, tok, items)
    right = sum(p == it["answer"] for p, it in zip(option_picks, items))
    assert mc["option"]["rate"] == right / len(items) and mc["by_family"]["products"]["option"]["n"] == 3


def test_perplexity_is_exp_of_mean_token_nll(runs):
    state = load_checkpoint(str(runs / "sft" / "ckpt"))
    model, tok = state["model"].eval(), state["tok"]
    docs = ["The capital of France is Paris.", "3 * 4 = 12", "x" * 5000]  # the last one is too long
    out = knowledge.perplexity(model, tok, docs=docs)
    nll = [-v for d in docs[:2] for v in reference_logprob(model, [tok.bos_id] + tok.encode(d))]
    assert out["skipped"] == 1 and out["tokens"] == len(nll)
    assert out["ppl"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    assert out["low"] <= out["ppl"] <= out["high"]


def test_help_documents_every_flag():
    import subprocess
    out = subprocess.run([sys.executable, "eval.py", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    for name in eval_script.EvalConfig.__dataclass_fields__:
        assert f"--{name}" in out, name
