"""The golden set: fixed by its hash, every reference scores 1, only held-out items, and scoring
works on a tiny model (per family and per item)."""
import json
import subprocess
import sys

import pytest
import torch

from nanopost import golden, quality, world
from nanopost.checkpoint import save_checkpoint
from nanopost.model import GPT, GPTConfig
from nanopost.tokenizer import Tokenizer


def test_golden_set_is_fixed_by_its_hash(monkeypatch):
    items = golden.golden_set()
    assert len(items) == 36 and golden.golden_hash(items) == golden.GOLDEN_HASH
    assert {it["family"] for it in items} == set(world.SFT_FAMILIES)
    assert len({it["prompt"] for it in items}) == 36
    # any change (one reference, or a test the code items derive from the world) is refused
    changed = list(golden.GOLDEN_ITEMS)
    changed[0] = ("arithmetic", "Calculate 5 * 4.", "21")
    monkeypatch.setattr(golden, "GOLDEN_ITEMS", changed)
    with pytest.raises(RuntimeError, match="golden set changed"):
        golden.golden_set()


def test_references_score_one_and_wrong_answers_zero(tmp_path):
    grade_code = quality.sandbox_grader(str(tmp_path))
    for item in golden.golden_set():
        assert golden.grade_item(item, item["reference"], grade_code) == 1.0, item["id"]
    by_id = {it["family"]: it for it in golden.golden_set()}
    assert golden.grade_item(by_id["arithmetic"], "7", grade_code) == 0.0
    assert golden.grade_item(by_id["facts"], "The capital of Czechia is Vienna.", grade_code) == 0.0
    assert golden.grade_item(by_id["facts"], "? The capital of Czechia is Prague.", grade_code) == 0.0  # not direct
    assert golden.grade_item(by_id["steps"], "Answer: 13", grade_code) == 0.0
    assert golden.grade_item(by_id["code"], "def add_17(x):\n    return x + 16", grade_code) == 0.0


def test_golden_items_are_held_out():
    """No golden prompt is in the training data of the world, and their items are eval-split."""
    train_prompts = {t.prompt for t in world.sample_tasks(20000, "train", 0)}
    assert not train_prompts & {it["prompt"] for it in golden.golden_set()}
    eval_prompts = {t.prompt for t in world.sample_tasks(20000, "eval", 0)}
    assert len(eval_prompts & {it["prompt"] for it in golden.golden_set()}) >= 30  # the world reaches them


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    tok = Tokenizer.train("\n\n".join(world.base_corpus(300, seed=0)), 300)
    model = GPT(GPTConfig(block_size=256, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    save_checkpoint(str(path), model, tok, 0, {}, "test")
    return model, tok, str(path)


def test_score_golden_on_a_tiny_model(tiny):
    model, tok, _ = tiny
    score = golden.score_golden(model, tok, max_new_tokens=8)
    assert score["n"] == len(score["items"]) == 36 and score["golden_hash"] == golden.GOLDEN_HASH
    assert set(score["by_family"]) == set(world.SFT_FAMILIES)
    # the summary is the mean of the per-item results, overall and per family
    assert score["accuracy"] == pytest.approx(sum(r["correct"] for r in score["items"]) / 36)
    for family, acc in score["by_family"].items():
        mine = [r["correct"] for r in score["items"] if r["family"] == family]
        assert acc == pytest.approx(sum(mine) / len(mine))
    assert all(isinstance(r["reply"], str) for r in score["items"])


def test_score_golden_counts_a_right_answer(tiny, monkeypatch):
    """With replies forced to the references, every item scores 1 (the grading path end to end)."""
    model, tok, _ = tiny
    refs = {it["prompt"]: it["reference"] for it in golden.golden_set()}
    monkeypatch.setattr("nanopost.evaluate.chat_complete",
                        lambda m, t, convs, n: [refs[c[-1]["content"]] for c in convs])
    assert golden.score_golden(model, tok)["accuracy"] == 1.0


def test_cli(tiny):
    _, _, path = tiny
    out = subprocess.run([sys.executable, "-m", "nanopost.golden", path, path], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert len(out) == 4  # header, two rows, the JSON line
    summary = json.loads(out[-1])
    assert summary["golden_hash"] == golden.GOLDEN_HASH and set(summary["checkpoints"]) == {path}
