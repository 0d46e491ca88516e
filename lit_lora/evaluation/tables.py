"""lm-eval's results as lit_lora shows them: metric rows, logger metrics (`eval/<task>/<metric>`) and one
table with a column per model. lm-eval's own `make_table` prints one model's results; nothing in lm-eval
puts several models side by side, so that table is written here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Metric:
    """One number of one task: lm-eval's `acc,none` is metric `acc` under filter `none`."""

    task: str
    metric: str
    value: float
    stderr: Optional[float]

    @property
    def key(self) -> tuple[str, str]:
        return self.task, self.metric


def metrics(results: dict[str, Any]) -> list[Metric]:
    """Every task's metrics in lm-eval's order; a filter other than `none` is kept in the name (`exact_match
    (strict-match)`), since one task can report a metric under several filters."""
    found = []
    for task, values in results["results"].items():
        for key, value in values.items():
            name, sep, filter_name = key.partition(",")
            if not sep or name.endswith("_stderr") or not _number(value):
                continue
            stderr = values.get(f"{name}_stderr,{filter_name}")
            shown = name if filter_name == "none" else f"{name} ({filter_name})"
            found.append(Metric(task, shown, float(value), float(stderr) if _number(stderr) else None))
    return found


def _number(value: Any) -> bool:
    try:
        return not isinstance(value, (bool, str)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def logged_metrics(results: dict[str, Any]) -> dict[str, float]:
    """`eval/<task>/<metric>` -> value, for a Lightning logger."""
    return {f"eval/{m.task}/{m.metric.replace(' ', '')}": m.value for m in metrics(results)}


def side_by_side(columns: list[tuple[str, dict[str, Any]]], base: Optional[str] = None) -> str:
    """One table: a row per task and metric, a column per model (value ± lm-eval's standard error), and
    after each model but the base its difference from the base (the column named `base`)."""
    per_model = [(name, {m.key: m for m in metrics(results)}) for name, results in columns]
    keys: list[tuple[str, str]] = []
    for _, found in per_model:
        keys += [k for k in found if k not in keys]
    reference = dict(per_model).get(base) if base else None
    header = ["task", "metric"]
    for name, _ in per_model:
        header += [name] + (["Δ base"] if reference is not None and name != base else [])
    rows = [header]
    for key in keys:
        row = list(key)
        for name, found in per_model:
            m = found.get(key)
            row.append("-" if m is None else f"{m.value:.4f}" + (f" ± {m.stderr:.4f}" if m.stderr is not None else ""))
            if reference is not None and name != base:
                ref = reference.get(key)
                row.append("-" if m is None or ref is None else f"{m.value - ref.value:+.4f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
