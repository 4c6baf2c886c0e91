"""
Byte-level BPE tokenizer + chat format.

Training is plain, readable Python (minbpe-style); the learned merges are then handed to
tiktoken, whose Rust core does the fast encoding. A pure-Python `bpe_encode` is kept as the
reference implementation and follows tiktoken's exact rule, so the two always agree.
On top sit the chat special tokens and `render_conversation`, the ONE function that decides
which tokens the model is trained on (the loss mask).

    tok = Tokenizer.train(open("corpus.txt").read(), vocab_size=1024); tok.decode(tok.encode("hi"))
"""
import base64
import hashlib
import json
import os
import tempfile
from collections import Counter, defaultdict

import regex
import tiktoken

# GPT-4 (cl100k) pre-split: letters, 1-3 digit groups, punctuation runs, whitespace. The
# possessive quantifiers (++, ?+) work in both `regex` and tiktoken's fancy-regex.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
# GPT-2's pattern, in tiktoken's equivalent faster form (the original is
# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

SPECIAL_TOKENS = ("<|bos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROLES = ("system", "user", "assistant")
ENDOFTEXT = "<|endoftext|>"  # kept at its usual id when loading the gpt2 ranks
GPT2_FAMILY = ("gpt2", "r50k_base")  # identical ranks; gpt2 ships as vocab.bpe, r50k as .tiktoken
BLOB = "https://openaipublic.blob.core.windows.net"


class ConversationError(ValueError):
    """A conversation that cannot be rendered (bad role, order, content...)."""


class ConversationTooLong(ConversationError):
    """The rendered conversation exceeds max_len. We never truncate silently."""


# -----------------------------------------------------------------------------
# training (pure Python)

def get_stats(ids, counts=None):
    """Count adjacent pairs in a list of ints, e.g. [1,2,3,1,2] -> {(1,2): 2, (2,3): 1, (3,1): 1}."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, new_id):
    """Replace every (left-to-right, non-overlapping) occurrence of pair in ids by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text, vocab_size, pattern=SPLIT_PATTERN, verbose=False):
    """
    Learn byte-level BPE merges on text. Returns mergeable_ranks {token bytes: rank}: the 256
    single bytes (rank == byte value) followed by one entry per merge, ranks 0..n-1 contiguous.

    Speed: text is pre-split into chunks, and a real corpus repeats the same chunks (" the")
    endlessly, so we merge over the UNIQUE chunks weighted by frequency, and after each merge
    only revisit the chunks that contain the merged pair (incremental pair counts).

    Duplicates: could two different merges spell the same bytes, e.g. (a, bc) and (ab, c)?
    tiktoken's table is bytes -> rank, so a second token with the same bytes must never be
    minted. With greedy left-to-right merging we could not produce one (whichever of (a,b) and
    (b,c) is merged first grabs its b in every chunk, and a randomized search over ~200k small
    corpora found no case), but the guard is cheap: if the best pair spells an existing token,
    merge it INTO that token in the data and add no rank. Every merge shortens the data, so the
    loop terminates either way; it stops early, cleanly, when no pair is left (text too small).
    """
    assert vocab_size >= 256, "vocab_size must include the 256 single bytes"
    chunk_counts = Counter(regex.findall(pattern, text))
    chunks = [list(c.encode("utf-8")) for c in chunk_counts]
    freqs = list(chunk_counts.values())
    vocab = [bytes([b]) for b in range(256)]  # token id -> bytes; ids double as ranks
    index = {b: i for i, b in enumerate(vocab)}  # bytes -> token id
    stats, where = {}, defaultdict(set)  # pair -> weighted count, pair -> chunks holding it
    for i, (ids, f) in enumerate(zip(chunks, freqs)):
        for p in zip(ids, ids[1:]):
            stats[p] = stats.get(p, 0) + f
            where[p].add(i)

    while len(vocab) < vocab_size and stats:
        # most frequent pair; ties go to the smallest ids, so the result never depends on dict order
        top = max(stats.values())
        pair = min(p for p, c in stats.items() if c == top)
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        if new_bytes in index:  # same bytes via another merge: reuse that token, add no rank
            new_id = index[new_bytes]
        else:
            new_id = index[new_bytes] = len(vocab)
            vocab.append(new_bytes)
        if verbose:
            print(f"merge {pair} -> {new_id} {new_bytes!r} ({stats[pair]} occurrences)")
        for i in where.pop(pair):
            old = chunks[i]
            new = merge(old, pair, new_id)
            if len(new) == len(old):
                continue  # stale entry: an earlier merge already consumed this pair here
            f = freqs[i]
            for p in zip(old, old[1:]):
                stats[p] -= f
            for p in zip(new, new[1:]):
                stats[p] = stats.get(p, 0) + f
                where[p].add(i)
            for p in zip(old, old[1:]):
                if stats.get(p) == 0:
                    del stats[p]
            chunks[i] = new
    if verbose and len(vocab) < vocab_size:
        print(f"stopped early at {len(vocab)} tokens: no pairs left to merge")
    return {b: i for i, b in enumerate(vocab)}


def bpe_encode(text, mergeable_ranks, pattern=SPLIT_PATTERN):
    """
    Slow reference encoder, written to match tiktoken exactly: pre-split with `regex`; a chunk
    that is itself a token is emitted whole; otherwise start from single bytes and repeatedly
    merge the leftmost adjacent pair whose CONCATENATED bytes have the lowest rank.
    """
    out = []
    for chunk in regex.findall(pattern, text):
        b = chunk.encode("utf-8")
        if b in mergeable_ranks:
            out.append(mergeable_ranks[b])
            continue
        parts = [bytes([x]) for x in b]
        while len(parts) > 1:
            ranks = [mergeable_ranks.get(x + y) for x, y in zip(parts, parts[1:])]
            candidates = [(r, i) for i, r in enumerate(ranks) if r is not None]
            if not candidates:
                break
            _, i = min(candidates)  # lowest rank, then leftmost
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out.extend(mergeable_ranks[p] for p in parts)
    return out


# -----------------------------------------------------------------------------
# the tokenizer (tiktoken does the work)

def _read_ranks(path):
    """
    Read mergeable ranks from a .tiktoken file ("<base64 bytes> <rank>" lines) or from GPT-2's
    original vocab.bpe (starts with "#version"; tiktoken builds "gpt2" from it, encoder.json is
    only a cross-check). GPT-2 wrote bytes as printable characters: printable bytes stand for
    themselves, the others for chr(256 + n), and that order is also the single-byte ranks.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"#version"):
        return {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in data.splitlines() if ln)}
    order = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    rest = [b for b in range(256) if b not in order]
    char_to_byte = {chr(b): b for b in order} | {chr(256 + n): b for n, b in enumerate(rest)}
    ranks = {bytes([b]): i for i, b in enumerate(order + rest)}
    for line in data.decode("utf-8").splitlines()[1:]:
        if line.strip():
            left, right = line.split()
            ranks[bytes(char_to_byte[c] for c in left + right)] = len(ranks)
    return ranks


class Tokenizer:
    """Wraps a tiktoken.Encoding whose special tokens include SPECIAL_TOKENS."""

    def __init__(self, enc, pattern, mergeable_ranks, name):
        self.enc, self.pattern, self.mergeable_ranks, self.name = enc, pattern, mergeable_ranks, name
        self.special_tokens = {s: enc.encode_single_token(s) for s in enc.special_tokens_set}
        missing = set(SPECIAL_TOKENS) - set(self.special_tokens)
        if missing:
            raise ValueError(f"encoding {enc.name!r} lacks special tokens {sorted(missing)}")
        # pickling works as is: tiktoken.Encoding pickles by value and pickle's memo stores
        # the ranks dict (shared by self and enc) only once

    @classmethod
    def _build(cls, name, pattern, ranks, special_tokens):
        enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens)
        return cls(enc, pattern, ranks, name)

    @classmethod
    def train(cls, text, vocab_size=1024, pattern=SPLIT_PATTERN):
        """Train on text. vocab_size counts the special tokens, which get the last ids (the vocab
        comes out smaller if the text runs out of pairs to merge)."""
        assert vocab_size >= 256 + len(SPECIAL_TOKENS)
        ranks = train_bpe(text, vocab_size - len(SPECIAL_TOKENS), pattern)
        n = len(ranks)
        return cls._build(f"nanopost{vocab_size}", pattern, ranks, {s: n + i for i, s in enumerate(SPECIAL_TOKENS)})

    @classmethod
    def from_tiktoken_file(cls, path, name="gpt2", pattern=GPT2_SPLIT_PATTERN):
        """Load standard ranks (a .tiktoken file, or GPT-2's vocab.bpe) and append our chat specials.
        For gpt2, <|endoftext|> keeps its usual id n_ranks (50256) and ours follow it."""
        ranks = _read_ranks(path)
        n = max(ranks.values()) + 1
        specials = ([ENDOFTEXT] if name in GPT2_FAMILY else []) + list(SPECIAL_TOKENS)
        return cls._build(name, pattern, ranks, {s: n + i for i, s in enumerate(specials)})

    @classmethod
    def standard(cls, name="gpt2"):
        """
        Load gpt2 (alias r50k_base: same ranks) from LOCAL files only, never the network. Searched:
        $NANOPOST_TIKTOKEN_DIR/{gpt2,r50k_base}.tiktoken or vocab.bpe, then tiktoken's download
        cache, whose files are named by the sha1 of their blob URL.
        """
        if name not in GPT2_FAMILY:
            raise ValueError(f"unknown standard encoding {name!r}, expected one of {GPT2_FAMILY}")
        user_dir = os.environ.get("NANOPOST_TIKTOKEN_DIR")
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR",
                               os.path.join(tempfile.gettempdir(), "data-gym-cache")))
        paths = [os.path.join(user_dir, f) for f in ("gpt2.tiktoken", "r50k_base.tiktoken", "vocab.bpe")] if user_dir else []
        if cache:  # "" means tiktoken's cache is disabled
            urls = [f"{BLOB}/encodings/r50k_base.tiktoken", f"{BLOB}/gpt-2/encodings/main/vocab.bpe"]
            paths += [os.path.join(cache, hashlib.sha1(u.encode()).hexdigest()) for u in urls]
        for path in paths:
            if os.path.isfile(path):
                return cls.from_tiktoken_file(path, name, GPT2_SPLIT_PATTERN)
        searched = "\n  ".join(paths)
        raise FileNotFoundError(
            f"no local files for the {name!r} encoding (nanopost never downloads). Searched:\n  {searched}\n"
            "Fix: put gpt2.tiktoken (or r50k_base.tiktoken, or GPT-2's vocab.bpe) in a directory and set "
            f"NANOPOST_TIKTOKEN_DIR to it (currently {user_dir!r}).")

    # --- ids of the special tokens
    vocab_size = property(lambda self: self.enc.n_vocab)
    bos_id = property(lambda self: self.special_tokens["<|bos|>"])
    pad_id = property(lambda self: self.special_tokens["<|pad|>"])
    system_id = property(lambda self: self.special_tokens["<|system|>"])
    user_id = property(lambda self: self.special_tokens["<|user|>"])
    assistant_id = property(lambda self: self.special_tokens["<|assistant|>"])
    end_id = property(lambda self: self.special_tokens["<|end|>"])

    def encode(self, text):
        """Encode ORDINARY text: "<|end|>" in the text becomes plain bytes, never the special
        token, so content (e.g. a user's message) can never inject a turn boundary."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        """Specials decode to their text; invalid utf-8 (a cut multi-byte char) becomes U+FFFD."""
        return self.enc.decode(ids.tolist() if hasattr(ids, "tolist") else list(ids), errors="replace")

    def save(self, directory):
        """Write directory/tokenizer.json (ranks as base64, in rank order)."""
        os.makedirs(directory, exist_ok=True)
        by_rank = sorted(self.mergeable_ranks, key=self.mergeable_ranks.get)
        assert [self.mergeable_ranks[b] for b in by_rank] == list(range(len(by_rank))), "ranks must be 0..n-1"
        ranks = [base64.b64encode(b).decode("ascii") for b in by_rank]
        state = {"name": self.name, "pattern": self.pattern, "ranks": ranks, "special_tokens": self.special_tokens}
        with open(os.path.join(directory, "tokenizer.json"), "w") as f:
            json.dump(state, f)

    @classmethod
    def load(cls, directory):
        with open(os.path.join(directory, "tokenizer.json")) as f:
            state = json.load(f)
        ranks = {base64.b64decode(b): i for i, b in enumerate(state["ranks"])}
        return cls._build(state["name"], state["pattern"], ranks, state["special_tokens"])


# -----------------------------------------------------------------------------
# chat format

def _render(tok, messages, last_role, max_len):
    """Validate and lay out messages; returns (ids, loss_mask). A prompt (last_role "user") also
    gets the trailing <|assistant|>. The length check comes last: we never truncate silently."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConversationError("messages must be a non-empty list of {'role', 'content'} dicts")
    role_ids = {"system": tok.system_id, "user": tok.user_id, "assistant": tok.assistant_id}
    first = int(isinstance(messages[0], dict) and messages[0].get("role") == "system")
    ids, mask = [tok.bos_id], [0]
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConversationError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        role, content = m["role"], m["content"]
        if not isinstance(content, str):
            raise ConversationError(f"message {i}: content must be a str, got {type(content).__name__}")
        if role not in ROLES:
            raise ConversationError(f"message {i}: unknown role {role!r}, expected one of {ROLES}")
        expected = "system" if i < first else ("user", "assistant")[(i - first) % 2]
        if role != expected:
            raise ConversationError(f"message {i}: " + ("a system message may only come first" if role == "system"
                                    else f"expected {expected!r}, got {role!r} (user/assistant alternate, user first)"))
        if role == "assistant" and not content.strip():
            raise ConversationError(f"message {i}: empty assistant content")
        train = int(role == "assistant")  # the model learns to write answers, and to stop
        tokens = tok.encode(content)
        ids += [role_ids[role]] + tokens + [tok.end_id]
        mask += [0] + [train] * len(tokens) + [train]
    if messages[-1]["role"] != last_role:
        raise ConversationError(f"conversation must end with a {last_role} message, not {messages[-1]['role']}")
    if last_role == "user":
        ids, mask = ids + [tok.assistant_id], mask + [0]
    if max_len is not None and len(ids) > max_len:
        raise ConversationTooLong(f"conversation is {len(ids)} tokens, longer than max_len={max_len}")
    return ids, mask


def render_conversation(tok, messages, max_len=None):
    """
    THE single place that decides which tokens are trained on. Layout:
        <|bos|> [<|system|> sys <|end|>] <|user|> u <|end|> <|assistant|> a <|end|> <|user|> ...
    loss_mask is 1 exactly on assistant content and the <|end|> closing an assistant turn (so the
    model learns to stop); 0 on bos, role tokens, system/user content and their <|end|>.
    Raises ConversationError on malformed input, ConversationTooLong if longer than max_len.
    """
    return _render(tok, messages, "assistant", max_len)


def render_prompt(tok, messages, max_len=None):
    """For generation: same layout for a conversation ending with a user turn, then <|assistant|>
    so the model writes the answer next. Same errors as render_conversation."""
    return _render(tok, messages, "user", max_len)[0]
