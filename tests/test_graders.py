"""Graders: math answers (table, adversarial inputs, fuzzing), code suites, format, rubric, registry.
The sandbox's attack suite lives in test_sandbox.py."""
import hashlib
import json
import random
import time

import pytest

from nanopost.graders import (GRADERS, code_grader, combine, format_grader, grade, grade_many,
                              make_suite, math_grader, rubric_grader)

# ----------------------------------------------------------------------------- math: table

ROOTS = "-5, 0.6666667"  # the guide's example ground truth
MATH_CASES = [
    # right answers: ints, negatives, decimals, fractions, lists; "Answer:" line and last-line forms
    ("Answer: 42", "42", 1.0),
    ("Let me think.\n6 * 7 = 42\nAnswer: 42", "42", 1.0),
    ("answer:42", "42", 1.0),
    ("  ANSWER :  42.  ", "42", 1.0),
    ("Final answer: 42", "42", 1.0),
    ("42", "42", 1.0),
    ("work work\n\n42\n\n", "42", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("Answer: -17", "-17", 1.0),
    ("Answer: +17", "17", 1.0),
    ("Answer: 3.0", "3", 1.0),
    ("Answer: 6/2", "3", 1.0),
    ("Answer: 0.5", "1/2", 1.0),
    ("Answer: .5", "0.5", 1.0),
    ("Answer: -2/3", "-2/3", 1.0),
    ("Answer: -2 / 3", "-0.6666667", 1.0),
    ("Answer: x = 7", "7", 1.0),
    ("Answer: x=7", "x = 7", 1.0),
    ("Answer: -5, 0.6666667", ROOTS, 1.0),
    ("Answer: -5, 2/3", ROOTS, 1.0),
    ("Answer: -5,2/3", ROOTS, 1.0),
    ("Answer: x1 = -5, x2 = 2/3", ROOTS, 1.0),
    ("The roots are below.\n-5, 0.6666667", ROOTS, 1.0),
    ("Answer: -5, 0.666667", ROOTS, 1.0),            # off by 3.3e-7 <= 1e-6 * (1 + 2/3)
    ("Answer: 0.3333333", "1/3", 1.0),
    ("Answer: 1000000", "1000000", 1.0),
    # wrong
    ("Answer: 41", "42", 0.0),
    ("Answer: -5, 0.667", ROOTS, 0.0),                # off by 3.3e-4
    ("Answer: -5, 0.67", ROOTS, 0.0),
    ("Answer: 2/3, -5", ROOTS, 0.0),                  # ordered by default
    ("Answer: 2.9999999", "3", 0.0),                  # whole-number truths are exact
    ("Answer: 1000001", "1000000", 0.0),
    ("Answer: 5", "-5", 0.0),
    ("Answer: -5", ROOTS, 0.0),                       # too few
    ("Answer: -5, 2/3, 1", ROOTS, 0.0),               # too many
    # hedged
    ("Answer: 3 or 4", "3", 0.0),
    ("Answer: either 3 or 4", "3", 0.0),
    ("Answer: 3, 4", "3", 0.0),
    ("Answer: 3/4?", "0.75", 0.0),
    ("Answer: 3?", "3", 0.0),
    ("Answer: 3 (or maybe 4)", "3", 0.0),
    ("Answer: 3\nor maybe 4", "3", 1.0),              # the Answer: line is what counts
    ("Answer: 3\nAnswer: 4", "4", 1.0),               # the last Answer: line wins
    ("Answer: 3\nAnswer: 4", "3", 0.0),
    # malformed, empty, substrings, words
    ("", "3", 0.0),
    ("   \n\n  ", "3", 0.0),
    ("Answer:", "3", 0.0),
    ("Answer: \nthe rest", "3", 0.0),
    ("Answer: 13", "3", 0.0),
    ("Answer: 3", "13", 0.0),
    ("The answer is 3 apples", "3", 0.0),
    ("Answer: 3 apples", "3", 0.0),
    ("I think it's 3", "3", 0.0),
    ("Answer: three", "3", 0.0),
    ("Answer: 1,000", "1000", 0.0),                   # no thousands separators: [1, 0]
    ("Answer: 1,000", "1, 0", 1.0),
    ("Answer: 1 000", "1000", 0.0),
    ("Answer: 1/0", "1/0", 0.0),                      # zero denominators never score
    ("Answer: 1.5/2", "0.75", 0.0),
    ("Answer: 1e3", "1000", 0.0),                     # no exponents
    ("Answer: 3,", "3", 0.0),
    ("Answer: ,3", "3", 0.0),
    ("Answer: --3", "3", 0.0),
    ("Answer: $3$", "3", 0.0),
    ("Answer: [3]", "3", 0.0),
    ("Answer: 3", "", 0.0),                           # unusable ground truths pay nothing
    ("Answer: 3", "three", 0.0),
]


@pytest.mark.parametrize("completion,truth,expected", MATH_CASES)
def test_math_grader_table(completion, truth, expected):
    assert math_grader(completion, truth) == expected


def test_math_grader_unordered():
    assert math_grader("Answer: 2/3, -5", ROOTS, ordered=False) == 1.0
    assert math_grader("Answer: 3, 1, 2", "1, 2, 3", ordered=False) == 1.0
    assert math_grader("Answer: 3, 1, 1", "1, 3, 3", ordered=False) == 0.0   # multisets
    assert math_grader("Answer: 3, 1", "1, 2, 3", ordered=False) == 0.0
    assert grade("Answer: 2/3, -5", {"scorer": "math_grader", "ground_truth": ROOTS, "ordered": False}) \
        == {"math_grader": 1.0}


def test_math_grader_tolerance_is_documented_one():
    assert math_grader("Answer: 0.6666667", "2/3") == 1.0                    # 3.3e-8
    assert math_grader("Answer: 0.667", "2/3") == 0.0                        # 3.3e-4
    assert math_grader("Answer: 0.667", "2/3", tol=1e-3) == 1.0
    # relative: about 7 significant digits
    assert math_grader("Answer: 123.4568", "123.456789") == 1.0              # 1.1e-5 <= 1.2e-4
    assert math_grader("Answer: 123.46", "123.456789") == 0.0                # 3.2e-3


# ----------------------------------------------------------------------------- math: adversarial

ADVERSARIAL = [
    ("x" * 10_000_000 + "\nAnswer: 3", "3", 1.0),   # 10 MB, answer at the end
    ("Answer: 3\n" + "x" * 10_000_000, "3", 0.0),   # answer lost beyond the last 2,000 chars
    ("1" * 100_000, "1" * 100_000, 0.0),
    ("Answer: " + "1" * 60, "1" * 60, 0.0),          # numerals over 50 digits are rejected
    ("Answer: " + "1" * 40, "1" * 40, 1.0),
    ("Answer: 1e999999", "1", 0.0),
    ("Answer: 1e999999", "1e999999", 0.0),
    ("Answer: " + "9" * 60 + "/" + "9" * 60, "1", 0.0),
    ("Answer: " + "9" * 50 + "/" + "9" * 50, "1", 1.0),
    ("Answer: " + "(" * 5000 + "3" + ")" * 5000, "3", 0.0),
    ("Answer: ((3))", "3", 0.0),
    ("Answer: \u0663", "3", 0.0),                    # ARABIC-INDIC DIGIT THREE
    ("Answer: \uff13", "3", 0.0),                    # FULLWIDTH DIGIT THREE
    ("Answer: 3\x00", "3", 0.0),
    ("Answer: \x003", "3", 0.0),
    ("\x00" * 1000, "0", 0.0),
    ("Answer: 3\u2028", "3", 1.0),                   # unicode line separator ends the line
    ("Answer: " + "3," * 5000 + "3", "3", 0.0),
    ("Answer: " + "-" * 10_000 + "3", "3", 0.0),
    ("Answer: " + "1/" * 10_000 + "1", "1", 0.0),
    ("\n" * 1_000_000, "3", 0.0),
    ("Answer: 3" + " " * 1_000_000, "3", 0.0),     # trailing spaces push the line over the cap
]


@pytest.mark.parametrize("completion,truth,expected", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_math_grader_adversarial(completion, truth, expected):
    start = time.perf_counter()
    assert math_grader(completion, truth) == expected
    assert time.perf_counter() - start < 0.2


@pytest.mark.parametrize("bad", [None, 3, b"Answer: 3", ["Answer: 3"], 3.0])
def test_math_grader_non_str_is_zero(bad):
    assert math_grader(bad, "3") == 0.0
    assert math_grader("Answer: 3", bad) == 0.0


FUZZ_PIECES = ["0", "1", "2", "3", "7", "9", "-", "+", ",", ", ", "/", " ", ".", "x", "x =", "a",
               "Z", "e", "\n", "\n\n", "Answer:", "answer :", "ANSWER: ", "the answer is ", "?",
               "(", ")", "\x00", "\u0663", "\t", "or", "1e5", "0.6666667", "2/3", "-5"]


def random_text(rng):
    return "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(0, 40)))


def test_math_grader_random_fuzz():
    rng = random.Random(0)
    truths = ["3", "-5, 0.6666667", "2/3", "0", "1, 2, 3", "x = 4"]
    seen = set()
    for _ in range(2000):
        completion = random_text(rng)
        truth = rng.choice(truths + [random_text(rng), completion])
        start = time.perf_counter()
        reward = math_grader(completion, truth, ordered=rng.random() < 0.5)
        assert time.perf_counter() - start < 0.05
        assert reward in (0.0, 1.0)
        seen.add(reward)
    assert seen == {0.0, 1.0}


def test_math_grader_roundtrip_fuzz():
    """A number written any supported way matches itself in any other supported way."""
    rng = random.Random(1)
    for _ in range(500):
        p, q = rng.randint(-10**6, 10**6), rng.randint(1, 1000)
        forms = [f"{p}/{q}", f"{p / q:.10f}", f"x = {p}/{q}"]
        if p % q == 0:
            forms += [str(p // q), f"{p // q}.0"]
        a, b = rng.choice(forms), rng.choice(forms)
        assert math_grader(f"work\nAnswer: {a}", b) == 1.0, (a, b)


def test_math_grader_hypothesis():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(st.text(max_size=300), st.text(max_size=60), st.booleans())
    def check(completion, truth, ordered):
        assert math_grader(completion, truth, ordered=ordered) in (0.0, 1.0)
        assert math_grader(completion + "\nAnswer: 12", "12") == 1.0

    check()


# ----------------------------------------------------------------------------- code

SQUARE = "def square(x):\n    return x * x\n"
HALF = "def square(x):\n    return x * x if x < 3 else 0\n"   # passes x = 0, 1, 2 of 0..5


@pytest.fixture
def suite(tmp_path):
    tests = [[[x], x * x] for x in range(6)]
    return make_suite("square", "square", tests[:2], tests[2:], tmp_path, timeout_s=4), tmp_path


def test_make_suite_writes_canonical_file(suite):
    meta, folder = suite
    raw = (folder / "square.json").read_bytes()
    assert meta["suite_hash"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert meta["entry_point"] == "square" and meta["runtime"] == {"timeout_s": 4, "mem_mb": 256}
    assert (meta["public_tests_count"], meta["hidden_tests_count"]) == (2, 4)


def test_code_grader_scores(suite):
    meta, folder = suite
    assert code_grader(SQUARE, meta, folder) == 1.0
    assert code_grader(HALF, meta, folder) == 0.5
    assert code_grader(HALF, meta, folder, all_or_nothing=True) == 0.0
    assert code_grader(SQUARE, meta, folder, all_or_nothing=True) == 1.0
    assert code_grader("def square(x):\n    return float(x * x)\n", meta, folder) == 0.0  # 1 != 1.0
    assert code_grader("def square(x) return", meta, folder) == 0.0
    assert code_grader("", meta, folder) == 0.0
    assert code_grader(None, meta, folder) == 0.0
    assert code_grader("def other(x):\n    return x * x\n", meta, folder) == 0.0


def test_code_grader_fenced_blocks(suite):
    meta, folder = suite
    text = f"Here you go:\n```python\n{SQUARE}```\nand a broken one:\n```python\ndef square(:\n```"
    assert code_grader(text, meta, folder) == 1.0
    assert code_grader(f"```bash\nls\n```\n```py\n{SQUARE}```", meta, folder) == 1.0
    assert code_grader(f"```\n{SQUARE}```", meta, folder) == 1.0
    assert code_grader(f"```python\n{SQUARE}", meta, folder) == 1.0   # unterminated fence


EXACT_TYPES = [  # (expected in the suite, the candidate's return expression, passes?)
    (True, "True", True), (True, "1", False), (1, "True", False), (1, "1", True), (1, "1.0", False),
    (1.0, "1", False), (1.0, "1.0", True), (0.3, "0.1 + 0.2", True), (0.3, "0.3001", False),
    ("1", "1", False), (None, "None", True), (None, "0", False), ([1, "a"], "(1, 'a')", True),
    ([1, "a"], "[1, 'a', None]", False), ({"k": [0.5]}, "{'k': (0.5,)}", True),
    ({"k": 1}, "{'k': 1, 'j': 2}", False), ({"1": 1}, "{1: 1}", False), ([True], "[1]", False),
    (2 ** 70, "2 ** 70", True), (float("inf"), "float('inf')", True), ("é\n", "'é\\n'", True),
]


def test_code_grader_exact_types(tmp_path):
    meta = make_suite("types", "f", [[[i], e] for i, (e, _, _) in enumerate(EXACT_TYPES)], [], tmp_path)
    table = "[" + ", ".join(r for _, r, _ in EXACT_TYPES) + "]"
    code = f"def f(i):\n    return {table}[i]\n"
    assert code_grader(code, meta, tmp_path) == sum(p for _, _, p in EXACT_TYPES) / len(EXACT_TYPES)
    for i, (expected, returned, passes) in enumerate(EXACT_TYPES):
        one = make_suite(f"type{i}", "f", [[[], expected]], [], tmp_path)
        assert code_grader(f"def f():\n    return {returned}\n", one, tmp_path) == float(passes), returned


def test_code_grader_refuses_bad_suites(suite, tmp_path):
    meta, folder = suite
    with pytest.raises(ValueError, match="hash"):
        code_grader(SQUARE, {**meta, "suite_hash": "sha256:" + "0" * 64}, folder)
    for bad_id in ["../square", "a/b", "..", "/etc/passwd", "", ".hidden", "x" * 200, None, 3]:
        with pytest.raises(ValueError, match="suite_id"):
            code_grader(SQUARE, {**meta, "suite_id": bad_id}, folder)
    with pytest.raises(ValueError):
        code_grader(SQUARE, {**meta, "suite_id": "missing"}, folder)
    (folder / "broken.json").write_bytes(b"{not json")
    digest = "sha256:" + hashlib.sha256(b"{not json").hexdigest()
    with pytest.raises(ValueError):
        code_grader(SQUARE, {**meta, "suite_id": "broken", "suite_hash": digest}, folder)
    with pytest.raises(ValueError):
        code_grader(SQUARE, "not a dict", folder)
    with pytest.raises(ValueError):
        make_suite("bad", "not an identifier", [], [[[1], 1]], tmp_path)


def test_builtin_example_suite():
    meta = {"suite_id": "is_palindrome", "entry_point": "is_palindrome",
            "suite_hash": "sha256:c65555647c39d3c69fa09dc43b76a85492a0f8154be114588613465884c66124",
            "runtime": {"timeout_s": 4, "mem_mb": 256}}
    assert code_grader("def is_palindrome(s):\n    return s == s[::-1]\n", meta) == 1.0


# ----------------------------------------------------------------------------- format and rubric

def test_format_grader():
    assert format_grader("PARIS", {"uppercase": True}) == 1.0
    assert format_grader("Paris", {"uppercase": True}) == 0.0
    assert format_grader("123", {"uppercase": True}) == 0.0
    assert format_grader("paris", {"lowercase": True, "uppercase": False}) == 1.0
    assert format_grader("a b c", {"max_words": 3, "min_words": 3}) == 1.0
    assert format_grader("a b c d", {"max_words": 3, "min_words": 3}) == 0.5
    assert format_grader(" Hello there\n", {"starts_with": "Hello", "ends_with": "there"}) == 1.0
    assert format_grader("say hi", {"contains": "hi", "starts_with": "hi"}) == 0.5
    assert format_grader(' {"a": 1} ', {"json": True}) == 1.0
    assert format_grader("[1]", {"json": True}) == 0.0
    assert format_grader("{" * 100_000, {"json": True}) == 0.0
    assert format_grader("abc123", {"regex": "[a-z]+[0-9]+"}) == 1.0
    assert format_grader("abc123!", {"regex": "[a-z]+[0-9]+"}) == 0.0
    assert format_grader("a" * 100_000, {"regex": "(a|aa)*b"}) == 0.0   # over the length cap: fast
    assert format_grader("work\nAnswer: 3", {"answer_line": True}) == 1.0
    assert format_grader("work\nAnswer:", {"answer_line": True}) == 0.0
    assert format_grader(None, {"uppercase": True}) == 0.0
    for bad in [{"shout": True}, {}, {"max_words": "5"}, {"max_words": True}, {"regex": "("}, "upper"]:
        with pytest.raises(ValueError):
            format_grader("x", bad)


def test_rubric_grader_goes_through_rubric_py():
    """The `rubric` grader: nanopost/rubric.py's items and checks, weighted mean by default
    (hand-worked: caps 1 × 3, short 0 × 1 -> 3/4), "sum" on request, each item reported."""
    rubric = [{"name": "caps", "check": "uppercase", "weight": 3.0},
              {"name": "short", "check": "word_count", "max": 1}]
    assert rubric_grader("HELLO THERE", rubric) == 0.75
    assert rubric_grader("HELLO THERE", rubric, aggregate="sum") == 3.0
    assert rubric_grader("hello", rubric) == 0.25
    assert rubric_grader(None, rubric) == 0.0
    assert grade("HELLO THERE", {"scorer": "rubric", "rubric": rubric}) == \
        {"rubric": 0.75, "rubric/caps": 1.0, "rubric/short": 0.0}
    assert grade("HELLO THERE", {"scorer": "rubric", "rubric": rubric, "rubric_aggregate": "sum"})["rubric"] == 3.0
    for bad in [[], [{"name": "a"}], [{"check": "uppercase"}], [{"name": "a", "check": "uppercase"}] * 2,
                [{"name": "a", "check": "uppercase", "weight": -1}], [{"name": "a", "check": "shout"}]]:
        with pytest.raises(ValueError):
            grade("HELLO", {"scorer": "rubric", "rubric": bad})
    with pytest.raises(ValueError, match="aggregate"):
        grade("HELLO", {"scorer": "rubric", "rubric": rubric, "rubric_aggregate": "max"})
    with pytest.raises(ValueError, match="judge-scored.*rubric_reward_fn"):
        grade("HELLO", {"scorer": "rubric", "rubric": [{"name": "j", "check": "judge", "criterion": "kind"}]})


def test_rubric_items_are_logged_not_rewarded():
    """grade_many gives each item as "rubric/<name>"; combine() adds only the rubric's own reward,
    so an item never counts twice, whatever the weights."""
    rubric = [{"name": "caps", "check": "uppercase"}, {"name": "cat", "check": "contains", "text": "cat"},
              {"name": "json", "check": "valid_json", "keys": ["a"]}]
    meta = {"scorer": ["rubric", "math_grader"], "rubric": rubric, "ground_truth": "3"}
    graded = grade_many(['{"A": "CAT"}', "CAT\nAnswer: 3", '{"a": "dog"}'], [meta] * 3)
    assert graded == [{"rubric": 2 / 3, "rubric/caps": 1.0, "rubric/cat": 1.0, "rubric/json": 0.0, "math_grader": 0.0},
                      {"rubric": 1 / 3, "rubric/caps": 0.0, "rubric/cat": 1.0, "rubric/json": 0.0, "math_grader": 1.0},
                      {"rubric": 1 / 3, "rubric/caps": 0.0, "rubric/cat": 0.0, "rubric/json": 1.0, "math_grader": 0.0}]
    assert [combine(g) for g in graded] == [2 / 3, 4 / 3, 1 / 3]
    assert combine(graded[1], {"rubric": 3.0, "math_grader": 0.5}) == 1.5
    assert combine(graded[1], {"rubric/caps": 5.0}) == 4 / 3


# ----------------------------------------------------------------------------- registry

def test_registry_grade_combine():
    assert set(GRADERS) == {"math_grader", "code_grader", "format_grader", "rubric"}
    meta = {"scorer": ["math_grader", "format_grader"], "ground_truth": "3", "format": {"max_words": 2}}
    assert grade("Answer: 3", meta) == {"math_grader": 1.0, "format_grader": 1.0}
    assert grade("Answer: 4", {"scorer": "math_grader", "ground_truth": "3"}) == {"math_grader": 0.0}
    with pytest.raises(ValueError, match="judge_grader.*math_grader"):
        grade("x", {"scorer": "judge_grader"})
    with pytest.raises(ValueError, match="ground_truth"):
        grade("x", {"scorer": "math_grader"})
    assert combine({"a": 1.0, "b": 0.5}) == 1.5
    assert combine({"a": 1.0, "b": 0.5}, {"a": 2.0, "b": 0.0}) == 2.0
    assert combine({"a": 1.0}, {"a": 0.5, "missing": 3.0}) == 0.5
    assert combine({"a": 1.0, "b": 1.0}, {"a": 0.5}) == 1.5


def test_grade_many_matches_grade(suite):
    meta, folder = suite
    code_meta = {"scorer": "code_grader", "suite": meta}
    completions = [SQUARE, HALF, "Answer: 3", "nope", f"```python\n{SQUARE}```", "def square(x): 1/0"]
    metadatas = [code_meta, code_meta, {"scorer": "math_grader", "ground_truth": "3"},
                 {"scorer": ["format_grader", "code_grader"], "format": {"max_words": 1}, "suite": meta},
                 code_meta, code_meta]
    many = grade_many(completions, metadatas, suites_dir=folder, workers=3)
    assert many == [grade(c, m, suites_dir=folder) for c, m in zip(completions, metadatas)]
    assert [sum(r.values()) for r in many] == [1.0, 0.5, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        grade_many(["x"], [])


def test_a_rubric_in_data_is_never_a_path():
    from nanopost.graders import grade
    with pytest.raises(ValueError, match="list"):
        grade("x", {"scorer": "rubric", "rubric": "/etc/hostname"})
