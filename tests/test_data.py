"""Data files and the built-in world: named errors for bad records, deterministic generators,
held-out splits that share nothing with training."""
import json

import pytest

from nanopost import world
from nanopost.data import DataError, load_sft, read_jsonl, write_jsonl
from nanopost.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("\n\n".join(world.base_corpus(2000, seed=0)), 400)


def good(content="Paris."):
    return {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": content}]}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("bad_line, words", [
    ('{"messages": [', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    (json.dumps({"text": "no messages"}), "no 'messages'"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "robot"),
    (json.dumps(good(content="   ")), "empty"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "assistant"),
])
def test_bad_record_names_file_and_line(tmp_path, tok, bad_line, words):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good()), "", bad_line, json.dumps(good())])
    with pytest.raises(DataError) as e:
        load_sft(path, tok, max_len=64)
    assert f"{path}:3:" in str(e.value)  # the blank line still counts as a line
    assert words.lower() in str(e.value).lower()


def test_too_long_conversation_is_an_error_not_a_cut(tmp_path, tok):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good("word " * 200))])
    with pytest.raises(DataError, match=r"d\.jsonl:1:.*"):
        load_sft(path, tok, max_len=64)


def test_skip_bad_counts_everything_it_drops(tmp_path, tok):
    lines = [json.dumps(good()), json.dumps(good("  ")), json.dumps(good()),
             json.dumps({"messages": [{"role": "robot", "content": "x"}]}), json.dumps(good("word " * 200))]
    path = write_lines(tmp_path / "d.jsonl", lines)
    examples, report = load_sft(path, tok, max_len=64, skip_bad=True)
    assert len(examples) == 2 and report["used"] == 2 and report["skipped"] == 3
    assert report["records"] == report["used"] + report["skipped"]
    assert sum(report["skipped_by_reason"].values()) == 3
    assert all(str(path) in m for m in report["first_errors"])


def test_a_file_of_only_bad_records_is_an_error(tmp_path, tok):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good("  "))])
    with pytest.raises(DataError, match="no usable records"):
        load_sft(path, tok, max_len=64, skip_bad=True)


def test_write_then_read_round_trip(tmp_path):
    records = world.sft_records(20, seed=3)
    write_jsonl(str(tmp_path / "x.jsonl"), records)
    assert [r for _, r in read_jsonl(str(tmp_path / "x.jsonl"))] == records
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # no temp file left


def test_generators_are_deterministic_by_seed():
    assert world.sft_records(50, seed=1) == world.sft_records(50, seed=1)
    assert world.sft_records(50, seed=1) != world.sft_records(50, seed=2)
    assert world.base_corpus(30, seed=1) == world.base_corpus(30, seed=1)
    assert world.eval_records(5, seed=0) == world.eval_records(5, seed=0)


def test_heldout_shares_no_prompt_and_no_item_with_training():
    train = world.sft_records(8000, seed=0)
    train_prompts = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    heldout = world.eval_records(40, seed=0)
    heldout_prompts = {r["messages"][0]["content"] for r in heldout}
    assert len(heldout_prompts) == len(heldout)  # distinct
    assert not train_prompts & heldout_prompts
    # by item: no held-out item (country, expression, function) is asked about in training
    train_tasks = world.sample_tasks(9000, "train", 0)
    eval_tasks = world.sample_tasks(400, "eval", 0, unique=True)
    assert not {t.key for t in train_tasks} & {t.key for t in eval_tasks}
    # the §1 questions are about held-out countries only
    for question, capital in world.direct_answer_prompts("eval"):
        assert "?" not in question
        assert not any(question.split(" of ")[-1] in p and "capital" in p for p in train_prompts)


def test_every_family_is_in_the_heldout_set():
    families = {r["family"] for r in world.eval_records(40)}
    assert families == set(world.SFT_FAMILIES)
    counts = {f: sum(r["family"] == f for r in world.eval_records(40)) for f in families}
    assert min(counts.values()) >= 20


def test_code_tasks_carry_tests_that_their_reference_passes():
    import random
    rng = random.Random(0)
    for _ in range(50):
        task = world.code(rng)
        namespace = {}
        exec(task.answer, namespace)  # our own reference code, not model output
        fn = namespace[task.metadata["entry_point"]]
        for args, expected in task.metadata["public"] + task.metadata["hidden"]:
            assert fn(*args) == expected


def test_rl_records_have_the_guide_shape_and_their_references_score_full_marks(tmp_path):
    from nanopost.graders import grade
    records = world.rl_records(40, "train", 0, str(tmp_path / "suites"))
    assert {r["family"] for r in records} == set(world.RL_FAMILIES)
    for r in records:
        assert r["prompt"][-1]["role"] == "user" and "scorer" in r["metadata"]
        if r["metadata"]["scorer"] == "code_grader":
            suite = r["metadata"]["suite"]
            assert suite["suite_hash"].startswith("sha256:") and suite["hidden_tests_count"] > 0
            assert (tmp_path / "suites" / f"{suite['suite_id']}.json").exists()
        assert all(v == 1.0 for v in grade(r["reference"], r["metadata"], str(tmp_path / "suites")).values())
    heldout = world.rl_records(100, "eval", 0, str(tmp_path / "suites"))
    train_prompts = {r["prompt"][-1]["content"] for r in world.rl_records(2000, "train", 0, str(tmp_path / "suites"))}
    assert not train_prompts & {r["prompt"][-1]["content"] for r in heldout}


def test_label_noise_is_the_documented_kind_and_rate():
    from nanopost.graders import math_grader
    clean = world.sft_records(3000, seed=0, label_noise=0.0)
    noisy = world.sft_records(3000, seed=0, label_noise=0.7)
    def roots_answers(records):
        return [(m[i - 1]["content"], m[i]["content"]) for r in records for m in [r["messages"]]
                for i in range(1, len(m)) if m[i]["role"] == "assistant" and m[i - 1]["content"].startswith("Solve:")]
    assert all("Answer:" in a for _, a in roots_answers(clean))
    answers = roots_answers(noisy)
    prose = sum("Answer:" not in a for _, a in answers) / len(answers)
    assert 0.6 < prose < 0.8  # rate 0.7 asked above
    # a noisy label still holds the right roots in its worked lines, but no grader can read it
    assert all(math_grader(a, "0") == 0.0 for _, a in answers if "Answer:" not in a)


def test_the_guides_own_roots_record_is_graded_as_the_guide_means():
    from nanopost.graders import grade
    record = world.GUIDE_ROOTS_RECORD
    assert grade("Answer: -5, 2/3", record["metadata"]) == {"math_grader": 1.0}
    assert grade("-5, 0.6666667", record["metadata"]) == {"math_grader": 1.0}
    assert grade("0.6666667, -5", record["metadata"]) == {"math_grader": 0.0}  # ascending order was asked
    assert grade("-5, 0.67", record["metadata"]) == {"math_grader": 0.0}
