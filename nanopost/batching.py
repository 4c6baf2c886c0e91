"""
Batching (§4): tensors are rectangular, texts are not. Three ways to build a batch from
examples (ids, loss_mask), all producing the same dict, so the training loop does not care:

  pad    - rows in data order, right-padded to the longest in the batch;
  bucket - rows grouped by similar length first (less padding), batches shuffled;
  pack   - several examples concatenated into full rows of `row_len` slots. Each example stays
           isolated: positions restart at 0 and attention is block-diagonal causal
           (doc_ids -> model.document_mask), so no token sees another example and every
           example's loss equals its loss alone.

A batch dict holds (B, T) tensors:
  idx, targets     - inputs ids[:-1] and next-token targets ids[1:] of each example
  loss_mask        - 1 where the target is trained on (the chat mask shifted by one)
  pos              - position ids
  doc_ids          - (pack only) 1, 2, ... per example in the row, 0 on padding; None otherwise
  example_index    - which example each slot belongs to, -1 on padding
and the counts n_real (slots holding a real token) and n_slots (B * T).
Right padding needs no attention mask: with causal attention a real token never looks right.
"""
import random

import torch


def shift(ids, mask):
    """An example (ids, loss_mask) -> (inputs, targets, target_mask), each len(ids) - 1."""
    return ids[:-1], ids[1:], mask[1:]


def _empty(B, T, pad_id):
    return dict(idx=torch.full((B, T), pad_id, dtype=torch.long),
                targets=torch.full((B, T), pad_id, dtype=torch.long),
                loss_mask=torch.zeros(B, T),
                pos=torch.zeros(B, T, dtype=torch.long),
                example_index=torch.full((B, T), -1, dtype=torch.long))


def _put(batch, b, start, example, index):
    inputs, targets, tmask = shift(*example)
    n = len(inputs)
    batch["idx"][b, start:start + n] = torch.tensor(inputs)
    batch["targets"][b, start:start + n] = torch.tensor(targets)
    batch["loss_mask"][b, start:start + n] = torch.tensor(tmask, dtype=torch.float)
    batch["pos"][b, start:start + n] = torch.arange(n)
    batch["example_index"][b, start:start + n] = index
    return n


def pad_batch(examples, indices, pad_id, row_len=None):
    """One row per example, right-padded to the longest (or to row_len)."""
    T = row_len or max(len(examples[i][0]) - 1 for i in indices)
    batch = _empty(len(indices), T, pad_id)
    n_real = sum(_put(batch, b, 0, examples[i], i) for b, i in enumerate(indices))
    return {**batch, "doc_ids": None, "n_real": n_real, "n_slots": len(indices) * T}


def pack_rows(lengths, row_len):
    """First-fit decreasing bin packing: example lengths -> rows (lists of example indices) whose
    lengths sum to at most row_len. Ties keep the input order, so shuffling the input varies rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows, space, open_rows = [], [], []  # open_rows: rows that can still take the shortest example
    shortest = min(lengths) if lengths else 0
    for i in order:
        if lengths[i] > row_len:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than a row of {row_len}")
        for r in open_rows:
            if space[r] >= lengths[i]:
                break
        else:
            r = len(rows)
            rows.append([])
            space.append(row_len)
            open_rows.append(r)
        rows[r].append(i)
        space[r] -= lengths[i]
        if space[r] < shortest:
            open_rows.remove(r)
    return rows


def pack_batch(examples, rows, pad_id, row_len):
    """Rows of several examples each; positions restart and doc_ids count documents per row."""
    batch = _empty(len(rows), row_len, pad_id)
    doc_ids = torch.zeros(len(rows), row_len, dtype=torch.long)
    n_real = 0
    for b, row in enumerate(rows):
        start = 0
        for d, i in enumerate(row):
            n = _put(batch, b, start, examples[i], i)
            doc_ids[b, start:start + n] = d + 1
            start += n
        n_real += start
    return {**batch, "doc_ids": doc_ids, "n_real": n_real, "n_slots": len(rows) * row_len}


def make_batches(examples, mode, batch_size, row_len, pad_id, seed=0):
    """One epoch of batches. batch_size = rows per batch in every mode (for pack a row holds
    several examples), so the modes spend the same compute per row and differ in padding."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    lengths = [len(examples[i][0]) - 1 for i in order]
    if mode == "pad":
        groups = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
        return [pad_batch(examples, g, pad_id) for g in groups]
    if mode == "bucket":
        # sort within windows of 64 batches, then shuffle the batches: similar lengths together,
        # still random across the epoch
        window = 64 * batch_size
        groups = []
        for k in range(0, len(order), window):
            chunk = sorted(order[k:k + window], key=lambda i: len(examples[i][0]))
            groups += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(groups)
        return [pad_batch(examples, g, pad_id) for g in groups]
    if mode == "pack":
        rows = [[order[j] for j in row] for row in pack_rows(lengths, row_len)]
        rng.shuffle(rows)
        return [pack_batch(examples, rows[k:k + batch_size], pad_id, row_len)
                for k in range(0, len(rows), batch_size)]
    raise ValueError(f"unknown batching mode {mode!r}; use pad, bucket or pack")
