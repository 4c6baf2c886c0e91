"""
Step-labelled reasoning chains for process supervision (§6): a verifier that labels every step
of a worked answer, chains with wrong steps injected at a known rate, the §8-like record that
carries the labels, and the aggregation of step scores into one response reward.

    python -m nanopost.process --out data/chains.jsonl --n 4000 --wrong_step_rate 0.5

A chain is the answer of the world's step-by-step families, one step a line, then the answer:

    Compute 3 + 4 * 5 step by step.          Solve: (x - 3)(x + 5) = 0. Give the roots ...
    4 * 5 = 20                                x - 3 = 0, so x = 3
    3 + 20 = 23                               x + 5 = 0, so x = -5
    Answer: 23                                Answer: -5, 3

The verifier (label_steps) replays the problem: a line is correct iff it follows from the problem
and the previous lines *as written* and its arithmetic is exact. A step `LHS = N` must rewrite a
part of the current expression (the problem with each earlier step's LHS replaced by the N that
step stated, so an earlier error propagates and a step that builds on it is judged given it) and
N must equal LHS exactly; a roots step must solve a factor of the problem; `Answer: …` must state
what the steps arrived at. So "4 * 5 = 21 / 3 + 21 = 24 / Answer: 24" is labelled 0, 1, 1 (one wrong
step, propagated: wrong final answer) and "4 * 5 = 21 / 3 + 20 = 23 / Answer: 23" is 0, 0, 0 (the
later lines do not follow from the chain, although the final answer is right: the case an
outcome-only reward cannot see). The PRM reads a response's last step at its <|end|> token, so that
verdict covers stopping there too: a response that does not end with its `Answer:` line gets 0 on its
last line ("4 * 5 = 20" alone is 0: the chain stops before it is done). Without that rule a PRM whose
reward is the weakest step is hacked by stopping after one correct line.

Record (JSONL, one a line; `load_chains` reads it with file:line errors):

    {"prompt": [{"role": "user", "content": "Compute 3 + 4 * 5 step by step."}],
     "response": "4 * 5 = 21\\n3 + 21 = 24\\nAnswer: 24",
     "labels": [0, 1, 1],                        # one per line of response.split("\\n"): 1 correct, 0 wrong
     "metadata": {"scorer": "math_grader", "ground_truth": "23"}, "family": "steps", "injected": {...}}
"""
import argparse
import json
import math
import random
import re
from fractions import Fraction

from nanopost import world
from nanopost.data import write_jsonl
from nanopost.tokenizer import ConversationError, render_prompt

FAMILIES = {"steps": world.steps, "roots": world.roots}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: Fraction(a) / b}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
MAX_TOKENS = 200

# ----------------------------------------------------------------------------------------------
# integer expressions: an int, or (op, left, right)


def parse_expr(text, division=False):
    """'(3 + 4) * 5' -> ('*', ('+', 3, 4), 5). Integers, + - * (and / with division=True: the
    world's chains never divide), parentheses, a leading minus on a number (-3) or a bracket
    (-(2 + 1) = ('-', 0, ...)). Raises ValueError on anything else, and on more than MAX_TOKENS
    tokens (the parser recurses)."""
    precedence = PRECEDENCE if division else {op: p for op, p in PRECEDENCE.items() if op != "/"}
    tokens = re.findall(r"\d+|[-+*/()]|\S", text)
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"expression longer than {MAX_TOKENS} tokens")
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom():
        t = take() if peek() is not None else None
        if t == "(":
            node = binary(1)
            if peek() != ")":
                raise ValueError(f"unbalanced parentheses in {text!r}")
            take()
            return node
        if t == "-" and peek() is not None and peek().isdigit():
            return -int(take())
        if t == "-" and peek() == "(":
            return ("-", 0, atom())
        if t is not None and t.isdigit():
            return int(t)
        raise ValueError(f"not an integer expression: {text!r}")

    def binary(level):
        node = atom()
        while peek() in precedence and precedence[peek()] >= level:
            op = take()
            node = (op, node, binary(precedence[op] + 1))
        return node

    tree = binary(1)
    if peek() is not None:
        raise ValueError(f"not an integer expression: {text!r}")
    return tree


def evaluate(tree):
    return tree if isinstance(tree, int) else OPS[tree[0]](evaluate(tree[1]), evaluate(tree[2]))


def canonical(tree):
    """The same expression up to the order of the operands of + and *."""
    if isinstance(tree, int):
        return tree
    op, a, b = tree[0], canonical(tree[1]), canonical(tree[2])
    return (op,) + tuple(sorted((a, b), key=repr)) if op in "+*" else (op, a, b)


def replace_subtree(tree, target, value):
    """tree with its first (left-to-right) subtree equal to target (canonically) replaced by value;
    None when target is not a subtree with an operation."""
    if isinstance(tree, int):
        return None
    if canonical(tree) == canonical(target):
        return value
    for i in (1, 2):
        new = replace_subtree(tree[i], target, value)
        if new is not None:
            return tree[:i] + (new,) + tree[i + 1:]
    return None


def render(tree, parent=0):
    if isinstance(tree, int):
        return str(tree)
    op = tree[0]
    text = f"{render(tree[1], PRECEDENCE[op])} {op} {render(tree[2], PRECEDENCE[op] + 1)}"
    return f"({text})" if PRECEDENCE[op] < parent else text


def reducible(tree):
    """The leftmost operation whose operands are both numbers (the next step of a chain)."""
    if isinstance(tree[1], int) and isinstance(tree[2], int):
        return tree
    return reducible(tree[1]) if not isinstance(tree[1], int) else reducible(tree[2])


# ----------------------------------------------------------------------------------------------
# problems and their chains

STEPS_PROMPT = re.compile(r"Compute (.+) step by step\.")
ROOTS_PROMPT = re.compile(r"Solve: \(x ([+-]) (\d+)\)\(x ([+-]) (\d+)\) = 0\.")
ROOTS_STEP = re.compile(r"x ([+-]) (\d+) = 0, so x = (-?\d+)")
ANSWER = re.compile(r"Answer: (-?\d+(?:, -?\d+)*)")


def problem_of(prompt):
    """The user's text -> ('steps', expression tree) | ('roots', [root of factor 1, root of factor 2]) | None."""
    m = STEPS_PROMPT.search(prompt)
    if m:
        return "steps", parse_expr(m.group(1))
    m = ROOTS_PROMPT.search(prompt)
    if m:
        return "roots", [int(m.group(2)) if m.group(1) == "-" else -int(m.group(2)),
                         int(m.group(4)) if m.group(3) == "-" else -int(m.group(4))]
    return None


def factor(root):
    return f"x - {root}" if root >= 0 else f"x + {-root}"


def write_chain(problem, wrong_line=None, k=0, propagate=True, operand=False):
    """The worked answer of a problem, one step a line then 'Answer: …'. With wrong_line = i,
    line i's result is off by k; operand=True instead puts k on the line's first operand (steps)
    or its factor (roots) and states the exact result of that altered line: right arithmetic on
    numbers the problem does not have (the answer line, having no operand, is off by k). propagate=True
    makes later lines build on the wrong value, propagate=False makes them use the true one (as if
    the error were silently repaired)."""
    kind, spec = problem
    lines = []
    if kind == "steps":
        stated = spec  # the expression as the chain has rewritten it so far
        while not isinstance(stated, int):
            node = shown = reducible(stated)
            if len(lines) == wrong_line and operand:
                shown = (node[0], node[1] + k if node[1] + k >= 0 else node[1] - k, node[2])
            value = evaluate(shown) + (k if len(lines) == wrong_line and not operand else 0)
            lines.append(f"{render(shown)} = {value}")
            stated = replace_subtree(stated, node, value if propagate else evaluate(node))
        return lines + [f"Answer: {stated + (k if len(lines) == wrong_line else 0)}"]
    stated_roots = []
    for root in spec:
        shown = root + (k if len(lines) == wrong_line and operand else 0)
        value = shown + (k if len(lines) == wrong_line and not operand else 0)
        lines.append(f"{factor(shown)} = 0, so x = {value}")
        stated_roots.append(value if propagate else root)
    answer = ", ".join(map(str, sorted(stated_roots)))
    if len(lines) == wrong_line:  # the answer line itself: one root off by k
        answer = ", ".join(map(str, sorted([stated_roots[0] + k] + stated_roots[1:])))
    return lines + [f"Answer: {answer}"]


def label_steps(prompt, response):
    """The verifier: 1/0 per line of response.split('\\n') (see the module docstring). A prompt
    that is not a known step-by-step problem raises ValueError."""
    problem = problem_of(prompt)
    if problem is None:
        raise ValueError(f"not a step-by-step problem the verifier knows: {prompt!r:.80}")
    kind, spec = problem
    state, used, labels = spec, [], []   # steps: the current expression; roots: the factors solved so far
    for line in response.split("\n"):
        line = line.strip()
        answer = ANSWER.fullmatch(line)
        if answer:
            values = [int(v) for v in answer.group(1).split(", ")]
            if kind == "steps":
                labels.append(int(isinstance(state, int) and values == [state]))
            else:
                labels.append(int(len(used) == len(spec) and sorted(values) == sorted(r for _, r in used)))
            continue
        if kind == "roots":
            m = ROOTS_STEP.fullmatch(line)
            root = None if m is None else (int(m.group(2)) if m.group(1) == "-" else -int(m.group(2)))
            free = [i for i, r in enumerate(spec) if r == root and i not in [j for j, _ in used]]
            ok = bool(free) and int(m.group(3)) == root
            if free:
                used.append((free[0], int(m.group(3))))  # the stated root, right or wrong, is what later lines build on
            labels.append(int(ok))
            continue
        lhs, eq, rhs = line.rpartition(" = ")
        try:
            lhs_tree, value = parse_expr(lhs), int(rhs)
        except ValueError:
            labels.append(0)
            continue
        new_state = None if isinstance(state, int) or isinstance(lhs_tree, int) else replace_subtree(state, lhs_tree, value)
        if new_state is None:  # not a rewrite of the current expression: does not follow from the chain
            labels.append(0)
            continue
        labels.append(int(evaluate(lhs_tree) == value))
        state = new_state
    if not ANSWER.fullmatch(response.split("\n")[-1].strip()):  # stops before its answer: the last step, read at <|end|>, is wrong
        labels[-1] = 0
    return labels


# ----------------------------------------------------------------------------------------------
# step-labelled records


def chain_records(n, split, seed, wrong_step_rate=0.5, max_k=3, system_prob=0.3, families=FAMILIES,
                  operand_error_rate=0.0, truncate_rate=0.0):
    """n labelled chains of the world's step-by-step tasks in a split. A chain gets one wrong line
    (any line, the answer included) with probability wrong_step_rate: off by k, 1 <= |k| <= max_k,
    in its result or, at operand_error_rate, in its first operand (write_chain), later lines
    propagating the error or not (half each). At truncate_rate a chain then stops early, after a
    random number of its step lines and before its answer. Labels come from the verifier.
    Held-out ('eval') chains are distinct (prompt, response) pairs, possibly fewer than n."""
    rng = random.Random(f"{seed}|chains|{split}")
    tasks = world.sample_tasks(4 * n if split == "eval" else n, split, seed, families)
    records, seen = [], set()
    for t in tasks:
        if len(records) == n:
            break
        problem = problem_of(t.prompt)
        n_lines = len(write_chain(problem))
        injected = None
        if rng.random() < wrong_step_rate:
            k = rng.choice([1, -1]) * rng.randint(1, max_k)
            injected = {"line": rng.randrange(n_lines), "k": k, "propagate": rng.random() < 0.5}
            if operand_error_rate:  # drawn only when asked for, so the default data stay as they were
                injected["operand"] = rng.random() < operand_error_rate
            lines = write_chain(problem, injected["line"], k, injected["propagate"], injected.get("operand", False))
        else:
            lines = write_chain(problem)
        if truncate_rate and rng.random() < truncate_rate:  # drawn only when asked for (old data unchanged)
            lines = lines[:rng.randint(1, len(lines) - 1)]
            injected = {**(injected or {}), "truncated": len(lines)}
        response = "\n".join(lines)
        system = [{"role": "system", "content": rng.choice(world.SYSTEM_PROMPTS)}] if rng.random() < system_prob else []
        if split == "eval" and (t.prompt, response) in seen:
            continue
        seen.add((t.prompt, response))
        records.append({"prompt": system + [{"role": "user", "content": t.prompt}], "response": response,
                        "labels": label_steps(t.prompt, response), "metadata": t.metadata, "family": t.family,
                        "injected": injected})
    return records


def check_chain(record, tok=None, max_len=None):
    """Validate one step-labelled record; returns (prompt messages, lines, labels). Raises
    ValueError (ConversationError, ...) saying what is wrong; data.load_records adds file:line."""
    prompt, response, labels = record.get("prompt"), record.get("response"), record.get("labels")
    if not isinstance(prompt, list) or not prompt or not isinstance(prompt[-1], dict) or prompt[-1].get("role") != "user":
        raise ConversationError("'prompt' must be a non-empty list of messages ending with a user turn")
    if not isinstance(response, str) or not response.strip():
        raise ValueError("'response' must be a non-empty string (the steps, one a line)")
    lines = response.split("\n")
    if not isinstance(labels, list) or len(labels) != len(lines):
        raise ValueError(f"'labels' must be a list with one label per line of 'response' "
                         f"({len(lines)} lines, got {labels!r:.60})")
    if any(isinstance(v, bool) or v not in (0, 1) for v in labels):
        raise ValueError(f"'labels' must be 0 (wrong step) or 1 (correct step), got {labels!r:.60}")
    if tok is not None:
        render_prompt(tok, prompt, max_len)  # unknown roles, bad order, too long: ConversationError
    return prompt, lines, [int(v) for v in labels]


# ----------------------------------------------------------------------------------------------
# step scores -> one response reward

AGGREGATES = ("min", "product", "last")


def aggregate(step_scores, how="min"):
    """Step probabilities p_1..p_S (each P(step correct)) -> a response reward (§6 PRM):
    min_s p_s (the weakest step), Π_s p_s (every step correct, if independent), or p_S (the last)."""
    if not step_scores:
        raise ValueError("a response with no steps has no process reward")
    if how == "min":
        return min(step_scores)
    if how == "product":
        return math.prod(step_scores)
    if how == "last":
        return step_scores[-1]
    raise ValueError(f"unknown aggregate {how!r}; use {', '.join(AGGREGATES)}")


def main():
    p = argparse.ArgumentParser(description="Write step-labelled chains (§6 process supervision) to JSONL.")
    p.add_argument("--out", default="data/chains.jsonl", help="output file")
    p.add_argument("--n", type=int, default=4000, help="number of chains")
    p.add_argument("--split", default="train", help="train | eval (held-out items)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--wrong_step_rate", type=float, default=0.5, help="share of chains with one injected wrong line")
    p.add_argument("--operand_error_rate", type=float, default=0.0,
                   help="share of the wrong lines whose operand, not result, is off (see write_chain)")
    p.add_argument("--truncate_rate", type=float, default=0.0, help="share of chains that stop before their answer")
    args = p.parse_args()
    records = chain_records(args.n, args.split, args.seed, args.wrong_step_rate, operand_error_rate=args.operand_error_rate,
                            truncate_rate=args.truncate_rate)
    write_jsonl(args.out, records)
    steps = [v for r in records for v in r["labels"]]
    print(json.dumps({"out": args.out, "chains": len(records), "steps": len(steps),
                      "wrong_steps": steps.count(0), "wrong_chains": sum(0 in r["labels"] for r in records)}))


if __name__ == "__main__":
    main()
