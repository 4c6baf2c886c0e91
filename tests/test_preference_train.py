"""train_rm.py, DPO (train_rl.py --algo dpo), RLHF (--reward rm:CKPT) and RLAIF (--labels ai), small:
each runs from the command-line entry point on a tiny base + SFT checkpoint, its first step's loss
is the closed form at initialisation (ln 2: a zero reward head, or policy = reference), the
summaries hold their keys, and a DPO run resumed from its checkpoint replays the uninterrupted one."""
import json
import math
import os

import pytest

import nanopost.common
import train_rl
import train_rm
from nanopost.checkpoint import load_checkpoint
from nanopost.data import DataError, read_jsonl
from nanopost.preferences import load_reward_model

SMALL_PAIRS = ["--steps", "2", "--n_pairs", "40", "--batch_size", "4", "--micro_batch_size", "2", "--log_every", "1",
               "--device", "cpu"]


@pytest.fixture(scope="module")
def rm(sft, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    summary = train_rm.main(["--init", sft, "--out", str(out)] + SMALL_PAIRS)
    return str(out), summary


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_reward_model_run(rm):
    out, summary = rm
    assert summary["stage"] == "rm" and 0 <= summary["heldout_accuracy"] <= 1
    assert set(summary["heldout_accuracy_by_kind"]) <= {"direct", "correct", "format", "concise"}
    metrics = read_metrics(out)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero-initialised head: r_c = r_r = 0
    model, tok, stats = load_reward_model(os.path.join(out, "ckpt"))
    assert math.isfinite(stats["reward_mean"]) and stats["reward_std"] > 0


@pytest.mark.parametrize("frozen", [False, True])
def test_reward_model_with_logp_trains_saves_and_scores_rlhf(sft, tmp_path, frozen):
    """--reward_logp w: the first loss is the mean of -log σ(w (log π(y_c|x) - log π(y_r|x))) under the
    initial model (zero head), the checkpoint keeps w, and the RLHF scorer (which must pass the
    completion's mask) reads the same reward as the model. --logp_frozen: the checkpoint holds the
    frozen language model, equal to the --init weights after training, while the body has moved."""
    import torch
    from nanopost.preferences import batch_indices, load_preferences, pair_batch, sequence_logprobs
    from nanopost.rewards import reward_model_scorer
    from nanopost.tokenizer import render_prompt
    train_rm.main(["--init", sft, "--out", str(tmp_path), "--reward_logp", "0.5", "--head_lr", "1e-3"]
                  + ["--logp_frozen"] * frozen + SMALL_PAIRS)
    state = load_checkpoint(sft, "cpu")
    pairs, _ = load_preferences(str(tmp_path / "prefs.jsonl"), state["tok"], state["model"].config.block_size)
    with torch.no_grad():
        logp = sequence_logprobs(state["model"].eval(), pair_batch([pairs[i] for i in batch_indices(len(pairs), 4, 0, 0)],
                                                                  state["tok"].pad_id)).double()  # (8,)
    expected = torch.nn.functional.softplus(-0.5 * (logp[:4] - logp[4:])).mean().item()
    assert read_metrics(str(tmp_path))[0]["loss"] == pytest.approx(expected, rel=1e-4)
    model, tok, stats = load_reward_model(str(tmp_path / "ckpt"))
    assert model.logp_weight == 0.5
    assert (model.logp_model is not None) == frozen
    if frozen:
        init = state["model"].state_dict()
        assert all(torch.equal(v, init[k]) for k, v in model.logp_model.state_dict().items())
        assert any(not torch.equal(v, init[k]) for k, v in model.gpt.state_dict().items())
    row = {"prompt": [{"role": "user", "content": "What is the capital of France?"}]}
    text = "The capital of France is Paris."
    prompt = render_prompt(tok, row["prompt"])
    ids = torch.tensor([prompt + tok.encode(text) + [tok.end_id]])
    mask = torch.zeros(ids.shape)
    mask[0, len(prompt):] = 1
    with torch.no_grad():
        r = model(ids, response_mask=mask)[0, -1].item()
    scored = reward_model_scorer(str(tmp_path / "ckpt"), "cpu")([text], [row])[0]["reward_model"]
    assert scored * stats["reward_std"] + stats["reward_mean"] == pytest.approx(r, abs=1e-3)  # (r - mean) / std


def test_logp_frozen_needs_reward_logp_and_a_bradley_terry_model(sft, tmp_path):
    with pytest.raises(ValueError, match="--logp_frozen needs --reward_logp"):
        train_rm.main(["--init", sft, "--out", str(tmp_path), "--logp_frozen"] + SMALL_PAIRS)
    with pytest.raises(ValueError, match="--logp_frozen needs --reward_logp"):
        train_rm.main(["--init", sft, "--out", str(tmp_path), "--kind", "prm", "--reward_logp", "1", "--logp_frozen"])


def test_resuming_a_reward_model_needs_its_reward_flags(sft, tmp_path):
    """A resumed run must train the reward the checkpoint has: adding or dropping --logp_frozen, or another
    --reward_logp, stops with a named error instead of a KeyError or a silently different reward."""
    base = ["--init", sft, "--out", str(tmp_path)] + SMALL_PAIRS
    train_rm.main(base + ["--reward_logp", "0.5", "--logp_frozen"])
    for flags in (["--reward_logp", "0.5"], ["--reward_logp", "0.3", "--logp_frozen"], []):
        with pytest.raises(ValueError, match="resume with the same flags"):
            train_rm.main(base + flags + ["--resume", "--steps", "3"])


def test_reward_model_kind_weights_select_the_training_mix(sft, tmp_path):
    summary = train_rm.main(["--init", sft, "--out", str(tmp_path), "--kind_weights", "correct=2,*=0"] + SMALL_PAIRS)
    n_correct = sum(r["metadata"]["kind"] == "correct" for _, r in read_jsonl(os.path.join(tmp_path, "prefs.jsonl")))
    assert n_correct > 0 and summary["data"]["kind_weights"]["pairs"] == 2 * n_correct


def test_rlhf_with_the_reward_model(sft, rm, tmp_path):
    summary = train_rl.main(["--init", sft, "--out", str(tmp_path), "--reward", f"rm:{rm[0]}/ckpt", "--steps", "2",
                             "--prompts_per_step", "2", "--num_generations", "4", "--max_completion_length", "12",
                             "--log_every", "1", "--device", "cpu"])
    for key in ("preference_rate_before", "preference_rate_after", "kl_last10"):
        assert key in summary, key
    assert "rm_score" in summary["preference_after"] and "words" in summary["preference_after"]
    metrics = read_metrics(tmp_path)
    assert all("rewards/reward_model/mean" in m and "kl" in m and "completion_length" in m for m in metrics)


def test_reward_must_name_a_source(sft, tmp_path):
    with pytest.raises(ValueError, match="reward"):
        train_rl.main(["--init", sft, "--out", str(tmp_path), "--reward", "vibes"])
    with pytest.raises(ValueError, match="not a reward-model checkpoint"):
        train_rl.main(["--init", sft, "--out", str(tmp_path), "--reward", f"rm:{sft}", "--steps", "1"])


def test_dpo_run_starts_at_ln2_and_logs_its_metrics(sft, tmp_path):
    summary = train_rl.main(["--algo", "dpo", "--init", sft, "--out", str(tmp_path)] + SMALL_PAIRS)
    assert summary["stage"] == "dpo" and summary["loss_type"] == "sigmoid" and summary["beta"] == 0.1
    assert 0 <= summary["preference_rate_before"] <= 1 and 0 <= summary["preference_rate_after"] <= 1
    assert summary["logps_curve"] and "heldout_reward_accuracy" in summary
    metrics = read_metrics(tmp_path)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at the first step
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert all(math.isfinite(m[key]) for m in metrics), key
    assert load_checkpoint(str(tmp_path / "ckpt"))["meta"]["stage"] == "dpo"


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "robust"])
def test_dpo_loss_types_run(sft, tmp_path, loss_type):
    summary = train_rl.main(["--algo", "dpo", "--init", sft, "--out", str(tmp_path), "--loss_type", loss_type,
                             "--label_smoothing", "0.1"] + SMALL_PAIRS[:1] + ["1"] + SMALL_PAIRS[2:])
    first = read_metrics(tmp_path)[0]["loss"]
    expected = {"ipo": (1 / (2 * 0.1)) ** 2, "hinge": 1.0, "robust": math.log(2)}[loss_type]  # h = 0 at init
    assert first == pytest.approx(expected, rel=1e-4) and summary["loss_type"] == loss_type


def test_dpo_rejects_a_grpo_loss_type(sft, tmp_path):
    with pytest.raises(ValueError, match="DPO --loss_type"):
        train_rl.main(["--algo", "dpo", "--init", sft, "--out", str(tmp_path), "--loss_type", "dapo"])


class Crash(Exception):
    pass


def test_dpo_resume_replays_the_uninterrupted_run(sft, tmp_path, monkeypatch):
    args = ["--algo", "dpo", "--init", sft, "--steps", "4", "--save_every", "2"] + SMALL_PAIRS[2:]
    train_rl.main(["--out", str(tmp_path / "full")] + args)
    full = [m["loss"] for m in read_metrics(tmp_path / "full")]
    real_log = nanopost.common.RunLog.log

    def crash_at_step_3(self, step, **metrics):
        if step == 3:
            raise Crash()
        real_log(self, step, **metrics)

    monkeypatch.setattr(nanopost.common.RunLog, "log", crash_at_step_3)
    with pytest.raises(Crash):
        train_rl.main(["--out", str(tmp_path / "cut")] + args)
    monkeypatch.setattr(nanopost.common.RunLog, "log", real_log)
    train_rl.main(["--out", str(tmp_path / "cut"), "--resume"] + args)
    resumed = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "cut")}
    assert [resumed[s] for s in (3, 4)] == pytest.approx(full[2:4], abs=1e-5)


def test_ai_labels_then_dpo_and_reward_model(sft, tmp_path):
    summary = train_rl.main(["--algo", "dpo", "--labels", "ai", "--label_prompts", "12", "--min_confidence", "0.5",
                             "--init", sft, "--out", str(tmp_path / "dpo")] + SMALL_PAIRS)
    labelling = summary["data"]["labelling"]
    assert labelling["prompts"] == 12 and 0 <= labelling["agreement_with_gold"] <= 1
    records = [r for _, r in read_jsonl(str(tmp_path / "dpo" / "labels.jsonl"))]
    assert len(records) == labelling["kept"] and all({"prompt", "chosen", "rejected"} <= set(r) for r in records)
    # the same §7 file trains a reward model
    rm = train_rm.main(["--init", sft, "--out", str(tmp_path / "rm"), "--data", str(tmp_path / "dpo" / "labels.jsonl")]
                       + SMALL_PAIRS)
    assert rm["stage"] == "rm"


def test_gold_labels_keep_only_pairs_the_ground_truth_separates(sft, tmp_path):
    summary = train_rm.main(["--labels", "gold", "--label_prompts", "12", "--init", sft, "--out", str(tmp_path)]
                            + SMALL_PAIRS)
    assert summary["data"]["labelling"]["agreement_with_gold"] == 1.0
    assert summary["data"]["labelling"]["gold_ties_kept"] == 0


def test_bad_preference_file_names_file_and_line(sft, tmp_path):
    path = tmp_path / "prefs.jsonl"
    good = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "? hi"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": good["chosen"]}) + "\n")
    with pytest.raises(DataError, match=r"prefs.jsonl:2: .*same response"):
        train_rm.main(["--init", sft, "--out", str(tmp_path / "rm"), "--data", str(path)] + SMALL_PAIRS)


def test_reward_model_lm_coef_adds_the_chosen_next_token_loss(sft, tmp_path):
    """--lm_coef c: first loss = ln 2 (zero head) + c · mean over the step's pairs of the per-token NLL of the
    chosen response under the initial model, computed here with a plain log_softmax."""
    import torch
    from nanopost.preferences import batch_indices, load_preferences
    summary = train_rm.main(["--init", sft, "--out", str(tmp_path), "--lm_coef", "0.5"] + SMALL_PAIRS)
    first = read_metrics(str(tmp_path))[0]
    state = load_checkpoint(sft, "cpu")
    model, tok = state["model"].eval(), state["tok"]
    pairs, _ = load_preferences(str(tmp_path / "prefs.jsonl"), tok, model.config.block_size)
    nlls = []
    for i in batch_indices(len(pairs), 4, 0, 0):
        ids = pairs[i].prompt + pairs[i].chosen
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)   # (T-1, V)
        start = len(pairs[i].prompt)
        nlls.append(-sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids))) / (len(ids) - start))
    assert first["nll_chosen"] == pytest.approx(sum(nlls) / 4, rel=1e-4)
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * sum(nlls) / 4, rel=1e-4)
    assert summary["stage"] == "rm"
