"""The instruction-following family (IFEval style): record shape, every reference passes its rubric,
an answer that ignores one instruction fails exactly that item, the held-out split, the opt-in SFT
share, and GRPO on the family through train_rl.py (smoke)."""
import json

import pytest

from nanopost import world
from nanopost.instruct_world import _items, instruct_records, instruct_sft_records
from nanopost.rubric import load_rubric, score


def test_record_shape():
    records = instruct_records(50, "train", seed=0)
    assert len(records) == 50
    for r in records:
        assert set(r) == {"prompt", "metadata", "family", "reference"}
        assert r["family"] == "instruct" and r["metadata"]["family"] == "instruct"
        assert r["metadata"]["scorer"] == "rubric"
        assert [m["role"] for m in r["prompt"]] == ["user"]
        rubric = load_rubric(r["metadata"]["rubric"])  # valid rubric, unique names
        assert 1 <= len(rubric) <= 3
        assert all(item["check"] != "judge" for item in rubric)
    assert instruct_records(50, "train", seed=0) == records  # deterministic
    assert instruct_records(50, "train", seed=1) != records
    with pytest.raises(ValueError, match="split"):
        instruct_records(3, "test")


def test_every_kind_appears_and_instructions_are_in_the_prompt():
    records = instruct_records(300, "eval")
    names = {item["name"] for r in records for item in r["metadata"]["rubric"]}
    assert names == {"uppercase", "lowercase", "max_words", "starts_with", "ends_with", "contains", "json", "no_commas"}
    for r in records:
        text = r["prompt"][0]["content"]
        for item in r["metadata"]["rubric"]:
            if "text" in item:
                assert f"word {item['text']}" in text
            if item["check"] == "word_count":
                assert f"{item['max']} words" in text
            if item["check"] == "valid_json":
                assert f'"{item["keys"][0]}"' in text


def test_references_pass_and_ignoring_one_instruction_fails_exactly_that_item():
    tasks = _items(1500, "train", 0, unique=False) + _items(200, "eval", 0, unique=True)
    for t in tasks:
        reward, results = score(t["rubric"], t["answer"], aggregate="mean")
        assert reward == 1.0, (t, results)
        _, results = score(t["rubric"], t["noisy_answer"])
        assert {name for name, s in results.items() if s < 1} == {t["ignored"]}, (t, results)


def test_hand_made_broken_answers_fail_the_right_item():
    rubric = [{"name": "uppercase", "check": "uppercase"}, {"name": "contains", "check": "contains", "text": "rock"},
              {"name": "json", "check": "valid_json", "keys": ["city"]}]
    assert score(rubric, '{"city": "LIMA ROCK"}')[1] == {"uppercase": 0.0, "contains": 1.0, "json": 1.0}  # key is lower case
    assert score(rubric, '{"CITY": "LIMA ROCK"}')[1] == {"uppercase": 1.0, "contains": 1.0, "json": 0.0}
    assert score(rubric, 'LIMA')[1] == {"uppercase": 1.0, "contains": 0.0, "json": 0.0}
    no_commas = instruct_records(300, "eval")
    item = next(i for r in no_commas for i in r["metadata"]["rubric"] if i["name"] == "no_commas")
    assert score([item], "1 2 3")[0] == 1.0 and score([item], "1, 2 3")[0] == 0.0


def test_heldout_split_by_item():
    train, held_out = _items(800, "train", 0, False), _items(200, "eval", 0, True)
    assert all(world.split_of(t["key"]) == "train" for t in train)
    assert all(world.split_of(t["key"]) == "eval" for t in held_out)
    assert not {t["key"] for t in train} & {t["key"] for t in held_out}
    # the same keys as the world's own families: a held-out country is held out everywhere
    heldout_countries = {c for c, _ in world.COUNTRIES if world.split_of(c) == "eval"}
    asked = {t["key"] for t in held_out if t["key"] in dict(world.COUNTRIES)}
    assert asked and asked <= heldout_countries
    prompts = [r["prompt"][0]["content"] for r in instruct_records(200, "eval")]
    assert len(prompts) == len(set(prompts))


def test_sft_records_carry_label_noise():
    clean = instruct_sft_records(400, seed=0, label_noise=0.0)
    noisy = instruct_sft_records(400, seed=0, label_noise=0.5)
    tasks = _items(400, "train", 0, unique=False)
    assert [r["messages"][0]["content"] for r in clean] == [t["prompt"] for t in tasks]
    assert all(r["messages"][1]["content"] == t["answer"] for r, t in zip(clean, tasks))
    ignored = sum(r["messages"][1]["content"] == t["noisy_answer"] for r, t in zip(noisy, tasks))
    assert 150 <= ignored <= 250  # about half; each such label fails exactly one item (test above)
    assert all(r["family"] == "instruct" for r in noisy)
    json.dumps(noisy)  # plain JSON, writable as §3 JSONL


def test_rl_family_records():
    from nanopost.instruct_world import rl_family_records
    only = rl_family_records(10, "eval", 0, None, ["instruct"])
    assert only == instruct_records(10, "eval", 0)
    assert rl_family_records(12, "train", 0, None, ["roots"]) == world.rl_records(12, "train", 0, None, {"roots": world.roots})
    mixed = rl_family_records(12, "train", 0, None, ["roots", "instruct"])
    assert [r["family"] for r in mixed] == ["roots"] * 6 + ["instruct"] * 6
    with pytest.raises(ValueError, match="unknown family 'poetry'"):
        rl_family_records(4, "train", 0, None, ["poetry"])


def test_sft_share_and_grpo_on_the_family(tmp_path):
    """Smoke: SFT with --instruct_share (the default data comes first, unchanged), then GRPO with
    --families instruct: the rubric is the reward, each item is logged as rewards/rubric/<item>/mean
    and never added to the reward again, and both IFEval accuracies are reported."""
    import train_base
    import train_rl
    import train_sft
    from nanopost.data import read_jsonl, write_jsonl
    train_base.main(["--out", str(tmp_path / "base"), "--steps", "2", "--n_docs", "200", "--batch_size", "4",
                     "--model", "tiny", "--log_every", "10"])
    train_sft.main(["--init", str(tmp_path / "base" / "ckpt"), "--out", str(tmp_path / "sft"), "--steps", "2",
                    "--n_train", "40", "--instruct_share", "0.5", "--eval_per_family", "1", "--batch_size", "4",
                    "--log_every", "10"])
    written = [r for _, r in read_jsonl(str(tmp_path / "sft" / "sft.jsonl"))]
    write_jsonl(str(tmp_path / "default.jsonl"), world.sft_records(40, 0))
    assert written[:40] == [r for _, r in read_jsonl(str(tmp_path / "default.jsonl"))]
    assert len(written) == 60 and all(r["family"] == "instruct" for r in written[40:])

    out = tmp_path / "rl"
    summary = train_rl.main(["--init", str(tmp_path / "sft" / "ckpt"), "--out", str(out), "--device", "cpu",
                             "--algo", "grpo", "--families", "instruct", "--steps", "2", "--n_prompts", "16",
                             "--eval_prompts", "6", "--prompts_per_step", "2", "--num_generations", "4",
                             "--max_completion_length", "8", "--eval_every", "0", "--log_every", "1"])
    for key in ("instruction_accuracy_before", "instruction_accuracy_after", "accuracy_before", "accuracy_after"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["accuracy_by_family_after"].keys() == {"instruct"}
    assert any(k.startswith("rubric/") for k in summary["accuracy_by_grader_after"])
    with open(out / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        items = [k for k in m if k.startswith("rewards/rubric/") and k != "rewards/rubric/mean"]
        assert items and all(0.0 <= m[k] <= 1.0 for k in items)
        assert m["reward"] == pytest.approx(m["rewards/rubric/mean"], abs=1e-6)  # the items are not added again


def test_a_rubric_summed_under_one_counts_all_items_passing_as_correct(monkeypatch):
    """Prompt-level accuracy judges a rubric by its items, not by its total (Σ w < 1 under "sum")."""
    import nanopost.evaluate as evaluate
    record = {"prompt": [{"role": "user", "content": "x"}], "family": "instruct",
              "metadata": {"scorer": "rubric", "rubric_aggregate": "sum",
                           "rubric": [{"name": "up", "check": "uppercase", "weight": 0.3},
                                      {"name": "short", "check": "word_count", "max": 2, "weight": 0.3}]}}
    monkeypatch.setattr(evaluate, "chat_complete", lambda model, tok, prompts, n: ["PARIS", "paris is nice"][:len(prompts)])
    acc, _ = evaluate.verifiable_accuracy(None, None, [record, record])
    assert acc["all"] == 0.5 and acc["instruction_level"] == 0.5
