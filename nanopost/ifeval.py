"""
Instruction following in the style of IFEval (Zhou et al. 2023), §10 ground-truth evaluation: each
prompt carries one or more verifiable instructions ("reply in uppercase", "at most 5 words"), each
a rubric.py item checked by rubric.check_item (rule checks only: no judge).

  instruction-level accuracy  share of all instructions (over all prompts) that are followed
  prompt-level accuracy       share of prompts whose every instruction is followed
  strict                      the response as it is (an empty response follows no instruction)
  loose                       an instruction counts as followed when any of these variants of the
                              response follows it (IFEval's loose transforms, all 8 combinations of):
                              the first line removed, the last line removed, markdown '*' removed
                              (so "Sure, here it is:\\n**PARIS**" passes "uppercase" loosely)

Records are §8 prompts: {"prompt": [messages], "metadata": {"scorer": "rubric", "rubric": [items],
"family": ...}}; nanopost/instruct_world.py (when present) makes them, and format_records() turns the
built-in world's format tasks (uppercase, repeat a word n times) into the same shape.

    from nanopost.ifeval import ifeval_scores
    scores = ifeval_scores(records, responses)   # strict/loose x prompt/instruction, Wilson intervals
"""
import itertools

from nanopost.evals import rate_with_interval
from nanopost.rubric import check_item, load_rubric


def loose_variants(response):
    """The response under every combination of IFEval's three loose transforms (8 strings, the
    response itself first): drop the first line, drop the last line, remove '*'."""
    variants = []
    for drop_first, drop_last, no_stars in itertools.product((False, True), repeat=3):
        lines = response.split("\n")
        if drop_first:
            lines = lines[1:]
        if drop_last:
            lines = lines[:-1]
        text = "\n".join(lines).strip() if (drop_first or drop_last) else response
        variants.append(text.replace("*", "") if no_stars else text)
    return variants


def follows(item, response, loose=False):
    """Is the instruction (a rubric rule item) followed, strictly or loosely?"""
    if item["check"] == "judge":
        raise ValueError(f"IFEval instruction {item['name']!r} is a judge item: instructions must be verifiable")
    candidates = loose_variants(response) if loose else [response]
    # as in IFEval, an empty (variant of the) response follows nothing, not even "at most 5 words"
    return any(r.strip() and check_item(item, r) >= 1.0 for r in candidates)


def ifeval_scores(records, responses):
    """Prompt- and instruction-level accuracy, strict and loose, with Wilson intervals, overall and
    per family, plus each prompt's per-instruction results. A record's rubric is validated by
    rubric.load_rubric (an error names the record, counted from 1)."""
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    per_prompt = []
    for i, (record, response) in enumerate(zip(records, responses), start=1):
        meta = record.get("metadata", {})
        try:
            rubric = load_rubric(meta["rubric"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"IFEval record {i}: {e if isinstance(e, ValueError) else 'no metadata.rubric'}") from None
        per_prompt.append({"family": meta.get("family", record.get("family", "all")),
                           "strict": {it["name"]: follows(it, response) for it in rubric},
                           "loose": {it["name"]: follows(it, response, loose=True) for it in rubric}})
    out = _accuracies(per_prompt)
    out["by_family"] = {f: _accuracies([p for p in per_prompt if p["family"] == f])
                        for f in sorted({p["family"] for p in per_prompt})}
    out["per_prompt"] = per_prompt
    return out


def _accuracies(per_prompt):
    out = {}
    for mode in ("strict", "loose"):
        results = [p[mode] for p in per_prompt]
        instructions = [ok for r in results for ok in r.values()]
        out[f"prompt_{mode}"] = rate_with_interval(sum(all(r.values()) for r in results), len(results))
        out[f"instruction_{mode}"] = rate_with_interval(sum(instructions), len(instructions))
    return out


# ----------------------------------------------------------------------------------------------
# the built-in world's format tasks as IFEval records (used when nanopost/instruct_world.py is absent)

def _format_to_rubric(spec):
    """A world format spec ({"uppercase": True, "max_words": 3, ...}) -> rubric.py items."""
    items = []
    if spec.get("uppercase"):
        items.append({"name": "uppercase", "check": "uppercase"})
    if "min_words" in spec or "max_words" in spec:
        bounds = {k: spec[f"{k}_words"] for k in ("min", "max") if f"{k}_words" in spec}
        items.append({"name": "word_count", "check": "word_count", **bounds})
    return items


def format_records(n=60, seed=0):
    """Held-out format tasks of nanopost.world (reply in uppercase, repeat a word n times, write a
    word in uppercase) as IFEval records; tasks without a checkable instruction are left out."""
    from nanopost.world import fmt, sample_tasks
    records = []
    for task in sample_tasks(4 * n, "eval", seed, {"format": fmt}, unique=True):
        rubric = _format_to_rubric(task.metadata.get("format", {}))
        if rubric and len(records) < n:
            records.append({"prompt": [{"role": "user", "content": task.prompt}],
                            "metadata": {"scorer": "rubric", "rubric": rubric, "family": "format"}})
    return records


def instruction_records(n=60, seed=0):
    """The instruction-following set eval.py uses: instruct_world.instruct_records when that module
    exists (branch rubric), else the world's format tasks (format_records)."""
    try:
        from nanopost.instruct_world import instruct_records
    except ImportError:
        return format_records(n, seed)
    return instruct_records(n, split="eval", seed=seed)
