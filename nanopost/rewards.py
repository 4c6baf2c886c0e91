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
import torch

from nanopost.graders import GRADERS, grade_many
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
    return weights


def reward_model_scorer(path, device):
    """RLHF (§6, §7): the frozen reward model's standardised score (r - mean) / std of prompt +
    completion + <|end|>, read at that last token, as 'reward_model'."""
    rm, tok, stats = load_reward_model(path, device)
    rm.requires_grad_(False)
    block = rm.gpt.config.block_size

    @torch.no_grad()
    def score(texts, rows):
        seqs = [(render_prompt(tok, r["prompt"]) + tok.encode(t) + [tok.end_id])[:block] for r, t in zip(rows, texts)]
        idx = torch.full((len(seqs), max(map(len, seqs))), tok.pad_id, dtype=torch.long)
        for b, seq in enumerate(seqs):
            idx[b, :len(seq)] = torch.tensor(seq)
        lengths = torch.tensor([len(s) for s in seqs], device=device)
        scores = last_token_rewards(rm, idx.to(device), lengths).float()
        return [{"reward_model": s} for s in ((scores - stats["reward_mean"]) / stats["reward_std"]).tolist()]

    return score


MODEL_REWARDS = {"rm": reward_model_scorer, "prm": prm_scorer}


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
        results = grade_many(texts, [r.get("metadata", {}) for r in rows], suites_dir=suites_dir) if use_graders \
            else [{} for _ in rows]
        for score in scorers:
            results = [{**g, **s} for g, s in zip(results, score(texts, rows))]
        return results

    return reward_fn


def rl_record(record, tok, max_prompt_len, need_scorer=True):
    """Validate one §8 record: a prompt (messages ending with a user turn) that fits the context,
    and metadata naming known graders (optional when a learned reward gives the reward)."""
    if not isinstance(record.get("prompt"), list) or not record["prompt"]:
        raise ConversationError("record needs a non-empty 'prompt' list of messages")
    render_prompt(tok, record["prompt"], max_prompt_len)
    metadata = record.get("metadata")
    if not need_scorer and (not isinstance(metadata, dict) or "scorer" not in metadata):
        return record
    if not isinstance(metadata, dict) or "scorer" not in metadata:
        raise ValueError("record needs 'metadata' with a 'scorer' (math_grader, code_grader, ...)")
    scorers = [metadata["scorer"]] if isinstance(metadata["scorer"], str) else metadata["scorer"]
    unknown = [name for name in scorers if name not in GRADERS]
    if unknown:
        raise ValueError(f"unknown scorer {unknown[0]!r}; known: {', '.join(GRADERS)}")
    return record
