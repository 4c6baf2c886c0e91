"""
The record-level checks of the SFT data-quality pipeline (§3). Each is a plain function of one
(prompt, answer) turn that returns None (no defect found, or nothing it can judge) or a short
detail string naming the defect. nanopost/quality.py runs them over a file.

  math_label      arithmetic answers recomputed from the prompt (or metadata.ground_truth) and
                  compared with graders.math_grader                               (label noise)
  contradiction   the answer names a country or capital the question does not ask about: a wrong
                  capital, or §7's sky question answered with Washington, D.C.  (label noise)
  code            code answers run against their tests in the sandbox (graders.code_grader, never
                  in this process); code with no known tests must at least parse
  reasoning       every "expression = value" line is recomputed; each step must use the previous
                  step's result; a roots chain must solve the prompt's factors; the final answer
                  must follow from the steps                                       (fake reasoning)
  answer_format   the answer has the format the prompt asks for ('Answer:' line, uppercase)

The built-in world's families are recognised from their prompt templates (world.py), so records
without metadata are checked too; a turn no rule recognises is kept, not rejected.
"""
import ast
import random
import re
from fractions import Fraction

from nanopost.evaluate import normalize
from nanopost.graders import FORMAT_CHECKS, final_answer, math_grader, parse_numbers
from nanopost.process import evaluate, parse_expr
from nanopost.world import CODE_FUNCS, COUNTRIES, code_task

# ----------------------------------------------------------------------------- exact arithmetic

def eval_arithmetic(text):
    """Integer expression with + - * / and parentheses -> Fraction, or None if text is not one.
    Parsed by process.parse_expr (the PRM's step verifier uses the same): nothing is eval()'d."""
    try:
        return Fraction(evaluate(parse_expr(text, division=True)))
    except (ValueError, ZeroDivisionError):
        return None


def _num(value):
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"

# ----------------------------------------------------------------------------- the world's tasks

_ARITH_PROMPT = re.compile(r"(?:What is |Compute |Calculate )?(-?\d+ [-+*] -?\d+)(?:\?| = \?|\.)")
_STEPS_PROMPT = re.compile(r"Compute (.+) step by step\.")
_ROOTS_PROMPT = re.compile(r"Solve: \(x ([-+]) (\d+)\)\(x ([-+]) (\d+)\) = 0\..*")
_CODE_PROMPT = re.compile(r"Write a Python function (\w+)\((\w+)\) that .+\.")
_STEP_LINE = re.compile(r"(.+?)\s*=\s*(-?\d+)\s*")
_ROOT_LINE = re.compile(r"x ([-+]) (\d+) = 0, so x = (-?\d+)")
_PROSE_ROOTS = re.compile(r"so x = (-?\d+) or x = (-?\d+)\.?", re.IGNORECASE)
CODE_TASKS = {f["name"].format(k=k): (f, k) for f in CODE_FUNCS for k in range(0, 100)}


def recompute_math(prompt):
    """The ground truth of a world maths prompt, recomputed from its text: (truth, ordered) or None."""
    if m := _ARITH_PROMPT.fullmatch(prompt.strip()):
        return _num(eval_arithmetic(m.group(1))), True
    if (m := _STEPS_PROMPT.fullmatch(prompt.strip())) and (value := eval_arithmetic(m.group(1))) is not None:
        return _num(value), True
    if m := _ROOTS_PROMPT.fullmatch(prompt.strip()):
        return ", ".join(str(r) for r in sorted(_prompt_roots(m))), False
    return None


def _prompt_roots(m):
    """(x - a)(x + b) = 0 -> [a, -b] (the roots, in factor order)."""
    s1, a, s2, b = m.groups()
    return [int(a) if s1 == "-" else -int(a), int(b) if s2 == "-" else -int(b)]


def code_tests(prompt):
    """(entry_point, [[args, expected], ...]) for a world code prompt, else None: the world's tests
    and more, computed by the world's reference implementation (CODE_FUNCS' impl)."""
    m = _CODE_PROMPT.fullmatch(prompt.strip())
    if not m or m.group(1) not in CODE_TASKS:
        return None
    f, k = CODE_TASKS[m.group(1)]
    task = code_task(f, k)
    # the world's 6 tests are weak (x % 11 == 0 passes the tests of is_multiple_of_10): add 24 more
    # draws and the boundaries: integers k - 1, k, k + 1; lists of length k - 1 ... k + 3
    rng = random.Random(f"{m.group(1)}|quality")
    extra = [f["make_args"](rng) for _ in range(24)]
    extra += [[v] for v in (k - 1, k, k + 1) if isinstance(extra[0][0], int)]
    extra += [[list(range(n))] for n in (k - 1, k, k + 1, k + 3) if isinstance(extra[0][0], list) and n >= 0]
    tests = task.metadata["public"] + task.metadata["hidden"] + [[args, f["impl"](k)(*args)] for args in extra]
    return task.metadata["entry_point"], tests

# ----------------------------------------------------------------------------- the checks


def math_label(prompt, answer, ground_truth=None, ordered=True):
    """Label noise in maths: the answer's final value against the ground truth (metadata's, else
    recomputed from a world prompt), by graders.math_grader. None when there is no ground truth,
    and for answers with no parseable final answer (answer_format judges those)."""
    if ground_truth is None:
        found = recompute_math(prompt)
        if found is None:
            return None
        ground_truth, ordered = found
    if parse_numbers(final_answer(answer)) is None:
        return None
    if math_grader(answer, ground_truth, ordered=ordered) < 1.0:
        return f"answer {final_answer(answer)!r}, recomputed {ground_truth!r}"
    return None


def _place_names():
    """[(normalised name, country it belongs to)] for every country and capital of the world."""
    names = []
    for country, capital in COUNTRIES:
        names += [(normalize(country.removeprefix("the ")), country), (normalize(capital), country)]
    return names


PLACES = _place_names()


def _places_in(text):
    text = normalize(text)
    return {country for name, country in PLACES if re.search(r"(?<![a-z])" + re.escape(name) + r"(?![a-z])", text)}


def contradiction(prompt, answer):
    """The answer names a place (a country, or a capital standing for its country) that the
    prompt does not mention: a capital question answered about another country, or §7's
    'What color is the sky?' answered 'Washington, D.C.'."""
    asked, named = _places_in(prompt), _places_in(answer)
    foreign = sorted(named - asked)
    if not foreign:
        return None
    about = f"the question is about {', '.join(sorted(asked))}" if asked else "the question names no country"
    return f"answer is about {', '.join(foreign)}; {about}"


def code(prompt, answer, tests=None, grade=None):
    """Code that does not run or fails its tests. tests: (entry_point, [[args, expected], ...])
    (default: the world's, from the prompt); grade(code, entry_point, tests) -> fraction passed
    runs the sandbox (quality.SandboxGrader). Without tests, code answers must parse (ast.parse
    compiles nothing and runs nothing)."""
    tests = tests or code_tests(prompt)
    looks_like_code = answer.lstrip().startswith(("def ", "class ", "import ", "```"))
    if tests is None:
        if not looks_like_code:
            return None
        try:
            ast.parse(answer.strip().strip("`").removeprefix("python\n"))
        except SyntaxError as e:
            return f"does not parse: {e.msg} (line {e.lineno})"
        return None
    passed = grade(answer, *tests)
    return None if passed >= 1.0 else f"passes {passed:.0%} of {len(tests[1])} tests of {tests[0]}"


def reasoning(prompt, answer):
    """Fake reasoning in a step-by-step answer:
    - a line 'expression = value' whose value is wrong (recomputed exactly);
    - a step that does not use the previous step's result (a chain with a gap);
    - a chain that ends at another value than the prompt's expression (world 'steps' prompts);
    - a roots line 'x - a = 0, so x = a' that is wrong or solves a factor the prompt lacks;
    - a final answer that does not follow from the steps (last step's value / the roots found)."""
    lines = [l.strip() for l in answer.strip().splitlines() if l.strip()]
    steps = []
    for i, line in enumerate(lines, 1):
        m = _STEP_LINE.fullmatch(line)
        if m and (lhs := eval_arithmetic(m.group(1))) is not None:
            if lhs != int(m.group(2)):
                return f"step {i} '{line}' is wrong ({m.group(1).strip()} = {_num(lhs)})"
            steps.append((m.group(1), int(m.group(2))))
    for (_, prev), (expr, _) in zip(steps, steps[1:]):
        if str(abs(prev)) not in re.findall(r"\d+", expr):
            return f"step '{expr}' does not use the previous result {prev}"
    final = parse_numbers(final_answer(answer)) if len(lines) > 1 else None
    if steps and final is not None and len(final) == 1 and final[0] != steps[-1][1]:
        return f"final answer {_num(final[0])} does not follow from the last step ({steps[-1][1]})"
    if (m := _STEPS_PROMPT.fullmatch(prompt.strip())) and steps:
        if (value := eval_arithmetic(m.group(1))) is not None and value != steps[-1][1]:
            return f"the chain computes {steps[-1][1]}, not {m.group(1)} = {_num(value)}"
    roots = _ROOTS_PROMPT.fullmatch(prompt.strip())
    found = []
    for i, line in enumerate(lines, 1):
        if m := _ROOT_LINE.fullmatch(line):
            sign, a, x = m.groups()
            if int(x) != (int(a) if sign == "-" else -int(a)):
                return f"step {i} '{line}' is wrong"
            if roots and int(x) not in _prompt_roots(roots):
                return f"step {i} '{line}' solves a factor the equation does not have"
            found.append(int(x))
    if found:
        prose = _PROSE_ROOTS.fullmatch(lines[-1])
        claimed = [int(v) for v in prose.groups()] if prose else final
        if roots and sorted(found) != sorted(_prompt_roots(roots)):
            return "the steps do not solve every factor"
        if claimed is not None and sorted(claimed) != sorted(found):
            return f"final answer {lines[-1]!r} does not follow from the steps (x = {sorted(found)})"
    return None


def answer_format(prompt, answer):
    """The answer ignores a format the prompt asks for: an 'Answer:' line, or uppercase."""
    if "'Answer:'" in prompt and not FORMAT_CHECKS["answer_line"][1](answer, True):
        return "the prompt asks for an 'Answer:' line; the answer has none"
    if re.match(r"reply in uppercase|write the word \w+ in uppercase", prompt.strip(), re.IGNORECASE) \
            and not FORMAT_CHECKS["uppercase"][1](answer, True):
        return "the prompt asks for uppercase"
    return None
