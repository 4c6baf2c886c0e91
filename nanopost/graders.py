"""Verifiable-reward graders: pure functions (completion, reference) -> float, and a registry.

Any completion string gets a reward, never an exception; a broken reference (a suite with the
wrong hash, an unknown format check) is the data author's bug and raises ValueError instead.

math_grader -- the final answer is the last line starting "Answer:" (or "Final answer:"; any case,
    optional spaces before the colon), else the last non-empty line, which may read "the (final) answer is X".
    Only the last 2,000 characters are read; the answer must fit in 200 and be exactly a comma-
    separated list of numbers: integers, decimals ("0.5", ".5", "3."), fractions of integers
    ("-2/3"), optionally signed and written "x = ..." (one letter, maybe indexed: x1, x_2), with
    surrounding spaces and one trailing period. Nothing else: no words ("3 apples"), no hedging
    ("3 or 4", "3/4?"), no brackets, no exponents ("1e9"), no unicode digits, no thousands
    separators ("1,000" is the list [1, 0]), no numeral over 50 digits, no zero denominator.
    Lists must have the truth's length ("3, 4" never matches "3"); ordered=False sorts both.
    Tolerance, in exact rational arithmetic (Fraction; never float, never eval):
        |answer - truth| <= tol + tol * |truth|      (tol = 1e-6: absolute and relative)
    so "0.6666667" matches 2/3 (off by 3.3e-8) and "0.667" does not (3.3e-4). A whole-number truth
    must be matched exactly ("3", "3.0", "6/2" match 3; "2.9999999" does not): otherwise the
    relative tolerance would accept 1000001 for 1000000.
code_grader -- fraction of a suite's tests (public + hidden) passed by the completion's code, run
    in nanopost.sandbox. Values compare with exact types (True != 1, 1 != 1.0, tuples arrive as
    lists); floats within FLOAT_REL_TOL / FLOAT_ABS_TOL (summation-order noise); NaN matches NaN.
format_grader -- fraction of simple checks that hold ({"uppercase": true, "max_words": 3}).
rubric (rubric_grader) -- a §6 rubric of named, weighted checks, scored by nanopost/rubric.py.
"""
import hashlib
import json
import math
import os
import re
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

from nanopost.rubric import score as rubric_score
from nanopost.sandbox import run_untrusted

# ----------------------------------------------------------------------------- math

MAX_TAIL_CHARS, MAX_ANSWER_CHARS, MAX_DIGITS = 2_000, 200, 50
_ANSWER_LINE = re.compile(r"\s*(?:final\s+)?answer\s*:(.*)", re.IGNORECASE | re.DOTALL)
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)
_NUMBER = re.compile(r"(?:[a-z](?:_?[0-9]{1,3})?\s*=\s*)?"       # optional "x =", "x1 =", "x_2 ="
                     r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"  # integer or decimal
                     r"(?:\s*/\s*([0-9]+))?", re.IGNORECASE | re.ASCII)  # optional "/ denominator"


def final_answer(completion: str) -> str:
    """The answer text of a completion (see the module docstring), or ""."""
    lines = completion[-MAX_TAIL_CHARS:].splitlines()
    for line in reversed(lines):
        if match := _ANSWER_LINE.match(line):
            return match.group(1).strip()
    for line in reversed(lines):
        if line := line.strip():
            match = _ANSWER_IS.match(line)
            return line[match.end():].strip() if match else line
    return ""


def parse_numbers(text: str) -> list[Fraction] | None:
    """"-5, 2/3" -> [Fraction(-5), Fraction(2, 3)]; None unless text is exactly such a list."""
    text = text.strip()
    text = text[:-1] if text.endswith(".") else text
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    numbers = []
    for item in text.split(","):
        match = _NUMBER.fullmatch(item.strip())
        if match is None:
            return None
        number, denominator = match.groups()
        if len(number) > MAX_DIGITS + 2 or len(denominator or "") > MAX_DIGITS:
            return None
        if denominator is not None and ("." in number or int(denominator) == 0):
            return None
        numbers.append(Fraction(number) if denominator is None else Fraction(int(number), int(denominator)))
    return numbers


def _close(answer: Fraction, truth: Fraction, tol: float) -> bool:
    """Whole-number truths exactly, others within tol + tol * |truth| (see module docstring)."""
    return answer == truth if truth.denominator == 1 else abs(answer - truth) <= Fraction(tol) * (1 + abs(truth))


def math_grader(completion: str, ground_truth: str, ordered: bool = True, tol: float = 1e-6) -> float:
    """1.0 if the completion's final answer equals the ground truth (see module docstring)."""
    if not isinstance(completion, str) or not isinstance(ground_truth, str):
        return 0.0
    truth, answer = parse_numbers(ground_truth), parse_numbers(final_answer(completion))
    if truth is None or answer is None or len(answer) != len(truth):
        return 0.0
    if not ordered:
        answer, truth = sorted(answer), sorted(truth)
    return 1.0 if all(_close(a, t, tol) for a, t in zip(answer, truth)) else 0.0

# ----------------------------------------------------------------------------- code

SUITES_DIR = Path(__file__).resolve().parent / "suites"
MAX_CODE_CHARS, FLOAT_REL_TOL, FLOAT_ABS_TOL = 100_000, 1e-9, 1e-12
_SUITE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PY_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_BARE_FENCE = re.compile(r"```[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first ```python block, else the first bare ``` block, else the whole completion."""
    match = _PY_FENCE.search(completion) or _BARE_FENCE.search(completion)
    return match.group(1) if match else completion


def _suite_path(suite_id, suites_dir) -> Path:
    if not isinstance(suite_id, str) or not _SUITE_ID.fullmatch(suite_id) or ".." in suite_id:
        raise ValueError(f"unsafe suite_id {suite_id!r}: use letters, digits, '_', '-', '.'")
    return Path(suites_dir or SUITES_DIR) / f"{suite_id}.json"


def _check_tests(data, where: str) -> None:
    """The suite file's shape: {"entry_point": str, "public": [[args, expected], ...], "hidden": ...}."""
    if not isinstance(data, dict) or not isinstance(data.get("entry_point"), str) \
            or not data["entry_point"].isidentifier():
        raise ValueError(f"{where}: needs an identifier 'entry_point'")
    for part in ("public", "hidden"):
        tests = data.get(part)
        if not isinstance(tests, list) or not all(
                isinstance(t, list) and len(t) == 2 and isinstance(t[0], list) for t in tests):
            raise ValueError(f"{where}: '{part}' must be a list of [args_list, expected] pairs")
    if not data["public"] + data["hidden"]:
        raise ValueError(f"{where}: no tests")


def load_suite(suite: dict, suites_dir=None) -> dict:
    """Read and verify a suite: {"entry_point", "tests": [[args, expected], ...], "timeout_s", "mem_mb"}.
    Raises ValueError for an unsafe id, a missing/unreadable/malformed file or a hash mismatch."""
    if not isinstance(suite, dict):
        raise ValueError(f"suite must be a dict, got {type(suite).__name__}")
    path = _suite_path(suite.get("suite_id"), suites_dir)
    try:
        raw = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if str(suite.get("suite_hash", "")).lower() != digest:
            raise ValueError(f"hash is {digest}, metadata says {suite.get('suite_hash')!r}")
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"suite {path}: {exc}") from exc
    _check_tests(data, f"suite {path}")
    if suite.get("entry_point", data["entry_point"]) != data["entry_point"]:
        raise ValueError(f"suite {path}: entry_point differs from the metadata's")
    runtime = suite.get("runtime") or {}
    try:
        timeout_s, mem_mb = float(runtime.get("timeout_s", 4.0)), int(runtime.get("mem_mb", 256))
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"suite {path}: bad runtime {runtime!r}") from exc
    return {"entry_point": data["entry_point"], "tests": data["public"] + data["hidden"],
            "timeout_s": timeout_s, "mem_mb": mem_mb}


def make_suite(suite_id: str, entry_point: str, public: list, hidden: list, suites_dir,
               timeout_s: float = 4, mem_mb: int = 256) -> dict:
    """Write <suites_dir>/<suite_id>.json (canonical bytes) and return the suite metadata dict.
    public/hidden: [[args_list, expected], ...]; tuples become lists. suites_dir=None: SUITES_DIR.

    >>> make_suite("is_palindrome", "is_palindrome", [[["aba"], True], [["ab"], False]],
    ...            [[[""], True], [["abca"], False], [["racecar"], True]], None)["suite_hash"]
    'sha256:c65555647c39d3c69fa09dc43b76a85492a0f8154be114588613465884c66124'
    """
    path = _suite_path(suite_id, suites_dir)
    data = json.loads(json.dumps({"entry_point": entry_point, "public": public, "hidden": hidden}))
    _check_tests(data, f"suite {suite_id!r}")
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{suite_id}.")
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a suite is plain data like any other file
    os.replace(tmp, path)  # atomic: concurrent readers see the old or the new file, never half
    return {"suite_id": suite_id, "suite_hash": "sha256:" + hashlib.sha256(raw).hexdigest(),
            "entry_point": entry_point, "runtime": {"timeout_s": timeout_s, "mem_mb": mem_mb},
            "public_tests_count": len(data["public"]), "hidden_tests_count": len(data["hidden"])}


def same_value(expected, got) -> bool:
    """Type-exact equality of plain JSON values (see module docstring)."""
    if type(expected) is not type(got):
        return False
    if type(expected) is float:
        return math.isclose(expected, got, rel_tol=FLOAT_REL_TOL, abs_tol=FLOAT_ABS_TOL) \
            or (math.isnan(expected) and math.isnan(got))
    if type(expected) is list:
        return len(expected) == len(got) and all(map(same_value, expected, got))
    if type(expected) is dict:
        return expected.keys() == got.keys() and all(same_value(expected[k], got[k]) for k in expected)
    return expected == got


def code_grader(completion: str, suite: dict, suites_dir=None, all_or_nothing: bool = False) -> float:
    """Fraction of the suite's tests passed (1/0 if all_or_nothing). The verdict is made here, in
    the trusted parent: the sandboxed child only reports values, never sees expected outputs."""
    loaded = load_suite(suite, suites_dir)
    if not isinstance(completion, str) or len(completion) > MAX_CODE_CHARS:
        return 0.0
    code = extract_code(completion)
    if not code.strip():
        return 0.0
    tests = loaded["tests"]
    run = run_untrusted(code, loaded["entry_point"], [args for args, _ in tests],
                        timeout_s=loaded["timeout_s"], mem_mb=loaded["mem_mb"])
    if run.results is None:
        return 0.0
    passed = sum(out["ok"] and same_value(expected, out["value"])
                 for out, (_, expected) in zip(run.results, tests))
    if all_or_nothing:
        return 1.0 if passed == len(tests) else 0.0
    return passed / len(tests)

# ----------------------------------------------------------------------------- format and rubric

MAX_JSON_CHARS, MAX_REGEX_CHARS = 100_000, 4_000
_HAS_ANSWER_LINE = re.compile(r"^[ \t]*(?:final[ \t]+)?answer[ \t]*:[ \t]*\S", re.IGNORECASE | re.MULTILINE)


def _is_json_object(text: str) -> bool:
    try:
        return len(text) <= MAX_JSON_CHARS and isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


# name -> (type of the spec value, check(text, value) -> bool). Bool checks hold when the property
# equals the value ({"uppercase": false}: not all-caps; all-caps needs a letter, "123" is neither).
# starts_with ignores leading, ends_with trailing, json and regex surrounding whitespace. regex is
# re.fullmatch on completions up to MAX_REGEX_CHARS (longer fail): that bounds polynomial
# backtracking, but an exponential pattern like (a+)+$ is slow on 30 characters: keep them linear.
FORMAT_CHECKS = {
    "uppercase": (bool, lambda t, v: (t == t.upper() != t.lower()) == v),
    "lowercase": (bool, lambda t, v: (t == t.lower() != t.upper()) == v),
    "max_words": (int, lambda t, v: len(t.split()) <= v),
    "min_words": (int, lambda t, v: len(t.split()) >= v),
    "starts_with": (str, lambda t, v: t.lstrip().startswith(v)),
    "ends_with": (str, lambda t, v: t.rstrip().endswith(v)),
    "contains": (str, lambda t, v: v in t),
    "json": (bool, lambda t, v: _is_json_object(t.strip()) == v),
    "regex": (str, lambda t, v: len(t) <= MAX_REGEX_CHARS and re.fullmatch(v, t.strip()) is not None),
    "answer_line": (bool, lambda t, v: bool(_HAS_ANSWER_LINE.search(t)) == v),
}


def format_grader(completion: str, spec: dict) -> float:
    """Fraction of the checks in spec that hold, e.g. {"max_words": 5, "uppercase": True}."""
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"format spec must be a non-empty dict, got {spec!r}")
    for name, value in spec.items():
        if name not in FORMAT_CHECKS:
            raise ValueError(f"unknown format check {name!r}; known: {sorted(FORMAT_CHECKS)}")
        if type(value) is not FORMAT_CHECKS[name][0]:
            raise ValueError(f"format check {name!r} needs a {FORMAT_CHECKS[name][0].__name__}")
        if name == "regex":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regex {value!r}: {exc}") from exc
    if not isinstance(completion, str):
        return 0.0
    return sum(bool(FORMAT_CHECKS[name][1](completion, value)) for name, value in spec.items()) / len(spec)


def rubric_results(completion: str, rubric: list[dict], aggregate: str = "mean") -> tuple[float, dict[str, float]]:
    """(reward, {item name: result}) of a §6 rubric, scored by nanopost.rubric (the one rubric
    implementation): weighted mean (default, in [0, 1]) or weighted sum of the items' results.
    Judge items need a judge callable, so they are scored from Python only:
    nanopost.rubric.rubric_reward_fn(rubric, aggregate, judge=...)."""
    for item in rubric if isinstance(rubric, list) else []:
        if isinstance(item, dict) and item.get("check") == "judge":
            raise ValueError(f"rubric item {item.get('name')!r} is judge-scored: the graders have no judge; "
                             "score it from Python with nanopost.rubric.rubric_reward_fn(rubric, judge=...)")
    return rubric_score(rubric, completion, aggregate=aggregate)


def rubric_grader(completion: str, rubric: list[dict], aggregate: str = "mean") -> float:
    """The rubric's reward alone. Through grade()/grade_many() a record {"scorer": "rubric",
    "rubric": [...], "rubric_aggregate": "sum"|"mean"} also reports each item as "rubric/<name>"."""
    return rubric_results(completion, rubric, aggregate)[0]


# ----------------------------------------------------------------------------- registry

GRADERS = {"math_grader": math_grader, "code_grader": code_grader,
           "format_grader": format_grader, "rubric": rubric_grader}
_REFERENCE_KEY = {"math_grader": "ground_truth", "code_grader": "suite",
                  "format_grader": "format", "rubric": "rubric"}


def scorers_of(metadata: dict) -> list[str]:
    """The grader names metadata["scorer"] asks for, each known and given its reference; else ValueError."""
    names = metadata.get("scorer") if isinstance(metadata, dict) else None
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names:
        raise ValueError(f"metadata needs a 'scorer' (a grader name or a list of them): {metadata!r}")
    for name in names:
        if name not in GRADERS:
            raise ValueError(f"unknown scorer {name!r}; known: {sorted(GRADERS)}")
        if _REFERENCE_KEY[name] not in metadata:
            raise ValueError(f"scorer {name!r} needs metadata[{_REFERENCE_KEY[name]!r}]")
    return names


def _grade_one(name: str, completion: str, metadata: dict, suites_dir) -> dict[str, float]:
    """{name: reward}; the rubric grader adds {"rubric/<item>": item result} (logged, not rewarded)."""
    reference = metadata[_REFERENCE_KEY[name]]
    if name == "rubric":
        if not isinstance(reference, list):  # a str would be opened as a file: data must not name paths
            raise ValueError(f"metadata['rubric'] must be a list of items, not {type(reference).__name__}")
        reward, items = rubric_results(completion, reference, metadata.get("rubric_aggregate", "mean"))
        return {name: reward, **{f"{name}/{item}": result for item, result in items.items()}}
    options = {"math_grader": {"ordered": metadata.get("ordered", True)},
               "code_grader": {"suites_dir": suites_dir}}.get(name, {})
    return {name: GRADERS[name](completion, reference, **options)}


def grade(completion: str, metadata: dict, suites_dir=None) -> dict[str, float]:
    """{grader name: reward} for each grader named by metadata["scorer"] (plus "rubric/<item>")."""
    return {k: v for name in scorers_of(metadata) for k, v in _grade_one(name, completion, metadata, suites_dir).items()}


def combine(rewards: dict[str, float], reward_weights: dict[str, float] | None = None) -> float:
    """Weighted sum of rewards. A grader without a weight counts 1.0; a weighted grader that did
    not run (absent from rewards) contributes 0. Entries named "<grader>/<part>" (a rubric's
    items) are already inside their grader's reward: logged, never added again."""
    weights = reward_weights or {}
    return float(sum(weights.get(name, 1.0) * reward for name, reward in rewards.items() if "/" not in name))


def grade_many(completions: list[str], metadatas: list[dict], suites_dir=None,
               workers: int = 2) -> list[dict[str, float]]:
    """grade() for each pair; code_grader sandboxes run `workers` at a time (threads that wait on
    subprocesses), everything else inline. Errors (bad metadata or suite) raise, as in grade()."""
    if len(completions) != len(metadatas):
        raise ValueError(f"{len(completions)} completions but {len(metadatas)} metadatas")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [{name: pool.submit(_grade_one, name, c, m, suites_dir) if name == "code_grader"
                    else _grade_one(name, c, m, suites_dir) for name in scorers_of(m)}
                   for c, m in zip(completions, metadatas)]
        return [{k: v for r in rewards.values() for k, v in (r.result() if isinstance(r, Future) else r).items()}
                for rewards in pending]
