"""Process supervision (§6): the step verifier on hand-made chains, injected wrong steps, the
aggregation of step scores, the record format and its errors, the PRM's step-end reading and
loss, and smoke runs of train_rm.py --kind prm, --reward prm:CKPT and best-of-N reranking."""
import json
import math
import os

import pytest
import torch

import train_rl
import train_rm
from nanopost import prm, process
from nanopost.data import DataError, write_jsonl
from nanopost.model import GPT, GPTConfig, ScalarModel
from nanopost.tokenizer import Tokenizer

STEPS = "Compute 3 + 4 * 5 step by step."
ROOTS = "Solve: (x - 3)(x + 5) = 0. Give the roots separated by commas after 'Answer:'."


# ---------------------------------------------------------------------------------------------
# the verifier

@pytest.mark.parametrize("response, labels", [
    ("4 * 5 = 20\n3 + 20 = 23\nAnswer: 23", [1, 1, 1]),   # correct chain
    ("5 * 4 = 20\n20 + 3 = 23\nAnswer: 23", [1, 1, 1]),   # operands of + and * in either order
    ("4 * 5 = 21\n3 + 21 = 24\nAnswer: 24", [0, 1, 1]),   # wrong step, propagated: wrong answer
    ("4 * 5 = 21\n3 + 20 = 23\nAnswer: 23", [0, 0, 0]),   # wrong step, right answer: later lines do not follow
    ("4 * 5 = 20\n3 + 20 = 22\nAnswer: 23", [1, 0, 0]),   # right answer that the steps do not reach
    ("4 * 5 = 20\n3 + 20 = 23\nAnswer: 24", [1, 1, 0]),   # wrong final line
    ("3 + 4 = 7\n7 * 5 = 35\nAnswer: 35", [0, 0, 0]),     # the wrong order of operations
    ("3 + 4 * 5 = 23\nAnswer: 23", [1, 1]),               # one step doing everything, exactly
    ("4 * 5 = 20\nAnswer: 20", [1, 0]),                   # answer before the work is done
    ("4 * 5 = 20\nthen add 3\nAnswer: 23", [1, 0, 0]),    # a line that is no step
    ("4 * 5 = 20", [0]),                                  # stops before it is done (read at <|end|>)
    ("4 * 5 = 20\n3 + 20 = 23", [1, 0]),                  # all the work, but no answer line
    ("4 * 5 = 20\n3 + 20 = 23\nAnswer: 23\n", [1, 1, 1, 0]),  # something after the answer
])
def test_step_labels_of_hand_made_chains(response, labels):
    assert process.label_steps(STEPS, response) == labels


@pytest.mark.parametrize("response, labels", [
    ("x - 3 = 0, so x = 3\nx + 5 = 0, so x = -5\nAnswer: -5, 3", [1, 1, 1]),
    ("x + 5 = 0, so x = -5\nx - 3 = 0, so x = 3\nAnswer: 3, -5", [1, 1, 1]),  # any order
    ("x - 3 = 0, so x = 4\nx + 5 = 0, so x = -5\nAnswer: -5, 4", [0, 1, 1]),  # propagated
    ("x - 3 = 0, so x = 4\nx + 5 = 0, so x = -5\nAnswer: -5, 3", [0, 1, 0]),  # right answer after a wrong step
    ("x - 3 = 0, so x = 3\nx - 5 = 0, so x = 5\nAnswer: 3, 5", [1, 0, 0]),    # a factor the problem lacks
    ("x - 3 = 0, so x = 3\nx + 5 = 0, so x = -5\nSo x = 3 or x = -5.", [1, 1, 0]),  # prose, no answer line
    ("x - 3 = 0, so x = 3", [0]),                                              # one root, then stops
])
def test_roots_step_labels(response, labels):
    assert process.label_steps(ROOTS, response) == labels


def test_verifier_refuses_unknown_problems():
    with pytest.raises(ValueError, match="step-by-step"):
        process.label_steps("What is the capital of France?", "Paris")


def test_expressions_parse_exactly():
    assert process.parse_expr("(3 + 4) * 5") == ("*", ("+", 3, 4), 5)
    assert process.evaluate(process.parse_expr("2 + 3 * 4 - 5")) == 9
    assert process.render(process.parse_expr("(3 + 4) * 5")) == "(3 + 4) * 5"
    for bad in ["3 +", "(3 + 4", "x", "3 4", "3 / 4"]:
        with pytest.raises(ValueError):
            process.parse_expr(bad)


def test_injected_chains_cover_both_cases_and_match_the_verifier():
    problem = process.problem_of(STEPS)
    assert process.write_chain(problem) == ["4 * 5 = 20", "3 + 20 = 23", "Answer: 23"]
    assert process.write_chain(problem, 0, 1, propagate=True) == ["4 * 5 = 21", "3 + 21 = 24", "Answer: 24"]
    assert process.write_chain(problem, 0, 1, propagate=False) == ["4 * 5 = 21", "3 + 20 = 23", "Answer: 23"]
    records = process.chain_records(600, "train", seed=0, wrong_step_rate=0.5)
    injected = [r for r in records if r["injected"]]
    assert 0.4 < len(injected) / len(records) < 0.6
    assert all(r["labels"] == [1] * len(r["labels"]) for r in records if not r["injected"])
    for r in injected:  # exactly the injected line is wrong when the error propagates
        assert r["labels"][r["injected"]["line"]] == 0
        if r["injected"]["propagate"]:
            assert r["labels"].count(0) == 1
    # both "right final answer after a wrong step" and "wrong answer from a wrong step" occur
    right = [r for r in injected if r["response"].rsplit("Answer: ", 1)[1] == r["metadata"]["ground_truth"]]
    assert right and len(right) < len(injected)
    assert {r["family"] for r in records} == {"steps", "roots"}
    assert process.chain_records(10, "train", seed=0, wrong_step_rate=0.0)[0]["injected"] is None


def test_operand_errors_state_exact_arithmetic_on_numbers_the_problem_lacks():
    problem = process.problem_of(STEPS)
    chain = process.write_chain(problem, 1, 2, propagate=True, operand=True)
    assert chain == ["4 * 5 = 20", "5 + 20 = 25", "Answer: 25"]        # 5 + 20 is exact, but the problem has 3
    assert process.label_steps(STEPS, "\n".join(chain)) == [1, 0, 0]
    chain = process.write_chain(process.problem_of(ROOTS), 0, -1, propagate=False, operand=True)
    assert chain == ["x - 2 = 0, so x = 2", "x + 5 = 0, so x = -5", "Answer: -5, 3"]
    assert process.label_steps(ROOTS, "\n".join(chain)) == [0, 1, 0]  # a factor the problem lacks
    records = process.chain_records(200, "train", seed=0, wrong_step_rate=0.5, operand_error_rate=0.5)
    operand = [r for r in records if r["injected"] and r["injected"]["operand"]]
    assert 0.15 < len(operand) / len(records) < 0.35
    # (a roots line can land on the problem's other factor, which is then a correct step)
    assert all(r["labels"][r["injected"]["line"]] == 0 for r in operand if r["family"] == "steps")
    assert process.chain_records(50, "train", 0, 0.5) == process.chain_records(50, "train", 0, 0.5, operand_error_rate=0.0)


def test_truncated_chains_stop_before_their_answer_and_are_labelled_so():
    records = process.chain_records(300, "train", seed=0, wrong_step_rate=0.5, truncate_rate=0.3)
    cut = [r for r in records if r["injected"] and "truncated" in r["injected"]]
    assert 0.2 < len(cut) / len(records) < 0.4
    for r in cut:
        lines = r["response"].split("\n")
        assert len(lines) == r["injected"]["truncated"] >= 1 and not lines[-1].startswith("Answer:")
        assert r["labels"][-1] == 0
    whole = [r for r in records if r not in cut]
    assert all(r["response"].split("\n")[-1].startswith("Answer:") for r in whole)
    assert process.chain_records(50, "train", 0, 0.5) == process.chain_records(50, "train", 0, 0.5, truncate_rate=0.0)


@pytest.mark.parametrize("how, expected", [("min", 0.2), ("product", 0.9 * 0.2 * 0.8), ("last", 0.8)])
def test_aggregation_of_hand_made_step_scores(how, expected):
    assert process.aggregate([0.9, 0.2, 0.8], how) == pytest.approx(expected)
    assert process.aggregate([0.7], how) == pytest.approx(0.7)


def test_aggregation_refuses_empty_and_unknown():
    with pytest.raises(ValueError):
        process.aggregate([], "min")
    with pytest.raises(ValueError, match="unknown aggregate"):
        process.aggregate([0.5], "mean")


# ---------------------------------------------------------------------------------------------
# records, encoding, the head and the loss

@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("4 * 5 = 20\n3 + 20 = 23\nAnswer: 23 Compute step by step. x - 3 = 0, so x = 3 " * 20, 300)


def test_bad_records_name_file_and_line(tok, tmp_path):
    good = {"prompt": [{"role": "user", "content": STEPS}], "response": "4 * 5 = 20\nAnswer: 20", "labels": [1, 0]}
    for bad, reason in [({**good, "labels": [1]}, "one label per line"), ({**good, "labels": [1, 2]}, "0 .wrong step"),
                        ({**good, "labels": [True, 0]}, "0 .wrong step"), ({**good, "response": ""}, "non-empty"),
                        ({**good, "prompt": [{"role": "assistant", "content": "x"}]}, "user turn"),
                        ({"prompt": good["prompt"], "labels": [1]}, "response")]:
        path = tmp_path / "chains.jsonl"
        write_jsonl(path, [good, good, bad])
        with pytest.raises(DataError, match=rf"chains.jsonl:3: .*{reason}"):
            prm.load_chains(str(path), tok, 256)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "labels": [1]}) + "\n")
    chains, report = prm.load_chains(str(path), tok, 256, skip_bad=True)
    assert len(chains) == 1 and report["skipped"] == 1


def test_outcome_labels_give_every_step_the_final_answers_verdict(tok, tmp_path):
    meta = {"scorer": "math_grader", "ground_truth": "23"}
    right_after_wrong = {"prompt": [{"role": "user", "content": STEPS}], "response": "4 * 5 = 21\n3 + 20 = 23\nAnswer: 23",
                         "labels": [0, 0, 0], "metadata": meta}
    wrong = {**right_after_wrong, "response": "4 * 5 = 20\n3 + 20 = 23\nAnswer: 24", "labels": [1, 1, 0]}
    path = tmp_path / "chains.jsonl"
    write_jsonl(path, [right_after_wrong, wrong])
    chains, _ = prm.load_chains(str(path), tok, 256, outcome=True)
    assert [labels for _, _, labels in chains] == [[1, 1, 1], [0, 0, 0]]   # an ORM sees only the answer
    assert [labels for _, _, labels in prm.load_chains(str(path), tok, 256)[0]] == [[0, 0, 0], [1, 1, 0]]
    write_jsonl(path, [right_after_wrong, {k: v for k, v in wrong.items() if k != "metadata"}])
    with pytest.raises(DataError, match=r"chains.jsonl:2: .*ground_truth"):
        prm.load_chains(str(path), tok, 256, outcome=True)


def test_step_ends_are_the_newlines_and_the_final_end_token(tok):
    prompt = [{"role": "user", "content": STEPS}]
    ids, ends = prm.encode_chain(tok, prompt, ["4 * 5 = 20", "3 + 20 = 23", "Answer: 23"])
    newline = tok.encode("\n")
    assert len(newline) == 1 and [ids[e] for e in ends] == newline * 2 + [tok.end_id]
    assert ends[-1] == len(ids) - 1
    assert tok.decode(ids[ends[0] + 1:ends[1]]) == "3 + 20 = 23"


def test_head_reads_each_step_end_whatever_the_padding(tok):
    torch.manual_seed(0)
    model = ScalarModel(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)))
    torch.nn.init.normal_(model.head.weight)  # a non-zero head, so scores differ between positions
    prompt = [{"role": "user", "content": STEPS}]
    short = (*prm.encode_chain(tok, prompt, ["Answer: 23"]), [1])
    long = (*prm.encode_chain(tok, prompt, ["4 * 5 = 20", "3 + 20 = 23", "Answer: 23"]), [1, 1, 0])
    alone = prm.step_logits(model, prm.chain_batch([short], tok.pad_id))
    batch = prm.chain_batch([short, long], tok.pad_id)
    together = prm.step_logits(model, batch)
    assert batch["idx"].size(1) > len(short[0])  # the short chain is padded
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=0)
    full = model(batch["idx"])  # by hand: the scalar at each end token
    expected = [full[0, short[1][0]]] + [full[1, e] for e in long[1]]
    torch.testing.assert_close(together, torch.stack(expected), atol=1e-6, rtol=0)
    assert batch["labels"].tolist() == [1, 1, 1, 0] and batch["owner"].tolist() == [0, 1, 1, 1]


def test_lm_targets_are_the_correct_lines_with_their_end_tokens(tok):
    prompt = [{"role": "user", "content": STEPS}]
    a = (*prm.encode_chain(tok, prompt, ["4 * 5 = 21", "3 + 21 = 24", "Answer: 24"]), [0, 1, 1])
    b = (*prm.encode_chain(tok, prompt, ["4 * 5 = 20", "3 + 20 = 22", "Answer: 23"]), [1, 0, 0])
    batch = prm.chain_batch([a, b], tok.pad_id)
    starts = [ids.index(tok.assistant_id) for ids, _, _ in (a, b)]
    mask = prm.correct_line_mask(batch, starts)
    picked = lambda row: tok.decode(batch["idx"][row][mask[row]].tolist())
    assert picked(0) == "3 + 21 = 24\nAnswer: 24<|end|>"   # the wrong first line is not taught
    assert picked(1) == "4 * 5 = 20\n"                     # nor the lines after it, nor the padding
    model = ScalarModel(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)))
    scores, logits = model(batch["idx"], return_logits=True)  # one pass gives the head and the body's logits
    torch.testing.assert_close(scores, model(batch["idx"]))
    torch.testing.assert_close(logits, model.gpt(batch["idx"]))


def test_prm_loss_is_the_per_chain_mean_of_step_log_losses():
    logits = torch.tensor([0.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    owner = torch.tensor([0, 1, 1, 1])
    sig = lambda z: 1 / (1 + math.exp(-z))
    chain0 = -math.log(sig(0.0))
    chain1 = (-math.log(1 - sig(2.0)) - math.log(1 - sig(-1.0)) - math.log(sig(0.5))) / 3
    torch.testing.assert_close(prm.prm_loss(logits, labels, owner, 2), torch.tensor([chain0, chain1], dtype=torch.float64))


def test_best_of_n_picks():
    ok = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]     # two prompts, N = 3
    scores = [0.9, 0.1, 0.5, 0.8, 0.2, 0.3]
    outcomes = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    picks = prm.best_of_n(scores, outcomes, ok, 3, baseline_scores=[0.1, 0.9, 0.5, 0.1, 0.2, 0.9])
    assert picks["prm"] == [1.0, 0.0]
    assert picks["baseline"] == [0.0, 1.0]  # a second reward model's own argmax
    assert picks["outcome"] == [0.5, 0.5]   # the correct final answers tie
    assert picks["outcome_then_prm"] == [1.0, 0.0]  # the PRM picks among those: 0.9 (right), 0.8 (wrong)
    assert picks["random"] == pytest.approx([1 / 3, 1 / 3]) and picks["oracle"] == [1.0, 1.0]
    paired = prm.paired_difference([1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 1.0, 0.0])
    assert paired["mean"] == 0.25 and (paired["prompts_better"], paired["prompts_worse"]) == (2, 1)
    assert paired["sign_p"] == 1.0 and paired["ci95"][0] <= 0.25 <= paired["ci95"][1]  # 2 * (1 + 3) / 2^3, capped at 1


# ---------------------------------------------------------------------------------------------
# smoke runs from the command-line entry points

@pytest.fixture(scope="module")
def trained_prm(sft, tmp_path_factory):
    out = tmp_path_factory.mktemp("prm")
    summary = train_rm.main(["--kind", "prm", "--init", sft, "--out", str(out), "--steps", "2", "--n_pairs", "24",
                             "--batch_size", "4", "--micro_batch_size", "2", "--log_every", "1", "--device", "cpu",
                             "--truncate_rate", "0.2", "--policy_samples", "16"])
    return str(out), summary


def test_prm_training_run(trained_prm):
    out, summary = trained_prm
    assert summary["stage"] == "prm" and 0 <= summary["heldout_step_accuracy"] <= 1
    assert set(summary["step_accuracy_by_family"]) == {"steps", "roots"} and summary["heldout_steps"] > 0
    # the policy's own chains: labelled by the verifier, trained on, and scored on held-out prompts
    policy = [json.loads(line) for line in open(os.path.join(out, "policy_chains.jsonl"))]
    assert 0 < len(policy) <= 16
    assert all(r["labels"] == process.label_steps(r["prompt"][-1]["content"], r["response"]) for r in policy)
    assert summary["heldout_policy_samples"]["chains"] > 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a zero head: σ(0) = ½ on every step
    model, tok, how = prm.load_prm(os.path.join(out, "ckpt"))
    assert how == "min"
    with pytest.raises(ValueError, match="unknown --prm_aggregate"):
        train_rm.main(["--kind", "prm", "--prm_aggregate", "mean", "--out", out])
    with pytest.raises(ValueError, match="unknown --prm_labels"):
        train_rm.main(["--kind", "prm", "--prm_labels", "final", "--out", out])


def test_prm_as_rl_reward_and_for_reranking(sft, trained_prm, tmp_path):
    summary = train_rl.main(["--init", sft, "--out", str(tmp_path / "rl"), "--reward", f"prm:{trained_prm[0]}/ckpt",
                             "--steps", "1", "--prompts_per_step", "2", "--num_generations", "2",
                             "--max_completion_length", "8", "--eval_prompts", "4", "--log_every", "1", "--device", "cpu"])
    assert set(summary["accuracy_by_family_before"]) <= {"steps", "roots"}  # the PRM's own prompts
    with open(tmp_path / "rl" / "metrics.jsonl") as f:
        assert "rewards/process_reward_model/mean" in json.loads(f.readline())
    with pytest.raises(ValueError, match="not a process-reward-model checkpoint"):
        train_rl.main(["--init", sft, "--out", str(tmp_path / "x"), "--reward", f"prm:{sft}", "--steps", "1"])
    ckpt = f"{trained_prm[0]}/ckpt"
    result = prm.rerank(["--prm", ckpt, "--policy", sft, "--n", "2", "--prompts", "3", "--seeds", "2",
                         "--max_new_tokens", "8", "--device", "cpu", "--baseline", ckpt, "--out", str(tmp_path / "s.jsonl")])
    assert result["prompts"] == 3 and result["seeds"] == 2
    assert set(result["all_steps_correct/all"]) == {"prm", "outcome", "outcome_then_prm", "random", "oracle", "baseline"}
    samples = [json.loads(line) for line in open(tmp_path / "s.jsonl")]
    assert len(samples) == 3 * 2 * 2 and [s["sample_set"] for s in samples] == [0] * 6 + [1] * 6
    # the PRM as its own baseline: the same picks, so the paired difference is exactly 0
    same = result["prm_minus_baseline/all"]
    assert same["mean"] == 0 and same["prompts_better"] == same["prompts_worse"] == 0 and same["sign_p"] == 1.0
    # a complete, correct chain ends in a correct answer: never more of them than correct answers
    assert result["sample_all_steps_correct"] <= result["sample_answer_correct"]
    # the paired report is the difference of the picks' means, prompt by prompt
    rates, paired = result["all_steps_correct/all"], result["outcome_then_prm_minus_outcome/all"]
    assert paired["mean"] == pytest.approx(rates["outcome_then_prm"] - rates["outcome"])
    assert paired["prompts_better"] + paired["prompts_worse"] <= result["prompts"]
