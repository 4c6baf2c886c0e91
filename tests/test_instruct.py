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
