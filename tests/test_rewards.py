"""--reward specs and --reward_weights (nanopost/rewards.py)."""
import pytest

from nanopost.rewards import parse_reward, parse_weights, reward_fn_for


def test_parse_reward_sources():
    assert parse_reward("graders") == (True, {})
    assert parse_reward("rm:runs/rm/ckpt") == (False, {"rm": "runs/rm/ckpt"})
    assert parse_reward(" rm:a/ckpt , graders ") == (True, {"rm": "a/ckpt"})


@pytest.mark.parametrize("spec", ["", ",", "rm:", "rm", "grader", "xx:ckpt", "rm:a,rm:b"])
def test_parse_reward_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="reward"):
        parse_reward(spec)


def test_parse_weights():
    assert parse_weights("") == {}
    assert parse_weights("math_grader=1, reward_model=0.5") == {"math_grader": 1.0, "reward_model": 0.5}
    for bad in ["math_grader", "=1", "math_grader=x"]:
        with pytest.raises(ValueError, match="not name=number"):
            parse_weights(bad)


def test_graders_alone_need_no_reward_fn():
    assert reward_fn_for(True, {}, "cpu", None) is None


def test_weights_must_be_finite():
    for bad in ["math_grader=nan", "math_grader=inf", "code_grader=-inf"]:
        with pytest.raises(ValueError, match="finite"):
            parse_weights(bad)


def test_a_misspelt_weight_is_refused():
    from nanopost.rewards import check_weights
    records = [{"prompt": [], "metadata": {"scorer": "math_grader", "ground_truth": "1"}}]
    check_weights({"math_grader": 2.0}, records, {})
    check_weights({"reward_model": 1.0}, records, {"rm": "x"})
    with pytest.raises(ValueError, match="math_grade"):
        check_weights({"math_grade": 2.0}, records, {})


@pytest.fixture(scope="module")
def tok():
    from nanopost.tokenizer import Tokenizer
    return Tokenizer.train("the capital of france is paris. " * 20, 300)


PROMPT = [{"role": "user", "content": "the capital of france"}]


@pytest.mark.parametrize("metadata, words", [
    ({"scorer": "math_grader"}, "ground_truth"),
    ({"scorer": "nope"}, "unknown scorer"),
    ({"scorer": "rubric", "rubric": [{"name": "a", "check": "nope"}]}, "unknown check"),
    ({"scorer": "rubric", "rubric": [{"name": "a", "check": "uppercase"}], "rubric_aggregate": "avg"}, "aggregate"),
    ({"scorer": "rubric", "rubric": "/etc/hostname"}, "list"),
    ("scorer", "object"),
    (None, "object"),
])
def test_bad_metadata_is_refused_when_loaded(tok, metadata, words):
    """Caught at load time (named by file:line, skippable with --skip_bad), not at some later step."""
    from nanopost.rewards import rl_record
    with pytest.raises(ValueError, match=words):
        rl_record({"prompt": PROMPT, "metadata": metadata}, tok, 100, need_scorer=False)


def test_good_records_pass(tok):
    from nanopost.rewards import rl_record
    rl_record({"prompt": PROMPT, "metadata": {"scorer": "rubric", "rubric": [{"name": "a", "check": "uppercase"}]}},
              tok, 100)
    record = rl_record({"prompt": PROMPT}, tok, 100, need_scorer=False)  # a reward model needs no scorer
    assert record["metadata"] == {}
    with pytest.raises(ValueError, match="scorer"):
        rl_record({"prompt": PROMPT}, tok, 100)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_group_methods_need_two_completions_per_prompt(algo, tmp_path):
    """With one completion the group std is NaN (GRPO) or there are no others (RLOO)."""
    import train_rl
    with pytest.raises(ValueError, match="num_generations"):
        train_rl.main(["--algo", algo, "--num_generations", "1", "--out", str(tmp_path)])
