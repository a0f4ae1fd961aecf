"""Concurrency, faults and bad input: each becomes a clear one-line refusal or a correct result.

Real parts only: subprocesses for locks, kills, Ctrl-C and a file-size limit (a full disk as the kernel reports it),
real files for damaged data and run folders; runs on the tiny random-weight model (the mechanics do not depend on
the weights).
"""
from __future__ import annotations

import json
import math
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from icrl_lib.analysis import load
from icrl_lib.errors import RunLockedError, UserError
from icrl_lib.paper.prompts import ICL_SYSTEM_PROMPT, ICRL_SYSTEM_PROMPT
from icrl_lib.runs.config import ExperimentConfig, build_parser, load_config
from icrl_lib.runs.durable import atomic_write_text
from icrl_lib.runs.identity import run_dir, run_name
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.record import StepRecord
from icrl_lib.runs.store import RunStore
from icrl_lib.runs.tables import test_distribution_table, tests_table, window_collapse
from icrl_lib.runs.window import cached_max_examples
from icrl_lib.tasks.task import load_task
from tests.helpers import ROOT, argv_of, assert_one_line_error, assert_same_run, cli, small, trec_copy

# --- 1. one process per run folder ------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from icrl_lib.runs.config import ExperimentConfig
    from icrl_lib.runs.identity import run_dir
    from icrl_lib.runs.store import RunStore
    config = ExperimentConfig(task_name="trec_coarse", output_dir=sys.argv[1])
    store = RunStore.open(run_dir(config), config)
    print(store.path, flush=True)
    time.sleep(600)
""")


def test_a_held_run_folder_is_refused_with_the_holders_pid_until_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        folder = holder.stdout.readline().strip()
        config = ExperimentConfig(task_name="trec_coarse", output_dir=str(tmp_path))
        with pytest.raises(RunLockedError, match=f"{folder} is in use by process {holder.pid} on "):
            RunStore.open(run_dir(config), config)
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock with the process
        holder.wait()
    with RunStore.open(run_dir(config), config) as store:
        assert str(store.path) == folder
        with pytest.raises(RunLockedError):  # also within one process: a second open of a held folder
            RunStore.open(run_dir(config), config)
    RunStore.open(run_dir(config), config).close()  # released by close()


@pytest.mark.tiny
def test_two_processes_started_together_one_runs_the_other_is_refused(tmp_path, tiny, tiny_reference):
    reference = tiny_reference
    config = small(tmp_path / "both", model_name=tiny.name)
    argv = [sys.executable, "-m", "icrl_lib", *argv_of(config)]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    refused = subprocess.CompletedProcess([], 2, *outs[codes.index(2)])
    folder = Path(config.output_dir) / reference.run_dir.name
    assert_one_line_error(refused, f"run folder {folder} is in use by process {procs[codes.index(0)].pid}")
    records = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
    assert_same_run(records, reference.records)


def test_side_files_are_merged_under_a_lock_and_written_atomically(tmp_path):
    """Two processes fill one max-context cache at once: both keys survive, no temporary file is left."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from icrl_lib.runs.window import cached_max_examples
        def compute():
            time.sleep(1.5)  # both processes read the empty cache before either writes
            return int(sys.argv[2])
        print(cached_max_examples(Path(sys.argv[1]), "key" + sys.argv[2], compute))
    """)
    cache = tmp_path / "_cache" / "max_context_examples.json"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cache), str(n)], cwd=ROOT) for n in (7, 9)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert json.loads(cache.read_text()) == {"key7": 7, "key9": 9}
    assert sorted(p.name for p in cache.parent.iterdir()) == ["max_context_examples.json",
                                                              "max_context_examples.json.lock"]
    atomic_write_text(tmp_path / "x.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_cache", "x.json"]


def test_a_damaged_max_context_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path, caplog):
    cache = tmp_path / "max_context_examples.json"
    cache.write_text('{"m|t": 3')  # truncated by a crash or a full disk
    assert cached_max_examples(cache, "m|t", lambda: 11) == 11
    assert "damaged" in caplog.text and json.loads(cache.read_text()) == {"m|t": 11}
    assert cached_max_examples(cache, "m|t", lambda: 1 / 0) == 11  # now read from the cache


# --- 2. data source and log records checked on resume ------------------------------------------------------------

@pytest.mark.tiny
@pytest.mark.data
def test_resume_on_other_data_is_refused_and_writes_nothing(tmp_path, data_dir, tiny):
    """(A doctored log is refused by the replay check: tests/runs/test_plan.py, without a model.)"""
    a = trec_copy(data_dir, tmp_path, "a")
    config = small(tmp_path, a, model_name=tiny.name, train_k=6, test_every=3)
    first = run_experiment(config, progress=False, lm=tiny)
    assert json.loads((first.run_dir / "data.json").read_text())["source"] == f"local:{(a / 'trec').resolve()}"
    # Another copy whose training rows are in another order: the shuffled stream differs.
    b = trec_copy(data_dir, tmp_path, "b")
    lines = (b / "trec" / "train.jsonl").read_text().splitlines(keepends=True)
    (b / "trec" / "train.jsonl").write_text("".join(lines[1:] + lines[:1]))
    moved = ExperimentConfig.from_dict({**config.to_dict(), "data_dir": str(b), "train_k": 8})
    with pytest.raises(UserError, match=r"was run on other data \(training stream differ\).*" + str(b / "trec")):
        run_experiment(moved, progress=False, lm=tiny)
    assert (first.run_dir / "steps.jsonl").read_text().count("\n") == 6  # the refusal wrote nothing


# --- 3. finite floats ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["temperature", "context_p_keep", "icrl_flip_feedback_prob"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_for_every_float_field(key, value):
    with pytest.raises(ValueError, match=f"{key}: must be a finite number"):
        ExperimentConfig.from_dict({"icrl_flip_feedback": True, "icrl_flip_feedback_prob": 0.1, key: value})


def test_cli_refuses_nan_temperature_in_one_line():
    assert_one_line_error(cli("run", "--task_name", "trec_coarse", "--temperature", "nan"),
                          "temperature: must be a finite number")


# --- 4. a model that does not exist --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["nosuchorg/nosuchmodel-icrl", "./no/such/model/folder"])
def test_a_missing_model_fails_fast_in_one_line_and_leaves_no_run_folder(tmp_path, name):
    started = time.perf_counter()
    proc = cli("run", "--model_name", name, "--task_name", "trec_coarse", "--output_dir", str(tmp_path / "out"))
    assert time.perf_counter() - started < 60
    assert_one_line_error(proc, f"model_name: {name!r}",
                          "not an embedded alias (smollm2-135m-instruct, smollm2-tiny-random)")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_local_folder_without_a_model_is_named(tmp_path):
    assert_one_line_error(cli("run", "--model_name", str(tmp_path), "--task_name", "trec_coarse",
                              "--output_dir", str(tmp_path / "out")), f"model_name: the local folder {tmp_path}",
                          "config.json")


# --- 5. OS errors --------------------------------------------------------------------------------------------------

def test_output_dir_that_is_a_file_or_unwritable_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(cli("run", "--task_name", "trec_coarse", "--output_dir", str(afile)),
                          f"output_dir: {afile} is a file")
    unwritable = Path("/sys/icrl-outputs")  # sysfs refuses new folders, even to root
    assert_one_line_error(cli("run", "--task_name", "trec_coarse", "--output_dir", str(unwritable)),
                          f"output_dir: writing in {unwritable} failed")


@pytest.mark.tiny
def test_a_full_disk_is_one_line_and_the_run_resumes_after(tmp_path, tiny, tiny_reference):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), as a full disk refuses them (ENOSPC)."""
    reference = tiny_reference
    config = small(tmp_path / "full", model_name=tiny.name)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process

    proc = subprocess.run([sys.executable, "-m", "icrl_lib", *argv_of(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)
    folder = Path(config.output_dir) / reference.run_dir.name
    assert_one_line_error(proc, f"{folder}/", "failed: ", "File too large", "rerun the same command to resume")
    done = (folder / "steps.jsonl").read_text().count("\n")
    assert 0 < done < 30
    resumed = run_experiment(config, progress=False, lm=tiny)
    assert_same_run(resumed.records, reference.records)


# --- 6. damaged files ---------------------------------------------------------------------------------------------

@pytest.mark.data
def test_damaged_data_files_are_named_with_their_line(tmp_path, data_dir):
    root = trec_copy(data_dir, tmp_path)
    train = root / "trec" / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:99] + ['{"text": "cut in the mid\n'] + lines[100:]))
    with pytest.raises(UserError, match=f"{train} line 100: not valid JSON"):
        load_task("trec_coarse", root)
    row = json.loads(lines[6])
    del row["coarse_label"]
    train.write_text("".join(lines[:6] + [json.dumps(row) + "\n"] + lines[7:]))
    with pytest.raises(UserError, match=f"{train} line 7: no column 'coarse_label' \\(label_column in "):
        load_task("trec_coarse", root)
    train.write_text("".join(lines))
    (root / "trec" / "test.jsonl").write_text("")
    proc = cli("run", "--task_name", "trec_coarse", "--data_dir", str(root), "--output_dir", str(tmp_path / "o"))
    assert_one_line_error(proc, f"trec_coarse.yaml: source.mirror: {root / 'trec' / 'test.jsonl'} is empty")


def test_a_damaged_run_folder_config_is_named(tmp_path):
    config = ExperimentConfig(task_name="trec_coarse", output_dir=str(tmp_path))
    with RunStore.open(run_dir(config), config) as store:
        saved = store.path / "config.yaml"
    saved.write_text("model_name: [unclosed\n")
    with pytest.raises(UserError, match=f"{saved}: not a valid run configuration .*line 2"):
        RunStore.open(run_dir(config), config)


# --- 7. sizes beyond the data ---------------------------------------------------------------------------------------

def test_sizes_larger_than_the_data_are_refused_naming_the_split_size(tmp_path):
    out = str(tmp_path / "out")
    assert_one_line_error(cli("run", "--task_name", "trec_coarse", "--test_k", "600", "--output_dir", out),
                          "test_k: 600 is more than the 500 rows of the test split of trec_coarse; allowed: 1..500")
    assert_one_line_error(cli("run", "--task_name", "trec_coarse", "--train_k", "6000", "--output_dir", out),
                          "train_k: 6000 is more than the 5452 training rows of trec_coarse; allowed: 1..5452")
    assert list(Path(out).iterdir()) == []


# --- 8. one reader of the step log ----------------------------------------------------------------------------------

def fake_run(folder: Path, n: int) -> Path:
    """A run folder with ``n`` well-formed records (no model)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(ExperimentConfig(task_name="trec_coarse").to_dict()))
    records = [{"step": i, "context": {"size": i, "positive": i}, "train": {
                "example": i, "input": "Question: ?", "prediction": "human", "answer": "human", "reward": 1,
                "feedback": 1, "flipped": False}, "tokens": {"prompt": 10, "computed": 2},
                "test": {"predictions": ["human"], "answers": ["human"], "accuracy": 1.0} if i % 10 == 0 else None}
               for i in range(n)]
    (folder / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "steps.jsonl"


def test_the_analysis_loader_drops_a_torn_last_line_and_refuses_a_corrupt_middle_line(tmp_path):
    log = fake_run(tmp_path / "runs" / "a", 30)
    with open(log, "a") as fh:
        fh.write('{"step": 30, "tor')
    assert len(load.read(tmp_path / "runs").steps) == 30
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:4] + ["{not json\n"] + lines[5:]))
    with pytest.raises(UserError, match=f"{log}: line 5 is corrupt"):
        load.read(tmp_path / "runs")
    log.write_text("".join(lines[:4] + ['{"step": 4}\n'] + lines[5:]))  # JSON, but not a step record
    with pytest.raises(UserError, match=f"{log}: line 5: malformed record"):
        load.read(tmp_path / "runs")


# --- 9 + 10. kills, Ctrl-C, debug prompts, secrets in params files -------------------------------------------------

@pytest.mark.tiny
def test_ctrl_c_is_one_line_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny):
    kw = dict(model_name=tiny.name, train_k=200, test_every=100, debug_k=4)
    reference = run_experiment(small(tmp_path / "ref", **kw), progress=False, lm=tiny)
    config = small(tmp_path / "int", **kw)
    folder = Path(config.output_dir) / reference.run_dir.name
    # A test session started in the background (`make test &`) inherits SIGINT ignored, and so would the child:
    # give it the default disposition, as a terminal's Ctrl-C finds it.
    proc = subprocess.Popen([sys.executable, "-m", "icrl_lib", *argv_of(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # a loaded machine (CI neighbours) can take minutes to import and load the model
    while not (folder / "steps.jsonl").exists() or (folder / "steps.jsonl").read_text().count("\n") < 30:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "no 30 steps logged in 600 s: nothing to interrupt mid-run"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert_one_line_error(subprocess.CompletedProcess([], proc.returncode, "", err), "interrupted at step",
                          "rerun the same command to resume", code=130)
    resumed = run_experiment(config, progress=False, lm=tiny)
    assert_same_run(resumed.records, reference.records)
    # debug_prompts.txt holds the first debug_k model calls once, as in the uninterrupted run
    assert (folder / "debug_prompts.txt").read_text() == (reference.run_dir / "debug_prompts.txt").read_text()


def test_an_hf_token_in_a_params_file_is_refused_before_papermill_runs(tmp_path):
    params = tmp_path / "leaky.yaml"
    params.write_text("task_name: trec_coarse\nhf_token: hf_leak\n")
    assert_one_line_error(cli("check", str(params)), "unknown parameter(s) ['hf_token']", "HF_TOKEN")
    proc = subprocess.run(["make", "--no-print-directory", "experiment", f"PARAMS={params}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "hf_token" in proc.stderr
    assert "-m papermill notebooks/icrl_experiment.ipynb" not in proc.stdout + proc.stderr
    assert not (ROOT / "outputs" / "leaky.ipynb").exists()


# --- found while reproducing the paper -----------------------------------------------------------------------------

@pytest.mark.tiny
def test_exemplars_count_against_an_explicit_max_context_examples(tmp_path, tiny):
    """The paper: max(0, max_context_examples - len(exemplars)) episodes besides the exemplars."""
    common = dict(model_name=tiny.name, max_context_examples=8, exemplars_per_label=1, context_p_keep=1.0, train_k=12,
                  test_every=3)
    icrl = run_experiment(small(tmp_path / "icrl", context_strategy_name="random_biased_end", **common),
                          progress=False, lm=tiny)
    assert icrl.max_context_examples == 2  # 8 - 6 exemplars (one per support team)
    assert max(r.context.size for r in icrl.records) == 8 and icrl.records[-1].context.size == 8
    icl = run_experiment(small(tmp_path / "icl", icrl=False, context_strategy_name="random_unbiased", **common),
                         progress=False, lm=tiny)
    assert len(icl.records) == 3  # tests at 0, 2, ...: 2 is the first test step with 2 episodes


@pytest.mark.tiny
def test_zero_shot_is_step_0_of_icrl_and_ignores_training_fields(tmp_path, tiny):
    result = run_experiment(small(tmp_path, model_name=tiny.name, max_context_examples=0, test_k=3, debug_k=1),
                            progress=False, lm=tiny)
    prompt = (result.run_dir / "debug_prompts.txt").read_text()
    assert ICRL_SYSTEM_PROMPT in prompt
    assert "__zeroshot__" in result.run_dir.name and "random_unbiased" not in result.run_dir.name
    same = small(tmp_path, model_name=tiny.name, max_context_examples=0, test_k=3,
                 context_strategy_name="random_biased_end", context_p_keep=1.0, train_k=99, training_seed=1)
    assert run_name(same) == result.run_dir.name
    icl_prompt = small(tmp_path, model_name=tiny.name, max_context_examples=0, test_k=3, icrl=False)
    assert "__zeroshot-icl__" in run_name(icl_prompt) and ICL_SYSTEM_PROMPT != ICRL_SYSTEM_PROMPT


def test_cli_help_states_the_cli_default_of_test_k():
    help_text = " ".join(build_parser().format_help().split())
    assert "test examples; None: the whole test split (default: None)" in help_text


def test_one_experiment_has_one_run_folder_whatever_the_number_types(tmp_path):
    from icrl_lib import notebook

    yaml_file = tmp_path / "x.yaml"
    yaml_file.write_text("temperature: 1\ncontext_p_keep: 1\nicrl_flip_feedback: true\nicrl_flip_feedback_prob: 0\n")
    from_yaml = load_config(yaml_file)
    from_cli = load_config({"temperature": 1.0, "context_p_keep": 1.0, "icrl_flip_feedback": True,
                            "icrl_flip_feedback_prob": 0.0})
    from_notebook = notebook.experiment_config({**notebook.experiment_parameter_defaults(), "temperature": 1.0,
                                                "context_p_keep": 1.0, "icrl_flip_feedback": True,
                                                "icrl_flip_feedback_prob": 0.0, "output_dir": "outputs"})
    assert from_yaml.context_p_keep == 1.0 and isinstance(from_yaml.context_p_keep, float)
    assert run_name(from_yaml) == run_name(from_cli) == run_name(from_notebook)


@pytest.mark.tiny
def test_a_larger_train_k_extends_the_run_and_progress_shows_an_eta(tmp_path, tiny, capsys):
    kw = dict(model_name=tiny.name, test_every=5, debug_k=3)
    fresh = run_experiment(small(tmp_path / "fresh", train_k=20, **kw), progress=False, lm=tiny)
    short = run_experiment(small(tmp_path / "ext", train_k=10, **kw), progress=False, lm=tiny)
    out = capsys.readouterr().out
    assert out.index(f"[icrl] run folder: {short.run_dir}") < out.index("[icrl] step 1/10")
    # The ETA counts training steps and test steps apart: step 1 already knows both (step 0 is a test step).
    first = next(line for line in out.splitlines() if line.startswith("[icrl] step 1/10"))
    assert ", tests " in first and " s each, ETA " in first and "ETA -" not in first
    longer = run_experiment(small(tmp_path / "ext", train_k=20, **kw), progress=False, lm=tiny)
    assert longer.run_dir == short.run_dir and len(longer.records) == 20
    assert_same_run(longer.records, fresh.records)
    assert (longer.run_dir / "debug_prompts.txt").read_text() == (fresh.run_dir / "debug_prompts.txt").read_text()
    assert yaml.safe_load((longer.run_dir / "config.yaml").read_text())["train_k"] == 20
    with pytest.raises(UserError, match="train_k: .* holds a run of train_k=20; train_k=10 would stop inside it"):
        run_experiment(small(tmp_path / "ext", train_k=10, **kw), progress=False, lm=tiny)


# --- collapse metrics -----------------------------------------------------------------------------------------------

def test_collapse_metrics_by_hand():
    predictions = pd.Series([None, "a", "b", None, "a", "a", "c"])
    table = window_collapse(predictions, window=3)
    # windows over the non-null predictions: - | a | ab | ab | aba | baa | aac
    assert table["window_distinct_labels"].tolist()[1:] == [1, 2, 2, 2, 2, 2]
    third = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # 0.918 bits
    assert table["window_label_entropy"].tolist()[1:] == pytest.approx([0, 1, 1, third, third, third])
    assert math.isnan(table["window_distinct_labels"][0]) and math.isnan(table["window_label_entropy"][0])


def test_test_prediction_distribution_by_hand():
    records = [StepRecord.from_json({"step": 4, "context": {"size": 1}, "train": None, "test": {
        "predictions": ["x", "x", "y", "z"], "answers": ["x", "y", "y", "y"], "accuracy": 0.5}})]
    dist = test_distribution_table(records)
    assert dist.to_dict("records") == [
        {"step": 4, "label": "x", "count": 2, "share": 0.5, "gold_share": 0.25},
        {"step": 4, "label": "y", "count": 1, "share": 0.25, "gold_share": 0.75},
        {"step": 4, "label": "z", "count": 1, "share": 0.25, "gold_share": 0.0}]
    tests = tests_table(records)
    assert tests[["distinct_predictions", "prediction_entropy"]].values.tolist() == [[3, 1.5]]
