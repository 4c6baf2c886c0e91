"""Rubric rewards (§6): a response is checked against several explicit, weighted criteria and the
reward is their weighted sum or weighted mean.

A rubric is a JSON list of items. Each item has a unique "name", a "check", an optional positive
"weight" (default 1) and the check's parameters:

    [{"name": "short",  "check": "word_count", "max": 50},
     {"name": "cites",  "check": "regex", "pattern": "\\\\[\\\\d+\\\\]", "weight": 2},
     {"name": "polite", "check": "judge", "criterion": "The reply is polite.", "weight": 0.5}]

    contains     "text"; optional "case_sensitive" (false), "count" (at least that many, 1)
    regex        "pattern" (re.search); optional "flags": ["IGNORECASE", "MULTILINE", "DOTALL"]
    word_count   "min" and/or "max", both inclusive; words are str.split()
    uppercase    every cased letter is upper case, and there is at least one
    lowercase    every cased letter is lower case, and there is at least one
    starts_with  "text"; the response is stripped of surrounding whitespace first
    ends_with    "text"; likewise
    valid_json   the stripped response (a ```json fence unwrapped) parses with json.loads;
                 optional "keys": the parsed top-level object must hold them all
    judge        "criterion": scored by judge(prompt, response, criterion) -> [0, 1], any callable
                 (a rule, a bigger model, an API); NaN counts 0, other values are clamped to [0, 1]

Rule checks score 1 or 0; judge items score in [0, 1]. With item scores s_i and weights w_i:

    aggregate="sum":   r = Σ_i w_i s_i
    aggregate="mean":  r = Σ_i w_i s_i / Σ_i w_i      (in [0, 1])

A response that is not a str scores 0 on every item. Rubric errors (an unknown check, a missing
or misspelt parameter, a bad regex or weight, duplicate names) are the author's bug and raise
ValueError naming the file and the item (counted from 1).

§8 records use it through the `rubric` grader (nanopost/graders.py): metadata {"scorer": "rubric",
"rubric": [items], "rubric_aggregate": "mean" (default) | "sum"}; grade() reports the reward as
"rubric" and each item's result as "rubric/<name>", which train_rl.py logs as
rewards/rubric/<name>/mean (graders.combine never adds them to the reward a second time). The
graders hold no judge: rubrics with judge items are scored from Python, rubric_reward_fn(rubric,
judge=my_judge) for one rubric, or records_reward_fn(judge=my_judge) for §8 records with their own
rubrics, which is the reward_fn that rollout.sample_rollouts takes; there is no command-line flag
for a judge yet.
"""
import copy
import difflib
import json
import math
import re
from pathlib import Path

# ----------------------------------------------------------------------------- checks

_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL}


def _contains(item, response):
    text, needle = response, item["text"]
    if not item.get("case_sensitive", False):
        text, needle = text.lower(), needle.lower()
    return text.count(needle) >= item.get("count", 1)  # non-overlapping occurrences


MAX_REGEX_CHARS, MAX_JSON_CHARS = 4_000, 100_000  # longer responses fail these checks (bounded work per completion)


def _regex(item, response):
    if len(response) > MAX_REGEX_CHARS:  # a pattern that backtracks must not stall the trainer on a long completion
        return False
    flags = 0
    for name in item.get("flags", []):
        flags |= _FLAGS[name]
    return re.search(item["pattern"], response, flags) is not None  # re caches the compiled pattern


def _word_count(item, response):
    n = len(response.split())
    return item.get("min", 0) <= n <= item.get("max", math.inf)


def _valid_json(item, response):
    text = response.strip()
    if len(text) > MAX_JSON_CHARS:
        return False
    if text.startswith("```") and text.endswith("```") and "\n" in text:  # a ```json fence, unwrapped without a regex
        opener, _, body = text[:-3].partition("\n")
        if opener[3:].strip().lower() in ("", "json"):
            text = body.strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; "[[[[..." recurses
        return False
    keys = item.get("keys")
    return keys is None or (isinstance(value, dict) and all(k in value for k in keys))


# check name -> (item, response) -> bool. "judge" is scored in check_item: it needs the judge.
CHECKS = {
    "contains": _contains,
    "regex": _regex,
    "word_count": _word_count,
    "uppercase": lambda item, r: r == r.upper() != r.lower(),  # "123!" has no cased letter: False
    "lowercase": lambda item, r: r == r.lower() != r.upper(),
    "ends_with": lambda item, r: r.strip().endswith(item["text"]),
    "starts_with": lambda item, r: r.strip().startswith(item["text"]),
    "valid_json": _valid_json,
    "judge": None,
}

# ----------------------------------------------------------------------------- validation
# A validator returns an error message, or None when the value is fine.


def _str(v):
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _int_at_least(lo):
    return lambda v: None if type(v) is int and v >= lo else f"must be an integer >= {lo}"


def _pattern(v):
    if isinstance(v, str):
        try:
            re.compile(v)
        except re.error as exc:
            return f"does not compile: {exc}"
    return _str(v)


def _flags(v):
    ok = isinstance(v, list) and all(isinstance(f, str) and f in _FLAGS for f in v)
    return None if ok else f"must be a list of {', '.join(_FLAGS)}"


def _keys(v):
    return None if isinstance(v, list) and all(isinstance(k, str) for k in v) else "must be a list of strings"


# check name -> {parameter: (required, validator)}
PARAMS = {
    "contains": {"text": (True, _str), "case_sensitive": (False, _bool), "count": (False, _int_at_least(1))},
    "regex": {"pattern": (True, _pattern), "flags": (False, _flags)},
    "word_count": {"min": (False, _int_at_least(0)), "max": (False, _int_at_least(0))},
    "uppercase": {},
    "lowercase": {},
    "ends_with": {"text": (True, _str)},
    "starts_with": {"text": (True, _str)},
    "valid_json": {"keys": (False, _keys)},
    "judge": {"criterion": (True, _str)},
}
_COMMON = ("name", "check", "weight")


def _item_error(item) -> str | None:
    """What is wrong with one item (ignoring duplicate names), or None."""
    if not isinstance(item, dict):
        return f"must be an object, got {type(item).__name__}"
    if _str(item.get("name")):
        return "needs a non-empty string 'name'"
    check = item.get("check")
    if check not in PARAMS:
        return f"unknown check {check!r} (use one of {', '.join(PARAMS)})"
    w = item.get("weight", 1)
    if type(w) not in (int, float) or not math.isfinite(w) or w <= 0:
        return f"'weight' must be a positive finite number, got {w!r}"
    params = PARAMS[check]
    for key in item:
        if key not in _COMMON and key not in params:
            allowed = [*_COMMON, *params]
            hint = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {hint[0]!r}? " if hint else ""
            return f"unknown key {key!r} for check {check!r} ({hint}allowed: {', '.join(allowed)})"
    for key, (required, validate) in params.items():
        if key not in item:
            if required:
                return f"check {check!r} needs {key!r}"
        elif error := validate(item[key]):
            return f"{key!r} {error}, got {item[key]!r}"
    if check == "word_count":
        if "min" not in item and "max" not in item:
            return "check 'word_count' needs 'min' and/or 'max'"
        if item.get("min", 0) > item.get("max", math.inf):
            return f"'min' ({item['min']}) is above 'max' ({item['max']})"
    return None


def _where(item, index) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"item {index} ({name!r})" if isinstance(name, str) else f"item {index}"


def load_rubric(path_or_list) -> list[dict]:
    """A rubric file (str or Path to a JSON list) or an already-parsed list -> validated copies of
    its items, "weight" filled in as a float. Errors: ValueError naming the file and the item."""
    if isinstance(path_or_list, (str, Path)):
        where = str(path_or_list)
        try:
            with open(path_or_list, encoding="utf-8") as f:
                items = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        except (OSError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"{where}: cannot read rubric: {exc}") from exc
    else:
        where, items = "<rubric>", path_or_list
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where}: a rubric must be a non-empty JSON list of items")
    rubric, seen = [], set()
    for index, item in enumerate(items, start=1):
        if error := _item_error(item):
            raise ValueError(f"{where}: {_where(item, index)}: {error}")
        if item["name"] in seen:
            raise ValueError(f"{where}: {_where(item, index)}: duplicate name")
        seen.add(item["name"])
        item = copy.deepcopy(item)
        item["weight"] = float(item.get("weight", 1))
        rubric.append(item)
    return rubric

# ----------------------------------------------------------------------------- scoring


def _need_judge(rubric, judge) -> None:
    if judge is None:
        for item in rubric:
            if item["check"] == "judge":
                raise ValueError(f"rubric item {item['name']!r} is a judge item: pass judge=")


def check_aggregate(aggregate) -> None:
    if aggregate not in ("sum", "mean"):
        raise ValueError(f"aggregate must be 'sum' or 'mean', got {aggregate!r}")


def check_item(item, response, prompt="", judge=None) -> float:
    """One item's score in [0, 1]: 1.0/0.0 for rule checks, the clamped judge score for judges."""
    if error := _item_error(item):
        raise ValueError(f"rubric {_where(item, 1)}: {error}")
    _need_judge([item], judge)
    if not isinstance(response, str):
        return 0.0
    if item["check"] != "judge":
        return 1.0 if CHECKS[item["check"]](item, response) else 0.0
    value = judge(prompt, response, item["criterion"])
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"judge returned {value!r} for rubric item {item['name']!r}: want a number") from None
    return 0.0 if math.isnan(value) else min(1.0, max(0.0, value))


def score(rubric, response, prompt="", judge=None, aggregate="sum") -> tuple[float, dict[str, float]]:
    """(reward, {item name: score}) of one response; rubric is a path or a list (see load_rubric).
    reward = Σ w_i s_i ("sum") or Σ w_i s_i / Σ w_i ("mean")."""
    check_aggregate(aggregate)
    rubric = load_rubric(rubric)
    _need_judge(rubric, judge)  # before any judge call, so no work is wasted
    results = {item["name"]: check_item(item, response, prompt, judge) for item in rubric}
    total = sum(item["weight"] * results[item["name"]] for item in rubric)
    if aggregate == "mean":
        total /= sum(item["weight"] for item in rubric)
    return float(total), results


def rubric_reward_fn(rubric, aggregate="sum", judge=None):
    """An RL reward: fn(prompts, completions) -> ([reward], [{item name: score}]), one per
    completion. The rubric is loaded and checked once, here (a missing judge fails now)."""
    check_aggregate(aggregate)
    rubric = load_rubric(rubric)
    _need_judge(rubric, judge)

    def reward_fn(prompts, completions):
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scored = [score(rubric, c, p, judge, aggregate) for p, c in zip(prompts, completions)]
        return [r for r, _ in scored], [results for _, results in scored]

    return reward_fn


def records_reward_fn(judge=None, prompt_of=lambda row: row["prompt"][-1]["content"]):
    """The reward function rollout.sample_rollouts takes, fn(texts, rows) -> [{name: reward}], for
    §8 rows whose metadata holds a "rubric" (and optionally "rubric_aggregate", default "mean"):
    {"rubric": reward, "rubric/<item>": result}, as the `rubric` grader reports it, but with a
    judge for judge items (it sees prompt_of(row), by default the last prompt message)."""

    def reward_fn(texts, rows):
        if len(texts) != len(rows):
            raise ValueError(f"{len(texts)} completions but {len(rows)} records")
        out = []
        for text, row in zip(texts, rows):
            metadata = row["metadata"]
            reward, results = score(metadata["rubric"], text, prompt_of(row), judge,
                                    metadata.get("rubric_aggregate", "mean"))
            out.append({"rubric": reward, **{f"rubric/{name}": r for name, r in results.items()}})
        return out

    return reward_fn
