"""Tests for nanopost.tokenizer. Run: python -m pytest tests/test_tokenizer.py -q"""
import base64
import hashlib
import os
import pickle
import random

import pytest

from nanopost.tokenizer import (
    GPT2_SPLIT_PATTERN, SPECIAL_TOKENS, SPLIT_PATTERN, ConversationError, ConversationTooLong,
    Tokenizer, bpe_encode, get_stats, merge, render_conversation, render_prompt, train_bpe,
)

WORDS = ("the of and to in is that for it as was with be by on not this are or from at which "
         "but have an they you were her there would their we him been has when who will more no "
         "if out so said what up its about into than them can only other new some could time "
         "token model train loss batch gradient learning rate attention layer").split()
CODE = ["def f(x):\n    return x + 1\n", "for i in range(10):\n\tprint(i, i ** 2)\n",
        "if (a == b) { c++; } else { d--; }\n", "import numpy as np  # comment\n",
        "    x = [1, 2, 3]\n\n\n", "class Foo(Bar):\n    pass\n"]


def make_text(n_chars, seed=0):
    """English-ish sentences + code + digits + a bit of non-ASCII."""
    rng, out, size = random.Random(seed), [], 0
    while size < n_chars:
        r = rng.random()
        if r < 0.65:
            s = " ".join(rng.choices(WORDS, k=rng.randint(3, 14))).capitalize() + rng.choice(".,!?;") + " "
        elif r < 0.85:
            s = rng.choice(CODE)
        elif r < 0.95:
            s = f"{rng.randint(0, 10 ** rng.randint(1, 9))} + {rng.random():.4f} = {rng.randint(-99, 99)}\n"
        else:
            s = "Héllo wörld, naïve café 日本語のテキスト 😀👍 ¿qué? Ωμέγα\n"
        out.append(s)
        size += len(s)
    return "".join(out)


def random_unicode(rng, n):
    """Adversarial-ish text: mixed scripts, emoji, whitespace runs, digits, contractions."""
    pools = [
        lambda: chr(rng.randint(32, 126)),
        lambda: chr(rng.randint(0xA0, 0x24F)),
        lambda: chr(rng.randint(0x4E00, 0x9FFF)),  # CJK
        lambda: chr(rng.randint(0x1F300, 0x1FAFF)),  # emoji
        lambda: rng.choice([" ", "  ", "\n", "\t", "\r\n", " \n ", "\u00a0", "\u3000", "   \n\n"]),
        lambda: str(rng.randint(0, 10 ** 6)),
        lambda: rng.choice(["'s", "'LL", " don't", " the", "def ", "=="]),
        lambda: rng.choice(WORDS),
        # any non-surrogate code point (surrogates cannot be utf-8 encoded)
        lambda: chr(rng.choice([rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])),
    ]
    return "".join(rng.choice(pools)() for _ in range(n))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(make_text(60_000), vocab_size=512)


# -----------------------------------------------------------------------------
# BPE primitives and training

def test_get_stats_and_merge():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_stats([1, 2], {(1, 2): 5}) == {(1, 2): 6}  # accumulates into counts
    assert get_stats([7]) == {}
    assert merge([1, 2, 3, 1, 2], (1, 2), 99) == [99, 3, 99]
    assert merge([5, 5, 5, 5, 5], (5, 5), 9) == [9, 9, 5]  # left to right, no overlaps
    assert merge([1, 2], (2, 1), 9) == [1, 2]
    assert merge([], (1, 2), 9) == []


def check_ranks(ranks):
    """The table tiktoken needs: unique bytes, contiguous ranks, singles first, merges decomposable."""
    assert sorted(ranks.values()) == list(range(len(ranks)))  # contiguous (dict => bytes unique)
    assert all(ranks[bytes([b])] == b for b in range(256))
    for token, rank in ranks.items():
        if len(token) > 1:
            assert any(token[:i] in ranks and token[i:] in ranks and
                       max(ranks[token[:i]], ranks[token[i:]]) < rank for i in range(1, len(token))), token


def test_trained_ranks_are_consistent(tok):
    assert tok.vocab_size == 512
    assert len(tok.mergeable_ranks) == 512 - len(SPECIAL_TOKENS)
    check_ranks(tok.mergeable_ranks)
    assert [tok.bos_id, tok.pad_id, tok.system_id, tok.user_id, tok.assistant_id, tok.end_id] == list(range(506, 512))


def naive_train(text, vocab_size):
    """minbpe-style reference: recount all pairs from scratch after every merge."""
    import regex
    chunks = [list(c.encode("utf-8")) for c in regex.findall(SPLIT_PATTERN, text)]
    vocab = [bytes([b]) for b in range(256)]
    while len(vocab) < vocab_size:
        stats = {}
        for c in chunks:
            get_stats(c, stats)
        if not stats:
            break
        pair = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))
        assert vocab[pair[0]] + vocab[pair[1]] not in vocab
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        chunks = [merge(c, pair, len(vocab) - 1) for c in chunks]
    return {b: i for i, b in enumerate(vocab)}


def test_incremental_training_matches_naive_recount():
    text = make_text(4000, seed=1)
    assert train_bpe(text, 330) == naive_train(text, 330)


def test_same_bytes_via_two_merges():
    # "bc" is most frequent, so (b,c) merges first; "abc" then makes (a,bc) frequent while
    # "ab"/"abcc"/"abab" words make (a,b) and (ab,c) frequent: the bytes b"abc" are reachable
    # via two different pairs. The table must still hold b"abc" once and stay consistent.
    text = "\n".join(["bc"] * 50 + ["abc"] * 40 + ["ab"] * 30 + ["abcc"] * 10 + ["ababc"] * 20 + ["cabc"] * 5)
    ranks = train_bpe(text, 400)  # far more than the data allows: must stop early, cleanly
    check_ranks(ranks)
    assert 256 < len(ranks) < 400
    assert b"abc" in ranks and b"ab" in ranks and b"bc" in ranks
    t = Tokenizer.train(text, vocab_size=len(ranks) + len(SPECIAL_TOKENS))
    for s in [text, "abcabc bcab cabcc", "xyz"]:
        assert t.encode(s) == bpe_encode(s, t.mergeable_ranks)
        assert t.decode(t.encode(s)) == s


def test_training_stops_early_on_tiny_text():
    assert train_bpe("", 300) == {bytes([b]): b for b in range(256)}
    ranks = train_bpe("aaaa", 300)
    check_ranks(ranks)
    assert set(ranks) - {bytes([b]) for b in range(256)} == {b"aa", b"aaaa"}


def test_python_and_tiktoken_encoders_agree(tok):
    rng = random.Random(0)
    texts = [make_text(3000, seed=7), "", " ", "\n\n\n", "   leading spaces", "tail   ", "<|end|>"]
    texts += [random_unicode(rng, rng.randint(1, 200)) for _ in range(150)]
    for text in texts:
        ids = tok.encode(text)
        assert ids == bpe_encode(text, tok.mergeable_ranks), repr(text)
        assert tok.decode(ids) == text
    # same with GPT-2's split pattern
    tok2 = Tokenizer.train(make_text(20_000, seed=3), vocab_size=400, pattern=GPT2_SPLIT_PATTERN)
    for text in texts[:60]:
        ids = tok2.encode(text)
        assert ids == bpe_encode(text, tok2.mergeable_ranks, GPT2_SPLIT_PATTERN), repr(text)
        assert tok2.decode(ids) == text


def test_compresses(tok):
    text = make_text(5000, seed=5)
    assert len(tok.encode(text)) < 0.5 * len(text.encode("utf-8"))


# -----------------------------------------------------------------------------
# Tokenizer: specials, save/load, standard files

def test_special_text_is_not_special(tok):
    ids = tok.encode("hi <|end|> <|assistant|>")
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == "hi <|end|> <|assistant|>"
    assert tok.decode([tok.bos_id, tok.end_id]) == "<|bos|><|end|>"
    assert tok.decode([0xC3]) == "\ufffd"  # half of "é" (C3 A9): invalid utf-8 -> replacement char
    assert tok.decode([0xC3, 0xA9]) == "é"
    import numpy as np  # anything with .tolist() works (numpy arrays, torch tensors)
    assert tok.decode(np.array(tok.encode("array ids"))) == "array ids"


def test_save_load_and_pickle(tok, tmp_path):
    tok.save(tmp_path)
    tok2 = Tokenizer.load(tmp_path)
    text = make_text(2000, seed=9) + random_unicode(random.Random(1), 300)
    assert tok2.encode(text) == tok.encode(text)
    assert tok2.special_tokens == tok.special_tokens and tok2.vocab_size == tok.vocab_size
    tok3 = pickle.loads(pickle.dumps(tok))
    assert tok3.encode(text) == tok.encode(text) and tok3.end_id == tok.end_id


def write_tiny_tiktoken(path):
    merges = [b"he", b"ll", b"hell", b"o ", b"wo"]
    ranks = {bytes([b]): b for b in range(256)} | {m: 256 + i for i, m in enumerate(merges)}
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return ranks


def test_from_tiktoken_file(tmp_path):
    ranks = write_tiny_tiktoken(tmp_path / "tiny.tiktoken")
    t = Tokenizer.from_tiktoken_file(tmp_path / "tiny.tiktoken")
    assert t.mergeable_ranks == ranks
    assert t.encode("hello") == [ranks[b"hell"], ord("o")]
    assert t.enc.encode_single_token("<|endoftext|>") == 261  # gpt2 keeps <|endoftext|> = n_ranks
    assert t.bos_id == 262 and t.end_id == 267 and t.vocab_size == 268
    text = "hello world, hello 世界 😀"
    assert t.decode(t.encode(text)) == text
    assert t.encode(text) == bpe_encode(text, ranks, GPT2_SPLIT_PATTERN)
    t2 = Tokenizer.from_tiktoken_file(tmp_path / "tiny.tiktoken", name="mine", pattern=SPLIT_PATTERN)
    assert t2.bos_id == 261  # no <|endoftext|> for non-gpt2 files


def test_standard_without_files_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOPOST_TIKTOKEN_DIR", str(tmp_path))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as e:
        Tokenizer.standard("gpt2")
    msg = str(e.value)
    assert "NANOPOST_TIKTOKEN_DIR" in msg and str(tmp_path / "gpt2.tiktoken") in msg
    assert "r50k_base.tiktoken" in msg


def test_standard_finds_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NANOPOST_TIKTOKEN_DIR", str(tmp_path))
    write_tiny_tiktoken(tmp_path / "r50k_base.tiktoken")  # accepted for gpt2: same ranks
    assert Tokenizer.standard("gpt2").encode("hello") == [258, ord("o")]
    # tiktoken's cache: file named sha1(blob url)
    monkeypatch.delenv("NANOPOST_TIKTOKEN_DIR")
    os.makedirs(tmp_path / "cache")
    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    write_tiny_tiktoken(tmp_path / "cache" / hashlib.sha1(url.encode()).hexdigest())
    assert Tokenizer.standard("gpt2").encode("hello") == [258, ord("o")]


def test_standard_gpt2_vocab_bpe(tmp_path, monkeypatch):
    # GPT-2's original format: merges written with its printable-byte alphabet ("Ġ" = space)
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nh e\nl l\nhe ll\nĠ w\n", encoding="utf-8")
    monkeypatch.setenv("NANOPOST_TIKTOKEN_DIR", str(tmp_path))
    t = Tokenizer.standard("gpt2")
    assert t.mergeable_ranks[b"!"] == 0  # as in the real gpt2: id 0 is "!"
    assert t.mergeable_ranks[b"hell"] == 258 and t.mergeable_ranks[b" w"] == 259
    assert t.encode("hello world") == [258, t.mergeable_ranks[b"o"], 259, *t.encode("orld")]
    assert t.decode(t.encode("hello world")) == "hello world"


# -----------------------------------------------------------------------------
# chat rendering

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And <|end|> 3+3?"},
    {"role": "assistant", "content": "6, obviously."},
]


def test_conversation_mask_token_by_token(tok):
    ids, mask = render_conversation(tok, CONV)
    e = tok.encode
    expected = [
        ([tok.bos_id], 0),
        ([tok.system_id], 0), (e("Be brief."), 0), ([tok.end_id], 0),
        ([tok.user_id], 0), (e("What is 2+2?"), 0), ([tok.end_id], 0),
        ([tok.assistant_id], 0), (e("4."), 1), ([tok.end_id], 1),
        ([tok.user_id], 0), (e("And <|end|> 3+3?"), 0), ([tok.end_id], 0),
        ([tok.assistant_id], 0), (e("6, obviously."), 1), ([tok.end_id], 1),
    ]
    assert ids == [i for piece, _ in expected for i in piece]
    assert mask == [m for piece, m in expected for _ in piece]
    assert ids.count(tok.end_id) == 5  # the literal "<|end|>" in user text did not add one
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "4.<|end|>6, obviously.<|end|>"


def test_render_prompt(tok):
    ids = render_prompt(tok, CONV[:4])
    assert ids[-1] == tok.assistant_id
    assert ids[:-1] == render_conversation(tok, CONV)[0][:len(ids) - 1]
    ids = render_prompt(tok, [{"role": "user", "content": "<|assistant|><|end|><|bos|>"}])
    assert ids[:2] == [tok.bos_id, tok.user_id] and ids[-2:] == [tok.end_id, tok.assistant_id]
    assert not set(ids[2:-2]) & set(tok.special_tokens.values())


@pytest.mark.parametrize("messages", [
    [],
    "hello",
    [{"role": "user", "content": "hi"}, "oops"],
    [{"role": "user"}, {"role": "assistant", "content": "x"}],
    [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}],
    [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}],
    [{"role": "user", "content": "hi"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}],
    [{"role": "assistant", "content": "x"}],
    [{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "x"}],
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "q"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \n\t"}],
    [{"role": "system", "content": "s"}],
])
def test_bad_conversations(tok, messages):
    with pytest.raises(ConversationError):
        render_conversation(tok, messages)


def test_bad_prompts(tok):
    for messages in [CONV, [], [{"role": "assistant", "content": "x"}],
                     [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""},
                      {"role": "user", "content": "q"}]]:
        with pytest.raises(ConversationError):
            render_prompt(tok, messages)


def test_too_long(tok):
    n = len(render_conversation(tok, CONV)[0])
    assert len(render_conversation(tok, CONV, max_len=n)[0]) == n  # exactly at the limit is fine
    with pytest.raises(ConversationTooLong, match=f"{n}.*{n - 1}"):
        render_conversation(tok, CONV, max_len=n - 1)
    with pytest.raises(ConversationTooLong):
        render_prompt(tok, CONV[:4], max_len=5)
    assert issubclass(ConversationTooLong, ConversationError) and issubclass(ConversationError, ValueError)
