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
and asking for two verdicts and a comparison stayed at chance in our runs.) Reference-guided
(--judge_reference, model_judge(reference=True)): the judge first answers each question itself and
every judging prompt shows that answer as "Reference:", as MT-Bench's judge grades against one.
The second built-in judge (--judge_kind likelihood, likelihood_judge) needs no judging format: told
the principle as its system turn, the model prefers the response it would rather have written,
P(A better) = σ((log π(A) - log π(B)) / τ), as multiple-choice benchmarks are scored. The third
(--judge_kind revision, revision_judge) is taught Constitutional AI's revision step: rewrite a
response to follow one principle, changing nothing else; it prefers the response it would leave
unchanged: p(A) = π(A | revise A), the probability that its revision changes nothing, is its
verdict, and P(A better) = ½ + ½ (p_A - p_B) as for the verdict judge.

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
from nanopost.evaluate import chat_complete, next_token_logits
from nanopost.knowledge import ids_logprobs
from nanopost.tokenizer import ConversationError, render_conversation, render_prompt


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


def model_judge(model, tok, batch_size=64, reference=False):
    """The built-in judge: a nanopost model prompted with the principle (see the module docstring).
    reference=True: reference-guided judging; the model first answers each question itself
    (greedy) and every judging prompt shows that answer as the reference, so a wrong response can
    be told from a right one by comparison (preference_world.judge_records teaches both formats).
    Each distinct judging prompt is scored once and remembered: the model must not change while
    the judge is in use."""
    yes, no = tok.encode(" yes")[0], tok.encode(" no")[0]
    assert yes != no, "' yes' and ' no' must start with different tokens"
    block = model.config.block_size
    cue = tok.encode("Verdict:")  # the start of preference_world.judge_verdict
    own_answers = {}  # question -> the judge's own greedy answer (reference=True)
    memo = {}  # judging prompt (token ids) -> P(yes)

    def p_yes(sequences):
        """P(' yes' | sequence) vs ' no', for each token-id sequence."""
        was_training = model.training
        model.eval()  # no dropout in a verdict
        logits = next_token_logits(model, sequences, tok.pad_id, batch_size)  # (N, V)
        model.train(was_training)
        return torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0].tolist()

    def references(questions):
        new = sorted(set(questions) - set(own_answers))
        if new:
            answers = chat_complete(model, tok, [[{"role": "user", "content": q}] for q in new], 32)
            own_answers.update(zip(new, answers))
        return [own_answers[q] for q in questions]

    def verdicts(questions, responses, principle):
        """P(the response follows the principle) per response; None where the prompt does not fit."""
        refs = references(questions) if reference else [None] * len(questions)
        seqs = [tuple(render_prompt(tok, [{"role": "user", "content": preference_world.judge_prompt(principle, q, r, ref)}])
                      + cue) for q, r, ref in zip(questions, responses, refs)]
        # each distinct prompt once (a response sampled with 7 others meets 14 pairings), by length;
        # the verdict token must fit in the context too
        new = sorted({s for s in seqs if len(s) < block and s not in memo}, key=len)
        memo.update(zip(new, p_yes([list(s) for s in new])))
        return [memo.get(s) for s in seqs]  # None where the prompt does not fit

    def judge(questions, responses_a, responses_b, principle):
        p_a, p_b = verdicts(questions, responses_a, principle), verdicts(questions, responses_b, principle)
        # P(A better) = P(A yes, B no) + ½ P(same verdict), verdicts independent = ½ + ½ (p_A - p_B);
        # a comparison too long for the context gets no opinion (½)
        return [0.5 if a is None or b is None else 0.5 + 0.5 * (a - b) for a, b in zip(p_a, p_b)]

    judge.verdicts = verdicts  # per-response P(yes): the pointwise scores of eval.py (nanopost/llm_judge.py)
    return judge


def _response_logps(model, tok, prompt_of, batch_size):
    """-> logps(questions, responses, principle): log π(response | prompt_of(principle, question,
    response)) per response (messages ending with a user turn), summed over the response's tokens
    and its <|end|>; None where the conversation does not fit the context (or the response is
    empty). Each (principle, question, response) is scored once and remembered: the model must not
    change while the judge is in use."""
    memo = {}  # (principle, question, response) -> log π, or None where it does not fit

    def logps(questions, responses, principle):
        keys = [(principle, q, r) for q, r in zip(questions, responses)]
        rows, new = [], []  # (prompt ids, response ids + <|end|>) of each distinct new key that fits
        for key in dict.fromkeys(k for k in keys if k not in memo):
            prompt = prompt_of(*key)
            try:
                ids, _ = render_conversation(tok, prompt + [{"role": "assistant", "content": key[2]}],
                                             max_len=model.config.block_size)
            except ConversationError:  # too long, or an empty response: no opinion
                memo[key] = None
                continue
            start = len(render_prompt(tok, prompt))
            rows.append((ids[:start], ids[start:]))
            new.append(key)
        was_training = model.training
        model.eval()  # no dropout in a judgement
        memo.update(zip(new, ids_logprobs(model, rows, tok.pad_id, batch_size)))
        model.train(was_training)
        return [memo[k] for k in keys]

    return logps


def likelihood_judge(model, tok, temperature=1.0, batch_size=64):
    """A second built-in judge (--judge_kind likelihood): the model is told the principle (as the
    system turn) and the question, and prefers the response it would rather have written itself,
        P(A better | principle) = σ((log π(A | principle, q) - log π(B | principle, q)) / τ),
    log π summed over the response's tokens and its <|end|>, τ = temperature. This is how
    lm-evaluation-harness scores multiple choice: no judging format to learn, and whatever the model
    knows as a language model (the right capital, the shape of an answer) decides, where a verdict
    head trained on a few dozen training countries learns lookups instead (README: measured). Its
    preferences are the model's: a judge that never saw filler in its SFT data finds a padded answer
    unlikely, whatever the principle says. Symmetric by construction (J(a, b) = 1 - J(b, a)), so the
    two orders of judge_preference agree; a response too long for the context gets no opinion (½)."""
    check_judge_flags("likelihood", temperature=temperature)
    logps = _response_logps(model, tok, lambda principle, q, r: [{"role": "system", "content": principle},
                                                                 {"role": "user", "content": q}], batch_size)

    def judge(questions, responses_a, responses_b, principle):
        la, lb = logps(questions, responses_a, principle), logps(questions, responses_b, principle)
        return [0.5 if a is None or b is None else 1 / (1 + math.exp(-max(min((a - b) / temperature, 50), -50)))
                for a, b in zip(la, lb)]

    return judge


def revision_judge(model, tok, batch_size=64):
    """A third built-in judge (--judge_kind revision), from Constitutional AI's revision step (§6):
    the judge is taught (preference_world.revision_records) to rewrite a response so that it
    follows one principle and to change nothing else, so a response that already follows it comes
    back unchanged. Its verdict on a response is the probability that revising it changes nothing,
        p(A) = π(A | revise A under the principle) = exp Σ_t log π(a_t | revise A, a_<t)
    (the response's tokens and its <|end|>), and a pair is judged as model_judge judges its verdicts,
        P(A better) = p_A (1 - p_B) + ½ [p_A p_B + (1 - p_A)(1 - p_B)] = ½ + ½ (p_A - p_B).
    Copying costs little, so what decides is the tokens the principle objects to (a wrong capital,
    where the judge's own knowledge predicts the right one; filler; lowercase), and what another
    principle objects to is copied at no cost: each principle gets its own judgement, and two
    responses that both need revising (p ≈ 0) get no preference. Symmetric by construction; a
    response too long for the context gets no opinion (½)."""
    logps = _response_logps(model, tok, lambda principle, q, r: [
        {"role": "user", "content": preference_world.revision_prompt(principle, q, r)}], batch_size)

    def judge(questions, responses_a, responses_b, principle):
        la, lb = logps(questions, responses_a, principle), logps(questions, responses_b, principle)
        return [0.5 if a is None or b is None else 0.5 + 0.5 * (math.exp(a) - math.exp(b)) for a, b in zip(la, lb)]

    judge.logps = logps  # log p per response: the verdicts in log space (tests, analysis)
    return judge


JUDGE_KINDS = ("verdict", "likelihood", "revision")


def check_judge_flags(kind="verdict", reference=False, temperature=1.0):
    """Refuse flags that do not make a built-in judge, before any sampling is spent (ValueError)."""
    if kind not in JUDGE_KINDS:
        raise ValueError(f"unknown --judge_kind {kind!r}; use {', '.join(JUDGE_KINDS)}")
    if kind != "verdict" and reference:
        raise ValueError(f"--judge_reference is for --judge_kind verdict (the {kind} judge has no reference)")
    if kind == "likelihood" and not temperature > 0:
        raise ValueError(f"--judge_temperature must be > 0, got {temperature}")
    if kind != "likelihood" and temperature != 1.0:
        raise ValueError(f"--judge_temperature is for --judge_kind likelihood (the {kind} judge has none)")


def built_in_judge(model, tok, kind="verdict", reference=False, temperature=1.0):
    """The built-in judge by name (--judge_kind verdict | likelihood | revision, --judge_reference,
    --judge_temperature)."""
    check_judge_flags(kind, reference, temperature)
    if kind == "likelihood":
        return likelihood_judge(model, tok, temperature)
    if kind == "revision":
        return revision_judge(model, tok)
    return model_judge(model, tok, reference=reference)


def judge_preference(judge, constitution, questions, responses_a, responses_b):
    """P(a ≻ b) for each pair under the whole constitution, both orders (module docstring), (n,)."""
    score = torch.zeros(len(questions), dtype=torch.float64)
    for weight, principle in constitution:
        p_ab = torch.tensor(judge(questions, responses_a, responses_b, principle), dtype=torch.float64)
        p_ba = torch.tensor(judge(questions, responses_b, responses_a, principle), dtype=torch.float64)
        p = (0.5 * (p_ab + 1 - p_ba)).clamp(1e-6, 1 - 1e-6)
        score += weight * torch.log(p / (1 - p))
    return torch.sigmoid(score)


LABEL_MAX_NEW_TOKENS = 64  # room for a padded answer to finish (at 32, most were cut off mid-filler)


def label_pairs(policy, tok, prompts, cfg, judge_model=None, judge=None):
    """Sample cfg.label_samples answers per prompt from the policy and turn each prompt into one
    labelled pair, the best and the worst of its answers (as RLAIF / self-rewarding pipelines do):
      ai    every two distinct answers are compared by the judge under the constitution
            (judge_preference); an answer's score is its summed win probability (Borda), the pair
            is (highest, lowest), kept when the judge prefers it with P >= cfg.min_confidence;
      gold  the same answers scored by the world's ground truth (gold_score), kept unless tied.
    Both labellers see the same sampled answers, so DPO on ai labels and DPO on gold labels differ
    only in who labelled. With 2 samples this is one sampled pair per prompt. judge_model: (model,
    tokenizer) of the built-in judge (default: the policy). prompts: {"prompt",
    "metadata": {"gold"}}. -> (§7 records, report: the judge's agreement with the ground truth on
    every compared pair where the ground truth has a preference, and on the kept pairs)."""
    k = cfg.label_samples
    if k < 2:
        raise ValueError(f"--label_samples must be at least 2, got {k}")
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed + 17)
    conversations = [r["prompt"] for r in prompts for _ in range(k)]
    answers = chat_complete(policy, tok, conversations, LABEL_MAX_NEW_TOKENS, temperature=cfg.label_temperature,
                            generator=generator)
    # an empty answer cannot be a §7 response, and two equal answers are no comparison
    groups = []  # (prompt record, [distinct non-empty answers])
    for i, r in enumerate(prompts):
        distinct = list(dict.fromkeys(a.strip() for a in answers[k * i:k * (i + 1)] if a.strip()))
        if len(distinct) >= 2:
            groups.append((r, distinct))
    compared = [(g, i, j) for g, (_, ans) in enumerate(groups) for i in range(len(ans)) for j in range(i + 1, len(ans))]
    golds = [r.get("metadata", {}).get("gold") for r, _ in groups]
    gold_of = lambda g, i, j: preference_world.gold_prefers(golds[g], groups[g][1][i], groups[g][1][j]) if golds[g] else 0
    if cfg.labels == "ai":
        model, model_tok = judge_model if judge_model is not None else (policy, tok)  # it reads text: its own tokenizer
        judge = judge or built_in_judge(model, model_tok, cfg.judge_kind, cfg.judge_reference, cfg.judge_temperature)
        p = judge_preference(judge, load_constitution(cfg.constitution), [groups[g][0]["prompt"][-1]["content"] for g, _, _ in compared],
                             [groups[g][1][i] for g, i, _ in compared], [groups[g][1][j] for g, _, j in compared]).tolist()
    else:
        p = [0.5 + 0.5 * gold_of(g, i, j) for g, i, j in compared]
    win = {}  # (g, i, j) -> P(answer i beats answer j), both directions
    for (g, i, j), pij in zip(compared, p):
        win[g, i, j], win[g, j, i] = pij, 1 - pij
    records, decided = [], []
    for g, (r, ans) in enumerate(groups):
        if cfg.labels == "ai":
            score = [sum(win[g, i, j] for j in range(len(ans)) if j != i) for i in range(len(ans))]
        else:
            score = [preference_world.gold_score(golds[g], a) if golds[g] else 0 for a in ans]
        best, worst = max(range(len(ans)), key=score.__getitem__), min(range(len(ans)), key=score.__getitem__)
        confidence = win[g, best, worst] if best != worst else 0.5
        if best == worst or (confidence < cfg.min_confidence if cfg.labels == "ai" else confidence == 0.5):
            continue
        records.append({"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": ans[best]}],
                        "rejected": [{"role": "assistant", "content": ans[worst]}],
                        "metadata": {**r.get("metadata", {}), "judge_p": round(confidence, 4)}})
        decided.append(gold_of(g, best, worst))
    judged_all = [(pij > 0.5) == (gold_of(g, i, j) > 0) for (g, i, j), pij in zip(compared, p) if gold_of(g, i, j)]
    report = {"prompts": len(prompts), "samples_per_prompt": k, "distinct_pairs": len(compared), "kept": len(records),
              "agreement_with_gold": sum(d > 0 for d in decided) / max(sum(d != 0 for d in decided), 1),
              "agreement_with_gold_all_pairs": sum(judged_all) / max(len(judged_all), 1),
              "gold_ties_kept": sum(d == 0 for d in decided)}
    return records, report
