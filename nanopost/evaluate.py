"""
Held-out evaluation used at the end of every stage (§10, automatic, ground-truth based):

- the §1 demonstration: given a fact question without a question mark, does the model answer
  it, or continue it the way web text does ("? The capital of ...")? The base model is given
  the raw text (that is how a base model is used); a chat model the rendered chat prompt.
- exact-match accuracy per task family on held-out records (greedy decoding).
"""
import re

import torch

from nanopost.graders import grade_many
from nanopost.sampling import generate
from nanopost.tokenizer import render_prompt


@torch.no_grad()
def complete(model, tok, prompts, max_new_tokens, stop_ids, temperature=0.0, batch_size=64, generator=None):
    """Token-id prompts -> decoded completions (stop token removed). Prompts are sorted by length
    into batches so little padding is computed, then returned in the input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        tokens, _, lengths, _ = generate(model, [prompts[i] for i in chunk], max_new_tokens, temperature=temperature,
                                         stop_ids=stop_ids, pad_id=tok.pad_id, generator=generator)
        for i, text in zip(chunk, decode_completions(tok, tokens, lengths, stop_ids)):
            out[i] = text
    return out


@torch.no_grad()
def next_token_logits(model, sequences, pad_id, batch_size=64):
    """The model's logits for the token after each sequence (a list of ids), (N, V) float32.
    Right-padded batches: causal attention never lets the padding reach the last real position."""
    device = next(model.parameters()).device
    out = []
    for lo in range(0, len(sequences), batch_size):
        chunk = sequences[lo:lo + batch_size]
        idx = torch.full((len(chunk), max(map(len, chunk))), pad_id, dtype=torch.long)
        for b, seq in enumerate(chunk):
            idx[b, :len(seq)] = torch.tensor(seq)
        last = torch.tensor([len(seq) - 1 for seq in chunk], device=device)
        out.append(model(idx.to(device))[torch.arange(len(chunk), device=device), last].float())  # (b, V)
    return torch.cat(out) if out else torch.zeros(0, model.config.vocab_size)


def decode_completions(tok, tokens, lengths, stop_ids):
    """generate()'s (B, N) tokens and lengths -> B strings, stop tokens removed."""
    return [tok.decode([t for t in tokens[b, :int(lengths[b])].tolist() if t not in stop_ids])
            for b in range(tokens.size(0))]


def chat_complete(model, tok, conversations, max_new_tokens=48, **kw):
    """Message lists ending with a user turn -> the assistant's replies."""
    prompts = [render_prompt(tok, m) for m in conversations]
    return complete(model, tok, prompts, max_new_tokens, stop_ids=(tok.end_id, tok.bos_id), **kw)


def raw_complete(model, tok, texts, max_new_tokens=16, **kw):
    """Plain-text prompts after <|bos|>, as a base model is used."""
    prompts = [[tok.bos_id] + tok.encode(t) for t in texts]
    return complete(model, tok, prompts, max_new_tokens, stop_ids=(tok.bos_id, tok.end_id), **kw)


def normalize(text):
    """Case-, space- and final-period-insensitive form for exact match."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()


def exact_match(response, reference):
    return float(normalize(response) == normalize(reference))


def is_direct_answer(response):
    """§1: a direct answer starts with the answer itself. A continuation of the question starts
    with punctuation that ends or extends the sentence ('?', ',', '.') or with a lowercase word
    that carries the sentence on; an empty response answers nothing."""
    text = response.strip()
    return bool(text) and (text[0].isupper() or text[0].isdigit())


def direct_answer_rate(model, tok, questions, chat):
    """Share of questions answered directly; chat=False gives the raw text (base model)."""
    if chat:
        responses = chat_complete(model, tok, [[{"role": "user", "content": q}] for q in questions], 16)
    else:
        responses = raw_complete(model, tok, questions, 16)
    return sum(is_direct_answer(r) for r in responses) / max(len(responses), 1), responses


def heldout_accuracy(model, tok, records, max_new_tokens=48):
    """Exact match of greedy replies against the reference (the record's last assistant turn),
    per family, plus 'all'. Records are §3 message lists ending with the reference answer."""
    prompts = [r["messages"][:-1] for r in records]
    replies = chat_complete(model, tok, prompts, max_new_tokens)
    by_family = {}
    for r, reply in zip(records, replies):
        by_family.setdefault(r.get("family", "all"), []).append(exact_match(reply, r["messages"][-1]["content"]))
    acc = {f: sum(v) / len(v) for f, v in sorted(by_family.items())}
    acc["all"] = sum(sum(v) for v in by_family.values()) / max(len(records), 1)
    return acc, replies


def all_pass(scores):
    """Full marks from every grader that applies ({name: reward} from graders.grade). A rubric is
    judged by its items ("rubric/<item>"): its total is below 1 under "sum" with weights under 1."""
    judged = {k: v for k, v in scores.items() if not any(i.startswith(k + "/") for i in scores)}
    return bool(judged) and all(v >= 1.0 for v in judged.values())


def verifiable_accuracy(model, tok, records, suites_dir=None, max_new_tokens=48):
    """§8 records (prompt messages + grader metadata) -> greedy replies graded by their graders.
    A reply counts as correct when every grader that applies gives it full marks (for a rubric:
    every item passes, IFEval's prompt-level accuracy). 'instruction_level' is the share of all
    rubric items ("rubric/<item>" entries) that pass, None without any.
    Returns ({'all': acc, 'by_grader': {...}, 'by_family': {...}, 'instruction_level': ...}, replies)."""
    replies = chat_complete(model, tok, [r["prompt"] for r in records], max_new_tokens)
    graded = grade_many(replies, [r["metadata"] for r in records], suites_dir=suites_dir)
    by_grader, by_family, correct = {}, {}, []
    for record, scores in zip(records, graded):
        ok = float(all_pass(scores))
        correct.append(ok)
        for name, v in scores.items():
            by_grader.setdefault(name, []).append(float(v >= 1.0))
        by_family.setdefault(record.get("family", "all"), []).append(ok)
    mean = lambda xs: sum(xs) / max(len(xs), 1)
    items = [float(v >= 1.0) for scores in graded for name, v in scores.items() if "/" in name]
    return {"all": mean(correct), "by_grader": {k: mean(v) for k, v in sorted(by_grader.items())},
            "by_family": {k: mean(v) for k, v in sorted(by_family.items())}, "correct": correct,
            "instruction_level": mean(items) if items else None}, replies


def sampled_pass_at_k(model, tok, records, n, ks, temperature=0.7, suites_dir=None, max_new_tokens=48, seed=0):
    """§10 pass@k: n sampled replies per §8 record, graded like verifiable_accuracy; c correct of n
    gives each record's unbiased pass@k = 1 - C(n-c, k)/C(n, k) (evals.pass_at_k), averaged over
    records with a bootstrap interval. -> ({"pass@k": {mean, low, high, n}, ...}, correct counts)."""
    from nanopost.evals import mean_with_interval, pass_at_k
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    replies = chat_complete(model, tok, [r["prompt"] for r in records for _ in range(n)], max_new_tokens,
                            temperature=temperature, generator=generator)
    graded = grade_many(replies, [r["metadata"] for r in records for _ in range(n)], suites_dir=suites_dir)
    ok = [all_pass(s) for s in graded]
    counts = [sum(ok[i * n:(i + 1) * n]) for i in range(len(records))]
    return {f"pass@{k}": mean_with_interval([pass_at_k(n, c, k) for c in counts]) for k in ks}, counts
