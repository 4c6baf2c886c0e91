"""Batching: pad, bucket and pack give the same per-example losses as running each example alone;
packed documents are isolated; pack_rows is a valid bin packing; padding efficiency; shift; the
layout of packed rows (positions, doc_ids, example_index)."""
import random

import pytest
import torch

from nanopost.batching import make_batches, pack_batch, pack_rows, pad_batch, shift
from nanopost.losses import masked_nll
from nanopost.model import GPT, GPTConfig
from nanopost.nexttoken import forward_nll

V, ROW_LEN, PAD = 97, 64, 0
CPU = torch.device("cpu")



def chat_mask(n, rng):
    """A chat-like loss mask: alternating runs of prompt (0) and assistant (1) tokens."""
    mask, value = [], 0
    while len(mask) < n:
        mask += [value] * rng.randint(1, 8)
        value = 1 - value
    return mask[:n]


def make_examples(n, lo, hi, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(lo, hi)
        out.append(([rng.randrange(1, V) for _ in range(L)], chat_mask(L, rng)))
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=ROW_LEN, vocab_size=V, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    with torch.no_grad():  # sharper than the 0.02 init, so the losses differ clearly between tokens
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def examples():
    return make_examples(30, 3, 40, seed=1)


def per_example_losses(model, batches, n_examples):
    """Summed NLL of each example over its target tokens, collected via example_index."""
    sums = torch.zeros(n_examples, dtype=torch.float64)
    seen = torch.zeros(n_examples, dtype=torch.long)
    with torch.no_grad():
        for batch in batches:
            nll = forward_nll(model, batch, CPU)
            idx = batch["example_index"]
            real = idx >= 0
            assert (nll[~real] == 0).all()
            assert (batch["loss_mask"][~real] == 0).all()
            sums.index_add_(0, idx[real], nll[real].double())
            seen.index_add_(0, idx[real], torch.ones_like(idx[real]))
    return sums, seen


def alone_losses(model, examples):
    out = []
    with torch.no_grad():
        for ids, mask in examples:
            inputs, targets, tmask = shift(ids, mask)
            logits = model(torch.tensor([inputs]))  # batch of one, no padding, no attention mask
            out.append(masked_nll(logits, torch.tensor([targets]), torch.tensor([tmask])).double().sum())
    return torch.stack(out)


def test_pad_bucket_pack_same_per_example_losses(model, examples):
    ref = alone_losses(model, examples)
    assert ref.max() > 1.0  # real losses, not zeros
    results = {}
    for mode in ("pad", "bucket", "pack"):
        batches = make_batches(examples, mode, batch_size=4, row_len=ROW_LEN, pad_id=PAD, seed=3)
        sums, seen = per_example_losses(model, batches, len(examples))
        # every example appears exactly once, with all its len(ids) - 1 slots
        assert seen.tolist() == [len(ids) - 1 for ids, _ in examples]
        torch.testing.assert_close(sums, ref, atol=1e-5, rtol=0, msg=mode)
        results[mode] = sums
    # pack actually mixed several examples in a row (otherwise the test proves little)
    pack = make_batches(examples, "pack", batch_size=4, row_len=ROW_LEN, pad_id=PAD, seed=3)
    assert max(int(b["doc_ids"].max()) for b in pack) >= 2
    torch.testing.assert_close(results["pad"], results["pack"], atol=1e-5, rtol=0)


def test_packing_isolates_documents(model, examples):
    lengths = [len(ids) - 1 for ids, _ in examples]
    rows = pack_rows(lengths, ROW_LEN)
    row = max(rows, key=len)
    assert len(row) >= 3
    victim = row[1]  # a document in the middle of the row: others before and after it
    changed = list(examples)
    ids, mask = examples[victim]
    rng = random.Random(7)
    new_ids = [(t + rng.randrange(1, V - 1)) % (V - 1) + 1 for t in ids]
    assert all(a != b for a, b in zip(ids, new_ids))
    changed[victim] = (new_ids, [1] * len(ids))  # every target counted, so its NLL surely moves
    with torch.no_grad():
        before = forward_nll(model, pack_batch(examples, [row], PAD, ROW_LEN), CPU)[0]
        batch = pack_batch(changed, [row], PAD, ROW_LEN)
        after = forward_nll(model, batch, CPU)[0]
    where = batch["example_index"][0]
    others = (where >= 0) & (where != victim)
    assert others.sum() > 0 and (before[others] != 0).any()
    torch.testing.assert_close(after[others], before[others], atol=1e-6, rtol=0)
    assert (after[where == victim] - before[where == victim]).abs().max() > 1e-3  # the change did matter

    # and each document's per-token NLL in the row equals its NLL alone
    with torch.no_grad():
        for i in row:
            inp, tgt, tm = shift(*changed[i])
            alone = masked_nll(model(torch.tensor([inp])), torch.tensor([tgt]), torch.tensor([tm]))[0]
            torch.testing.assert_close(after[where == i], alone, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- pack_rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pack_rows_valid(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 64) for _ in range(200)]
    rows = pack_rows(lengths, 64)
    flat = [i for row in rows for i in row]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert all(row for row in rows)
    # no worse than the volume bound by much (first-fit decreasing is within 11/9 OPT + 1)
    assert len(rows) <= 11 / 9 * (sum(lengths) / 64) + 2


def test_pack_rows_too_long_raises():
    with pytest.raises(ValueError):
        pack_rows([3, 65, 4], 64)
    with pytest.raises(ValueError):
        make_batches([(list(range(1, 67)), [1] * 66)], "pack", batch_size=2, row_len=64, pad_id=PAD)
    assert pack_rows([], 64) == []
    assert pack_rows([64], 64) == [[0]]


def efficiency(batches):
    return sum(b["n_real"] for b in batches) / sum(b["n_slots"] for b in batches)


def test_pack_efficiency_on_short_examples():
    ex = make_examples(600, 3, 12, seed=2)
    pack = make_batches(ex, "pack", batch_size=8, row_len=ROW_LEN, pad_id=PAD)
    pad = make_batches(ex, "pad", batch_size=8, row_len=ROW_LEN, pad_id=PAD)
    n_real = sum(len(ids) - 1 for ids, _ in ex)
    assert sum(b["n_real"] for b in pack) == n_real == sum(b["n_real"] for b in pad)
    for b in pack:  # n_real / n_slots are consistent with the tensors
        assert b["n_real"] == int((b["example_index"] >= 0).sum())
        assert b["n_slots"] == b["idx"].numel()
    assert efficiency(pack) >= 0.95
    assert efficiency(pack) > efficiency(pad)


def test_pack_beats_pad_and_bucket_beats_pad_on_varied_lengths():
    ex = make_examples(300, 3, 60, seed=4)
    pad = make_batches(ex, "pad", batch_size=8, row_len=ROW_LEN, pad_id=PAD)
    bucket = make_batches(ex, "bucket", batch_size=8, row_len=ROW_LEN, pad_id=PAD)
    pack = make_batches(ex, "pack", batch_size=8, row_len=ROW_LEN, pad_id=PAD)
    assert sum(b["n_real"] for b in pad) == sum(b["n_real"] for b in bucket) == sum(b["n_real"] for b in pack)
    assert sum(b["n_slots"] for b in bucket) < sum(b["n_slots"] for b in pad)  # less padding
    assert efficiency(bucket) > efficiency(pad)
    assert efficiency(pack) > efficiency(pad)
    # bucket and pad hold the same examples, each once
    for batches in (pad, bucket):
        seen = sorted(int(i) for b in batches for i in b["example_index"][:, 0])
        assert seen == list(range(len(ex)))


def test_unknown_mode_raises():
    with pytest.raises(ValueError):
        make_batches(make_examples(4, 3, 5), "nope", batch_size=2, row_len=ROW_LEN, pad_id=PAD)


# ----------------------------------------------------------------------------- layout


def test_shift():
    ids, mask = [5, 6, 7, 8, 9], [0, 0, 1, 1, 0]
    inputs, targets, tmask = shift(ids, mask)
    assert list(inputs) == [5, 6, 7, 8]
    assert list(targets) == [6, 7, 8, 9]
    assert list(tmask) == [0, 1, 1, 0]
    assert list(targets) == list(ids[1:]) and list(tmask) == list(mask[1:])


def test_pad_batch_layout():
    ex = [([1, 2, 3, 4], [0, 1, 1, 1]), ([5, 6], [0, 1]), ([7, 8, 9], [1, 1, 0])]
    b = pad_batch(ex, [0, 1, 2], pad_id=PAD)
    assert b["doc_ids"] is None
    assert b["idx"].tolist() == [[1, 2, 3], [5, PAD, PAD], [7, 8, PAD]]
    assert b["targets"].tolist() == [[2, 3, 4], [6, PAD, PAD], [8, 9, PAD]]
    assert b["loss_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert b["pos"].tolist() == [[0, 1, 2], [0, 0, 0], [0, 1, 0]]
    assert b["example_index"].tolist() == [[0, 0, 0], [1, -1, -1], [2, 2, -1]]
    assert b["n_real"] == 6 and b["n_slots"] == 9


def test_pack_batch_layout_hand_worked():
    ex = [([1, 2, 3, 4], [0, 1, 1, 1]), ([5, 6], [0, 1]), ([7, 8, 9], [1, 1, 0])]
    b = pack_batch(ex, [[2, 0], [1]], pad_id=PAD, row_len=6)
    assert b["idx"].tolist() == [[7, 8, 1, 2, 3, PAD], [5, PAD, PAD, PAD, PAD, PAD]]
    assert b["targets"].tolist() == [[8, 9, 2, 3, 4, PAD], [6, PAD, PAD, PAD, PAD, PAD]]
    assert b["loss_mask"].tolist() == [[1, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]]
    assert b["pos"].tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 0, 0, 0, 0]]
    assert b["doc_ids"].tolist() == [[1, 1, 2, 2, 2, 0], [1, 0, 0, 0, 0, 0]]
    assert b["example_index"].tolist() == [[2, 2, 0, 0, 0, -1], [1, -1, -1, -1, -1, -1]]
    assert b["n_real"] == 6 and b["n_slots"] == 12


def test_packed_rows_positions_doc_ids_example_index(examples):
    batches = make_batches(examples, "pack", batch_size=4, row_len=ROW_LEN, pad_id=PAD, seed=5)
    n_docs_seen = 0
    for b in batches:
        for r in range(b["idx"].size(0)):
            doc, pos, ex_idx = b["doc_ids"][r].tolist(), b["pos"][r].tolist(), b["example_index"][r].tolist()
            k = max(doc)
            n_real = sum(d > 0 for d in doc)
            # doc ids: 1..k in contiguous runs, then 0 on the padding tail
            runs = [d for j, d in enumerate(doc[:n_real]) if j == 0 or doc[j - 1] != d]
            assert runs == list(range(1, k + 1))
            assert all(d == 0 for d in doc[n_real:])
            for d in range(1, k + 1):
                slots = [j for j in range(ROW_LEN) if doc[j] == d]
                assert [pos[j] for j in slots] == list(range(len(slots)))  # positions restart at 0
                owners = {ex_idx[j] for j in slots}
                assert len(owners) == 1
                (i,) = owners
                assert len(slots) == len(examples[i][0]) - 1
                inputs, targets, tmask = shift(*examples[i])
                assert [int(b["idx"][r, j]) for j in slots] == list(inputs)
                assert [int(b["targets"][r, j]) for j in slots] == list(targets)
                n_docs_seen += 1
            assert all(e == -1 for e in ex_idx[n_real:])
            assert all(e >= 0 for e in ex_idx[:n_real])
            assert all(int(b["idx"][r, j]) == PAD for j in range(n_real, ROW_LEN))
            assert float(b["loss_mask"][r, n_real:].sum()) == 0.0
    assert n_docs_seen == len(examples)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_block_mask_matches_the_dense_document_mask(model, examples):
    """The GPU fast path for packed rows (a flex-attention BlockMask, no (T, T) mask per row) gives
    the same per-token losses as the reference path (SDPA with the dense block-diagonal mask).
    On CPU flex attention runs eagerly and forward only; the gradients are compared on a GPU."""
    device = torch.device("cuda") if torch.cuda.is_available() else CPU
    m = model.to(device)
    batch = make_batches(examples, "pack", 4, ROW_LEN, PAD, seed=0)[0]
    assert batch["doc_ids"] is not None and int(batch["doc_ids"][0].max()) > 0  # several documents in a row
    with torch.set_grad_enabled(device.type == "cuda"):
        dense = forward_nll(m, batch, device, flex=False)
        flex = forward_nll(m, batch, device, flex=True)
    torch.testing.assert_close(flex, dense, rtol=1e-4, atol=1e-5)
    if device.type == "cuda":
        g_dense = torch.autograd.grad(dense.sum(), list(m.parameters()))
        g_flex = torch.autograd.grad(flex.sum(), list(m.parameters()))
        for a, b in zip(g_flex, g_dense):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    model.to(CPU)


def test_attention_choice():
    from nanopost.nexttoken import use_flex
    gpt = GPT(GPTConfig(block_size=8, vocab_size=V, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
    cuda = torch.device("cuda")
    assert not use_flex("auto", gpt, CPU) and not use_flex("sdpa", gpt, cuda)
    assert use_flex("auto", gpt, cuda) and use_flex("flex", gpt, cuda)
    gpt.config.dropout = 0.1  # flex attention has no dropout: auto falls back to SDPA
    assert not use_flex("auto", gpt, cuda)
    with pytest.raises(ValueError, match="attention"):
        use_flex("fast", gpt, CPU)
    with pytest.raises(ValueError, match="CUDA"):
        use_flex("flex", gpt, CPU)  # no flex-attention backward on CPU
