"""
LLM-as-judge for evaluation (§10): a judge model compares or rates the answers of checkpoints.

Pairwise win rate against a baseline. Each pair (answer of the checkpoint, answer of the baseline
to the same question) is judged under every principle of the constitution in both orders by
judge.judge_preference (position swap: p_k = ½ (J(a, b) + 1 − J(b, a)), combined over principles
by weighted log-odds), giving P(checkpoint ≻ baseline) = p. The pair's outcome is

    win   (1)    if p > ½ + tie_margin
    loss  (0)    if p < ½ − tie_margin
    tie   (½)    otherwise

and   win rate = (wins + ½ ties) / n,   with a bootstrap interval (it is the mean of the outcomes;
ties make it a three-valued mean, not a binomial rate). A judge that always prefers whatever it
sees first gives J(a, b) = J(b, a) = 1, so p = ½: every pair is a tie and the win rate is ½.
Two identical answers are a tie too.

Pointwise 1-5. A pointwise judge is any callable pointwise(questions, responses, rubric) -> [score
in [1, 5]], rubric being the written POINTWISE_RUBRIC below (a bigger model or an API reads it).
The built-in one (model_pointwise) asks the built-in judge model one yes/no question per principle
of the constitution ("Does the response follow the principle?", preference_world.judge_prompt),
reads its probabilities p_k of "yes" and maps their weighted mean linearly onto the scale:

    score = 1 + 4 · Σ_k w_k p_k / Σ_k w_k        (w_k: the constitution's weights)

With the built-in constitution (direct 8, correct 4, format 2, concise 1; Σ = 15) and a judge
sure of its verdicts, the anchors of the written rubric come out exactly (see POINTWISE_RUBRIC).
"""
from nanopost.evals import bootstrap_interval, mean_with_interval
from nanopost.judge import judge_preference, model_judge

POINTWISE_RUBRIC = """Rate the response to the question from 1 to 5.
5    answers the question directly, correctly, in the format the user asked for, and concisely
4.2  direct and correct, but not in the requested format or padded with filler
3.1  a direct answer, but a wrong one (4.2 and 3.1 stand for 1 + 4*12/15 and 1 + 4*8/15)
1    no answer: it continues the question the way web text does, or answers something else
Intermediate scores: 1 + 4 * (8*direct + 4*correct + 2*format + 1*concise) / 15, criteria in [0, 1]."""

def pairwise_outcomes(judge, constitution, questions, responses, baseline, tie_margin=0.1):
    """Outcome per pair (1 win, ½ tie, 0 loss) of responses against baseline, both orders
    (module docstring); -> (outcomes, P(response ≻ baseline) per pair)."""
    if not 0 <= tie_margin < 0.5:
        raise ValueError(f"tie_margin must be in [0, 0.5), got {tie_margin}")
    if not len(questions) == len(responses) == len(baseline):
        raise ValueError(f"{len(questions)} questions, {len(responses)} responses, {len(baseline)} baseline answers")
    p = judge_preference(judge, constitution, questions, responses, baseline).tolist()
    outcomes = [1.0 if x > 0.5 + tie_margin else 0.0 if x < 0.5 - tie_margin else 0.5 for x in p]
    return outcomes, p

def win_rate(outcomes):
    """{"win_rate", "low", "high", "wins", "ties", "losses", "n"} from outcomes in {1, ½, 0}:
    win rate = (wins + ½ ties) / n with a bootstrap interval."""
    if not outcomes:
        raise ValueError("win_rate needs at least one outcome")
    low, high = bootstrap_interval(outcomes)
    return {"win_rate": sum(outcomes) / len(outcomes), "low": low, "high": high,
            "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
            "losses": sum(o == 0.0 for o in outcomes), "n": len(outcomes)}

def model_pointwise(judge_model, tok, constitution):
    """The built-in pointwise judge (module docstring): score = 1 + 4 Σ w_k p_k / Σ w_k. A prompt
    too long for the judge's context gets p_k = ½ for that principle."""
    verdicts = model_judge(judge_model, tok).verdicts
    total = sum(w for w, _ in constitution)

    def pointwise(questions, responses, rubric=POINTWISE_RUBRIC):
        scores = [0.0] * len(questions)
        for weight, principle in constitution:
            for i, p in enumerate(verdicts(questions, responses, principle)):
                scores[i] += weight * (0.5 if p is None else p)
        return [1 + 4 * s / total for s in scores]

    return pointwise

def pointwise_scores(pointwise, questions, responses, rubric=POINTWISE_RUBRIC):
    """Mean 1-5 score with a bootstrap interval, the per-response scores, and how many responses
    round to each grade. Scores outside [1, 5] are a judge bug and raise."""
    scores = [float(s) for s in pointwise(questions, responses, rubric)]
    if len(scores) != len(responses) or any(not 1 <= s <= 5 for s in scores):
        raise ValueError(f"a pointwise judge must return one score in [1, 5] per response, got {scores[:5]}...")
    out = mean_with_interval(scores)
    out["grades"] = {g: sum(round(s) == g for s in scores) for g in range(1, 6)}
    out["scores"] = scores
    return out

def judge_questions(prompts):
    """The question a judge is shown: the last user turn of each prompt."""
    return [p[-1]["content"] for p in prompts]
