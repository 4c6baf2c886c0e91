"""
Exact and near duplicates, and n-gram overlap with evaluation prompts (§3: filtering).

Text is compared in a normal form: lowercase tokens, each a run of letters/digits or one of the
maths characters + - * / = < > % ( ) (so "3 + 4" and "3+4" agree, "13" is not "3", "(x + 2)" is
not "(x - 2)"); other punctuation is dropped. A text's shingles are its word n-grams (n = 3 by
default; a text shorter than n is one shingle).

  duplicate          the same text as an earlier kept record, spacing aside
  near duplicate     the same normal form (case, punctuation), or Jaccard similarity of the
                     shingle sets >= threshold (0.7 by default) with an earlier kept record:
                     J(A, B) = |A ∩ B| / |A ∪ B|
  contamination      an evaluation prompt E is (almost) contained in a user turn U:
                     containment(E, U) = |S(E) ∩ S(U)| / |S(E)| >= threshold (0.95 by default),
                     and E makes up a fair part of U: containment(U, E) >= min_cover (0.5), so
                     that the short eval prompt "Compute 7 + 2." does not match the different
                     training question "Compute 7 + 2 * 3 step by step."

Why these thresholds (measured on the built-in world: one record per training item, 1,628 records):
distinct items share templates ("Solve: (x + 8)(x - 1) = 0. Give the roots ...") and differ in a
number or a sign; the most similar two score J = 0.644. The injected near copies (defects.py: a
word added, punctuation or case changed, another system prompt) score J >= 0.75. A training
prompt contains at most 0.889 of any held-out prompt's shingles; a planted one contains 1.0.

Finding pairs without comparing all of them: prefix filtering (Chaudhuri et al. 2006; Bayardo
et al. 2007). Order every shingle by its document frequency, rarest first. If J(A, B) >= t then
|A ∩ B| >= t * max(|A|, |B|), so the first |A| - ceil(t |A|) + 1 shingles of A and the first
|B| - ceil(t |B|) + 1 of B share at least one shingle: only those prefixes are indexed, and only
records sharing a prefix shingle are compared exactly. The same bound with |S(E)| alone serves
containment.

    python -m nanopost.quality sft.jsonl --out runs/quality     # uses this module
"""
import math
import re
from collections import Counter, defaultdict

_TOKEN = re.compile(r"[^\W_]+|[-+*/=<>%()]", re.UNICODE)


def tokens(text):
    """'What is 3+4?' -> ['what', 'is', '3', '+', '4']: letters/digits runs and the operators
    + - * / = < > % ( ) (which change a maths text's meaning); other punctuation is dropped."""
    return _TOKEN.findall(text.lower())


def same_text(a, b):
    """Exactly the same text, spacing aside."""
    return " ".join(a.split()) == " ".join(b.split())


def normal_form(text):
    return " ".join(tokens(text))


def shingles(text, n=3):
    """The set of word n-grams of text (one shingle for a text shorter than n)."""
    toks = tokens(text)
    if len(toks) < n:
        return {tuple(toks)} if toks else set()
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a, b):
    """|A ∩ B| / |A ∪ B| of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def containment(inner, outer):
    """|inner ∩ outer| / |inner|: the share of inner's shingles found in outer."""
    return len(inner & outer) / len(inner) if inner else 0.0


def _prefix(shingle_set, rank, t):
    """The rarest |S| - ceil(t |S|) + 1 shingles (ties broken by the shingle itself)."""
    ordered = sorted(shingle_set, key=lambda g: (rank.get(g, 0), g))
    return ordered[:len(ordered) - math.ceil(t * len(ordered) - 1e-9) + 1]


def near_duplicates(texts, threshold=0.7, n=3):
    """For each text in order: None, or (j, J) for the earliest earlier *kept* text j with
    Jaccard J >= threshold (a text flagged as a duplicate is not itself a source, so a chain of
    small edits is judged against what is kept). Exact matches of the normal form give J = 1.0."""
    sets = [shingles(t, n) for t in texts]
    frequency = Counter(g for s in sets for g in s)
    index = defaultdict(list)  # prefix shingle -> kept text ids
    exact = {}
    out = []
    for i, (text, s) in enumerate(zip(texts, sets)):
        form = normal_form(text)
        if form in exact:
            out.append((exact[form], 1.0))
            continue
        prefix = _prefix(s, frequency, threshold)
        candidates = sorted({j for g in prefix for j in index[g]})
        match = next(((j, jaccard(s, sets[j])) for j in candidates if jaccard(s, sets[j]) >= threshold), None)
        out.append(match)
        if match is None:
            exact[form] = i
            for g in prefix:
                index[g].append(i)
    return out


class ContaminationIndex:
    """Evaluation prompts, indexed for containment queries (see the module docstring)."""

    def __init__(self, eval_prompts, threshold=0.95, n=3, min_cover=0.5):
        self.prompts = list(eval_prompts)
        self.threshold, self.n, self.min_cover = threshold, n, min_cover
        self.sets = [shingles(p, n) for p in self.prompts]
        frequency = Counter(g for s in self.sets for g in s)
        self.index = defaultdict(list)
        for i, s in enumerate(self.sets):
            if s:
                for g in _prefix(s, frequency, threshold):
                    self.index[g].append(i)

    def match(self, text):
        """(eval prompt, containment) of the most contained evaluation prompt at or above the
        threshold, or None."""
        s = shingles(text, self.n)
        candidates = {i for g in s for i in self.index.get(g, ())}
        best = max(((containment(self.sets[i], s), i) for i in candidates
                    if containment(s, self.sets[i]) >= self.min_cover), default=(0.0, -1))
        return (self.prompts[best[1]], best[0]) if best[0] >= self.threshold else None
