"""The SFT data-quality pipeline (§3): each check finds its defect and keeps a clean record;
duplicates against brute force; decontamination; the pipeline's bookkeeping (kept + rejected =
input, a reason for every reject, file:line errors); defect injection and its measurement."""
import json
import random
import subprocess
import sys
from fractions import Fraction

import pytest

from nanopost import checks, dedup, defects, quality, world
from nanopost.data import DataError, read_jsonl, write_jsonl

# the guide's §7 record, and its mismatched version: the sky question answered with a capital
GUIDE_PAIR = {"prompt": [{"role": "system", "content": "You are a helpful, honest assistant."},
                         {"role": "user", "content": "What is the capital city of U.S"}],
              "chosen": [{"role": "assistant", "content": "Washington, D.C."}],
              "rejected": [{"role": "assistant", "content": "? The capital of the United States is Washington, D.C."}]}
SKY_PAIR = {**GUIDE_PAIR, "prompt": [GUIDE_PAIR["prompt"][0], {"role": "user", "content": "What color is the sky?"}]}


def sft(prompt, answer, **extra):
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], **extra}


@pytest.fixture(scope="module")
def eval_prompts():
    return quality.world_eval_prompts(0)


@pytest.fixture(scope="module")
def grade(tmp_path_factory):
    return quality.sandbox_grader(str(tmp_path_factory.mktemp("suites")))


# ----------------------------------------------------------------------------- record checks

def test_eval_arithmetic_matches_hand_computed_values():
    cases = {"3 + 4 * 5": 23, "(3 + 4) * 5": 35, "2 - 7": -5, "-3 * -2": 6, "7 / 2": Fraction(7, 2),
             "((1 + 2) * (3 + 4)) - 10": 11, "10 - 2 - 3": 5}
    for text, value in cases.items():
        assert checks.eval_arithmetic(text) == value, text
    for bad in ["3 +", "x + 1", "3 4", "(3 + 4", "1 / 0", "__import__('os')", ""]:
        assert checks.eval_arithmetic(bad) is None, bad
    # against Python's integer arithmetic on random expressions of the world's shapes
    rng = random.Random(0)
    for _ in range(200):
        a, b, c = (rng.randint(0, 30) for _ in range(3))
        assert checks.eval_arithmetic(f"{a} + {b} * {c}") == a + b * c
        assert checks.eval_arithmetic(f"({a} - {b}) * {c}") == (a - b) * c


def test_math_label_recomputes_the_prompt():
    assert checks.math_label("What is 7 * 8?", "56") is None
    assert "recomputed '56'" in checks.math_label("What is 7 * 8?", "54")
    assert checks.math_label("12 - 20 = ?", "-8") is None
    assert checks.math_label("Calculate 2 + 2.", "5") is not None
    # metadata's ground truth wins; a prompt nothing recognises is kept
    assert checks.math_label("How many legs has a spider?", "8", ground_truth="8") is None
    assert checks.math_label("How many legs has a spider?", "6", ground_truth="8") is not None
    assert checks.math_label("How many legs has a spider?", "6") is None


def test_contradiction_catches_another_country_and_the_guides_sky_example():
    assert checks.contradiction("What is the capital of France?", "The capital of France is Paris.") is None
    assert "Spain" in checks.contradiction("What is the capital of France?", "The capital of France is Madrid.")
    assert checks.contradiction("Reply in uppercase: what is the capital of Peru?", "LIMA") is None
    assert checks.contradiction("Reply in uppercase: what is the capital of Peru?", "QUITO") is not None
    # §7: the guide's pair is fine; the same chosen answer to the sky question is label noise
    assert checks.contradiction("What is the capital city of U.S", "Washington, D.C.") is None
    assert "names no country" in checks.contradiction("What color is the sky?", "Washington, D.C.")
    assert checks.contradiction("What color is the sky?", "Blue.") is None
    assert quality.turns_of(SKY_PAIR) == [("What color is the sky?", "Washington, D.C.")]  # §7: chosen is checked
    assert quality.check_record(quality.turns_of(GUIDE_PAIR), {}, None) is None
    assert quality.check_record(quality.turns_of(SKY_PAIR), {}, None)[0] == "contradiction"


def test_code_check_runs_the_tests_in_the_sandbox(grade):
    prompt = "Write a Python function is_at_least_7(x) that returns True if x is at least 7."
    assert checks.code(prompt, "def is_at_least_7(x):\n    return x >= 7", grade=grade) is None
    # the world's own off-by-one label, and a bug its 6 tests alone do not see
    assert "tests" in checks.code(prompt, "def is_at_least_7(x):\n    return x > 7", grade=grade)
    weak = "Write a Python function is_multiple_of_10(x) that returns True if x is divisible by 10."
    assert checks.code(weak, "def is_multiple_of_10(x):\n    return x % 11 == 0", grade=grade) is not None
    assert checks.code(prompt, "def is_at_least_7(x)\n    return x >= 7", grade=grade) is not None
    assert checks.code(prompt, "import os\nos.system('echo hi')", grade=grade) is not None  # runs nothing here
    # code with no known tests must parse; prose is not judged
    assert "parse" in checks.code("Write me a function.", "def f(:\n  pass", grade=grade)
    assert checks.code("Write me a function.", "def f(x):\n    return x", grade=grade) is None
    assert checks.code("Say hi.", "Hi!", grade=grade) is None


def test_reasoning_verifies_every_step():
    p = "Compute 3 + 4 * 5 step by step."
    assert checks.reasoning(p, "4 * 5 = 20\n3 + 20 = 23\nAnswer: 23") is None
    assert "step 1" in checks.reasoning(p, "4 * 5 = 21\n3 + 21 = 24\nAnswer: 24")  # wrong step, carried on
    assert "step 2" in checks.reasoning(p, "4 * 5 = 20\n3 + 20 = 22\nAnswer: 22")
    assert "does not follow" in checks.reasoning(p, "4 * 5 = 20\n3 + 20 = 23\nAnswer: 25")  # right steps, wrong end
    assert "previous result" in checks.reasoning(p, "4 * 5 = 20\n3 + 19 = 22\nAnswer: 22")  # a gap in the chain
    assert "computes 35" in checks.reasoning(p, "3 + 4 = 7\n7 * 5 = 35\nAnswer: 35")  # solves another problem
    r = "Solve: (x - 3)(x + 5) = 0. Give the roots separated by commas after 'Answer:'."
    good = "x - 3 = 0, so x = 3\nx + 5 = 0, so x = -5\n"
    assert checks.reasoning(r, good + "Answer: -5, 3") is None
    assert checks.reasoning(r, good + "So x = 3 or x = -5.") is None  # prose: answer_format's business
    assert "does not follow" in checks.reasoning(r, good + "Answer: -3, 5")
    assert "does not follow" in checks.reasoning(r, good + "So x = 3 or x = 5.")
    assert "wrong" in checks.reasoning(r, "x - 3 = 0, so x = -3\nx + 5 = 0, so x = -5\nAnswer: -5, -3")
    assert "does not have" in checks.reasoning(r, "x - 4 = 0, so x = 4\nx + 5 = 0, so x = -5\nAnswer: -5, 4")
    assert checks.reasoning("Tell me a story.", "Once upon a time.") is None


def test_answer_format():
    r = "Solve: (x - 3)(x + 5) = 0. Give the roots separated by commas after 'Answer:'."
    assert checks.answer_format(r, "x - 3 = 0, so x = 3\nx + 5 = 0, so x = -5\nAnswer: -5, 3") is None
    assert "Answer:" in checks.answer_format(r, "x - 3 = 0, so x = 3\nx + 5 = 0, so x = -5\nSo x = 3 or x = -5.")
    assert checks.answer_format("Reply in uppercase: what is the capital of Peru?", "LIMA") is None
    assert checks.answer_format("Reply in uppercase: what is the capital of Peru?", "Lima") is not None


# ----------------------------------------------------------------------------- duplicates

def test_jaccard_and_shingles_by_hand():
    assert dedup.tokens("What is 3+4?") == ["what", "is", "3", "+", "4"]
    a, b = dedup.shingles("a b c d"), dedup.shingles("a b c e")
    assert a == {("a", "b", "c"), ("b", "c", "d")}
    assert dedup.jaccard(a, b) == pytest.approx(1 / 3)  # {abc} / {abc, bcd, bce}
    assert dedup.containment({1, 2}, {2, 3}) == 0.5


def test_near_duplicate_threshold():
    # 10 tokens, 8 shingles; changing the last token changes only the last: J = 7 / 9 = 0.777...
    base = "one two three four five six seven eight nine ten"
    edited = base.replace("ten", "eleven")
    j = dedup.jaccard(dedup.shingles(base), dedup.shingles(edited))
    assert j == pytest.approx(7 / 9)
    assert dedup.near_duplicates([base, edited], threshold=0.77)[1] == (0, pytest.approx(7 / 9))
    assert dedup.near_duplicates([base, edited], threshold=0.78)[1] is None
    # one token changed in the middle changes 3 shingles: J = 5 / 11
    assert dedup.jaccard(dedup.shingles(base), dedup.shingles(base.replace("five", "5"))) == pytest.approx(5 / 11)
    # case and punctuation do not count; the first of a group is kept, the others point to it
    out = dedup.near_duplicates(["Hello, World!", "hello world", "goodbye moon"], threshold=0.7)
    assert out[0] is None and out[1] == (0, 1.0) and out[2] is None


def test_prefix_filter_finds_every_pair_brute_force_finds():
    rng = random.Random(0)
    words = "a b c d e f g".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(150)]
    for t in (0.5, 0.7, 0.9):
        found = dedup.near_duplicates(texts, t)
        kept = []
        for i, text in enumerate(texts):  # brute force: compare with every earlier kept text
            s = dedup.shingles(text)
            match = next((j for j in kept if dedup.jaccard(s, dedup.shingles(texts[j])) >= t), None)
            assert (found[i] is None) == (match is None), (t, i)
            if match is None:
                kept.append(i)


def test_decontamination_removes_a_planted_eval_prompt(eval_prompts):
    held_out = world.eval_records(40, 0)[0]  # a prompt train_sft.py evaluates on
    planted = sft("  " + held_out["messages"][0]["content"].upper(), held_out["messages"][1]["content"])
    train = [sft("What is the capital of France?", "The capital of France is Paris."), planted,
             sft("Compute 7 + 2 * 3 step by step.", "2 * 3 = 6\n7 + 6 = 13\nAnswer: 13")]
    reasons = quality.filter_records(train, eval_prompts)
    assert reasons[0] is None and reasons[2] is None  # "Compute 7 + 2." is an eval prompt, not this one
    assert reasons[1].startswith("contamination:")


# ----------------------------------------------------------------------------- the pipeline

def test_pipeline_file_bookkeeping(tmp_path, eval_prompts):
    records = defects.defect_records(120, 0.5, seed=1)
    path = tmp_path / "in.jsonl"
    write_jsonl(str(path), records + [SKY_PAIR, GUIDE_PAIR])
    summary = quality.run_file(str(path), str(tmp_path / "out"), eval_prompts)
    kept = [r for _, r in read_jsonl(str(tmp_path / "out" / "kept.jsonl"))]
    rejected = [r for _, r in read_jsonl(str(tmp_path / "out" / "rejected.jsonl"))]
    assert len(kept) + len(rejected) == summary["input"] == len(records) + 2
    assert all(r["reason"].split(":")[0] in quality.CHECK_ORDER and r["reason"].split(": ", 1)[1] for r in rejected)
    assert sum(summary["by_reason"].values()) == len(rejected)
    assert any(r.get("chosen") == SKY_PAIR["chosen"] and r["prompt"] == SKY_PAIR["prompt"] for r in rejected)
    assert GUIDE_PAIR in kept
    assert all("defect" in r for r in rejected if "messages" in r)  # no clean record rejected here


def test_bad_input_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(sft("Hi", "Hello")) + "\n\n" + json.dumps({"text": "no messages"}) + "\n")
    with pytest.raises(DataError, match=f"{path}:3:"):
        quality.run_file(str(path), str(tmp_path / "out"), [])
    assert not (tmp_path / "out" / "kept.jsonl").exists()


def test_records_nothing_can_judge_are_kept_and_the_judge_is_pluggable():
    records = [sft("Tell me a joke.", "Why did a chicken cross the road?"), sft("Say hi.", "hi hi")]
    assert quality.filter_records(records) == [None, None]
    judge = lambda prompt, answer: "repeats itself" if len(set(answer.split())) < len(answer.split()) else None
    assert quality.filter_records(records, judge=judge) == [None, "judge: repeats itself"]


def test_distribution_report_flags_a_narrow_mix():
    narrow = [sft(f"What is {i} + 1?", str(i + 1), family="arithmetic") for i in range(20)]
    report = quality.distribution_report(narrow)
    assert report["families"] == {"arithmetic": 1.0} and len(report["flags"]) == 3
    mixed = [sft(t.prompt, t.answer, family=t.family) for t in world.sample_tasks(60, "train", 0)]
    assert quality.distribution_report(mixed)["flags"] == []


def test_every_injected_kind_is_caught_and_clean_records_kept(eval_prompts):
    """Precision and recall on a small injected set (the README's table uses 2,000 records)."""
    summary = defects.measure(300, 0.3, 2, eval_prompts)
    assert summary["clean_rejected"] == 0
    for kind, row in summary["by_kind"].items():
        assert row["injected"] >= 5, kind
        assert row["recall"] >= 0.95 and row["precision"] >= 0.95, (kind, row)


def test_defect_records_are_labelled():
    records = defects.defect_records(400, 0.2, seed=0)
    kinds = [r.get("defect") for r in records]
    assert set(kinds) - {None} == set(defects.KINDS)
    assert sum(k is not None for k in kinds) == round(0.2 * 400)
    clean = [r for r in records if "defect" not in r]
    assert all(quality.check_record(quality.turns_of(r), {}, lambda *a: 1.0) is None for r in clean)


def test_cli_smoke(tmp_path):
    data = tmp_path / "d.jsonl"
    out = subprocess.run([sys.executable, "-m", "nanopost.world", "--defects", "0.3", "--n", "60",
                          "--heldout_per_family", "5", "--out", str(data)], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out.strip().splitlines()[-1])["records"] == len(read_jsonl(str(data)))
    # the held-out set is split into the prompts not planted and the planted ones
    heldout, planted = ({r["messages"][0]["content"] for _, r in read_jsonl(str(tmp_path / f"d.{name}.jsonl"))}
                        for name in ("heldout", "planted"))
    assert not heldout & planted and len(heldout | planted) == len(world.eval_records(5, 0))
    out = subprocess.run([sys.executable, "-m", "nanopost.quality", str(data), "--out", str(tmp_path / "q")],
                         capture_output=True, text=True, check=True).stdout
    last = json.loads(out.strip().splitlines()[-1])
    assert last["kept"] + last["rejected"] == last["input"] == len(read_jsonl(str(data)))
    assert set(last) >= {"input", "kept", "rejected", "by_reason"}


def test_a_planted_item_is_planted_in_every_wording():
    items = defects.eval_items(0)
    by_item = {}
    for prompt, item in items.items():
        by_item.setdefault(item, set()).add(prompt)
    country = next(k for k, v in by_item.items() if any(p.startswith("Tell me the capital of") for p in v))
    assert len(by_item[country]) >= 7  # the fact questions and the uppercase one ask about one item
    assert any(len(v) > 1 for k, v in by_item.items() if k.startswith("roots:"))  # both factor orders


# ----------------------------------------------------------------------------- filtered vs unfiltered SFT

def test_sign_test_by_hand():
    assert quality.sign_test(13, 5) == pytest.approx(2 * (1 + 18 + 153 + 816 + 3060 + 8568) / 2 ** 18)  # 0.096
    assert quality.sign_test(5, 0) == quality.sign_test(0, 5) == 2 / 32
    assert quality.sign_test(3, 3) == quality.sign_test(0, 0) == 1.0


def test_compare_runs_pairs_prompts_and_seeds(tmp_path):
    def run(name, family_correct):
        write_jsonl(str(tmp_path / name / "heldout_replies.jsonl"),
                    [{"prompt": f"p{i}", "family": f, "reply": "", "correct": float(c)}
                     for i, (f, c) in enumerate(family_correct)])
        return str(tmp_path / name)
    fam = ["x", "x", "y", "y"]
    pairs = [(run("a0", zip(fam, [1, 0, 0, 0])), run("b0", zip(fam, [1, 1, 0, 0]))),   # d = +0.25
             (run("a1", zip(fam, [1, 1, 0, 0])), run("b1", zip(fam, [1, 0, 1, 0])))]   # d = 0
    r = quality.compare_runs(pairs)
    half = 12.706 * (0.25 / 2 ** 0.5) / 2 ** 0.5  # t(df 1) * stdev([0.25, 0]) / sqrt(2)
    assert (r["a"], r["b"], r["diff"]) == pytest.approx((0.375, 0.5, 0.125))
    assert r["ci95"] == pytest.approx([0.125 - half, 0.125 + half])
    assert (r["seeds_b_better"], r["seeds_a_better"], r["prompts_only_b"], r["prompts_only_a"]) == (1, 0, 2, 1)
    assert r["by_family"] == {"x": [0.75, 0.75], "y": [0.0, 0.25]}
    only = quality.compare_runs(pairs, [{"p0", "p1"}, {"p0", "p1"}])  # seed 0: d = +0.5, seed 1: d = -0.5
    assert only["diff"] == pytest.approx(0.0) and only["by_family"] == {"x": [0.75, 0.75]}
    with pytest.raises(AssertionError, match="different prompts"):
        quality.compare_runs([(pairs[0][0], run("c", zip(fam[:3], [1, 1, 1])))])
