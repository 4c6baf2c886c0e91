"""eval.py's pieces without a trained model: IFEval-style strict/loose scoring on hand-made records,
the LLM-as-judge position swap and pointwise mapping, sampled pass@k against brute-force subsets,
and the human-evaluation flow driven from answers (records, resume, aggregation, kappa).
(pass@k, Wilson, bootstrap coverage and Bradley-Terry recovery themselves: tests/test_evals.py.)"""
import itertools
import json

import pytest

import nanopost.evaluate as evaluate
import nanopost.llm_judge as llm_judge
from nanopost import human
from nanopost.evals import cohen_kappa
from nanopost.ifeval import follows, format_records, ifeval_scores, loose_variants

# ----------------------------------------------------------------------------- IFEval


def record(*items, family="instruct"):
    return {"prompt": [{"role": "user", "content": "q"}],
            "metadata": {"scorer": "rubric", "rubric": list(items), "family": family}}


UPPER = {"name": "upper", "check": "uppercase"}
SHORT = {"name": "short", "check": "word_count", "max": 2}
PARIS = {"name": "paris", "check": "contains", "text": "paris"}


@pytest.mark.parametrize("item, response, strict, loose", [
    (UPPER, "PARIS", True, True),
    (UPPER, "Sure, here it is:\nPARIS", False, True),            # first line dropped
    (UPPER, "PARIS\nhope this helps", False, True),              # last line dropped
    (UPPER, "paris", False, False),
    (SHORT, "Paris.", True, True),
    (SHORT, "Here you go:\nParis France\nhope this helps!", False, True),  # first and last dropped
    (SHORT, "", False, False),                                   # empty follows nothing (IFEval)
    (SHORT, "the capital is Paris", False, False),
    ({"name": "starts", "check": "starts_with", "text": "PARIS"}, "**PARIS** is it", False, True),  # '*' removed
    ({"name": "ends", "check": "ends_with", "text": "done."}, "All *done.*", False, True),
])
def test_strict_and_loose(item, response, strict, loose):
    assert follows(item, response) is strict
    assert follows(item, response, loose=True) is loose


def test_loose_variants_are_the_eight_combinations():
    v = loose_variants("a\n*b*\nc")
    assert v[0] == "a\n*b*\nc" and len(v) == 8
    assert set(v) == {"a\n*b*\nc", "a\nb\nc", "*b*\nc", "b\nc", "a\n*b*", "a\nb", "*b*", "b"}


def test_prompt_and_instruction_level_accuracy_hand_worked():
    records = [record(UPPER, SHORT), record(UPPER, PARIS), record(SHORT, family="other")]
    responses = ["PARIS", "Note:\nPARIS", "Well, the answer is Paris"]
    s = ifeval_scores(records, responses)
    # strict: r1 both (2/2), r2 upper fails, paris passes (1/2), r3 fails (0/1) -> 3/5 instructions, 1/3 prompts
    assert s["instruction_strict"]["rate"] == pytest.approx(3 / 5) and s["instruction_strict"]["n"] == 5
    assert s["prompt_strict"]["rate"] == pytest.approx(1 / 3)
    # loose: r2's upper passes without its first line (and "paris" is still found in the full response)
    assert s["instruction_loose"]["rate"] == pytest.approx(4 / 5)
    assert s["prompt_loose"]["rate"] == pytest.approx(2 / 3)
    assert s["by_family"]["other"]["prompt_loose"]["rate"] == 0.0
    assert s["per_prompt"][1]["strict"] == {"upper": False, "paris": True}
    assert 0 <= s["prompt_strict"]["low"] <= 1 / 3 <= s["prompt_strict"]["high"] <= 1


def test_loose_is_never_below_strict():
    texts = ["", "A", "a\nB", "**X**", "Sure:\nYES\nbye", "one two three", "*\n*", "ok\n\nOK"]
    for item in (UPPER, SHORT, PARIS, {"name": "w", "check": "word_count", "min": 2}):
        for t in texts:
            assert follows(item, t, loose=True) >= follows(item, t)


def test_ifeval_errors_name_the_record_and_refuse_judge_items():
    with pytest.raises(ValueError, match="record 2"):
        ifeval_scores([record(UPPER), {"prompt": [], "metadata": {}}], ["A", "B"])
    with pytest.raises(ValueError, match="verifiable"):
        follows({"name": "j", "check": "judge", "criterion": "polite"}, "hi")


def test_world_format_tasks_become_ifeval_records():
    records = format_records(20)
    assert records and all(r["metadata"]["rubric"] for r in records)
    upper = [r for r in records if r["prompt"][0]["content"].startswith("Reply in uppercase")]
    assert upper and upper[0]["metadata"]["rubric"] == [{"name": "uppercase", "check": "uppercase"}]
    ifeval_scores(records, ["X"] * len(records))  # every rubric loads

# ----------------------------------------------------------------------------- LLM-as-judge

CONSTITUTION = [(8.0, "direct"), (1.0, "concise")]


def test_a_judge_that_always_prefers_position_a_gives_ties():
    always_first = lambda q, a, b, principle: [1.0] * len(q)
    outcomes, p = llm_judge.pairwise_outcomes(always_first, CONSTITUTION, ["q"] * 4, ["x", "y", "z", "w"],
                                              ["w", "z", "y", "x"])
    assert p == pytest.approx([0.5] * 4) and outcomes == [0.5] * 4
    r = llm_judge.win_rate(outcomes)
    assert r["win_rate"] == 0.5 and r["ties"] == 4 and r["wins"] == r["losses"] == 0


def test_a_fair_judge_decides_and_a_biased_one_still_agrees_after_the_swap():
    good = lambda text: float(text.startswith("good"))
    fair = lambda q, a, b, principle: [0.5 + 0.5 * (good(x) - good(y)) for x, y in zip(a, b)]
    biased = lambda q, a, b, principle: [min(1.0, v + 0.3) for v in fair(q, a, b, principle)]  # leans to A
    ours, base = ["good 1", "bad", "good 2", "same"], ["bad", "good", "good 3", "same"]
    for judge in (fair, biased):
        outcomes, _ = llm_judge.pairwise_outcomes(judge, CONSTITUTION, ["q"] * 4, ours, base)
        assert outcomes == [1.0, 0.0, 0.5, 0.5]
    r = llm_judge.win_rate([1.0, 0.0, 0.5, 0.5])
    assert r["win_rate"] == 0.5 and (r["wins"], r["ties"], r["losses"]) == (1, 2, 1)
    with pytest.raises(ValueError):
        llm_judge.pairwise_outcomes(fair, CONSTITUTION, ["q"], ["a"], [])


def test_pointwise_maps_weighted_verdicts_onto_one_to_five(monkeypatch):
    verdict_of = {"direct": {"A": 1.0, "B": 1.0, "C": 0.0, "D": None},
                  "correct": {"A": 1.0, "B": 0.0, "C": 0.0, "D": None}}

    class FakeJudge:
        verdicts = staticmethod(lambda qs, rs, principle: [verdict_of[principle][r] for r in rs])

    monkeypatch.setattr(llm_judge, "model_judge", lambda model, tok: FakeJudge)
    pointwise = llm_judge.model_pointwise(None, None, [(8.0, "direct"), (4.0, "correct")])
    scores = pointwise(["q"] * 4, ["A", "B", "C", "D"])
    assert scores == pytest.approx([5.0, 1 + 4 * 8 / 12, 1.0, 3.0])  # None (too long) counts 1/2
    out = llm_judge.pointwise_scores(pointwise, ["q"] * 4, ["A", "B", "C", "D"])
    assert out["mean"] == pytest.approx(sum(scores) / 4) and out["grades"][5] == 1 and out["grades"][1] == 1
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        llm_judge.pointwise_scores(lambda q, r, rubric: [0.0] * len(r), ["q"], ["A"])

# ----------------------------------------------------------------------------- pass@k


def test_sampled_pass_at_k_matches_brute_force_subsets(monkeypatch):
    records = [{"prompt": [{"role": "user", "content": f"q{i}"}],
                "metadata": {"scorer": "math_grader", "ground_truth": "7"}} for i in range(3)]
    samples = {"q0": ["7", "1", "7", "2", "3"], "q1": ["0"] * 5, "q2": ["Answer: 7"] * 4 + ["8"]}
    calls = {}

    def fake_complete(model, tok, conversations, max_new_tokens, temperature, generator):
        calls["temperature"] = temperature
        seen = {}
        out = []
        for conv in conversations:  # each prompt repeated n times, in order
            q = conv[-1]["content"]
            out.append(samples[q][seen.get(q, 0)])
            seen[q] = seen.get(q, 0) + 1
        return out

    monkeypatch.setattr(evaluate, "chat_complete", fake_complete)

    class Param:
        device = "cpu"

    class Model:
        parameters = staticmethod(lambda: iter([Param()]))

    result, counts = evaluate.sampled_pass_at_k(Model(), None, records, 5, [1, 2, 3], temperature=0.9)
    assert counts == [2, 0, 4] and calls["temperature"] == 0.9
    for k in (1, 2, 3):
        brute = []
        for q in ("q0", "q1", "q2"):
            ok = [s.endswith("7") for s in samples[q]]
            subsets = list(itertools.combinations(range(5), k))
            brute.append(sum(any(ok[i] for i in s) for s in subsets) / len(subsets))
        assert result[f"pass@{k}"]["mean"] == pytest.approx(sum(brute) / 3, abs=1e-12)

# ----------------------------------------------------------------------------- human evaluation


def write_responses(path, texts):
    """texts: {model: [answer per item]}"""
    with open(path, "w") as f:
        for model, answers in texts.items():
            for i, a in enumerate(answers):
                f.write(json.dumps({"item": i, "model": model, "prompt": [{"role": "user", "content": f"Q{i}"}],
                                    "response": a}) + "\n")


TEXTS = {"good": ["best 0", "best 1", "best 2"], "mid": ["ok 0", "ok 1", "ok 2"], "bad": ["no 0", "no 1", "no 2"]}
RANK = {"good": 2, "mid": 1, "bad": 0}


def honest_answers(responses, annotator, stop_after=None, skip=0):
    """What an annotator who prefers good > mid > bad types, given the blinded sides."""
    lines = []
    for task, item, (left, right) in human.tasks_for("pairwise", responses, annotator)[skip:]:
        lines.append("1" if RANK[left] > RANK[right] else "2")
    return lines[:stop_after] if stop_after is not None else lines


def run_cli(tmp_path, *args):
    return human.main(["--out", str(tmp_path)] + list(args))


def test_human_pairwise_from_answers_file_with_resume_and_aggregation(tmp_path, capsys):
    write_responses(tmp_path / "responses.jsonl", TEXTS)
    responses = human.load_responses(tmp_path / "responses.jsonl")
    tasks = human.tasks_for("pairwise", responses, "alice")
    assert len(tasks) == 9  # 3 items x 3 pairs
    sides = [models[0] for _, _, models in tasks]
    assert len(set(sides)) > 1  # sides are drawn, not always alphabetical
    # the first session stops after 4 answers (the file runs out), the second resumes
    (tmp_path / "a1.txt").write_text("\n".join(honest_answers(responses, "alice", stop_after=4)) + "\n")
    assert run_cli(tmp_path, "--annotator", "alice", "--answers", str(tmp_path / "a1.txt"))["written"] == 4
    shown = capsys.readouterr().err
    assert "good" not in shown and "Response 2:" in shown  # blinded: model names never shown
    (tmp_path / "a2.txt").write_text("\n".join(honest_answers(responses, "alice", skip=4)))
    assert run_cli(tmp_path, "--annotator", "alice", "--answers", str(tmp_path / "a2.txt"))["written"] == 5
    records = [json.loads(line) for line in open(tmp_path / "ratings.jsonl")]
    assert len(records) == 9 and len({r["task"] for r in records}) == 9
    assert all(r["winner"] == max(r["left"], r["right"], key=RANK.get) for r in records)
    # bob agrees except that he calls every good-vs-bad pair a tie
    bob = [("t" if {l, r} == {"good", "bad"} else a)
           for a, (_, _, (l, r)) in zip(honest_answers(responses, "bob"), human.tasks_for("pairwise", responses, "bob"))]
    (tmp_path / "b.txt").write_text("\n".join(bob))
    run_cli(tmp_path, "--annotator", "bob", "--answers", str(tmp_path / "b.txt"))
    agg = run_cli(tmp_path, "--aggregate")["pairwise"]
    assert list(agg["bradley_terry"]) == ["good", "mid", "bad"] and list(agg["elo"])[0] == "good"
    assert agg["win_rate_of_first"]["good vs mid"]["win_rate"] == 1.0
    gb = agg["win_rate_of_first"]["bad vs good"]  # alice: 3 losses for bad, bob: 3 ties
    assert gb["win_rate"] == pytest.approx(0.25) and gb["ties"] == 3 and gb["n"] == 6
    alice = {r["task"]: r["winner"] or "tie" for r in records}
    bob_labels = {t: ("tie" if set(t.split(":", 1)[1].split("|")) == {"good", "bad"} else alice[t]) for t in alice}
    expected = cohen_kappa([alice[t] for t in sorted(alice)], [bob_labels[t] for t in sorted(alice)])
    assert agg["kappa"]["alice vs bob"]["kappa"] == pytest.approx(expected) and expected < 1


def test_human_pointwise_bad_answer_and_aggregation(tmp_path):
    write_responses(tmp_path / "responses.jsonl", {"good": TEXTS["good"], "bad": TEXTS["bad"]})
    responses = human.load_responses(tmp_path / "responses.jsonl")
    order = human.tasks_for("pointwise", responses, "carol")
    assert sorted(t for t, _, _ in order) != [t for t, _, _ in order] or len(order) < 3  # shuffled
    (tmp_path / "bad.txt").write_text("7\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: '7' is not an answer"):
        run_cli(tmp_path, "--mode", "pointwise", "--annotator", "carol", "--answers", str(tmp_path / "bad.txt"))
    answers = ["5" if models[0] == "good" else "2" for _, _, models in order]
    (tmp_path / "c.txt").write_text("\n".join(answers))
    run_cli(tmp_path, "--mode", "pointwise", "--annotator", "carol", "--answers", str(tmp_path / "c.txt"))
    agg = run_cli(tmp_path, "--aggregate")["pointwise"]
    assert agg["mean_rating"]["good"]["mean"] == 5 and agg["mean_rating"]["bad"]["mean"] == 2
    assert list(agg["mean_rating"]) == ["good", "bad"] and agg["n"] == 6
    with pytest.raises(ValueError, match="annotator"):
        human.annotate("pointwise", responses, str(tmp_path), "", iter([]))
