"""
Knowledge and language-modelling scores from log-likelihoods, no generation (§10):

  multiple choice  MMLU-style questions on a built-in fact set (capital cities, one-digit products:
                   facts every country and product of which the base corpus states). Two scorings:
                   letter   the prompt lists the options as A-D and ends "Answer:"; the model's
                            choice is argmax over the logits of the tokens " A", " B", " C", " D" at
                            the next position (MMLU's original scoring; needs the model to know the
                            lettered format)
                   option   each full option is scored as a continuation of "Question: ...\nAnswer:",
                            length-normalised:  score_i = Σ_t log π(o_i,t | q, o_i,<t) / bytes(o_i)
                            (lm-evaluation-harness's acc_norm: per byte, so a longer option is not
                            penalised for having more tokens); the choice is argmax_i score_i
  perplexity       exp(Σ NLL / Σ tokens) over held-out web-like documents (base_corpus drawn with a
                   seed no training run uses). Perplexity measures how well a model predicts text,
                   not whether it is useful: SFT, DPO and RL raise it on web text while making the
                   model answer better (§10). It is reported to show that, never to rank models.

Prompts are raw text after <|bos|>, as a base model is used; chat models see the same text.

    from nanopost.knowledge import fact_questions, multiple_choice, perplexity
    items = fact_questions()                      # [{"question", "options", "answer", "family"}]
    scores = multiple_choice(model, tok, items)   # per-item letter/option choices and accuracies
"""
import math
import random

import numpy as np
import torch

from nanopost.evals import bootstrap_interval, rate_with_interval
from nanopost.evaluate import next_token_logits
from nanopost.losses import token_logprobs
from nanopost.world import COUNTRIES, base_corpus

LETTERS = "ABCD"
HELDOUT_CORPUS_SEED = 2_000_003  # no training run draws base_corpus with this seed


def fact_questions(seed=0):
    """The built-in fact set: every country's capital and every one-digit product a * b (2..9),
    four options each (the answer and three distractors of the same kind), the answer's position
    drawn at random. -> [{"question", "options": [4 str], "answer": index, "family"}]."""
    rng = random.Random(f"{seed}|mc")
    capitals = sorted({cap for _, cap in COUNTRIES})
    items = []
    for country, capital in COUNTRIES:
        distractors = rng.sample([c for c in capitals if c != capital], 3)
        items.append(_item(f"What is the capital of {country}?", capital, distractors, "capitals", rng))
    for a in range(2, 10):
        for b in range(a, 10):
            value = a * b
            wrong = sorted({value + 1, value - 1, a + b, (a + 1) * b, a * (b - 1)} - {value})
            items.append(_item(f"What is {a} * {b}?", str(value), [str(w) for w in rng.sample(wrong, 3)],
                               "products", rng))
    return items


def _item(question, answer, distractors, family, rng):
    options = [answer] + list(distractors)
    rng.shuffle(options)
    return {"question": question, "options": options, "answer": options.index(answer), "family": family}


def letter_prompt(item):
    """MMLU's zero-shot layout: the question, the lettered options, 'Answer:'."""
    lines = [f"Question: {item['question']}"] + [f"{l}. {o}" for l, o in zip(LETTERS, item["options"])]
    return "\n".join(lines + ["Answer:"])


@torch.no_grad()
def ids_logprobs(model, rows, pad_id, batch_size=64):
    """Σ_t log π(continuation token t | context, earlier continuation tokens) for each (context ids,
    continuation ids) row, in the input order; rows are batched by length (little padding), right-padded.
    Every row must fit the model's context."""
    device = next(model.parameters()).device
    sums = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        seqs = [rows[i][0] + rows[i][1] for i in chunk]
        L = max(map(len, seqs))
        idx = torch.full((len(seqs), L), pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), L - 1)
        for b, (i, seq) in enumerate(zip(chunk, seqs)):
            idx[b, :len(seq)] = torch.tensor(seq)
            mask[b, len(rows[i][0]) - 1:len(seq) - 1] = 1  # position t predicts token t + 1
        idx = idx.to(device)
        logprobs = token_logprobs(model(idx[:, :-1]), idx[:, 1:]).cpu() * mask  # (b, L-1)
        for i, total in zip(chunk, logprobs.double().sum(1).tolist()):
            sums[i] = total
    return sums


def continuation_logprobs(model, tok, contexts, continuations, batch_size=64):
    """ids_logprobs of text: <|bos|> before the context; context and continuation are encoded
    separately (their tokens are concatenated). -> (list of sums, list of continuation token counts)."""
    rows = [([tok.bos_id] + tok.encode(c), tok.encode(x)) for c, x in zip(contexts, continuations)]
    block = model.config.block_size
    for ctx, cont in rows:
        if len(ctx) + len(cont) > block:
            raise ValueError(f"a scored text of {len(ctx) + len(cont)} tokens does not fit the context of {block}")
    return ids_logprobs(model, rows, tok.pad_id, batch_size), [len(cont) for _, cont in rows]


@torch.no_grad()
def letter_choices(model, tok, items, batch_size=64):
    """argmax over the next-token logits of ' A'..' D' after letter_prompt(item), per item."""
    letter_ids = [tok.encode(" " + l)[0] for l in LETTERS]
    assert len(set(letter_ids)) == 4, "' A'..' D' must start with different tokens"
    prompts = [[tok.bos_id] + tok.encode(letter_prompt(it)) for it in items]
    logits = next_token_logits(model, prompts, tok.pad_id, batch_size)  # (N, V)
    return logits[:, letter_ids].argmax(-1).tolist()


def option_choices(model, tok, items, batch_size=64):
    """argmax_i Σ log π(option_i | 'Question: q\\nAnswer:') / bytes(option_i), per item."""
    contexts = [f"Question: {it['question']}\nAnswer:" for it in items for _ in it["options"]]
    options = [" " + o for it in items for o in it["options"]]
    sums, _ = continuation_logprobs(model, tok, contexts, options, batch_size)
    choices, k = [], 0
    for it in items:
        scores = [sums[k + i] / len(options[k + i].encode("utf-8")) for i in range(len(it["options"]))]
        choices.append(int(np.argmax(scores)))
        k += len(it["options"])
    return choices


def multiple_choice(model, tok, items=None):
    """Accuracy of both scorings with Wilson intervals, overall and per family (chance: 0.25).
    -> {"letter": {...}, "option": {...}, "by_family": {family: {"letter", "option"}}, "n"}"""
    items = fact_questions() if items is None else items
    picks = {"letter": letter_choices(model, tok, items), "option": option_choices(model, tok, items)}
    out = {"letter": None, "option": None, "by_family": {}, "n": len(items)}
    for name, chosen in picks.items():
        right = [c == it["answer"] for c, it in zip(chosen, items)]
        out[name] = rate_with_interval(sum(right), len(right))
        for fam in sorted({it["family"] for it in items}):
            fam_right = [r for r, it in zip(right, items) if it["family"] == fam]
            out["by_family"].setdefault(fam, {})[name] = rate_with_interval(sum(fam_right), len(fam_right))
    return out


def perplexity(model, tok, n_docs=200, docs=None):
    """exp(Σ NLL / Σ tokens) over held-out documents (not a usefulness measure: module docstring),
    with a bootstrap interval over documents. Documents longer than the context are skipped and
    counted. -> {"ppl", "low", "high", "nll_per_token", "docs", "tokens", "skipped"}"""
    docs = base_corpus(n_docs, HELDOUT_CORPUS_SEED) if docs is None else docs
    block = model.config.block_size
    kept = [d for d in docs if len(tok.encode(d)) + 1 <= block]
    if not kept:
        raise ValueError("no document fits the model's context")
    # score every token of the document, the first one given <|bos|> only
    sums, counts = continuation_logprobs(model, tok, [""] * len(kept), kept)
    nll, ntok = -np.array(sums), np.array(counts, dtype=np.float64)
    ratio = lambda i: math.exp(nll[i.astype(int)].sum() / ntok[i.astype(int)].sum())
    low, high = bootstrap_interval(np.arange(len(kept)), statistic=ratio, n_resamples=1000)
    return {"ppl": math.exp(nll.sum() / ntok.sum()), "low": low, "high": high,
            "nll_per_token": float(nll.sum() / ntok.sum()), "docs": len(kept), "tokens": int(ntok.sum()),
            "skipped": len(docs) - len(kept)}
