"""
RLAIF / Constitutional AI (§6): an AI judge, guided by a written constitution, labels preference
pairs sampled from the policy; the labels are §7 JSONL that train_rm.py and DPO consume.

    python train_rl.py --algo dpo --labels ai                           # label, then DPO on the labels
    python train_rm.py --labels ai --constitution my_principles.txt

A constitution is a text file with one principle per line, optionally weighted ("8 | Prefer the
response that ..."; default weight 1; blank lines and lines starting with # are skipped).

A judge is any callable judge(questions, responses_a, responses_b, principle) -> [P(A is better)]
with values in [0, 1] (0.5: no preference): a rule, a bigger model, an API. The built-in judge is
a nanopost model asked in preference_world.judge_prompt's format, which the built-in SFT mix
teaches: shown the principle, the question and one response, it answers "Verdict: yes" or
"Verdict: no". Its probabilities p_A, p_B of " yes" (against " no") for the two responses give
    P(A better) = p_A (1 - p_B) + ½ [p_A p_B + (1 - p_A)(1 - p_B)] = ½ + ½ (p_A - p_B).
(One response per prompt is what a 2M-parameter judge can learn: a prompt holding both responses
and asking for two verdicts and a comparison stayed at chance in our runs.)

Labelling a pair (a, b): under every principle k the judge is asked in both orders, which cancels
position bias,   p_k = ½ (J(a, b) + 1 - J(b, a)),   and the principles are combined by weighted
log-odds,   s = Σ_k w_k logit(p_k),   P(a ≻ b) = σ(s). A principle that sees no difference gives
p_k = ½ and adds nothing; a heavier principle overrules a lighter one. (Constitutional AI samples
one principle per comparison; asking all of them costs one forward pass each here, no generation,
and gives less noisy labels.)
"""
import math

import torch

from nanopost import preference_world
from nanopost.evaluate import chat_complete
from nanopost.tokenizer import render_prompt


def load_constitution(path=None):
    """-> [(weight, principle)]; the built-in constitution when path is empty. Bad lines raise
    ValueError naming the file and line."""
    text = open(path, encoding="utf-8").read() if path else preference_world.CONSTITUTION
    where = path or "<built-in constitution>"
    principles = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        weight, sep, principle = line.partition("|")
        if not sep:
            weight, principle = "1", line
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"{where}:{lineno}: weight {weight.strip()!r} is not a number "
                             f"(write 'weight | principle' or just the principle)") from None
        if not math.isfinite(w) or w <= 0:
            raise ValueError(f"{where}:{lineno}: weight must be a positive number, got {weight.strip()!r}")
        if not principle.strip():
            raise ValueError(f"{where}:{lineno}: empty principle")
        principles.append((w, principle.strip()))
    if not principles:
        raise ValueError(f"{where}: no principles")
    return principles


def model_judge(model, tok, batch_size=64):
    """The built-in judge: a nanopost model prompted with the principle (see the module docstring)."""
    yes, no = tok.encode(" yes")[0], tok.encode(" no")[0]
    assert yes != no, "' yes' and ' no' must start with different tokens"
    block = model.config.block_size
    cue = tok.encode("Verdict:")  # the start of preference_world.judge_verdict
    device = next(model.parameters()).device

    @torch.no_grad()
    def p_yes(sequences):
        """P(' yes' | sequence) vs ' no', for each token-id sequence (right-padded batches)."""
        out = []
        for lo in range(0, len(sequences), batch_size):
            chunk = sequences[lo:lo + batch_size]
            idx = torch.full((len(chunk), max(map(len, chunk))), tok.pad_id, dtype=torch.long)
            for b, seq in enumerate(chunk):
                idx[b, :len(seq)] = torch.tensor(seq)
            last = torch.tensor([len(seq) - 1 for seq in chunk], device=device)
            logits = model(idx.to(device))[torch.arange(len(chunk), device=device), last]  # (b, V)
            out += torch.softmax(logits[:, [yes, no]].float(), dim=-1)[:, 0].tolist()
        return out

    def verdicts(questions, responses, principle):
        """P(the response follows the principle) per response; None where the prompt does not fit."""
        seqs = [render_prompt(tok, [{"role": "user", "content": preference_world.judge_prompt(principle, q, r)}]) + cue
                for q, r in zip(questions, responses)]
        fits = [i for i, s in enumerate(seqs) if len(s) < block]  # the verdict token must fit too
        out = [None] * len(seqs)
        for i, p in zip(fits, p_yes([seqs[i] for i in fits])):
            out[i] = p
        return out

    def judge(questions, responses_a, responses_b, principle):
        p_a, p_b = verdicts(questions, responses_a, principle), verdicts(questions, responses_b, principle)
        # P(A better) = P(A yes, B no) + ½ P(same verdict), verdicts independent = ½ + ½ (p_A - p_B);
        # a comparison too long for the context gets no opinion (½)
        return [0.5 if a is None or b is None else 0.5 + 0.5 * (a - b) for a, b in zip(p_a, p_b)]

    judge.verdicts = verdicts  # per-response P(yes): the pointwise scores of eval.py (nanopost/llm_judge.py)
    return judge


def judge_preference(judge, constitution, questions, responses_a, responses_b):
    """P(a ≻ b) for each pair under the whole constitution, both orders (module docstring), (n,)."""
    score = torch.zeros(len(questions), dtype=torch.float64)
    for weight, principle in constitution:
        p_ab = torch.tensor(judge(questions, responses_a, responses_b, principle), dtype=torch.float64)
        p_ba = torch.tensor(judge(questions, responses_b, responses_a, principle), dtype=torch.float64)
        p = (0.5 * (p_ab + 1 - p_ba)).clamp(1e-6, 1 - 1e-6)
        score += weight * torch.log(p / (1 - p))
    return torch.sigmoid(score)


def label_pairs(policy, tok, prompts, cfg, judge_model=None, judge=None):
    """Sample two answers per prompt from the policy and label each pair, cfg.labels = 'ai' (the
    judge under the constitution, kept when it prefers one side with probability >=
    cfg.min_confidence) or 'gold' (the world's ground truth, ties dropped). prompts:
    {"prompt", "metadata": {"gold"}}. -> (§7 records, report with the judge's agreement with the
    ground truth on the pairs where the ground truth has a preference)."""
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed + 17)
    conversations = [r["prompt"] for r in prompts for _ in range(2)]
    answers = chat_complete(policy, tok, conversations, 32, temperature=cfg.label_temperature, generator=generator)
    # an empty answer cannot be a §7 response, and two equal answers are no comparison
    pairs = [(r, answers[2 * i], answers[2 * i + 1]) for i, r in enumerate(prompts)
             if answers[2 * i].strip() and answers[2 * i + 1].strip()
             and answers[2 * i].strip() != answers[2 * i + 1].strip()]
    gold = [preference_world.gold_prefers(r["metadata"]["gold"], a, b) if "gold" in r.get("metadata", {}) else 0
            for r, a, b in pairs]
    if cfg.labels == "ai":
        judge = judge or model_judge(judge_model if judge_model is not None else policy, tok)
        questions = [r["prompt"][-1]["content"] for r, _, _ in pairs]
        p_a = judge_preference(judge, load_constitution(cfg.constitution), questions,
                               [a for _, a, _ in pairs], [b for _, _, b in pairs]).tolist()
        keep = [max(p, 1 - p) >= cfg.min_confidence for p in p_a]
        prefer_a = [p > 0.5 for p in p_a]
    else:
        p_a = [float(g > 0) for g in gold]
        keep = [g != 0 for g in gold]
        prefer_a = [g > 0 for g in gold]
    records = []
    for (r, a, b), k, first, p in zip(pairs, keep, prefer_a, p_a):
        if k:
            chosen, rejected = (a, b) if first else (b, a)
            records.append({"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}],
                            "metadata": {**r.get("metadata", {}), "judge_p": round(max(p, 1 - p), 4)}})
    decided = [(first == (g > 0)) for k, first, g in zip(keep, prefer_a, gold) if k and g != 0]
    judged_all = [(first == (g > 0)) for first, g in zip(prefer_a, gold) if g != 0]
    report = {"prompts": len(prompts), "distinct_pairs": len(pairs), "kept": len(records),
              "agreement_with_gold": sum(decided) / max(len(decided), 1),
              "agreement_with_gold_all_pairs": sum(judged_all) / max(len(judged_all), 1),
              "gold_ties_kept": sum(1 for k, g in zip(keep, gold) if k and g == 0)}
    return records, report
