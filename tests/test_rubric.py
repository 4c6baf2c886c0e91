"""Rubric rewards (§6): every check true and false, weighted sum/mean by hand, judge items,
loading from a file, errors that name the file and the item, the RL reward function."""
import json
import math

import pytest

from nanopost.rubric import check_item, load_rubric, records_reward_fn, rubric_reward_fn, score

# ----------------------------------------------------------------------------- checks: table

CASES = [  # (item params, response, expected score)
    ({"check": "contains", "text": "Paris"}, "the capital is paris", 1.0),
    ({"check": "contains", "text": "Paris"}, "the capital is Lyon", 0.0),
    ({"check": "contains", "text": "Paris", "case_sensitive": True}, "Paris, France", 1.0),
    ({"check": "contains", "text": "Paris", "case_sensitive": True}, "paris, france", 0.0),
    ({"check": "contains", "text": "ab", "count": 2}, "ab x AB", 1.0),
    ({"check": "contains", "text": "ab", "count": 3}, "ab x AB", 0.0),
    ({"check": "contains", "text": "aa", "count": 2}, "aaa", 0.0),  # non-overlapping
    ({"check": "regex", "pattern": r"\d{3}"}, "call 555 now", 1.0),  # re.search: anywhere
    ({"check": "regex", "pattern": r"\d{3}"}, "call 55 now", 0.0),
    ({"check": "regex", "pattern": "hello"}, "HELLO", 0.0),
    ({"check": "regex", "pattern": "hello", "flags": ["IGNORECASE"]}, "HELLO", 1.0),
    ({"check": "regex", "pattern": "^b$"}, "a\nb\nc", 0.0),
    ({"check": "regex", "pattern": "^b$", "flags": ["MULTILINE"]}, "a\nb\nc", 1.0),
    ({"check": "regex", "pattern": "a.b"}, "a\nb", 0.0),
    ({"check": "regex", "pattern": "A.B", "flags": ["DOTALL", "IGNORECASE"]}, "a\nb", 1.0),
    ({"check": "word_count", "min": 3}, "one two three", 1.0),  # bounds inclusive
    ({"check": "word_count", "min": 3}, "one two", 0.0),
    ({"check": "word_count", "max": 3}, "one  two\nthree ", 1.0),
    ({"check": "word_count", "max": 3}, "one two three four", 0.0),
    ({"check": "word_count", "min": 2, "max": 2}, "two words", 1.0),
    ({"check": "word_count", "min": 0, "max": 0}, "   ", 1.0),
    ({"check": "uppercase"}, "HELLO, WORLD 42!", 1.0),
    ({"check": "uppercase"}, "HELLO, World", 0.0),
    ({"check": "uppercase"}, "123 !?", 0.0),  # no letters
    ({"check": "uppercase"}, "", 0.0),
    ({"check": "lowercase"}, "hello, world 42!", 1.0),
    ({"check": "lowercase"}, "hello, World", 0.0),
    ({"check": "lowercase"}, "123 !?", 0.0),
    ({"check": "starts_with", "text": "Yes"}, "  \n Yes, indeed", 1.0),
    ({"check": "starts_with", "text": "Yes"}, "Well, Yes", 0.0),
    ({"check": "starts_with", "text": "Yes"}, "yes", 0.0),  # case-sensitive
    ({"check": "ends_with", "text": "Done."}, "All Done.  \n\n", 1.0),
    ({"check": "ends_with", "text": "Done."}, "Done. Next", 0.0),
    ({"check": "valid_json"}, '  {"a": 1}\n', 1.0),
    ({"check": "valid_json"}, "[1, 2, 3]", 1.0),
    ({"check": "valid_json"}, "{'a': 1}", 0.0),
    ({"check": "valid_json"}, 'Here: {"a": 1}', 0.0),
    ({"check": "valid_json"}, '```json\n{"a": 1}\n```', 1.0),
    ({"check": "valid_json"}, '\n```JSON\n{"a": 1}```\n', 1.0),
    ({"check": "valid_json"}, '```json\n{"a": 1,}\n```', 0.0),
    ({"check": "valid_json"}, "[" * 100_000, 0.0),  # RecursionError is a 0, not a crash
    ({"check": "valid_json", "keys": ["a", "b"]}, '{"a": 1, "b": null, "c": 2}', 1.0),
    ({"check": "valid_json", "keys": ["a", "b"]}, '{"a": 1}', 0.0),
    ({"check": "valid_json", "keys": ["a"]}, '[{"a": 1}]', 0.0),  # top level must be the object
    ({"check": "valid_json", "keys": ["a"]}, '```json\n{"a": 1}\n```', 1.0),
]


@pytest.mark.parametrize("params,response,expected", CASES, ids=range(len(CASES)))
def test_check(params, response, expected):
    assert check_item({"name": "x", **params}, response) == expected


@pytest.mark.parametrize("response", [None, 3, b"HELLO"])
def test_non_string_response_scores_zero(response):
    assert check_item({"name": "x", "check": "lowercase"}, response) == 0.0

# ----------------------------------------------------------------------------- aggregates


RUBRIC = [{"name": "a", "check": "contains", "text": "yes", "weight": 2},   # 1
          {"name": "b", "check": "uppercase"},                               # 0
          {"name": "c", "check": "word_count", "max": 5, "weight": 1.0}]     # 1


@pytest.mark.parametrize("aggregate,expected", [("sum", 3.0), ("mean", 0.75)])
def test_weighted_aggregates(aggregate, expected):
    reward, results = score(RUBRIC, "yes it is", aggregate=aggregate)
    assert results == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert reward == pytest.approx(expected)


def test_fractional_weights_by_hand():
    rubric = [{"name": "p", "check": "contains", "text": "x", "weight": 0.5},
              {"name": "q", "check": "contains", "text": "y", "weight": 1.5}]
    assert score(rubric, "x")[0] == pytest.approx(0.5)
    assert score(rubric, "x", aggregate="mean")[0] == pytest.approx(0.25)
    assert score(rubric, "xy", aggregate="mean")[0] == pytest.approx(1.0)


@pytest.mark.parametrize("aggregate", ["max", "Sum", None])
def test_bad_aggregate(aggregate):
    with pytest.raises(ValueError, match="aggregate"):
        score(RUBRIC, "yes", aggregate=aggregate)

# ----------------------------------------------------------------------------- judge


def test_judge_called_with_prompt_response_criterion():
    calls = []

    def judge(prompt, response, criterion):
        calls.append((prompt, response, criterion))
        return 0.25

    rubric = [{"name": "polite", "check": "judge", "criterion": "Is polite.", "weight": 4},
              {"name": "short", "check": "word_count", "max": 3}]
    reward, results = score(rubric, "thanks a lot", prompt="Say thanks", judge=judge)
    assert calls == [("Say thanks", "thanks a lot", "Is polite.")]
    assert results == {"polite": 0.25, "short": 1.0}
    assert reward == pytest.approx(4 * 0.25 + 1)


@pytest.mark.parametrize("value,expected", [(0.4, 0.4), (1.5, 1.0), (-0.2, 0.0), (math.inf, 1.0),
                                            (-math.inf, 0.0), (math.nan, 0.0), (1, 1.0), (True, 1.0)])
def test_judge_clamped(value, expected):
    item = {"name": "j", "check": "judge", "criterion": "c"}
    assert check_item(item, "r", judge=lambda p, r, c: value) == expected


def test_judge_non_number_is_an_error():
    item = {"name": "j", "check": "judge", "criterion": "c"}
    with pytest.raises(ValueError, match="'j'"):
        check_item(item, "r", judge=lambda p, r, c: "yes")


def test_missing_judge_names_the_item():
    rubric = [{"name": "ok", "check": "uppercase"}, {"name": "tone", "check": "judge", "criterion": "c"}]
    for call in (lambda: score(rubric, "HI"), lambda: rubric_reward_fn(rubric),
                 lambda: check_item(rubric[1], "HI")):
        with pytest.raises(ValueError, match="'tone'"):
            call()

# ----------------------------------------------------------------------------- loading


def test_load_rubric_round_trip(tmp_path):
    path = tmp_path / "rubric.json"
    path.write_text(json.dumps(RUBRIC))
    rubric = load_rubric(path)
    assert rubric == [{**item, "weight": float(item.get("weight", 1))} for item in RUBRIC]
    assert rubric == load_rubric(str(path)) == load_rubric(RUBRIC)
    assert "weight" not in RUBRIC[1]  # the caller's list is copied, not filled in
    assert score(path, "yes it is") == score(RUBRIC, "yes it is")


BAD = [  # (items, phrase the error must contain besides the file name)
    ([{"name": "short", "check": "lenght", "max": 5}], "item 1 ('short'): unknown check 'lenght' (use one of"),
    ([{"name": "ok", "check": "uppercase"}, {"name": "re", "check": "regex"}],
     "item 2 ('re'): check 'regex' needs 'pattern'"),
    ([{"name": "re", "check": "regex", "pattern": "a(b"}], "item 1 ('re'): 'pattern' does not compile"),
    ([{"name": "re", "check": "regex", "patern": "ab"}],
     "unknown key 'patern' for check 'regex' (did you mean 'pattern'?"),
    ([{"name": "re", "check": "regex", "pattern": "a", "flags": ["VERBOSE"]}], "'flags' must be a list of"),
    ([{"name": "a", "check": "uppercase"}, {"name": "a", "check": "lowercase"}], "item 2 ('a'): duplicate name"),
    ([{"name": "w", "check": "uppercase", "weight": 0}], "item 1 ('w'): 'weight' must be a positive"),
    ([{"name": "w", "check": "uppercase", "weight": -1}], "'weight' must be a positive"),
    ([{"name": "w", "check": "uppercase", "weight": "2"}], "'weight' must be a positive"),
    ([{"name": "w", "check": "uppercase", "weight": True}], "'weight' must be a positive"),
    ([{"name": "n", "check": "word_count"}], "needs 'min' and/or 'max'"),
    ([{"name": "n", "check": "word_count", "min": 5, "max": 2}], "'min' (5) is above 'max' (2)"),
    ([{"name": "n", "check": "word_count", "max": 2.5}], "'max' must be an integer"),
    ([{"name": "c", "check": "contains", "text": "x", "count": 0}], "'count' must be an integer >= 1"),
    ([{"name": "c", "check": "contains", "text": ""}], "'text' must be a non-empty string"),
    ([{"name": "c", "check": "contains", "text": "x", "case_sensitive": "yes"}], "must be true or false"),
    ([{"name": "j", "check": "valid_json", "keys": "a"}], "'keys' must be a list of strings"),
    ([{"check": "uppercase"}], "item 1: needs a non-empty string 'name'"),
    (["uppercase"], "item 1: must be an object"),
    ([], "non-empty JSON list"),
    ({"name": "x", "check": "uppercase"}, "non-empty JSON list"),
]


@pytest.mark.parametrize("items,phrase", BAD, ids=range(len(BAD)))
def test_bad_rubric_names_file_and_item(tmp_path, items, phrase):
    path = tmp_path / "rubric.json"
    path.write_text(json.dumps(items))
    with pytest.raises(ValueError) as exc:
        load_rubric(path)
    assert str(exc.value).startswith(f"{path}: ") and phrase in str(exc.value), str(exc.value)


@pytest.mark.parametrize("bad_weight", ["NaN", "Infinity"])
def test_non_finite_weight(tmp_path, bad_weight):
    path = tmp_path / "rubric.json"
    path.write_text(f'[{{"name": "w", "check": "uppercase", "weight": {bad_weight}}}]')
    with pytest.raises(ValueError, match=r"rubric\.json: item 1 \('w'\): 'weight' must be a positive"):
        load_rubric(path)


def test_invalid_json_gives_line_and_column(tmp_path):
    path = tmp_path / "rubric.json"
    path.write_text('[\n  {"name": "a", "check": "uppercase"},\n  {"name": "b" "check": "lowercase"}\n]\n')
    with pytest.raises(ValueError, match=rf"^{path}:3:16: invalid JSON"):
        load_rubric(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json: cannot read"):
        load_rubric(tmp_path / "nope.json")

# ----------------------------------------------------------------------------- RL reward


def test_rubric_reward_fn_over_a_batch():
    judge = lambda prompt, response, criterion: 1.0 if prompt in response else 0.0  # noqa: E731
    rubric = RUBRIC + [{"name": "echo", "check": "judge", "criterion": "repeats the prompt"}]
    fn = rubric_reward_fn(rubric, aggregate="mean", judge=judge)
    rewards, results = fn(["yes", "no", "zzz"], ["yes it is", "NO NO", "yes " * 10])
    assert rewards == pytest.approx([4 / 5, 2 / 5, 2 / 5])
    assert results == [{"a": 1.0, "b": 0.0, "c": 1.0, "echo": 1.0},
                       {"a": 0.0, "b": 1.0, "c": 1.0, "echo": 0.0},
                       {"a": 1.0, "b": 0.0, "c": 0.0, "echo": 0.0}]
    assert rubric_reward_fn(RUBRIC)(["p"], ["yes it is"])[0] == [3.0]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        fn(["a", "b"], ["c"])


def test_records_reward_fn_scores_each_records_rubric_with_a_judge():
    """The reward_fn shape rollout.sample_rollouts takes: one {name: reward} per completion, each
    §8 row with its own rubric; the judge sees the row's last prompt message."""
    seen = []

    def judge(prompt, response, criterion):
        seen.append((prompt, response, criterion))
        return 0.25

    rows = [{"prompt": [{"role": "user", "content": "shout"}],
             "metadata": {"scorer": "rubric", "rubric": [{"name": "caps", "check": "uppercase", "weight": 3},
                                                         {"name": "kind", "check": "judge", "criterion": "is kind"}]}},
            {"prompt": [{"role": "user", "content": "short"}],
             "metadata": {"scorer": "rubric", "rubric_aggregate": "sum",
                          "rubric": [{"name": "short", "check": "word_count", "max": 1, "weight": 2}]}}]
    out = records_reward_fn(judge)(["HELLO", "two words"], rows)
    assert out == [{"rubric": pytest.approx((3 * 1 + 0.25) / 4), "rubric/caps": 1.0, "rubric/kind": 0.25},
                   {"rubric": 0.0, "rubric/short": 0.0}]
    assert seen == [("shout", "HELLO", "is kind")]
    with pytest.raises(ValueError, match="judge item"):
        records_reward_fn()(["HELLO"], rows[:1])
    with pytest.raises(ValueError, match="2 completions but 1 records"):
        records_reward_fn(judge)(["a", "b"], rows[:1])


def test_long_completions_cannot_stall_the_checks():
    """A backtracking pattern (the author's) meets a long completion (the model's): bounded, not minutes."""
    import time
    from nanopost.rubric import MAX_REGEX_CHARS, check_item
    item = {"name": "r", "check": "regex", "pattern": r"^(\w+\s?)+$"}
    t0 = time.time()
    assert check_item(item, "a" * (MAX_REGEX_CHARS + 1) + "!") == 0.0
    fence = {"name": "j", "check": "valid_json"}
    assert check_item(fence, "```\n" + " " * 50_000 + "x") == 0.0
    assert time.time() - t0 < 1.0
    assert check_item(fence, '```json\n{"a": 1}\n```') == 1.0 and check_item(fence, '```\n[1]\n```') == 1.0
    assert check_item(fence, '```python\n{"a": 1}\n```') == 0.0
