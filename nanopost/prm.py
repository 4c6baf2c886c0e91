"""
The process reward model (§6): the SFT model's body plus a scalar head read at the end of every
step (the newline that ends a step line, and the <|end|> after the last line), trained with a
per-step logistic loss on the verifier's labels (nanopost/process.py). Its step scores aggregate
to a response reward (min, product or last), used as an RL reward and for best-of-N reranking.

    python train_rm.py --kind prm --lm_coef 1 --out runs/prm   # train it (built-in chains, or --data chains.jsonl)
    python -m nanopost.prm rerank --prm runs/prm/ckpt --n 8   # best-of-N: PRM vs outcome-only vs random
    python -m nanopost.prm score --prm runs/prm/ckpt --data chains.jsonl   # step accuracy on labelled chains
    python train_rl.py --algo grpo --reward prm:runs/prm/ckpt --out runs/rl_prm   # as the RL reward

Loss per step s of a chain with label y_s ∈ {0, 1} and head output z_s:
    ℓ_s = -[y_s log σ(z_s) + (1 - y_s) log(1 - σ(z_s))]
averaged over the chain's steps, then over chains. The score of step s is σ(z_s) = P(step correct).
With --lm_coef c the loss adds c × the next-token loss on the lines labelled correct (one pass
through the body gives both): the label of `4 * 5 = 21` says only "wrong", while predicting the
tokens of `4 * 5 = 20` teaches the arithmetic the verdict needs, which this small body lacks.
A response is encoded line by line (each line's tokens, then the newline's), so the step ends are
known exactly and training and scoring tokenise a text the same way.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from nanopost import process, world
from nanopost.checkpoint import cached_checkpoint, load_checkpoint, save_checkpoint
from nanopost.common import RunLog, pick_device, rng_state, set_rng_state, set_seed
from nanopost.data import load_records, read_jsonl, write_jsonl
from nanopost.evals import bootstrap_interval, sign_test
from nanopost.evaluate import chat_complete
from nanopost.graders import grade, grade_many
from nanopost.losses import token_logprobs
from nanopost.model import ScalarModel, adamw
from nanopost.nexttoken import stop_on_nonfinite
from nanopost.preferences import load_scalar_model, train_pairs
from nanopost.tokenizer import ConversationTooLong, render_prompt


def encode_chain(tok, prompt, lines, max_len=None):
    """-> (ids, ends): rendered prompt + each line's tokens + the newline token after every line
    but the last, which is followed by <|end|>; ends[s] is the index of step s's end token."""
    ids, ends = render_prompt(tok, prompt), []
    newline = tok.encode("\n")
    for s, line in enumerate(lines):
        ids = ids + tok.encode(line) + (newline if s + 1 < len(lines) else [tok.end_id])
        ends.append(len(ids) - 1)
    if max_len is not None and len(ids) > max_len:
        raise ConversationTooLong(f"prompt + response is {len(ids)} tokens, more than the context ({max_len})")
    return ids, ends


def load_chains(path, tok, max_len, skip_bad=False, outcome=False):
    """Step-labelled JSONL (process.py's record) -> ([(ids, ends, labels)], report); a bad record
    stops with 'file:line: reason' (or is skipped and counted with skip_bad). outcome=True gives
    every step of a chain the chain's outcome instead: 1 iff its final answer is right (the graders
    on its metadata), the labels of an outcome reward model (ORM) on the same chains."""
    def convert(record):
        prompt, lines, labels = process.check_chain(record, tok, max_len)
        if outcome:
            metadata = record.get("metadata")
            if not isinstance(metadata, dict) or "ground_truth" not in metadata:
                raise ValueError("outcome labels need the record's 'metadata' with its 'ground_truth'")
            labels = [int(grade(record["response"], metadata).get("math_grader", 0.0) >= 1)] * len(lines)
        return (*encode_chain(tok, prompt, lines, max_len), labels)
    return load_records(path, convert, skip_bad)


def chain_batch(chains, pad_id, device="cpu"):
    """[(ids, ends, labels)] -> idx (B, L) right-padded, and per step (S steps in all): rows (S,),
    cols (S,) where its end token sits, labels (S,), owner (S,) the chain it belongs to."""
    L = max(len(ids) for ids, _, _ in chains)
    idx = torch.full((len(chains), L), pad_id, dtype=torch.long)
    rows, cols, labels = [], [], []
    for b, (ids, ends, y) in enumerate(chains):
        idx[b, :len(ids)] = torch.tensor(ids)
        rows += [b] * len(ends)
        cols += ends
        labels += y
    t = lambda x, dtype=torch.long: torch.tensor(x, dtype=dtype, device=device)
    return {"idx": idx.to(device), "rows": t(rows), "cols": t(cols), "labels": t(labels, torch.float32), "owner": t(rows)}


def step_logits(prm, batch):
    """The head's output z_s at each step's end token, (S,). Right padding comes after every end
    token and causal attention never looks right, so padding cannot change a score."""
    scores = prm(batch["idx"])                                      # (B, L)
    return scores[batch["rows"], batch["cols"]].float()


def correct_line_mask(batch, start):
    """(B, L) bool: the tokens of every line the verifier labels correct, its end token included;
    start[b] is the index of chain b's <|assistant|> token (its first line begins after it). The
    targets of the auxiliary next-token loss (--lm_coef): only correct steps are taught."""
    mask = torch.zeros_like(batch["idx"], dtype=torch.bool)
    prev = list(start)
    for b, end, y in zip(batch["rows"].tolist(), batch["cols"].tolist(), batch["labels"].tolist()):
        if y == 1:
            mask[b, prev[b] + 1:end + 1] = True
        prev[b] = end
    return mask


def prm_loss(logits, labels, owner, n_chains):
    """Per-step logistic loss (§6 PRM), averaged over each chain's steps: (n_chains,)."""
    per_step = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (S,)
    total = per_step.new_zeros(n_chains).index_add(0, owner, per_step)
    count = per_step.new_zeros(n_chains).index_add(0, owner, torch.ones_like(per_step))
    return total / count


@torch.no_grad()
def step_scores(prm, tok, prompts, responses, device="cpu", batch_size=64):
    """P(step correct) for every line of every response: [[σ(z_1), ..., σ(z_S)]]. A response too
    long for the context is scored on the steps whose end token fits."""
    block = prm.gpt.config.block_size
    out = []
    for lo in range(0, len(prompts), batch_size):
        chains = []
        for prompt, response in zip(prompts[lo:lo + batch_size], responses[lo:lo + batch_size]):
            ids, ends = encode_chain(tok, prompt, response.split("\n"))
            ends = [e for e in ends if e < block] or [block - 1]
            chains.append((ids[:block], ends, [0] * len(ends)))
        batch = chain_batch(chains, tok.pad_id, device)
        probs = torch.sigmoid(step_logits(prm, batch)).tolist()
        owner = batch["owner"].tolist()
        for b in range(len(chains)):
            out.append([p for p, o in zip(probs, owner) if o == b])
    return out


def load_prm(path, device="cpu"):
    """A train_rm.py --kind prm checkpoint -> (ScalarModel, tokenizer, its aggregate)."""
    prm, tok, extra = load_scalar_model(path, "prm", device)
    return prm, tok, extra["aggregate"]


def prm_scorer(path, device):
    """The RL reward (rewards.MODEL_REWARDS['prm']): the aggregated step scores of each completion."""
    prm, tok, how = load_prm(path, device)

    def score(texts, rows):
        scores = step_scores(prm, tok, [r["prompt"] for r in rows], texts, device)
        return [{"process_reward_model": process.aggregate(s, how)} for s in scores]

    return score


def step_prompts(n, split, seed):
    """Distinct step-by-step prompts of a split (§8 records: prompt, metadata for math_grader, family)."""
    return [{"prompt": [{"role": "user", "content": t.prompt}], "metadata": t.metadata, "family": t.family}
            for t in world.sample_tasks(n, split, seed, process.FAMILIES, unique=True)]


def sample_chains(model, tok, rows, seed, device="cpu", temperature=0.7, max_new_tokens=48):
    """The model's reply to each row (step_prompts' records), labelled by the verifier: the rows with
    "response" and "labels" added (process.py's chain records)."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    responses = chat_complete(model, tok, [r["prompt"] for r in rows], max_new_tokens,
                              temperature=temperature, generator=generator)
    return [{**r, "response": text, "labels": process.label_steps(r["prompt"][-1]["content"], text)}
            for r, text in zip(rows, responses)]


def policy_chains(model, tok, n, split, seed, device="cpu", per_prompt=8):
    """n chains the policy writes itself (on-policy PRM data, as PRM800K and Math-Shepherd label their
    own model's samples): per_prompt samples at T = 0.7 for each of n / per_prompt distinct prompts of
    the split, labelled by the verifier. Replies with no text are dropped."""
    rows = [r for r in step_prompts(-(-n // per_prompt), split, f"{seed}|policy") for _ in range(per_prompt)][:n]
    return [{**r, "injected": {"policy_sample": True}} for r in sample_chains(model, tok, rows, seed, device)
            if r["response"].strip()]


def score_chains(prm, tok, path, device="cpu", chains=None):
    """A step-labelled JSONL scored by the PRM -> (records, [(ids, ends, labels)], step scores per record);
    chains: the file already loaded by load_chains."""
    records = [r for _, r in read_jsonl(path)]
    if chains is None:
        chains, _ = load_chains(path, tok, prm.gpt.config.block_size)
    return records, chains, step_scores(prm, tok, [r["prompt"] for r in records], [r["response"] for r in records], device)


# ----------------------------------------------------------------------------------------------
# training (train_rm.py --kind prm)

def step_report(chains, scores):
    """Held-out accuracy of the PRM's step verdicts (σ(z) > 0.5 vs the label): overall, per line
    position, on correct and on wrong steps, whole-chain verdicts (every step correct or not), and
    for chains with a wrong step whether the first step it flags is the first wrong one."""
    hits, by_pos, by_label, chain_ok, first = [], {}, {0: [], 1: []}, [], []
    for (_, _, labels), probs in zip(chains, scores):
        verdicts = [int(p > 0.5) for p in probs]
        for s, (v, y) in enumerate(zip(verdicts, labels)):
            hits.append(v == y)
            by_pos.setdefault(s, []).append(v == y)
            by_label[y].append(v == y)
        chain_ok.append(all(verdicts) == all(labels))
        if 0 in labels:
            first.append(0 in verdicts and verdicts.index(0) == labels.index(0))
    mean = lambda xs: sum(xs) / max(len(xs), 1)
    return {"heldout_step_accuracy": mean(hits), "heldout_steps": len(hits),
            "accuracy_by_position": {str(s): mean(v) for s, v in sorted(by_pos.items())},
            "accuracy_on_correct_steps": mean(by_label[1]), "accuracy_on_wrong_steps": mean(by_label[0]),
            "chain_accuracy": mean(chain_ok), "first_error_accuracy": mean(first)}


def train(cfg):
    """train_rm.py --kind prm: cfg is train_rm's RMConfig (n_pairs = built-in training chains)."""
    if cfg.prm_aggregate not in process.AGGREGATES:
        raise ValueError(f"unknown --prm_aggregate {cfg.prm_aggregate!r}; use {', '.join(process.AGGREGATES)}")
    if cfg.prm_labels not in ("step", "outcome"):
        raise ValueError(f"unknown --prm_labels {cfg.prm_labels!r}; use step or outcome")
    t_start = time.time()
    out = "runs/prm" if cfg.out == "runs/rm" else cfg.out  # the BT default would overwrite a reward model
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    ckpt_path = os.path.join(out, "ckpt")
    import train_sft  # the SFT bootstrap, as train_rm.py does
    init = cfg.init or cached_checkpoint("sft", train_sft.main, cfg.device, cfg.seed)
    state = load_checkpoint(ckpt_path if cfg.resume else init, device)
    tok, max_len = state["tok"], state["model"].config.block_size
    log = RunLog(out, cfg.steps, state["meta"]["step"] if cfg.resume else 0, stage="prm")

    # data: the user's step-labelled JSONL or built-in chains (written out so they can be read)
    path = cfg.data or os.path.join(out, "chains.jsonl")
    if not cfg.data:
        write_jsonl(path, process.chain_records(cfg.n_pairs, "train", cfg.seed, cfg.wrong_step_rate,
                                                operand_error_rate=cfg.operand_error_rate,
                                                truncate_rate=cfg.truncate_rate))
    orm = cfg.prm_labels == "outcome"
    train_chains, report = load_chains(path, tok, max_len, cfg.skip_bad, outcome=orm)
    eval_path = cfg.eval_data or os.path.join(out, "chains_eval.jsonl")
    if not cfg.eval_data:
        write_jsonl(eval_path, process.chain_records(400, "eval", cfg.seed, cfg.wrong_step_rate,
                                                     operand_error_rate=cfg.operand_error_rate,
                                                     truncate_rate=cfg.truncate_rate))
    held_out, _ = load_chains(eval_path, tok, max_len)  # read now: a bad record stops before training, not after
    # the policy's own chains (sampled once, before the body trains; a resumed run reads them back)
    policy_path, policy_eval_path = os.path.join(out, "policy_chains.jsonl"), os.path.join(out, "policy_chains_eval.jsonl")
    if cfg.policy_samples and not (cfg.resume and os.path.exists(policy_eval_path)):
        write_jsonl(policy_path, policy_chains(state["model"], tok, cfg.policy_samples, "train", cfg.seed, device))
        write_jsonl(policy_eval_path, policy_chains(state["model"], tok, 400, "eval", cfg.seed, device))
    if cfg.policy_samples:
        train_chains += load_chains(policy_path, tok, max_len, outcome=orm)[0]
    labels = [y for _, _, ys in train_chains for y in ys]
    log.info(f"{len(train_chains)} training chains ({labels.count(0)} wrong of {len(labels)} steps), "
             f"{len(held_out)} held-out, init {init}, device {device}")

    prm = ScalarModel(state["model"]).to(device)
    optimizer = adamw(prm.parameters(), cfg.lr, device.type, weight_decay=cfg.weight_decay)
    if cfg.resume:
        prm.head.load_state_dict(state["extra"]["head"])
        optimizer.load_state_dict(state["optimizer_state"])
        set_rng_state(state["rng"])

    def loss_fn(model, indices, n_total):  # model: prm, or its DDP wrapper under torchrun
        chains = [train_chains[i] for i in indices]
        batch = chain_batch(chains, tok.pad_id, device)
        if cfg.lm_coef > 0:
            scores, lm_logits = model(batch["idx"], return_logits=True)  # (B, L), (B, L, V)
            logits = scores[batch["rows"], batch["cols"]].float()        # (S,), as step_logits
        else:
            logits = step_logits(model, batch)                           # (S,)
        losses = prm_loss(logits, batch["labels"], batch["owner"], len(indices))
        step_hits = ((logits > 0).float() == batch["labels"]).float()
        per_chain = torch.zeros(len(indices), device=device).index_add(0, batch["owner"], step_hits)
        counts = torch.bincount(batch["owner"], minlength=len(indices)).float()
        sums = {"step_accuracy": (per_chain / counts).sum()}
        if cfg.lm_coef > 0:  # + lm_coef · next-token NLL of the correct lines (a chain with none adds 0)
            starts = [len(ids) - 1 - ids[::-1].index(tok.assistant_id) for ids, _, _ in chains]
            mask = correct_line_mask(batch, starts)[:, 1:].float()           # (B, L-1): targets
            nll = -token_logprobs(lm_logits[:, :-1].float(), batch["idx"][:, 1:]) * mask
            nll = nll.sum(1) / mask.sum(1).clamp(min=1)                        # (B,) mean per chain
            losses = losses + cfg.lm_coef * nll
            sums["nll_correct_lines"] = nll.sum()
        return losses.sum() / n_total, sums

    def save(step):
        save_checkpoint(ckpt_path, prm.gpt, tok, step, dataclasses.asdict(cfg), "prm", optimizer, rng_state(),
                        {"head": prm.head.state_dict(), "aggregate": cfg.prm_aggregate})

    prm.train()
    with stop_on_nonfinite(log):
        train_pairs(prm, optimizer, train_chains, loss_fn, cfg, log,
                    state["meta"]["step"] if cfg.resume else 0, save)
    save(cfg.steps)

    prm.eval()
    eval_records, _, scores = score_chains(prm, tok, eval_path, device, held_out)
    heldout = step_report(held_out, scores)
    by_family = {}
    for r, c, s in zip(eval_records, held_out, scores):
        by_family.setdefault(r.get("family", "all"), ([], []))
        by_family[r.get("family", "all")][0].append(c)
        by_family[r.get("family", "all")][1].append(s)
    heldout["step_accuracy_by_family"] = {f: step_report(c, s)["heldout_step_accuracy"] for f, (c, s) in sorted(by_family.items())}
    log.info(f"held-out step accuracy {heldout['heldout_step_accuracy']:.3f} {heldout['step_accuracy_by_family']}")
    if cfg.policy_samples:  # the same report on held-out chains the policy wrote itself
        _, chains, scores = score_chains(prm, tok, policy_eval_path, device)
        policy = step_report(chains, scores)
        heldout["heldout_policy_samples"] = {"chains": len(chains), **policy}
        log.info(f"held-out step accuracy on the policy's own samples {policy['heldout_step_accuracy']:.3f} "
                 f"(correct steps {policy['accuracy_on_correct_steps']:.3f}, wrong {policy['accuracy_on_wrong_steps']:.3f})")
    return log.finish({"stage": "prm", "steps": cfg.steps, **heldout, "heldout_chains": len(held_out),
                       "aggregate": cfg.prm_aggregate, "wrong_step_rate": cfg.wrong_step_rate, "data": report,
                       "wall_s": time.time() - t_start, "ckpt": ckpt_path})


# ----------------------------------------------------------------------------------------------
# best-of-N reranking: python -m nanopost.prm rerank --prm CKPT --n 8

def best_of_n(scores, outcomes, steps_ok, n, baseline_scores=None):
    """Per prompt (consecutive groups of n samples), the all-steps-correct indicator of the response
    each rule picks: the highest PRM score; the highest outcome reward (every correct final answer
    ties: the expectation over the tied ones); a random sample (the expectation: the group's mean);
    the highest outcome reward with the PRM breaking its ties (a verifier where one exists, the PRM where it
    cannot see); the oracle (some sample is all-steps-correct); and, given baseline_scores, the highest
    score of a second reward model (e.g. an ORM). Returns {rule: [value per prompt]}."""
    picks = {"prm": [], "outcome": [], "outcome_then_prm": [], "random": [], "oracle": []}
    if baseline_scores is not None:
        picks["baseline"] = []
    argmax = lambda values, among: max(among, key=lambda i: values[i])
    for lo in range(0, len(scores), n):
        s, o, ok = scores[lo:lo + n], outcomes[lo:lo + n], steps_ok[lo:lo + n]
        everyone = range(len(s))
        picks["prm"].append(ok[argmax(s, everyone)])
        tied = [i for i in everyone if o[i] == max(o)]
        picks["outcome"].append(sum(ok[i] for i in tied) / len(tied))
        picks["outcome_then_prm"].append(ok[argmax(s, tied)])  # the PRM breaks the outcome's ties
        picks["random"].append(sum(ok) / len(ok))
        picks["oracle"].append(float(any(ok)))
        if baseline_scores is not None:
            picks["baseline"].append(ok[argmax(baseline_scores[lo:lo + n], everyone)])
    return picks


def paired_difference(a, b):
    """Prompt by prompt, a - b (each a pick averaged over sample sets): the mean with its 95% bootstrap
    interval over prompts, the prompts where a is better / worse, and the two-sided sign test over them."""
    diffs = [round(x - y, 12) for x, y in zip(a, b)]  # averaged fractions: an exact tie must stay 0, not ±1e-17
    better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    low, high = bootstrap_interval(diffs)
    return {"mean": sum(diffs) / len(diffs), "ci95": [low, high], "prompts_better": better,
            "prompts_worse": worse, "sign_p": sign_test(better, worse)}


def rerank(argv=None):
    p = argparse.ArgumentParser(prog="python -m nanopost.prm rerank",
                                description="Best-of-N on held-out step-by-step prompts: the share of picked responses "
                                            "whose every step is correct, final answer included (a complete, correct chain), "
                                            "picking by PRM score, by outcome reward "
                                            "(math_grader on the final answer) or at random.")
    p.add_argument("--prm", required=True, help="process reward model checkpoint (train_rm.py --kind prm)")
    p.add_argument("--baseline", default="", help="a second reward model scored on the same samples, e.g. an ORM "
                                                   "(train_rm.py --kind prm --prm_labels outcome); its picks are "
                                                   "compared with the PRM's prompt by prompt")
    p.add_argument("--policy", default="", help="the model that samples (default: the cached SFT model)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (N)")
    p.add_argument("--prompts", type=int, default=200, help="held-out prompts at most (distinct)")
    p.add_argument("--seeds", type=int, default=1, help="independent sets of N samples on the same prompts "
                                                        "(sampling seeds seed .. seed + seeds - 1); each pick is "
                                                        "averaged over them per prompt")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0 with --n 1: greedy)")
    p.add_argument("--aggregate", default="", help="min | product | last (default: the PRM's own)")
    p.add_argument("--max_new_tokens", type=int, default=48, help="tokens per response at most")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt choice and of the first sample set")
    p.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    p.add_argument("--out", default="", help="write every sample with its labels and scores to this JSONL")
    args = p.parse_args(argv)
    if args.n < 1 or args.seeds < 1:
        raise ValueError(f"--n and --seeds must be >= 1, got {args.n} and {args.seeds}")
    t0 = time.time()
    device = pick_device(args.device)
    prm, tok, how = load_prm(args.prm, device)
    how = args.aggregate or how
    baseline = load_prm(args.baseline, device) if args.baseline else None
    vocab = lambda t: (t.pattern, t.mergeable_ranks, t.special_tokens)
    if baseline and vocab(baseline[1]) != vocab(tok):
        raise ValueError(f"--baseline {args.baseline} has another tokenizer than --prm {args.prm}: it must score the same token ids")
    import train_sft
    policy = load_checkpoint(args.policy or cached_checkpoint("sft", train_sft.main, args.device, args.seed), device)["model"]
    policy.eval()
    records = step_prompts(args.prompts, "eval", args.seed)
    samples = []  # one dict per sample, sample sets one after the other
    for k in range(args.seeds):
        rows = sample_chains(policy, tok, [r for r in records for _ in range(args.n)], args.seed + k, device,
                             args.temperature, args.max_new_tokens)
        responses, prompts = [r["response"] for r in rows], [r["prompt"] for r in rows]
        scores = [process.aggregate(s, how) for s in step_scores(prm, tok, prompts, responses, device)]
        base = ([process.aggregate(s, baseline[2]) for s in step_scores(baseline[0], tok, prompts, responses, device)]
                if baseline else [None] * len(rows))
        outcomes = [g.get("math_grader", 0.0) for g in grade_many(responses, [r["metadata"] for r in rows])]
        for r, s, b, o in zip(rows, scores, base, outcomes):
            # a complete chain: every line correct *and* a correct final answer (a response that stops after one
            # correct line has no wrong line, but it is not a solution; PRM-rewarded RL learns to write those)
            samples.append({"prompt": r["prompt"], "response": r["response"], "labels": r["labels"], "prm_score": s,
                            **({"baseline_score": b} if baseline else {}), "outcome": o, "family": r["family"],
                            "sample_set": k, "all_steps_correct": float(all(r["labels"]) and o >= 1)})
    if args.out:
        write_jsonl(args.out, samples)
    mean = lambda xs: sum(xs) / max(len(xs), 1)
    column = lambda key: [x[key] for x in samples]
    summary = {"n": args.n, "prompts": len(records), "seeds": args.seeds, "temperature": args.temperature,
               "aggregate": how, "baseline": args.baseline or None,
               "sample_all_steps_correct": mean(column("all_steps_correct")), "sample_answer_correct": mean(column("outcome")),
               "answer_correct_but_a_wrong_step": mean([x["outcome"] >= 1 and not x["all_steps_correct"] for x in samples])}
    per_set = len(records) * args.n
    for family in ["all"] + sorted(process.FAMILIES):
        keep = [i for i, r in enumerate(records) if family in ("all", r["family"])]
        by_set = []  # each sample set's picks, {rule: [value per kept prompt]}
        for k in range(args.seeds):
            rows = [samples[k * per_set + j] for i in keep for j in range(i * args.n, (i + 1) * args.n)]
            by_set.append(best_of_n([x["prm_score"] for x in rows], [x["outcome"] for x in rows],
                                    [x["all_steps_correct"] for x in rows], args.n,
                                    [x["baseline_score"] for x in rows] if baseline else None))
        picks = {rule: [mean([s[rule][i] for s in by_set]) for i in range(len(keep))] for rule in by_set[0]}
        summary[f"all_steps_correct/{family}"] = {rule: mean(v) for rule, v in picks.items()}
        # paired, prompt by prompt: the PRM's picks against the outcome reward's and the baseline's
        comparisons = [("prm", "outcome"), ("outcome_then_prm", "outcome")] + ([("prm", "baseline")] if baseline else [])
        for a, b in comparisons:
            summary[f"{a}_minus_{b}/{family}"] = paired_difference(picks[a], picks[b]) if keep else None
        summary[f"prompts/{family}"] = len(keep)
    summary["wall_s"] = time.time() - t0
    print(json.dumps(summary))
    return summary


def score(argv=None):
    """python -m nanopost.prm score --prm CKPT --data CHAINS.jsonl: the step report of a PRM on
    step-labelled chains (process.py's records), one JSON line."""
    p = argparse.ArgumentParser(prog="python -m nanopost.prm score", description=score.__doc__)
    p.add_argument("--prm", required=True, help="process reward model checkpoint (train_rm.py --kind prm)")
    p.add_argument("--data", required=True, help="step-labelled JSONL (python -m nanopost.process writes one)")
    p.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    model, tok, _ = load_prm(args.prm, device)
    _, chains, scores = score_chains(model, tok, args.data, device)
    report = {"data": args.data, "chains": len(chains), **step_report(chains, scores)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    commands = {"rerank": rerank, "score": score}
    if sys.argv[1:2] not in [[c] for c in commands]:
        sys.exit("usage: python -m nanopost.prm rerank --prm CKPT [--n 8] | score --prm CKPT --data CHAINS.jsonl (see --help)")
    commands[sys.argv[1]](sys.argv[2:])
