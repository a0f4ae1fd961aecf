"""The verdict tables for reading: one line per finding (:func:`summary`, :func:`markdown` for the README), every cell
(:func:`view`), both in a notebook (:func:`show`), and the committed CPU table gathered from the family notebooks'
exports (:func:`gather`, :func:`write_readme`).

A family's verdicts are exported to ``<outputs>/_analysis/<family>/verdicts.parquet`` (its ``cpu`` profile) or
``<outputs>/_analysis/<family>_<profile>/`` (another profile, e.g. ``main_headline``); the ``profile`` column keeps
the two apart, so cells of different sizes are never counted as one finding's tasks.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from icrl_lib.analysis.paper_verdicts import paper_text
from icrl_lib.analysis.verdicts import COLUMNS, NOT_MEASURED, count_text, counted_mask
from icrl_lib.paper.experiments import FAMILIES, family
from icrl_lib.runs.store import ANALYSIS_DIR

CPU_VERDICTS = "outputs/verdicts_cpu.csv"  # the CPU profiles' verdicts (committed): the README's table is made from it
README_MARKERS = ("<!-- verdicts:start -->", "<!-- verdicts:end -->")
DEFAULT_PROFILE = "cpu"
OUT_OF_SCOPE = "no task the paper claims it for"


def _uncounted(verdicts: pd.Series) -> str:
    counts = verdicts[~counted_mask(verdicts) & (verdicts != NOT_MEASURED)].value_counts()
    return ", ".join(f"{v}: {n}" for v, n in sorted(counts.items()))


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (profile,) family and finding: ours (Bonferroni-adjusted verdicts over the counted cells the paper
    claims it for; the cells not counted and why; the cells beyond the paper's tasks), sizes, and what the paper's own
    numbers show."""
    table = table if "profile" in table else table.assign(profile=DEFAULT_PROFILE)
    papers = {name: paper_text(family(name)) for name in table["family"].unique()}
    rows = []
    for (profile, name, finding), cells in table.groupby(["profile", "family", "finding_id"], sort=False):
        scoped = cells[cells["scope"] == "paper"]
        judged = scoped[counted_mask(scoped["verdict"])]
        beyond = cells[(cells["scope"] != "paper") & counted_mask(cells["verdict"])]
        measured = cells[cells["verdict"] != NOT_MEASURED]
        uncounted = _uncounted(scoped["verdict"])
        ours = "; ".join(x for x in (count_text(judged["verdict_adjusted"]),
                                     f"not counted: {uncounted}" if uncounted else "") if x)
        ours = ours or (NOT_MEASURED if len(scoped) else OUT_OF_SCOPE)
        rows.append({"profile": profile, "family": name, "finding_id": finding, "finding": cells["finding"].iloc[0],
                     "reading": cells["reading"].fillna("").iloc[0], "ours": ours,
                     "ours_beyond_the_paper": count_text(beyond["verdict"]),
                     "tasks": ", ".join(sorted(set(measured["task_name"]))),
                     "seeds": int(measured["n_seeds"].max()) if len(measured) else 0,
                     "queries": int(measured["n_queries"].max()) if len(measured) else 0,
                     "paper": papers[name].get(finding, "no numbers in the paper")})
    return pd.DataFrame(rows, columns=["profile", "family", "finding_id", "finding", "reading", "ours",
                                       "ours_beyond_the_paper", "tasks", "seeds", "queries", "paper"])


VIEW_COLUMNS = {"claim": "claim", "effect": "effect", "interval_95": "95% interval", "n": "n × seeds", "mde": "MDE",
                "verdict": "verdict", "verdict_adjusted": "adjusted", "tasks_supported": "k of n", "note": "note"}


def _is_rho(row) -> bool:
    return "[rho]" in str(row.get("left", "")) or str(row.get("interval", "")).startswith("Fisher")


def _points(row, key) -> str:
    """A value of a row in points (accuracies, shares) or as a number (ρ)."""
    value = row[key]
    if pd.isna(value):
        return "–"
    return f"{value:+.2f}" if _is_rho(row) else f"{100 * value:+.1f}"


def _mde(row) -> str:
    """The minimum detectable effect, never above the measure's range (a difference of accuracies is at most 100
    points, of ρ at most 2): beyond it, "> 100" says that no effect could be detected."""
    if pd.isna(row["mde"]):
        return "–"
    if _is_rho(row):
        return "> 2" if row["mde"] > 2 else f"{row['mde']:.2f}"
    return "> 100" if row["mde"] > 1 else f"{100 * row['mde']:.1f}"


def view(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell for reading, indexed by finding id and task (and model, profile when there are several): claim,
    effect and 95% interval in points (ρ as a number), n × seeds, minimum detectable effect (capped at what the
    measure allows), the verdict and its Bonferroni-adjusted twin, k of n, note."""
    table = table if "profile" in table else table.assign(profile=DEFAULT_PROFILE)
    rows = table.to_dict("records")
    shown = pd.DataFrame({
        "profile": table["profile"], "finding": table["finding_id"], "task": table["task_name"],
        "model": table["model_name"], "claim": table["claim"], "effect": [_points(r, "effect") for r in rows],
        "interval_95": [f"[{_points(r, 'low')}, {_points(r, 'high')}]" if not pd.isna(r["low"]) else "–"
                        for r in rows],
        "n": [f"{int(r['n_queries'])} × {int(r['n_seeds'])}" if r["n_seeds"] else "–" for r in rows],
        "mde": [_mde(r) for r in rows], "verdict": table["verdict"], "verdict_adjusted": table["verdict_adjusted"],
        "tasks_supported": table["tasks_supported"],
        "note": ["; ".join(x for x in (r["scope"] if r["scope"] != "paper" else "", r["note"]) if isinstance(x, str)
                           and x) for r in rows]})
    index = (["profile"] if shown["profile"].nunique() > 1 else []) + ["finding", "task"] + \
        (["model"] if shown["model"].nunique() > 1 else [])
    return shown.drop(columns=[c for c in ("profile", "model") if c not in index]).set_index(index).rename(
        columns=VIEW_COLUMNS)


SUMMARY_COLUMNS = {"finding": "finding", "reading": "margin", "ours": "ours (Bonferroni over the counted tasks)",
                   "ours_beyond_the_paper": "ours, beyond the paper's tasks", "tasks": "tasks", "seeds": "seeds",
                   "queries": "n", "paper": "the paper's own numbers"}


def summary_view(summary_table: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary` for reading: indexed by (profile,) finding id, plain headers, no empty column."""
    index = (["profile"] if summary_table["profile"].nunique() > 1 else []) + ["finding_id"]
    shown = summary_table.drop(columns=[c for c in ("profile", "family") if c not in index]).set_index(index).rename(
        columns=SUMMARY_COLUMNS)
    empty = [c for c in shown.columns if (shown[c].astype(str) == "").all()]
    return shown.drop(columns=empty)


def show(table: pd.DataFrame) -> None:
    """Display a verdict table (one family's or several): one line per finding, then every cell (notebooks). Cells
    wrap (a max width per column) so the note never hides behind a horizontal scroll."""
    from IPython.display import display

    styles = [{"selector": "th.row_heading, td", "props": "text-align: left; vertical-align: top"},
              {"selector": "td, th", "props": "white-space: normal; max-width: 22em; overflow-wrap: break-word"}]
    display(summary_view(summary(table)).style.set_table_styles(styles))
    display(view(table).style.set_table_styles(styles))


def markdown(summary_table: pd.DataFrame) -> str:
    """``summary`` as the README's verdict table (a test keeps the README equal to it)."""
    lines = ["| profile | finding (the paper's claim) | ours: 135M on CPU (Bonferroni over the counted tasks) | tasks, "
             "seeds × n (test queries; test points for ρ; training predictions for a collapse) | the paper's own "
             "numbers |", "|---|---|---|---|---|"]
    for r in summary_table.to_dict("records"):
        beyond = f"; beyond the paper's tasks: {r['ours_beyond_the_paper']}" if r["ours_beyond_the_paper"] else ""
        reading = f" *({r['reading']})*" if r["reading"] else ""
        sizes = f"{r['tasks']}, {r['seeds']} × {r['queries']}" if r["seeds"] else "–"
        lines.append(f"| `{r['family']}` {r['profile']} | {r['finding']}{reading} | {r['ours']}{beyond} | {sizes} | "
                     f"{r['paper']} |")
    return "\n".join(lines)


def gather(outputs_dir: str | Path) -> pd.DataFrame:
    """Every exported verdict table under ``<outputs_dir>/_analysis/<family>[_<profile>]/verdicts.parquet``, in the
    order of :data:`~icrl_lib.paper.experiments.FAMILIES` (the cpu profile first), with its ``profile``."""
    root = Path(outputs_dir) / ANALYSIS_DIR
    tables = []
    for name in FAMILIES:
        paths = [root / name / "verdicts.parquet", *sorted(root.glob(f"{name}_*/verdicts.parquet"))]
        for path in (p for p in paths if p.is_file()):
            profile = path.parent.name.removeprefix(f"{name}_") if path.parent.name != name else DEFAULT_PROFILE
            tables.append(pd.read_parquet(path).assign(profile=profile))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["profile", *COLUMNS])


def read_snapshot(path: str | Path) -> pd.DataFrame:
    """The committed verdict table (CSV): empty text stays text, numbers stay numbers."""
    numbers = ("left_value", "right_value", "effect", "low", "high", "level", "mde", "adjusted_level")
    table = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in numbers})
    return table.astype({"n_queries": int, "n_seeds": int, "floor": bool})


def merge(recorded: pd.DataFrame | None, fresh: pd.DataFrame) -> pd.DataFrame:
    """``recorded`` with every (family, profile) that ``fresh`` has replaced by ``fresh``'s rows."""
    if recorded is None or recorded.empty:
        return fresh.reset_index(drop=True)
    done = set(zip(fresh["family"], fresh["profile"]))
    kept = recorded[[key not in done for key in zip(recorded["family"], recorded["profile"])]]
    order = {name: i for i, name in enumerate(FAMILIES)}
    merged = pd.concat([kept, fresh], ignore_index=True)
    rank = merged["family"].map(order) * 2 + (merged["profile"] != DEFAULT_PROFILE)
    return merged.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def write_readme(readme: Path, table: pd.DataFrame) -> None:
    """Replace the README's verdict table (between :data:`README_MARKERS`) with the one of ``table``."""
    text = readme.read_text(encoding="utf-8")
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no verdict table markers {start} ... {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{markdown(summary(table))}\n{end}{tail}", encoding="utf-8")
