"""Command line: ``python -m icrl_lib run <the paper's run_experiment.py flags>``, ``sweep``, ``check``,
``max-examples``, ``verdicts`` and ``inspect`` (one logged step of a run, rebuilt without the model).

Every command of the paper's README runs with only the program name changed, e.g.
``python -m icrl_lib run --model_name microsoft/Phi-3.5-mini-instruct --task_name banking77 ...``.
A user's mistake (a parameter, a data file, a run folder in use, a full disk) ends in one line on stderr and exit
status 2; Ctrl-C in one line and status 130. Only a bug in icrl itself prints a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys

from icrl_lib.runs.config import config_from_argv

COMMANDS = {"run": "run one experiment (paper flags)",
            "sweep": "run a sweep of experiments (params/sweeps/*.yaml) locally, on Slurm or on Ray; --status",
            "check": "check an experiment notebook's params YAML without running it (what make experiment does first)",
            "max-examples": "max context examples for a window",
            "verdicts": "the paper's findings across families: summary of the family notebooks' verdict tables",
            "inspect": "one logged step of a run folder: its context, prompt, tokens, prediction, reward and feedback"}


def _max_examples(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="icrl max-examples", description="Most episodes whose worst-case prompt "
                                     "fits 95%% of a token window (the paper's find_max_examples_given_max_window.py).")
    parser.add_argument("--model_name", default="smollm2-135m-instruct", help="embedded alias, hub id or local folder")
    parser.add_argument("--task_name", required=True,
                        help="task, e.g. banking77, clinic150_top10 or a task file "
                             "params/tasks/support_tickets/task.yaml")
    parser.add_argument("--max_window_tokens", type=int, default=None, help="window in tokens (default: the model's)")
    parser.add_argument("--data_dir", default=None, help="local data folder or 'hub' (default: $ICRL_DATA_DIR, else "
                        "../shared/data beside the checkout if present, else the hub)")
    parser.add_argument("--no-icrl", dest="icrl", action="store_false", help="ICL episodes (no feedback turns)")
    args = parser.parse_args(argv)
    from icrl_lib.engine.models import resolve_model
    from icrl_lib.runs.window import find_max_context_examples
    from icrl_lib.tasks.task import parse_task_name

    task = parse_task_name(args.task_name)  # fail on a bad name before loading the model (parsed once)
    resolve_model(args.model_name)
    n = find_max_context_examples(args.model_name, task, args.max_window_tokens, args.data_dir, args.icrl)
    print(f"{n} examples")
    return 0


def _check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="icrl check", description="Check a params YAML of "
                                     "notebooks/icrl_experiment.ipynb as papermill would pass it (-f): its keys and "
                                     "values, output_dir, model_name and the data; loads no model.")
    parser.add_argument("params", help="YAML file of notebook parameters, e.g. params/quickstart.yaml")
    args = parser.parse_args(argv)
    from icrl_lib import notebook
    from icrl_lib.runs.plan import prepare

    plan = prepare(notebook.experiment_config(notebook.checked_parameters(args.params)))
    context = "zero-shot" if plan.config.zero_shot else f"{plan.budget} episodes per context"
    print(f"{args.params}: ok; run folder {plan.run_dir}; {plan.schedule.steps} steps, "
          f"{len(plan.schedule.test_steps)} test steps of {len(plan.data.test)} queries, {context}")
    return 0


def _inspect(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="icrl inspect", description="Rebuild one logged step of a run from its "
                                     "folder (log and plan, no weights): the prompt the model saw, its tokens, the "
                                     "context's episodes and what changed since the step before, the prediction, the "
                                     "reward and the feedback.")
    parser.add_argument("run_dir", help="a run folder, e.g. outputs/<task>__<model>__...__<hash>")
    parser.add_argument("--step", type=int, required=True, help="the step (0 = the first)")
    parser.add_argument("--query", type=int, help="a test query of the step (a test step) instead of its training "
                        "query")
    parser.add_argument("--probs", action="store_true", help="load the model and show the distribution over labels "
                        "the prediction was drawn from (at the run's temperature)")
    args = parser.parse_args(argv)
    from icrl_lib.runs.inspector import inspect_step, render_step

    print(render_step(inspect_step(args.run_dir, args.step, args.query, probs=args.probs)))
    return 0


def _sweep(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="icrl sweep", description="Run every run of a sweep not done yet (resumes "
                                     "half-done runs, retries failed ones, leaves runs held by another process).")
    parser.add_argument("sweep", help="sweep YAML, e.g. params/sweeps/paper_grid.yaml")
    parser.add_argument("--launcher", choices=("local", "slurm", "ray"), help="overrides the file's launcher")
    parser.add_argument("--workers", type=int, help="runs at once (overrides the file's workers)")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="only the runs whose config field has this value (repeatable)")
    parser.add_argument("--status", action="store_true", help="print the status table and exit (works while the "
                        "sweep runs elsewhere)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their folders; run nothing")
    args = parser.parse_args(argv)
    import pandas as pd

    from icrl_lib.sweeps.launchers import run_sweep
    from icrl_lib.sweeps.sweep import filtered, load_sweep, status, summary

    sweep = filtered(load_sweep(args.sweep, launcher=args.launcher, workers=args.workers), args.where)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
        if args.status or args.dry_run:
            table = status(sweep)
            columns = ["run_dir"] if args.dry_run else ["method", "task_name", "seed", "state", "steps_done", "steps",
                                                         "error"]
            print(table[columns].to_string())
            print(summary(table))
            return 0
        table = run_sweep(sweep)
        bad = table[table["state"] != "done"]
        if not bad.empty:
            print(bad[["run", "state", "error"]].to_string(index=False), file=sys.stderr)
    return 0 if bad.empty else 1


def _verdicts(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="icrl verdicts", description="Gather the verdict tables the family notebooks "
                                     "exported (<outputs>/_analysis/<family>[_<profile>]/verdicts.parquet) and print "
                                     "one line per finding; --snapshot and --readme record them for the README.")
    parser.add_argument("--outputs", default="outputs", help="the families' output_dir (relative: to the checkout)")
    parser.add_argument("--snapshot", action="store_true", help=f"write the table to {CPU_VERDICTS_HELP}: the "
                        "profiles found replace theirs, the others keep their recorded rows")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's verdict table from the snapshot")
    args = parser.parse_args(argv)
    import pandas as pd

    from icrl_lib.analysis import verdict_tables as verdicts
    from icrl_lib.paths import project_root, resolve_path

    root = project_root()
    table = verdicts.gather(resolve_path(args.outputs))
    if table.empty and not args.readme:
        print(f"no verdict tables under {resolve_path(args.outputs)}/_analysis: execute family notebooks first "
              "(make family F=<name>)", file=sys.stderr)
        return 2
    snapshot_path = root / verdicts.CPU_VERDICTS
    if args.snapshot:
        recorded = verdicts.read_snapshot(snapshot_path) if snapshot_path.is_file() else None
        verdicts.merge(recorded, table).to_csv(snapshot_path, index=False)
        print(f"wrote {snapshot_path} (profiles from {resolve_path(args.outputs)}: "
              f"{', '.join(sorted({f'{f} {p}' for f, p in zip(table['family'], table['profile'])}))})")
    if args.readme:
        verdicts.write_readme(root / "README.md", verdicts.read_snapshot(snapshot_path))
        print(f"rewrote the verdict table of {root / 'README.md'} from {verdicts.CPU_VERDICTS}")
    if not table.empty:
        with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 90):
            print(verdicts.summary(table).drop(columns=["ours_beyond_the_paper", "finding_id"]).to_string(index=False))
    return 0


CPU_VERDICTS_HELP = "outputs/verdicts_cpu.csv (the CPU profiles' verdicts, committed)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m icrl_lib`` and the ``icrl`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m icrl_lib {" + ",".join(COMMANDS) + "} [flags]  (--help after a command for its flags)\n"
              + "\n".join(f"  {k:13s} {v}" for k, v in COMMANDS.items()), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if argv[0] == "max-examples":
            return _max_examples(argv[1:])
        if argv[0] == "check":
            return _check(argv[1:])
        if argv[0] == "sweep":
            return _sweep(argv[1:])
        if argv[0] == "verdicts":
            return _verdicts(argv[1:])
        if argv[0] == "inspect":
            return _inspect(argv[1:])
        config = config_from_argv(argv[1:])
        from icrl_lib.runs.loop import run_experiment

        result = run_experiment(config, progress=sys.stderr.isatty())
        print(f"run folder: {result.run_dir}")
        return 0
    except KeyboardInterrupt as err:
        print(f"error: {err or 'interrupted; rerun the same command to resume'}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # not wrapped where it happened: still one line, with the path
        where = f" {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}:{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
