"""
Where an RL reward comes from (§6): a `--reward` spec names one or more sources, comma-separated.

    graders      the verifiable graders each §8 record names in metadata.scorer (math_grader, code_grader, ...)
    rm:CKPT      a Bradley-Terry reward model from train_rm.py (RLHF, §7): its standardised score
                 (r - mean) / std, read at the completion's last token, as the reward 'reward_model'
    prm:CKPT     a process reward model from train_rm.py --kind prm (§6): its step scores aggregated
                 (min / product / last, nanopost/prm.py), as the reward 'process_reward_model'

    python train_rl.py --algo grpo --reward rm:runs/rm/ckpt,graders --reward_weights reward_model=1,math_grader=0.5

Each source gives one {name: reward} dict per completion; rollout.sample_rollouts combines the
names with graders.combine and --reward_weights (default weight 1 each). A learned source is a
function in MODEL_REWARDS: load(path, device) -> score(texts, rows) -> [{name: reward}].
"""
import math

import torch

from nanopost.graders import scorers_of, grade_many
from nanopost.rubric import check_aggregate, load_rubric
from nanopost.preferences import last_token_rewards, load_reward_model
from nanopost.prm import prm_scorer
from nanopost.tokenizer import ConversationError, render_prompt


def parse_weights(text):
    """'math_grader=1,reward_model=0.5' -> {name: weight}."""
    weights = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--reward_weights item {item!r} is not name=number") from None
        if not eq or not name.strip():
            raise ValueError(f"--reward_weights item {item!r} is not name=number")
        if not math.isfinite(weights[name.strip()]):
            raise ValueError(f"--reward_weights item {item!r}: the weight must be a finite number")
    return weights


def reward_model_scorer(path, device):
    """RLHF (§6, §7): the frozen reward model's standardised score (r - mean) / std of prompt +
    completion + <|end|>, read at that last token, as 'reward_model'."""
    rm, tok, stats = load_reward_model(path, device)  # frozen
    block = rm.gpt.config.block_size

    @torch.no_grad()
    def score(texts, rows):
        prompts = [render_prompt(tok, r["prompt"]) for r in rows]
        seqs = [(p + tok.encode(t) + [tok.end_id])[:block] for p, t in zip(prompts, texts)]
        idx = torch.full((len(seqs), max(map(len, seqs))), tok.pad_id, dtype=torch.long)
        response_mask = torch.zeros(idx.shape)  # 1 on the completion and its <|end|>
        for b, (seq, p) in enumerate(zip(seqs, prompts)):
            idx[b, :len(seq)] = torch.tensor(seq)
            response_mask[b, len(p):len(seq)] = 1
        lengths = torch.tensor([len(s) for s in seqs], device=device)
        scores = last_token_rewards(rm, idx.to(device), lengths,
                                    response_mask.to(device) if rm.logp_weight else None).float()
        return [{"reward_model": s} for s in ((scores - stats["reward_mean"]) / stats["reward_std"]).tolist()]

    return score


MODEL_REWARDS = {"rm": reward_model_scorer, "prm": prm_scorer}
REWARD_NAMES = {"rm": "reward_model", "prm": "process_reward_model"}  # the name each source reports its reward under


def parse_reward(spec):
    """'graders' | 'rm:CKPT' | 'rm:CKPT,graders' ... -> (use the graders?, {source: checkpoint path})."""
    use_graders, models = False, {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, path = part.partition(":")
        if part == "graders":
            use_graders = True
        elif kind in MODEL_REWARDS and path and kind not in models:
            models[kind] = path
        else:
            known = ", ".join(["graders"] + [f"{k}:CKPT" for k in MODEL_REWARDS])
            raise ValueError(f"bad --reward part {part!r}; use {known} (comma-separated, each at most once)")
    if not use_graders and not models:
        raise ValueError("--reward names no reward; use graders, rm:CKPT or both")
    return use_graders, models


def reward_fn_for(use_graders, models, device, suites_dir):
    """The reward function rollouts call, fn(texts, rows) -> [{name: reward}], or None when the
    graders alone give the reward (rollouts grade by default)."""
    if not models:
        return None
    scorers = [MODEL_REWARDS[kind](path, device) for kind, path in models.items()]

    def reward_fn(texts, rows):
        graded = [i for i, r in enumerate(rows) if use_graders and "scorer" in r["metadata"]]
        results = [{} for _ in rows]
        for i, g in zip(graded, grade_many([texts[i] for i in graded], [rows[i]["metadata"] for i in graded],
                                           suites_dir=suites_dir)):
            results[i] = g
        for score in scorers:
            results = [{**g, **s} for g, s in zip(results, score(texts, rows))]
        return results

    return reward_fn


def rl_record(record, tok, max_prompt_len, need_scorer=True):
    """Validate one §8 record when it is loaded (so a bad one is named by file:line, or skipped with
    --skip_bad, instead of failing mid-run): a prompt (messages ending with a user turn) that fits the
    context, and metadata naming known graders with what each needs (a scorer is optional when a
    learned reward alone gives the reward)."""
    if not isinstance(record.get("prompt"), list) or not record["prompt"]:
        raise ConversationError("record needs a non-empty 'prompt' list of messages")
    render_prompt(tok, record["prompt"], max_prompt_len)
    metadata = record.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"'metadata' must be an object, not {type(metadata).__name__}")
    if "scorer" not in metadata:
        if need_scorer:
            raise ValueError("record needs 'metadata' with a 'scorer' (math_grader, code_grader, rubric, ...)")
        return record
    if "rubric" in scorers_of(metadata):  # unknown scorers and missing references raise here
        if not isinstance(metadata["rubric"], list):
            raise ValueError("metadata['rubric'] must be a list of rubric items")
        load_rubric(metadata["rubric"])
        check_aggregate(metadata.get("rubric_aggregate", "mean"))
    return record


def check_weights(weights, records, models):
    """Every --reward_weights name must be a reward that some record or learned source produces:
    a misspelt name would otherwise be ignored without a word."""
    produced = {name for r in records if "scorer" in r.get("metadata", {}) for name in scorers_of(r["metadata"])}
    produced |= {REWARD_NAMES[kind] for kind in models}
    unknown = sorted(set(weights) - produced)
    if unknown:
        raise ValueError(f"--reward_weights names {unknown}, which no reward produces here; rewards: {sorted(produced)}")
