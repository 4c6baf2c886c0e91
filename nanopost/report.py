"""
The stage report card (§2, §10): the stages of a pipeline side by side, from their run folders.

    python eval.py report runs/base runs/sft runs/dpo runs/grpo runs/eval --out runs/report
    # -> runs/report/report.md (+ curve_<metric>.png per training curve when matplotlib is installed)

A run folder is anything a nanopost script wrote with --out: summary.json (the final JSON line) and
metrics.jsonl (one line per logged step). A training run becomes one column, named after its folder,
whose rows are the numbers of its summary. An eval.py folder (summary "stage": "eval") adds its
evaluation rows to the column of the training run whose checkpoint it evaluated (matched by the
summary's "ckpt" path), and a column of its own for a checkpoint no given run produced.

Cells with an interval read "0.550 [0.41, 0.68]" (95%: Wilson for rates, bootstrap for means).
matplotlib is optional: without it the report is written without pictures, and says so.
"""
import json
import math
import os

INTERVAL_KEYS = ("rate", "mean", "win_rate", "ppl")  # the point estimate of an interval dict
CURVES = ("loss", "reward", "kl", "heldout_accuracy", "heldout_preference_rate", "rewards/margins",
          "rewards/accuracies", "accuracy")
SKIP = ("data", "ckpt", "heldout_curve", "logps_curve", "checkpoints", "config")


def interval_rows(results, prefix=""):
    """Nested results -> [(name, value, low, high, n)]: every dict holding an estimate and its
    interval becomes a row; other numbers become rows without interval; lists are skipped."""
    rows = []
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            point = next((k for k in INTERVAL_KEYS if k in value), None)
            if point is not None and "low" in value and "high" in value:
                rows.append((name, value[point], value["low"], value["high"], value.get("n")))
            else:
                rows += interval_rows(value, name + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((name, value, None, None, None))
    return rows


def cell(value, low=None, high=None):
    """'0.550 [0.41, 0.68]', or the number alone."""
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text if low is None else f"{text} [{low:.2f}, {high:.2f}]"


def format_table(rows, title=""):
    """Rows (name, value, low, high, n) -> an aligned plain-text table."""
    lines = [(name, cell(v, lo, hi), "" if n is None else str(n)) for name, v, lo, hi, n in rows]
    width = max([len(r[0]) for r in lines] + [6])
    vwidth = max([len(r[1]) for r in lines] + [20])
    out = [title] if title else []
    out.append(f"{'metric':<{width}}  {'value [95% interval]':<{vwidth}}  n")
    out += [f"{name:<{width}}  {value:<{vwidth}}  {n}" for name, value, n in lines]
    return "\n".join(out)


def markdown_table(columns, keys=None):
    """{column name: {row key: (name, value, low, high, n)}} -> a Markdown table, one column per
    name, rows in `keys` order (default: every key, first seen first); '–' where a column lacks a row."""
    names = list(columns)
    if keys is None:
        keys = list(dict.fromkeys(k for n in names for k in columns[n]))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [cell(*columns[n][key][1:4]) if key in columns[n] else "–" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_run(run_dir):
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir}: no summary.json (is it a nanopost run folder?)")
    with open(path) as f:
        summary = json.load(f)
    metrics = []
    mpath = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(mpath):
        with open(mpath) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        metrics.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{mpath}:{lineno}: not JSON: {e.msg}") from None
    return summary, metrics


def _norm(path):
    return os.path.normpath(os.path.abspath(path)) if path else None


def report_card(run_dirs, out, plots=True):
    """Write out/report.md (and curve PNGs when matplotlib is importable) for the given run folders;
    -> {"report": path, "plots": [paths], "columns": [names], "matplotlib": bool}."""
    columns, curves, by_ckpt = {}, {}, {}
    evals = []
    for run_dir in run_dirs:
        summary, metrics = _read_run(run_dir)
        if summary.get("stage") == "eval":
            evals.append(summary)
            continue
        name = os.path.basename(os.path.normpath(run_dir))
        rows = [r for r in interval_rows({k: v for k, v in summary.items() if k not in SKIP})]
        columns[name] = {r[0]: r for r in rows}
        by_ckpt[_norm(summary.get("ckpt"))] = name
        curves[name] = metrics
    for summary in evals:
        for ckpt, results in summary.get("checkpoints", {}).items():
            name = by_ckpt.get(_norm(ckpt)) or ckpt
            column = columns.setdefault(name, {})
            for r in interval_rows({"eval": results}):
                column[r[0]] = r
    os.makedirs(out, exist_ok=True)
    names = list(columns)
    keys = []
    for name in names:  # rows in first-seen order: training rows, then evaluation rows
        keys += [k for k in columns[name] if k not in keys]
    keys = [k for k in keys if not k.startswith("eval/")] + [k for k in keys if k.startswith("eval/")]
    lines = ["# Report card", "", "Columns are stages (run folders); eval/ rows come from `eval.py` "
             "(95% intervals: Wilson for rates, bootstrap for means).", "", markdown_table(columns, keys)]
    pngs, have_mpl = (_plot_curves(curves, out) if plots else ([], False))
    lines += [""] + ([f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs] if have_mpl else
                     ["(training curves not drawn: matplotlib is not installed; `pip install matplotlib` for PNGs)"])
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"report": path, "plots": pngs, "columns": names, "matplotlib": have_mpl}


def _plot_curves(curves, out):
    """One PNG per metric in CURVES that some run logged, a line per run. -> (paths, matplotlib?)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], False
    paths = []
    for metric in CURVES:
        runs = {name: [(m["step"], m[metric]) for m in ms if isinstance(m.get(metric), (int, float))]
                for name, ms in curves.items()}
        runs = {name: pts for name, pts in runs.items() if pts}
        if not runs:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, pts in runs.items():
            ax.plot(*zip(*pts), label=name, marker="." if len(pts) < 20 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out, f"curve_{metric.replace('/', '_')}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths, True
