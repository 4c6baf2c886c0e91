"""Preference learning (§6, §7, §9): the Bradley-Terry and DPO losses (sigmoid, conservative,
robust, hinge, ipo) and DPO's logged metrics against hand-worked numbers and float64
references; §7 records -> pairs (rankings, margins, named errors with file and line);
pair_batch / sequence_logprobs / last_token_rewards against unpadded float64 references;
batch_indices epochs; the AI judge's aggregation over orders and principles, the constitution
file format and the built-in model judge; the world's ground truth (gold_checks, gold_prefers)
and its preference records (split-disjoint, strictly ranked, renderable). No training runs."""
import math
import os
import re

import pytest
import torch

from nanopost import preference_world, world
from nanopost.data import DataError, write_jsonl
from nanopost.judge import (built_in_judge, judge_preference, likelihood_judge, load_constitution, model_judge,
                            revision_judge)
from nanopost.losses import DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss, dpo_rewards
from nanopost.model import GPT, GPTConfig, ScalarModel
from nanopost.preferences import (
    Pair, batch_indices, last_token_rewards, load_preferences, pair_batch, preference_pairs, sequence_logprobs,
    weight_kinds,
)
from nanopost.tokenizer import Tokenizer, render_prompt

LN2 = math.log(2.0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 128


def softplus(x):
    """log(1 + e^x) = -log σ(-x), by hand (x small enough for math.exp)."""
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def tok():
    # 512, not 400: the built-in judge needs ' yes' and ' no' to start with different tokens,
    # which a 400-token vocabulary does not give (both start with the bare ' ' byte)
    return Tokenizer.train("\n\n".join(world.base_corpus(2000, seed=0)), 512)


@pytest.fixture(scope="module")
def model(tok):
    """A tiny random GPT whose weights are sharper than the 0.02 init, so log-probs differ clearly
    from token to token (an off-by-one position would show)."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=tok.vocab_size))
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return gpt.eval()


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


PROMPT = user("What is the capital of France?")
GOOD = {"prompt": PROMPT, "chosen": assistant("The capital of France is Paris."),
        "rejected": assistant("? The capital of France is Paris.")}


def t(*xs, dtype=torch.float32, grad=False):
    return torch.tensor(xs, dtype=dtype, requires_grad=grad)


# ----------------------------------------------------------------------------- Bradley-Terry


@pytest.mark.parametrize("r", [-3.0, 0.0, 0.7, 12.5])
def test_bradley_terry_is_ln2_at_equal_rewards(r):
    loss = bradley_terry_loss(t(r, r), t(r, r))                              # (2,)
    assert loss.shape == (2,)
    torch.testing.assert_close(loss.double(), torch.full((2,), LN2, dtype=torch.float64), atol=1e-6, rtol=0)


def test_bradley_terry_gradient_raises_chosen_and_lowers_rejected():
    r_c, r_r = t(0.3, -1.0, 2.0, grad=True), t(0.3, 0.5, -2.0, grad=True)
    bradley_terry_loss(r_c, r_r).sum().backward()
    assert (r_c.grad < 0).all() and (r_r.grad > 0).all()
    # d/dr_c [-log σ(d)] = -(1 - σ(d)) = -σ(-d), by hand
    for d, g in zip([0.0, -1.5, 4.0], r_c.grad.tolist()):
        assert abs(g - (-1.0 / (1.0 + math.exp(d)))) < 1e-6
    with torch.no_grad():  # one gradient-descent step
        new_c, new_r = r_c - 0.1 * r_c.grad, r_r - 0.1 * r_r.grad
    assert (new_c > r_c).all() and (new_r < r_r).all()


def test_bradley_terry_margin_hand_worked():
    loss = bradley_terry_loss(t(1.0), t(0.0), margin=t(0.5))
    assert abs(loss.item() - softplus(-0.5)) < 1e-6                       # -log σ(1 - 0 - 0.5)
    # a margin makes the same pair cost more
    assert loss.item() > bradley_terry_loss(t(1.0), t(0.0)).item()


def test_bradley_terry_is_stable_at_extreme_differences():
    r_c, r_r = t(1e4, -1e4, grad=True), t(0.0, 0.0, grad=True)
    loss = bradley_terry_loss(r_c, r_r)
    assert torch.isfinite(loss).all()
    assert loss[0].item() < 1e-6                                          # certain and right: ~0
    assert abs(loss[1].item() - 1e4) < 1e-2                               # certain and wrong: ~|diff|
    loss.sum().backward()
    assert torch.isfinite(r_c.grad).all()
    assert abs(r_c.grad[1].item() + 1.0) < 1e-6 and abs(r_c.grad[0].item()) < 1e-6


# ----------------------------------------------------------------------------- DPO

# pc=-1, pr=-3, rc=-2, rr=-2: h = (pc - rc) - (pr - rr) = 1 - (-1) = 2
HAND = dict(policy_chosen_logps=t(-1.0), policy_rejected_logps=t(-3.0),
            ref_chosen_logps=t(-2.0), ref_rejected_logps=t(-2.0))


def test_dpo_sigmoid_is_ln2_when_policy_equals_reference():
    g = torch.Generator().manual_seed(0)
    c, r = -torch.rand(5, generator=g) * 20, -torch.rand(5, generator=g) * 20  # (5,) summed log-probs
    for beta in (0.01, 0.1, 1.0):
        loss = dpo_loss(c, r, c.clone(), r.clone(), beta)
        torch.testing.assert_close(loss.double(), torch.full((5,), LN2, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_type, beta, eps, expected", [
    ("sigmoid", 0.5, 0.0, softplus(-1.0)),                                    # -log σ(1)
    ("sigmoid", 0.5, 0.1, 0.9 * softplus(-1.0) + 0.1 * softplus(1.0)),        # conservative DPO
    ("robust", 0.5, 0.1, (0.9 * softplus(-1.0) - 0.1 * softplus(1.0)) / 0.8),
    ("hinge", 0.5, 0.0, 0.0),                                                 # max(0, 1 - 1)
    ("hinge", 0.25, 0.0, 0.5),                                                # max(0, 1 - 0.5)
    ("ipo", 0.5, 0.0, 1.0),                                                   # (2 - 1)²
    ("ipo", 0.25, 0.0, 0.0),                                                  # (2 - 2)²
])
def test_dpo_hand_worked(loss_type, beta, eps, expected):
    loss = dpo_loss(**HAND, beta=beta, loss_type=loss_type, label_smoothing=eps)
    assert loss.shape == (1,)
    assert abs(loss.item() - expected) < 1e-6


def test_dpo_unknown_loss_type_raises():
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        dpo_loss(**HAND, beta=0.1, loss_type="kto")
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "ipo", "hinge", "robust"}


@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_matches_float64_reference(seed):
    g = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (-torch.rand(16, generator=g) * 30 for _ in range(4))  # (16,) each
    beta, eps = 0.3, 0.15
    h = ((pc.double() - rc.double()) - (pr.double() - rr.double())).tolist()
    sp = lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))              # stable softplus, float64
    refs = {"sigmoid": [(1 - eps) * sp(-beta * x) + eps * sp(beta * x) for x in h],
            "robust": [((1 - eps) * sp(-beta * x) - eps * sp(beta * x)) / (1 - 2 * eps) for x in h],
            "hinge": [max(0.0, 1 - beta * x) for x in h],
            "ipo": [(x - 1 / (2 * beta)) ** 2 for x in h]}
    for loss_type, ref in refs.items():
        loss = dpo_loss(pc, pr, rc, rr, beta, loss_type, label_smoothing=eps if loss_type in ("sigmoid", "robust") else 0)
        torch.testing.assert_close(loss.double(), torch.tensor(ref, dtype=torch.float64), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_gradient_step_raises_chosen_and_lowers_rejected(loss_type):
    # at policy = reference (h = 0) every variant still wants a larger h
    pc, pr = t(-5.0, -2.0, grad=True), t(-4.0, -7.0, grad=True)
    loss = dpo_loss(pc, pr, pc.detach().clone(), pr.detach().clone(), beta=0.1, loss_type=loss_type,
                    label_smoothing=0.1 if loss_type == "robust" else 0.0)
    loss.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    with torch.no_grad():
        assert (pc - 0.1 * pc.grad > pc).all() and (pr - 0.1 * pr.grad < pr).all()


def test_dpo_rewards_metrics_hand_worked():
    # pair 0: the hand example (r_c = 0.5·1, r_r = 0.5·(-1)); pair 1: a tie; pair 2: the wrong way round
    pc, pr = t(-1.0, -2.0, -4.0, grad=True), t(-3.0, -2.0, -1.0, grad=True)
    rc, rr = t(-2.0, -2.0, -3.0), t(-2.0, -2.0, -2.0)
    m = dpo_rewards(pc, pr, rc, rr, beta=0.5)
    close = lambda a, b: torch.testing.assert_close(a, torch.tensor(b), atol=1e-6, rtol=0)
    close(m["rewards/chosen"], [0.5, 0.0, -0.5])                          # β (pc - rc)
    close(m["rewards/rejected"], [-0.5, 0.0, 0.5])                        # β (pr - rr)
    close(m["rewards/margins"], [1.0, 0.0, -1.0])
    close(m["rewards/accuracies"], [1.0, 0.0, 0.0])                       # strictly greater
    close(m["logps/chosen"], [-1.0, -2.0, -4.0])
    close(m["logps/rejected"], [-3.0, -2.0, -1.0])
    assert not any(v.requires_grad for v in m.values())                   # metrics only


# ----------------------------------------------------------------------------- §7 records -> pairs


def test_ranking_of_four_gives_six_ordered_pairs(tok):
    texts = ["The capital of France is Paris.", "Sure! The capital of France is Paris. I hope this helps!",
             "The capital of France is Rome.", "? Write your answers below."]
    record = {"prompt": PROMPT, "ranking": [assistant(x) for x in texts], "metadata": {"gold": {"answer": "Paris"}}}
    pairs = preference_pairs(record, tok, max_len=256)
    order = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(pairs) == 6
    for p, (i, j) in zip(pairs, order):
        assert p.chosen[-1] == tok.end_id and p.rejected[-1] == tok.end_id
        assert tok.decode(p.chosen[:-1]) == texts[i] and tok.decode(p.rejected[:-1]) == texts[j]
        assert p.margin == 0.0 and p.gold == {"answer": "Paris"}


def test_pair_record_gives_one_pair_with_margin(tok):
    pairs = preference_pairs({**GOOD, "margin": 2.5, "metadata": {"kind": "direct"}}, tok, max_len=256)
    assert len(pairs) == 1
    p = pairs[0]
    assert p.margin == 2.5 and p.kind == "direct"
    assert tok.decode(p.chosen[:-1]) == GOOD["chosen"][0]["content"]
    assert tok.decode(p.rejected[:-1]) == GOOD["rejected"][0]["content"]
    # the prompt ends with <|assistant|>; prompt + response is the rendered conversation
    assert p.prompt[0] == tok.bos_id and p.prompt[-1] == tok.assistant_id
    expected = ([tok.bos_id, tok.user_id] + tok.encode(PROMPT[0]["content"]) + [tok.end_id, tok.assistant_id]
                + tok.encode(GOOD["chosen"][0]["content"]) + [tok.end_id])
    assert p.prompt + p.chosen == expected
    assert preference_pairs(GOOD, tok)[0].margin == 0.0                   # default margin


BAD_RECORDS = [
    ("missing chosen", {"prompt": PROMPT, "rejected": GOOD["rejected"]}, "chosen"),
    ("chosen == rejected", {**GOOD, "rejected": GOOD["chosen"]}, "same response"),
    ("ranking of 1", {"prompt": PROMPT, "ranking": [GOOD["chosen"]]}, "at least 2"),
    ("user in chosen", {**GOOD, "chosen": GOOD["chosen"] + user("hi")}, "assistant messages only"),
    ("non-numeric margin", {**GOOD, "margin": "big"}, "margin"),
    ("NaN margin", {**GOOD, "margin": float("nan")}, "finite"),
    ("empty prompt", {**GOOD, "prompt": []}, "prompt"),
    ("prompt ends with assistant", {**GOOD, "prompt": PROMPT + assistant("Paris.")}, "end with a user"),
    ("ranking repeats a response", {"prompt": PROMPT, "ranking": [GOOD["chosen"], GOOD["rejected"], GOOD["chosen"]]},
     "same response twice"),
    ("too long", {**GOOD, "chosen": assistant("Paris " * 80)}, "longer than max_len"),
]


@pytest.mark.parametrize("name, bad, reason", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_names_file_line_and_reason(tmp_path, tok, name, bad, reason):
    path = str(tmp_path / "file.jsonl")
    write_jsonl(path, [GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        load_preferences(path, tok, max_len=64)
    assert str(e.value).startswith(f"{path}:2:")
    assert reason.lower() in str(e.value).lower()


def test_skip_bad_skips_and_counts(tmp_path, tok):
    path = str(tmp_path / "file.jsonl")
    bad = [b for _, b, _ in BAD_RECORDS]
    write_jsonl(path, [GOOD] + bad + [{**GOOD, "margin": 1}])
    pairs, report = load_preferences(path, tok, max_len=64, skip_bad=True)
    assert report["skipped"] == len(bad) and report["used"] == 2 and report["records"] == len(bad) + 2
    assert report["pairs"] == len(pairs) == 2 and [p.margin for p in pairs] == [0.0, 1.0]
    assert sum(report["skipped_by_reason"].values()) == len(bad)
    assert report["first_errors"][0].startswith(f"{path}:2:")


# ----------------------------------------------------------------------------- tensors


def toy_pairs():
    """Three pairs of different prompt / response lengths (token ids < 50 stand in for text)."""
    return [Pair([1, 2, 3], [10, 11], [12, 13, 14, 15], margin=0.5),
            Pair([1, 4], [16, 17, 18, 19, 20], [21]),
            Pair([1, 5, 6, 7, 8], [22], [23, 24], margin=-1.0)]


def test_pair_batch_layout():
    pairs, pad = toy_pairs(), 99
    b = pair_batch(pairs, pad)
    P = len(pairs)
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    L = max(map(len, rows))
    assert b["idx"].shape == b["response_mask"].shape == (2 * P, L)        # (2P, L)
    assert b["lengths"].tolist() == [len(r) for r in rows]
    assert b["margin"].tolist() == [0.5, 0.0, -1.0]
    for i, row in enumerate(rows):
        assert b["idx"][i].tolist() == row + [pad] * (L - len(row))
        start = len(pairs[i % P].prompt)
        response = (pairs[i % P].chosen if i < P else pairs[i % P].rejected)
        assert b["idx"][i, start:len(row)].tolist() == response
        assert b["response_mask"][i].tolist() == [0.0] * start + [1.0] * len(response) + [0.0] * (L - len(row))


def test_weight_kinds_repeats_drops_and_defaults():
    pairs = [Pair([1], [2], [3], kind=k) for k in ("correct", "direct", "correct", "concise", "ranking")]
    count = lambda ps: {k: sum(p.kind == k for p in ps) for k in ("correct", "direct", "concise", "ranking")}
    assert count(weight_kinds(pairs, "correct=3")) == {"correct": 6, "direct": 1, "concise": 1, "ranking": 1}
    assert count(weight_kinds(pairs, "correct=1,*=0")) == {"correct": 2, "direct": 0, "concise": 0, "ranking": 0}
    assert count(weight_kinds(pairs, "direct=0, *=2")) == {"correct": 4, "direct": 0, "concise": 2, "ranking": 2}
    assert weight_kinds(pairs, "") == pairs
    for bad in ("correct", "correct=x", "correct=-1", "correct=0.5"):
        with pytest.raises(ValueError, match="kind_weights"):
            weight_kinds(pairs, bad)


def reference_logprob(model, prompt, response):
    """Σ log π(response token | prefix), from the logits of the UNPADDED row, in float64."""
    ids = prompt + response
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0].double()              # (len - 1, V)
    lp = torch.log_softmax(logits, dim=-1)
    return sum(lp[i - 1, ids[i]].item() for i in range(len(prompt), len(ids)))


def test_sequence_logprobs_match_unpadded_float64_reference(tok, model):
    pairs = preference_pairs({"prompt": PROMPT, "ranking": [
        assistant("Paris."), assistant("The capital of France is Paris."),
        assistant("Sure! The capital of France is Paris. I hope this helps you a lot today!")]}, tok, 256)
    batch = pair_batch(pairs, tok.pad_id)
    assert len(set(batch["lengths"].tolist())) > 1                        # real right padding
    with torch.no_grad():
        total = sequence_logprobs(model, batch)                            # (2P,)
        mean = sequence_logprobs(model, batch, average=True)
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompts = [p.prompt for p in pairs] * 2
    ref = torch.tensor([reference_logprob(model, pr, r) for pr, r in zip(prompts, responses)], dtype=torch.float64)
    torch.testing.assert_close(total.double(), ref, atol=1e-4, rtol=0)
    n = torch.tensor([len(r) for r in responses], dtype=torch.float64)
    torch.testing.assert_close(mean.double(), ref / n, atol=1e-4, rtol=0)
    # a single-token shift would change the sum by far more than the tolerance
    assert (ref.max() - ref.min()).item() > 1.0


def test_last_token_rewards_ignore_padding(tok, model):
    rm = ScalarModel(model)
    torch.manual_seed(1)
    with torch.no_grad():
        rm.head.weight.copy_(torch.randn_like(rm.head.weight))
        rm.head.bias.fill_(0.3)
    ids = [tok.bos_id, tok.user_id] + tok.encode("Capital of Peru?") + [tok.end_id, tok.assistant_id] + \
        tok.encode("Lima.") + [tok.end_id]
    n = len(ids)
    with torch.no_grad():
        alone = rm(torch.tensor([ids]))[0, -1].item()                      # unpadded, last real position
        assert abs(alone) > 1e-3                                           # the head is not zero
        g = torch.Generator().manual_seed(2)
        for extra in (0, 1, 7, 30):
            junk = torch.randint(0, tok.vocab_size, (extra,), generator=g).tolist()
            idx = torch.tensor([ids + junk, ids + [tok.pad_id] * extra])  # (2, n + extra): junk vs pad ids
            r = last_token_rewards(rm, idx, torch.tensor([n, n]))          # (2,)
            assert r.shape == (2,)
            assert abs(r[0].item() - alone) < 1e-5 and abs(r[1].item() - alone) < 1e-5
        # and the length is honoured: a shorter length reads an earlier position
        shorter = last_token_rewards(rm, torch.tensor([ids]), torch.tensor([n - 1])).item()
        assert abs(shorter - rm(torch.tensor([ids[:-1]]))[0, -1].item()) < 1e-5


def test_reward_with_logp_adds_the_bodys_log_likelihood_of_the_response(tok, model):
    """ScalarModel(logp_weight=w): the reward at the last real token is head(h) + w · log π(response |
    prompt), π the body's own LM head (the float64-checked sequence_logprobs of the same rows)."""
    pairs = [Pair(render_prompt(tok, user("Capital of Peru?")), tok.encode("Lima.") + [tok.end_id],
                  tok.encode("Quito, I think.") + [tok.end_id])]
    batch = pair_batch(pairs, tok.pad_id)
    plain, rm = ScalarModel(model), ScalarModel(model, logp_weight=0.7)
    torch.manual_seed(1)
    with torch.no_grad():
        plain.head.weight.copy_(torch.randn_like(plain.head.weight))
        rm.head.load_state_dict(plain.head.state_dict())
        head = last_token_rewards(plain, batch["idx"], batch["lengths"])                     # (2,)
        r = last_token_rewards(rm, batch["idx"], batch["lengths"], batch["response_mask"])
        logp = sequence_logprobs(model, batch)                                               # (2,)
    torch.testing.assert_close(r, head + 0.7 * logp, atol=1e-4, rtol=0)
    assert (logp[0] - logp[1]).abs() > 0.1                                                   # the rows differ
    with torch.no_grad():  # the same scores when the pass also returns the body's logits
        scores, logits = rm(batch["idx"], response_mask=batch["response_mask"], return_logits=True)
    torch.testing.assert_close(scores[torch.arange(2), batch["lengths"] - 1], r, atol=1e-5, rtol=0)
    assert logits.shape == (*batch["idx"].shape, model.config.vocab_size)


def test_reward_with_a_frozen_logp_model_reads_that_model_and_never_trains_it(tok, model):
    """ScalarModel(logp_weight=w, logp_model=F): the reward is head(h) + w · log π_F(response | prompt),
    F a frozen language model (here a perturbed copy, so it differs from the body); F gets no gradient
    and stays in eval mode (no dropout) when the reward model trains."""
    import copy
    pairs = [Pair(render_prompt(tok, user("Capital of Peru?")), tok.encode("Lima.") + [tok.end_id],
                  tok.encode("Quito, I think.") + [tok.end_id])]
    batch = pair_batch(pairs, tok.pad_id)
    frozen = copy.deepcopy(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in frozen.parameters():
            p.add_(0.05 * torch.randn_like(p))
    body = copy.deepcopy(model)
    rm = ScalarModel(body, logp_weight=0.3, logp_model=frozen)
    plain = ScalarModel(body)
    with torch.no_grad():
        rm.head.weight.copy_(torch.randn_like(rm.head.weight))
        plain.head.load_state_dict(rm.head.state_dict())
        head = last_token_rewards(plain.eval(), batch["idx"], batch["lengths"])            # (2,)
        logp_frozen = sequence_logprobs(frozen.eval(), batch)                             # (2,)
        logp_body = sequence_logprobs(body.eval(), batch)
    assert (logp_frozen - logp_body).abs().max() > 1e-3                                    # F is not the body
    r = last_token_rewards(rm.eval(), batch["idx"], batch["lengths"], batch["response_mask"])
    torch.testing.assert_close(r, head + 0.3 * logp_frozen, atol=1e-4, rtol=0)
    rm.train()
    assert rm.gpt.training and not frozen.training                                         # F keeps eval mode
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    r = last_token_rewards(rm, batch["idx"], batch["lengths"], batch["response_mask"])
    (r[0] - r[1]).backward()
    assert all(p.grad is None for p in frozen.parameters())                                # no gradient into F
    assert rm.head.weight.grad is not None and any(p.grad is not None for p in body.parameters())
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())


def test_batch_indices_epochs_cover_everything_once():
    n, bs = 10, 4
    stream = [i for s in range(15) for i in batch_indices(n, bs, s, seed=3)]  # 60 indices = 6 epochs
    epochs = [stream[k:k + n] for k in range(0, len(stream), n)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1                            # reshuffled each epoch
    assert [batch_indices(n, bs, s, 3) for s in range(5)] == [batch_indices(n, bs, s, 3) for s in range(5)]
    assert [batch_indices(n, bs, s, 3) for s in range(5)] != [batch_indices(n, bs, s, 4) for s in range(5)]
    assert batch_indices(n, bs, 7, 3) == stream[28:32]                     # a resumed step sees the same batch


# ----------------------------------------------------------------------------- the AI judge


QUESTIONS = ["q1", "q2", "q3", "q4"]
A_SIDE = ["short", "a much longer answer", "mid size", "equal"]
B_SIDE = ["a longer answer here", "tiny", "mid-size!", "equal"]


def always_a(questions, a, b, principle):
    return [1.0] * len(questions)


def prefers_shorter(questions, a, b, principle):
    return [0.9 if len(x) < len(y) else 0.1 if len(x) > len(y) else 0.5 for x, y in zip(a, b)]


def test_judge_position_bias_cancels():
    p = judge_preference(always_a, [(1.0, "p")], QUESTIONS, A_SIDE, B_SIDE)
    torch.testing.assert_close(p, torch.full((4,), 0.5, dtype=torch.float64), atol=1e-12, rtol=0)


def test_judge_prefers_shorter_and_is_antisymmetric():
    p_ab = judge_preference(prefers_shorter, [(1.0, "p")], QUESTIONS, A_SIDE, B_SIDE)
    p_ba = judge_preference(prefers_shorter, [(1.0, "p")], QUESTIONS, B_SIDE, A_SIDE)
    for i, (a, b) in enumerate(zip(A_SIDE, B_SIDE)):
        assert (p_ab[i].item() > 0.5) == (len(a) < len(b))
    assert abs(p_ab[0].item() - 0.9) < 1e-9                               # ½ (0.9 + 1 - 0.1)
    assert abs(p_ab[3].item() - 0.5) < 1e-9                               # equal lengths: no preference
    torch.testing.assert_close(p_ab + p_ba, torch.ones(4, dtype=torch.float64), atol=1e-9, rtol=0)


def test_judge_heavier_principle_wins():
    def judge(questions, a, b, principle):  # "short" prefers the shorter side, "long" the longer, both at 0.9
        return prefers_shorter(questions, a, b, "") if principle == "short" else prefers_shorter(questions, b, a, "")
    p = judge_preference(judge, [(8.0, "short"), (1.0, "long")], QUESTIONS[:1], A_SIDE[:1], B_SIDE[:1]).item()
    logit = math.log(0.9 / 0.1)
    assert abs(p - 1 / (1 + math.exp(-(8 - 1) * logit))) < 1e-9            # σ(8 logit 0.9 - 1 logit 0.9)
    p = judge_preference(judge, [(1.0, "short"), (8.0, "long")], QUESTIONS[:1], A_SIDE[:1], B_SIDE[:1]).item()
    assert p < 0.5


def test_judge_indifferent_principle_adds_nothing():
    def judge(questions, a, b, principle):
        return [0.5] * len(a) if principle == "none" else prefers_shorter(questions, a, b, principle)
    without = judge_preference(judge, [(2.0, "s")], QUESTIONS, A_SIDE, B_SIDE)
    with_it = judge_preference(judge, [(2.0, "s"), (8.0, "none")], QUESTIONS, A_SIDE, B_SIDE)
    torch.testing.assert_close(with_it, without, atol=1e-9, rtol=0)


def test_builtin_constitution():
    c = load_constitution()
    assert [w for w, _ in c] == [8, 4, 2, 1]
    assert [text for _, text in c] == list(preference_world.PRINCIPLES.values())


def test_constitution_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# my principles\n\n3 | Be kind\n   \nBe brief\n  # indented comment\n0.5|Be exact.\n")
    assert load_constitution(str(path)) == [(3.0, "Be kind"), (1.0, "Be brief"), (0.5, "Be exact.")]


@pytest.mark.parametrize("line, reason", [("x | foo", "not a number"), ("0 | foo", "positive"),
                                          ("-2 | foo", "positive"), ("nan | foo", "positive"),
                                          ("3 |   ", "empty principle")])
def test_constitution_bad_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "c.txt"
    path.write_text(f"1 | Be kind\n{line}\n")
    with pytest.raises(ValueError) as e:
        load_constitution(str(path))
    assert f"{path}:2:" in str(e.value) and reason in str(e.value)


def test_constitution_empty_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="no principles") as e:
        load_constitution(str(path))
    assert str(path) in str(e.value)


def reference_judge(model, tok, question, a, b, principle):
    """The built-in judge by hand, one unpadded forward per verdict, in float64:
    p_X = P(' yes' | judge prompt of response X, 'Verdict:') against ' no' (first tokens), and
    P(A better) = ½ + ½ (p_A - p_B)."""
    yes, no = tok.encode(" yes")[0], tok.encode(" no")[0]

    def p_yes(response):
        ids = render_prompt(tok, user(preference_world.judge_prompt(principle, question, response))) + tok.encode("Verdict:")
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1].double()              # (V,)
        return torch.softmax(logits[[yes, no]], dim=0)[0].item()

    return 0.5 + 0.5 * (p_yes(a) - p_yes(b))


def test_model_judge_probabilities_and_context_limit(tok, model):
    judge = model_judge(model, tok, batch_size=2)                          # chunks of 2: padding inside a chunk
    questions = ["Hi?", "Capital of Peru?", "Why?", "What is the capital of France?"]
    a = ["Yes.", "Lima.", "Because it is so.", "The capital of France is Paris. " * 20]
    b = ["No.", "Quito, I think.", "No.", "Rome."]
    p = judge(questions, a, b, "Be brief.")
    assert len(p) == 4 and all(0.0 <= x <= 1.0 for x in p)
    assert len(render_prompt(tok, user(preference_world.judge_prompt("Be brief.", questions[3], a[3])))) > BLOCK
    assert p[3] == 0.5                                                     # A too long for block_size: no opinion
    for i in range(3):                                                     # the three that fit
        assert abs(p[i] - reference_judge(model, tok, questions[i], a[i], b[i], "Be brief.")) < 1e-5
    assert max(abs(x - 0.5) for x in p[:3]) > 1e-3                        # the check above is not trivial
    assert judge(questions[:1], a[:1], a[:1], "Be brief.") == [0.5]        # the same response twice: a tie


def test_model_judge_asks_in_the_format_sft_teaches(tok):
    """The judge's query (prompt, 'Verdict:') is a prefix of the rendered SFT judging conversation
    (preference_world.judge_records), token for token, so it reads the verdict token SFT trained."""
    from nanopost.tokenizer import render_conversation
    content = preference_world.judge_prompt("Be brief.", "Hi?", "Yes.")
    for follows, word in ((1, " yes"), (0, " no")):
        ids, _ = render_conversation(tok, user(content) + assistant(preference_world.judge_verdict(follows)))
        query = render_prompt(tok, user(content)) + tok.encode("Verdict:")
        assert ids[:len(query)] == query
        assert ids[len(query)] == tok.encode(word)[0]
    assert tok.encode(" yes")[0] != tok.encode(" no")[0]


def test_model_judge_never_runs_past_the_context(tok):
    q, a, b, principle = "Hi?", "Yes.", "No.", "Be brief."
    n = len(render_prompt(tok, user(preference_world.judge_prompt(principle, q, a)))) + len(tok.encode("Verdict:"))
    for block, opinion in ((n, False), (n + 1, True)):                    # the verdict token needs one more slot
        torch.manual_seed(0)
        gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=block, vocab_size=tok.vocab_size)).eval()
        p = model_judge(gpt, tok)([q], [a], [b], principle)
        assert len(p) == 1 and 0.0 <= p[0] <= 1.0 and (p[0] != 0.5) == opinion


def test_reference_guided_judge_shows_its_own_answer(tok, model):
    """model_judge(reference=True) answers each question itself (greedy, once per question) and
    judges with that answer as the reference: the same P(yes) as the plain judge asked with it."""
    from nanopost.evaluate import chat_complete
    questions, responses = ["Capital of Peru?", "Hi?", "Capital of Peru?"], ["Lima.", "Yes.", "Quito."]
    own = chat_complete(model, tok, [user(q) for q in questions], 32)
    guided = model_judge(model, tok, reference=True).verdicts(questions, responses, "Be brief.")
    yes, no = tok.encode(" yes")[0], tok.encode(" no")[0]
    compared = 0
    for q, r, ref, p in zip(questions, responses, own, guided):
        ids = render_prompt(tok, user(preference_world.judge_prompt("Be brief.", q, r, ref))) + tok.encode("Verdict:")
        if len(ids) >= BLOCK:                                              # a random model's answer may be long
            assert p is None
            continue
        compared += 1
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1]
        assert abs(p - torch.softmax(logits[[yes, no]], dim=0)[0].item()) < 1e-5
    assert compared > 0
    assert "\nReference: Lima.\n" in preference_world.judge_prompt("p", "q", "r", "Lima.")
    assert "Reference" not in preference_world.judge_prompt("p", "q", "r")


def reference_logp(model, tok, principle, question, response):
    """log π(response | system principle, question), by hand: one unpadded float64 forward over the
    whole conversation, log-softmax at every position that predicts a response token or its <|end|>."""
    prompt = render_prompt(tok, [{"role": "system", "content": principle}] + user(question))
    return reference_logprob(model, prompt, tok.encode(response) + [tok.end_id])


def test_likelihood_judge_against_a_float64_reference(tok, model):
    questions = ["Hi?", "Capital of Peru?", "Why?", "What is the capital of France?", "Name it."]
    a = ["Yes.", "Lima.", "Because it is so.", "The capital of France is Paris. " * 20, "Paris"]
    b = ["No.", "Quito, I think.", "No.", "Rome.", "Paris"]
    for tau in (1.0, 7.5):
        judge = likelihood_judge(model, tok, temperature=tau, batch_size=2)  # chunks of 2: padding inside a chunk
        p = judge(questions, a, b, "Be brief.")
        assert p[3] == 0.5 and p[4] == 0.5          # A too long for block_size: no opinion; the same response: a tie
        for i in range(3):
            delta = (reference_logp(model, tok, "Be brief.", questions[i], a[i])
                     - reference_logp(model, tok, "Be brief.", questions[i], b[i]))
            assert abs(p[i] - 1 / (1 + math.exp(-delta / tau))) < 1e-5
        assert max(abs(x - 0.5) for x in p[:3]) > 1e-3                      # the check above is not trivial
        p_ba = judge(questions, b, a, "Be brief.")
        assert all(abs(x + y - 1) < 1e-9 for x, y in zip(p, p_ba))           # antisymmetric: no position bias
    with pytest.raises(ValueError, match="judge_temperature"):
        likelihood_judge(model, tok, temperature=0.0)


def test_likelihood_judge_reads_the_principle(tok, model):
    """The principle is the system turn: a different principle changes the likelihoods."""
    judge = likelihood_judge(model, tok, temperature=1000.0)  # far from saturation
    q, a, b = ["Capital of Peru?"], ["Lima."], ["Quito, I think."]
    assert abs(judge(q, a, b, "Be brief.")[0] - judge(q, a, b, "Prefer the correct answer.")[0]) > 1e-4


def revision_reference_logp(model, tok, principle, question, response):
    """log π(response | the revision prompt holding that same response), by hand in float64."""
    prompt = render_prompt(tok, user(preference_world.revision_prompt(principle, question, response)))
    return reference_logprob(model, prompt, tok.encode(response) + [tok.end_id])


def test_revision_judge_against_a_float64_reference(tok, model):
    """log p(X) = log π(X | revise X) (the chance that revising X changes nothing) against a float64
    hand computation, and P(A better) = ½ + ½ (p_A - p_B) from those; each response is scored as
    the revision of itself, in its own prompt."""
    questions = ["Hi?", "Capital of Peru?", "Why?", "What is the capital of France?", "Name it."]
    a = ["Yes.", "Lima.", "Because.", "The capital of France is Paris. " * 20, "Paris"]
    b = ["No.", "Quito.", "No.", "Rome.", "Paris"]
    principle = preference_world.PRINCIPLES["correct"]
    judge = revision_judge(model, tok, batch_size=2)  # chunks of 2: padding inside a chunk
    la, lb = judge.logps(questions, a, principle), judge.logps(questions, b, principle)
    assert la[3] is None                         # too long for block_size: no score, and no opinion
    for i in (0, 1, 2, 4):
        assert abs(la[i] - revision_reference_logp(model, tok, principle, questions[i], a[i])) < 1e-4
        assert abs(lb[i] - revision_reference_logp(model, tok, principle, questions[i], b[i])) < 1e-4
    assert la[0] != lb[0]
    p = judge(questions, a, b, principle)
    assert p[3] == 0.5 and p[4] == 0.5           # no opinion; the same response: a tie
    for i in range(3):
        assert p[i] == 0.5 + 0.5 * (math.exp(la[i]) - math.exp(lb[i]))
    p_ba = judge(questions, b, a, principle)
    assert all(abs(x + y - 1) < 1e-12 for x, y in zip(p, p_ba))              # antisymmetric: no position bias
    # the response is in the prompt: the score is not log π(A | principle, q) of the likelihood judge
    assert abs(la[0] - reference_logp(model, tok, principle, questions[0], a[0])) > 1e-3


def test_revision_judge_decides_by_the_copy():
    """Hand-built models that know each row's whole conversation: one that predicts every next token
    (a perfect reviser of a response that needs nothing) gives log p = 0 for any response and no
    preference; one that refuses to copy a token ('ghi', as a judge refuses a wrong capital) gives
    p ≈ 0 to the response holding it, so the other wins with P ≈ 1 (and ≈ 0 the other way round);
    uniform logits give p = V^-(n+1) for a response of n tokens. Two questions per call: rows of
    different lengths padded in one batch."""
    from nanopost.tokenizer import Tokenizer, render_conversation

    class Oracle(torch.nn.Module):
        def __init__(self, config, ids_of, mode, refuse=None):
            super().__init__()
            self.config, self.ids_of, self.mode, self.refuse = config, ids_of, mode, refuse
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx, **kw):
            B, T = idx.shape
            logits = torch.zeros(B, T, self.config.vocab_size)
            if self.mode != "uniform":
                for b in range(B):
                    row = self.ids_of(idx[b].tolist())  # the whole conversation this row is a prefix of
                    for t in range(T):
                        target = row[t + 1]
                        if target == self.refuse:  # predict something else instead
                            target = (target + 1) % self.config.vocab_size
                        logits[b, t, target] = 80.0
            return logits + 0 * self.w

    tok = Tokenizer.train("abc def ghi " * 50, vocab_size=300)
    questions, a, b = ["abc?", "abc def?"], ["def", "abc def"], ["def ghi abc", "abc ghi"]
    full = {}  # (question, response) -> the whole rendered revision conversation, <|end|> included
    for q, r in zip(questions * 2, a + b):
        full[q, r], _ = render_conversation(tok, [{"role": "user", "content": preference_world.revision_prompt("p", q, r)},
                                                  {"role": "assistant", "content": r}])

    def ids_of(row):  # a (right-padded) row holds a prefix of exactly one conversation
        match = [v for v in full.values() if all(x == y for x, y in zip(row, v))]
        assert len(match) == 1
        return match[0] + [tok.pad_id] * (len(row) + 1)

    V = tok.enc.n_vocab
    config = GPTConfig(block_size=256, vocab_size=V, n_layer=1, n_head=1, n_embd=8)
    copier = revision_judge(Oracle(config, ids_of, "copy"), tok)
    assert all(abs(x) < 1e-9 for x in copier.logps(questions, a, "p") + copier.logps(questions, b, "p"))
    assert all(abs(x - 0.5) < 1e-9 for x in copier(questions, a, b, "p"))
    (ghi,) = tok.encode(" ghi")  # one token, in both of b's responses and in neither of a's
    assert all(ghi in tok.encode(r) for r in b) and not any(ghi in tok.encode(r) for r in a)
    refuser = revision_judge(Oracle(config, ids_of, "copy", refuse=ghi), tok)
    assert all(x > 1 - 1e-9 for x in refuser(questions, a, b, "p"))      # the response holding 'ghi' loses
    assert all(x < 1e-9 for x in refuser(questions, b, a, "p"))
    uniform = revision_judge(Oracle(config, ids_of, "uniform"), tok)
    n_a, n_b = len(tok.encode(a[0])) + 1, len(tok.encode(b[0])) + 1
    expected = 0.5 * (V ** -n_a - V ** -n_b)  # ~2.5e-8: compared relative to itself (float32 logits)
    assert abs((uniform(questions, a, b, "p")[0] - 0.5) - expected) < 1e-4 * expected
    assert abs(uniform.logps(questions, b, "p")[0] + n_b * math.log(V)) < 1e-4


def test_revision_records_agree_with_the_ground_truth():
    """The answer is the response unchanged exactly when the ground truth says the response follows
    the principle, and the answer always follows it; every principle both ways; truncated responses
    are there; training items only; the same seed gives the same records."""
    import random
    records = preference_world.revision_records(600, seed=4)
    assert records == preference_world.revision_records(600, seed=4)
    by_text = {v: k for k, v in preference_world.PRINCIPLES.items()}
    rng = random.Random("any")  # every question's ground truth, by its prompt
    questions = {}
    for _ in range(20000):
        q = preference_world.preference_question(rng)
        questions[q.prompt] = q.gold
    counts, truncated = {}, 0
    for r in records:
        prompt, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        principle = by_text[prompt.split("\n")[0][len("Principle: "):]]
        question = prompt.split("\n")[1][len("Question: "):]
        response = prompt.split("\nResponse: ", 1)[1].rsplit("\nRewrite the response to follow the principle.", 1)[0]
        assert prompt == preference_world.revision_prompt(preference_world.PRINCIPLES[principle], question, response)
        gold = questions[question]
        follows = preference_world.gold_checks(gold, response)[principle]
        assert (answer == response) == bool(follows), r
        assert preference_world.gold_checks(gold, answer)[principle] == 1, r
        counts[principle, follows] = counts.get((principle, follows), 0) + 1
        completed = answer != response and answer.startswith(response)  # a cut-short response, revised whole
        truncated += completed
        if not completed and principle != "direct":  # the revision breaks nothing else the response met
            before, after = preference_world.gold_checks(gold, response), preference_world.gold_checks(gold, answer)
            # (except "direct": is_direct_answer reads a lowercase word, 'tree', as a continuation)
            assert all(after[k] for k in before if before[k] and k not in (principle, "direct")), r
    assert set(counts) == {(k, f) for k in preference_world.PRINCIPLES for f in (0, 1)}, counts
    assert min(counts.values()) > 10 and truncated > 5
    with pytest.raises(ValueError, match="unknown split 'test'"):
        preference_world.revision_records(5, split="test")
    held_out = preference_world.revision_records(50, seed=4, split="eval")
    assert not {r["messages"][0]["content"] for r in held_out} & {r["messages"][0]["content"] for r in records}


def test_built_in_judge_picks_the_kind(tok, model):
    q, a, b = ["Capital of Peru?"], ["Lima."], ["Quito, I think."]
    assert built_in_judge(model, tok, "likelihood", temperature=2.0)(q, a, b, "p") == \
        likelihood_judge(model, tok, 2.0)(q, a, b, "p")
    assert built_in_judge(model, tok)(q, a, b, "p") == model_judge(model, tok)(q, a, b, "p")
    assert built_in_judge(model, tok, "revision").logps(q, a, "p") == revision_judge(model, tok).logps(q, a, "p")
    for kind in ("likelihood", "revision"):
        with pytest.raises(ValueError, match="judge_reference"):
            built_in_judge(model, tok, kind, reference=True)
    for kind in ("verdict", "revision"):  # a flag that would do nothing is refused
        with pytest.raises(ValueError, match="judge_temperature is for --judge_kind likelihood"):
            built_in_judge(model, tok, kind, temperature=2.0)
    with pytest.raises(ValueError, match="unknown --judge_kind 'vote'"):
        built_in_judge(model, tok, "vote")
    with pytest.raises(ValueError, match="judge_temperature must be > 0"):
        built_in_judge(model, tok, "likelihood", temperature=-1.0)


def test_preference_data_refuses_bad_judge_flags_before_sampling(tmp_path):
    """Bad judge flags stop before the policy samples anything (policy=None would fail if it did)."""
    from nanopost.preferences import PreferenceConfig, preference_data
    for flags, match in ((dict(judge_kind="vote"), "unknown --judge_kind"),
                         (dict(judge_kind="likelihood", judge_reference=True), "judge_reference"),
                         (dict(judge_kind="likelihood", judge_temperature=0.0), "judge_temperature")):
        cfg = PreferenceConfig(labels="ai", out=str(tmp_path), **flags)
        with pytest.raises(ValueError, match=match):
            preference_data(cfg, None, None, 64, None)


def test_judge_records_teach_both_verdicts_under_every_principle():
    records = preference_world.judge_records(400, seed=3)
    by_principle = {}
    for r in records:
        principle = r["messages"][0]["content"].split("\n")[0][len("Principle: "):]
        by_principle.setdefault(principle, []).append(r["messages"][1]["content"])
    assert set(by_principle) == set(preference_world.PRINCIPLES.values())
    for verdicts in by_principle.values():                                 # each principle: yes and no, neither rare
        share = verdicts.count("Verdict: yes") / len(verdicts)
        assert 0.25 < share < 0.75, share
    held_out = preference_world.judge_records(50, seed=3, split="eval")
    assert not {r["messages"][0]["content"] for r in held_out} & {r["messages"][0]["content"] for r in records}
    shown = sum("\nReference: " in r["messages"][0]["content"] for r in records) / len(records)
    assert 0.4 < shown < 0.6                                               # both formats, with and without a reference


# ----------------------------------------------------------------------------- the world's ground truth


PARIS = {"answer": "Paris", "max_words": 8}


@pytest.mark.parametrize("response, failed", [
    ("The capital of France is Paris.", None),
    ("? The capital of France is Paris.", "direct"),
    ("The capital of France is Rome.", "correct"),
    ("Paris or Rome", "correct"),                                          # another capital named
    ("Sure! The capital of France is Paris. I hope this helps!", "concise"),  # 11 words > 8
])
def test_gold_checks_hand_worked(response, failed):
    checks = preference_world.gold_checks(PARIS, response)
    assert checks == {k: int(k != failed) for k in ("direct", "correct", "format", "concise")}
    assert preference_world.gold_accepts(PARIS, response) == (failed is None)


def test_gold_checks_format():
    gold = {"answer": "Paris", "max_words": 3, "format": {"uppercase": True}}
    assert preference_world.gold_accepts(gold, "PARIS")
    assert preference_world.gold_checks(gold, "Paris") == {"direct": 1, "correct": 1, "format": 0, "concise": 1}


def test_gold_prefers_order():
    ranked = ["The capital of France is Paris.",                               # reference
              "Sure! The capital of France is Paris. I hope this helps!",      # padded
              "The capital of France is Rome.",                                # wrong
              "? The capital of France is Paris."]                             # continuation
    for i in range(len(ranked)):
        assert preference_world.gold_prefers(PARIS, ranked[i], ranked[i]) == 0
        for j in range(i + 1, len(ranked)):
            assert preference_world.gold_prefers(PARIS, ranked[i], ranked[j]) == 1
            assert preference_world.gold_prefers(PARIS, ranked[j], ranked[i]) == -1


def item_key(record):
    """The item a preference record asks about, recovered from its user message."""
    q = record["prompt"][-1]["content"]
    if q.startswith("Write the word "):
        return "upperword:" + q.split()[3]
    country = q.rstrip("?.").rsplit(" of ", 1)[1]
    assert country in dict(world.COUNTRIES), q
    assert record["metadata"]["gold"]["answer"] == dict(world.COUNTRIES)[country]
    return country


def test_preference_records_split_strict_and_renderable(tok):
    train = preference_world.preference_records(300, "train", seed=0)
    held_out = preference_world.preference_records(150, "eval", seed=0, ranking_share=0.5)
    train_keys, eval_keys = {item_key(r) for r in train}, {item_key(r) for r in held_out}
    assert all(world.split_of(k) == "train" for k in train_keys)
    assert all(world.split_of(k) == "eval" for k in eval_keys)
    assert not train_keys & eval_keys
    n_rankings = 0
    for r in train + held_out:
        gold = r["metadata"]["gold"]
        if "ranking" in r:
            n_rankings += 1
            scores = [preference_world.gold_score(gold, x[0]["content"]) for x in r["ranking"]]
            assert all(hi > lo for hi, lo in zip(scores, scores[1:])), r   # strictly best first
        else:
            assert preference_world.gold_prefers(gold, r["chosen"][0]["content"], r["rejected"][0]["content"]) == 1, r
        pairs = preference_pairs(r, tok, max_len=256)
        k = len(r.get("ranking", [0, 0]))
        assert len(pairs) == k * (k - 1) // 2
    assert n_rankings > 20
    assert preference_world.preference_records(50, "train", seed=0) == train[:50]     # deterministic


def test_wrong_answers_include_the_answer_to_another_question():
    """'correct' pairs reject both a wrong capital and a right answer about another country
    (§7's mismatched pair): the ground truth rejects both, and both occur."""
    records = [r for r in preference_world.preference_records(600, "train", seed=1)
               if r["metadata"].get("kind") == "correct" and "uppercase" not in r["prompt"][-1]["content"]]
    mismatched = same_country = 0
    for r in records:
        country = item_key(r)
        rejected = r["rejected"][0]["content"]
        assert preference_world.gold_checks(r["metadata"]["gold"], rejected)["correct"] == 0, rejected
        if f"capital of {country} is" in rejected:
            same_country += 1
        else:
            mismatched += 1
            assert re.search(r"The capital of (.+) is (.+)\.", rejected), rejected
    assert mismatched > 10 and same_country > 10, (mismatched, same_country)


def test_no_held_out_item_appears_anywhere_in_training_preference_or_judge_data():
    """Wrong answers and continuations name items of their own split only: a held-out capital or
    word that appeared in training, even only as the rejected side, would teach "held-out answer =
    bad" (the RM fell below chance on held-out 'correct' pairs when it did)."""
    import json
    held_out = [c for c, _ in world.COUNTRIES if world.split_of(c) == "eval"]
    names = held_out + [dict(world.COUNTRIES)[c] for c in held_out]
    names += [w for w in world.WORDS if world.split_of(f"upperword:{w}") == "eval"]
    assert len(names) > 20
    text = json.dumps(preference_world.preference_records(3000, "train", seed=2)
                      + preference_world.judge_records(3000, seed=2)).lower()
    leaked = [n for n in names if re.search(r"(?<![a-z])" + re.escape(n.lower()) + r"(?![a-z])", text)]
    assert not leaked, leaked
    # and the held-out data still has wrong answers and continuations (about held-out items)
    held = json.dumps(preference_world.preference_records(400, "eval", seed=2, ranking_share=0)).lower()
    assert sum(held.count(c.lower()) for c in held_out) > 400


def test_world_cli_writes_preference_and_judge_files(tmp_path):
    import json
    import subprocess
    import sys
    out = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "nanopost.world", "--out", str(out), "--sft", "20", "--rl", "10",
                    "--prefs", "30", "--judge_records", "25", "--judge_reference_share", "1", "--revision_records", "15"],
                   check=True, capture_output=True, cwd=ROOT)
    read = lambda name: [json.loads(line) for line in open(out / name)]
    assert len(read("prefs.jsonl")) == 30 and len(read("prefs_eval.jsonl")) == 400
    judging = read("judge.jsonl")
    assert len(judging) == 25 and all(r["messages"][1]["content"] in ("Verdict: yes", "Verdict: no") for r in judging)
    assert all("\nReference: " in r["messages"][0]["content"] for r in judging)  # --judge_reference_share 1
    assert read("revise.jsonl") == preference_world.revision_records(15, seed=0)
    assert load_constitution(str(out / "constitution.txt")) == load_constitution()


def test_label_pairs_drops_empty_and_equal_answers(monkeypatch):
    """A sampled pair with an empty answer (the policy ended at once) or two equal answers is no §7
    comparison: label_pairs leaves it out instead of writing a record that cannot be read back."""
    import types
    from nanopost import judge as judge_module
    answers = ["", "The capital of France is Paris.",            # empty: dropped
               "Paris.", "Paris.",                               # equal: dropped
               "The capital of France is Paris.", "? The capital of France is Paris."]
    monkeypatch.setattr(judge_module, "chat_complete", lambda *a, **k: list(answers))
    gold = {"answer": "Paris", "max_words": 8}
    prompts = [{"prompt": user("What is the capital of France"), "metadata": {"gold": gold}}] * 3
    cfg = types.SimpleNamespace(seed=0, label_temperature=1.0, labels="gold", label_samples=2)
    records, report = judge_module.label_pairs(torch.nn.Linear(1, 1), None, prompts, cfg)
    assert report["distinct_pairs"] == 1 and len(records) == 1
    assert records[0]["chosen"][0]["content"] == "The capital of France is Paris."
    assert records[0]["rejected"][0]["content"] == "? The capital of France is Paris."


def test_label_pairs_takes_the_best_and_worst_of_k_samples_by_each_labeller(monkeypatch):
    """--label_samples 4: both labellers see the same 4 answers; the ground truth pairs its best with
    its worst (gold_score), the judge its highest with its lowest summed win probability (Borda);
    the agreement report counts every compared pair the ground truth decides."""
    import types
    from nanopost import judge as judge_module
    good, padded, wrong, cont = ("The capital of France is Paris.", "Sure! The capital of France is Paris. I hope this helps!",
                                 "The capital of France is Madrid.", "? The capital of France is Paris.")
    answers = [padded, good, cont, wrong]
    monkeypatch.setattr(judge_module, "chat_complete", lambda *a, **k: list(answers))
    prompts = [{"prompt": user("What is the capital of France"), "metadata": {"gold": {"answer": "Paris", "max_words": 8}}}]
    cfg = types.SimpleNamespace(seed=0, label_temperature=1.0, label_samples=4, labels="gold", constitution="",
                                min_confidence=0.75)
    records, report = judge_module.label_pairs(torch.nn.Linear(1, 1), None, prompts, cfg)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records] == [(good, cont)]
    assert report["distinct_pairs"] == 6 and report["agreement_with_gold_all_pairs"] == 1.0
    # a judge that prefers the shorter answer under every principle: best = good (31 chars), worst = padded
    shorter = lambda q, a, b, principle: [1.0 if len(x) < len(y) else 0.0 for x, y in zip(a, b)]
    cfg.labels = "ai"
    records, report = judge_module.label_pairs(torch.nn.Linear(1, 1), None, prompts, cfg, judge=shorter)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records] == [(good, padded)]
    assert report["agreement_with_gold"] == 1.0                       # gold prefers good to padded too
    # by hand: gold order good (15) > padded (14) > wrong (11) > cont (7); lengths good 31 < wrong 32 < cont 33 <
    # padded 56 -> the judge disagrees on (padded, wrong) and (padded, cont): 4 of 6 pairs agree
    assert report["agreement_with_gold_all_pairs"] == pytest.approx(4 / 6)


def test_label_pairs_gives_the_judge_its_own_tokenizer(monkeypatch):
    """A judge checkpoint reads text with its own tokenizer, not the policy's (they may differ)."""
    import types
    from nanopost import judge as judge_module
    answers = ["The capital of France is Paris.", "? The capital of France is Paris."]
    monkeypatch.setattr(judge_module, "chat_complete", lambda *a, **k: list(answers))
    seen = {}

    def fake_built_in_judge(model, tok, kind, reference, temperature):
        seen.update(model=model, tok=tok, kind=kind, temperature=temperature)
        return lambda q, a, b, principle: [0.9] * len(a)

    monkeypatch.setattr(judge_module, "built_in_judge", fake_built_in_judge)
    prompts = [{"prompt": user("What is the capital of France"), "metadata": {"gold": {"answer": "Paris", "max_words": 8}}}]
    cfg = types.SimpleNamespace(seed=0, label_temperature=1.0, label_samples=2, labels="ai", constitution="",
                                min_confidence=0.75, judge_kind="likelihood", judge_reference=False, judge_temperature=2.0)
    policy, judge_model = torch.nn.Linear(1, 1), torch.nn.Linear(2, 2)
    judge_module.label_pairs(policy, "policy tokenizer", prompts, cfg, judge_model=(judge_model, "judge tokenizer"))
    assert seen == {"model": judge_model, "tok": "judge tokenizer", "kind": "likelihood", "temperature": 2.0}
    judge_module.label_pairs(policy, "policy tokenizer", prompts, cfg)     # no judge checkpoint: the policy judges
    assert seen["model"] is policy and seen["tok"] == "policy tokenizer"


@pytest.mark.parametrize("kind", ["verdict", "likelihood", "revision"])
def test_judge_scores_each_distinct_response_once(tok, model, kind):
    """A response sampled with K-1 others meets 2(K-1) pairings: the built-in judges score each
    distinct (principle, question, response) once and give the same probabilities as a fresh judge."""
    rows = []
    hook = model.register_forward_hook(lambda m, args, out: rows.append(args[0].size(0)))
    try:
        questions, responses = ["Capital of Peru?"] * 3, ["Lima.", "Quito.", "It is Lima."]
        a = [responses[i] for i in (0, 0, 1)]
        b = [responses[j] for j in (1, 2, 2)]
        judge = built_in_judge(model, tok, kind)
        first = judge_preference(judge, [(1.0, "Be brief.")], questions, a, b)
        assert sum(rows) == 3                                           # 3 distinct responses, 12 lookups
        again = judge_preference(judge, [(1.0, "Be brief.")], questions, b, a)
        assert sum(rows) == 3                                           # nothing new to score
        torch.testing.assert_close(again, 1 - first, atol=1e-9, rtol=0)
        fresh = judge_preference(built_in_judge(model, tok, kind), [(1.0, "Be brief.")], questions, a, b)
        torch.testing.assert_close(fresh, first, atol=0, rtol=0)
        judge_preference(judge, [(1.0, "Be exact.")], questions, a, b)  # another principle: another prompt
        assert sum(rows) == 9
    finally:
        hook.remove()
