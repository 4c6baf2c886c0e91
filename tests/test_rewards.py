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
