"""orl study: study files, the results store, the local and Ray launchers and the statistics."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from orl.cli import main as orl_main
from orl.study import ResultsStore, StudyError, load_study
from orl.study.places import Places
from orl.study.progress import Progress, inherited_minutes
from orl.study.report import BEGIN, END, report
from orl.study.runner import check_ray_address, pending
from orl.study.spec import RunSpec, expected_minutes
from orl.study.store import split_records

from .test_train_agent import write_pendulum_like

TINY = {
    "agent": {"name": "dt"}, "model": {"embed_dim": 16, "n_layer": 1, "n_head": 1},
    "sampler": {"context_len": 4, "batch_size": 8, "rtg_scale": 1.0},
    "train": {"steps": 6, "log_every": 3, "checkpoint_every": 3, "warmup_steps": 2},
    "eval": {"max_steps": 10}, "run": {"logger": "csv"},
}


def write_study(tmp_path, **changes):
    """A tiny study of Pendulum-like data: 2 variants x 2 seeds (``changes`` edit the file)."""
    data = tmp_path / "pendulum-tiny.hdf5"
    if not data.exists():
        write_pendulum_like(data)
    (tmp_path / "configs").mkdir(exist_ok=True)
    base = {**TINY, "data": {"datasets": [str(data)], "eval_tasks": ["Pendulum-v1"]}}
    (tmp_path / "configs" / "tiny.yaml").write_text(yaml.safe_dump(base))
    study = {"base": "../configs/tiny.yaml", "seeds": [0, 1],
             "variants": {"narrow": {"model.embed_dim": 8}, "wide": {"model.embed_dim": 16}},
             "eval": {"episodes": 2, "num_envs": 2, "score": "return"},
             "pairs": [["wide", "narrow"]], "budget": {"minutes_per_run": 0.1}, **changes}
    path = tmp_path / "studies" / "tiny.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def store_of(tmp_path):
    return ResultsStore(tmp_path / "results" / "tiny")


def study_args(tmp_path, *args):
    return [*args, "--runs-dir", str(tmp_path / "runs")]


def test_study_file_expands_variants_axes_and_seeds(tmp_path):
    path = write_study(tmp_path, axes={"lr": {"slow": {"train.lr": 1e-4}, "fast": {"train.lr": 1e-3}}})
    study = load_study(path)
    assert [r.key for r in study.runs][:4] == ["narrow+slow-s0", "narrow+slow-s1",
                                               "narrow+fast-s0", "narrow+fast-s1"]
    assert len(study.runs) == 8
    run = study.runs[0]
    assert run.config["model"]["embed_dim"] == 8 and run.config["train"]["lr"] == 1e-4
    assert run.config["train"]["steps"] == 6  # from the base config
    assert run.config["eval"]["episodes"] == 2 and run.config["run"]["wandb_group"] == "tiny"
    assert run.config["run"]["seed"] == 0 and study.runs[1].config["run"]["seed"] == 1
    assert len({r.config_hash for r in study.runs}) == 8  # seeds differ, so do hashes
    assert study.select(["wide"]) == [r for r in study.runs if r.variant == "wide"]
    todo = pending(study, Places.of(study, tmp_path / "runs"))
    assert [r.key for r in todo[:4]] == ["narrow+slow-s0", "narrow+fast-s0", "wide+slow-s0", "wide+fast-s0"]
    places = Places.of(study, tmp_path / "runs")
    places.run_dir(study.runs[-1]).mkdir(parents=True)  # wide+fast-s1 started: it goes first
    assert [r.key for r in pending(study, places)[:3]] == ["wide+fast-s1", "narrow+slow-s0", "narrow+fast-s0"]
    assert [r.key for r in study.select(["fast"])] == [r.key for r in study.runs if "+fast" in r.key]


@pytest.mark.parametrize("changes, message", [
    ({"seeds": []}, "seeds is empty"),
    ({"variants": {"bad": {"train.stepz": 5}}}, "run bad-s0: Unknown config key 'train.stepz'"),
    ({"variants": {"bad": {"stepz": 5}}}, "variants.bad: unknown key 'stepz'"),
    ({"variantz": {}}, "Unknown config key 'variantz'"),
    ({"pairs": [["wide", "nope"]]}, "pair ['wide', 'nope'] must name"),
    ({"evals": {"x": {"variants": ["nope"]}}}, "evals.x names unknown variants"),
    ({"budget": {"minutes": {"nope": 3}}}, "budget.minutes names unknown variants ['nope']"),
    ({"paper": {"values": {"nope": {"mean": 0.5}}}}, "paper.values names unknown conditions ['nope']"),
    ({"paper": {"values": {"wide": {"mean": "high"}}}}, "paper.values.wide must map metric names"),
    ({"variants": {"bad": {"agent.name": "nope"}}}, "run bad-s0: agent"),
])
def test_bad_study_files_fail_before_anything_runs(tmp_path, changes, message):
    path = write_study(tmp_path, **changes)
    with pytest.raises(StudyError, match=None) as err:
        load_study(path)
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()


def write_child(tmp_path, name="child", **options):
    path = tmp_path / "studies" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(options, sort_keys=False))
    return path


def test_an_extending_study_takes_the_protocol_and_picks_variants(tmp_path):
    write_study(tmp_path, page="methods", overrides={"train.steps": 4, "train.lr": 1e-3},
                         budget={"minutes_per_run": 0.1, "minutes": {"narrow": 0.2, "wide": 0.3}},
                         paper={"values": {"wide": {"mean": 0.5}}})
    child = write_child(tmp_path, extends="tiny.yaml", overrides={"train.lr": 5e-4},
                        variants=["wide"], eval={"episodes": 3})
    study = load_study(child)
    assert [r.key for r in study.runs] == ["wide-s0", "wide-s1"]
    config = study.runs[0].config
    assert config["train"]["steps"] == 4 and config["train"]["lr"] == 5e-4  # merged, its own wins
    assert config["model"]["embed_dim"] == 16 and config["eval"]["episodes"] == 3
    assert study.file.eval.score == "return" and study.file.budget.minutes == {"wide": 0.3}
    assert study.file.pairs == [] and study.file.paper.values == {} and study.file.page == ""
    # the same runs written out in full (over the parent file) hash the same
    full = write_study(tmp_path, overrides={"train.steps": 4, "train.lr": 5e-4},
                       variants={"wide": {"model.embed_dim": 16}},
                       eval={"episodes": 3, "num_envs": 2, "score": "return"}, pairs=[])
    assert [r.config_hash for r in load_study(full).runs] == [r.config_hash for r in study.runs]


def test_an_extending_study_is_estimated_from_its_parents_records(tmp_path, capsys):
    parent = load_study(write_study(tmp_path, budget={"minutes_per_run": 60}))
    child_path = write_child(tmp_path, extends="tiny.yaml", overrides={"train.lr": 5e-4},
                             variants=["wide", "narrow"])
    child = load_study(child_path)
    assert child.parent == parent.path.resolve()
    assert orl_main(["study", "status", str(child_path), *study_args(tmp_path)]) == 0
    assert "4 run(s) left = 4.0 core-hours" in capsys.readouterr().out  # the budget: 4 x 60 min
    store = ResultsStore(Places.of(parent, tmp_path / "runs").results)
    for run, seconds in zip(parent.runs, [600, 1200]):  # narrow-s0: 10 min, narrow-s1: 20 min
        store.append({"key": run.key, "config_hash": run.config_hash, "wall_s": seconds})
    assert inherited_minutes(child, Places.of(child, tmp_path / "runs")) == {"narrow": [10.0, 20.0]}
    assert orl_main(["study", "status", str(child_path), *study_args(tmp_path)]) == 0
    assert "4 run(s) left = 2.5 core-hours" in capsys.readouterr().out  # 2 x 15 + 2 x 60 min
    assert inherited_minutes(parent, Places.of(parent, tmp_path / "runs")) == {}


@pytest.mark.parametrize("options, message", [
    ({"extends": "nope.yaml"}, "nope.yaml' does not exist"),
    ({"extends": "tiny.yaml", "variants": ["wide", "nope"]},
     "variants ['nope'] are not variants of tiny.yaml"),
    ({"extends": "child.yaml"}, "extend each other in a cycle: child.yaml -> child.yaml"),
])
def test_bad_extends_is_a_clear_error(tmp_path, options, message):
    write_study(tmp_path)
    with pytest.raises(StudyError) as err:
        load_study(write_child(tmp_path, **options))
    assert message in str(err.value)


@pytest.mark.parametrize("args, message", [
    (["run", "--workers", "-1"], "--workers and --threads must be >= 0"),
    (["run", "--threads", "-2"], "--workers and --threads must be >= 0"),
    (["report", "--reps", "0"], "the bootstrap needs reps >= 1 and seed >= 0"),
    (["report", "--seed", "-1"], "the bootstrap needs reps >= 1 and seed >= 0"),
])
def test_bad_counts_are_clear_errors(tmp_path, capsys, args, message):
    path = write_study(tmp_path)
    assert orl_main(["study", args[0], str(path), *args[1:], *study_args(tmp_path)]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_unknown_only_key_and_silent_ray_address_are_clear_errors(tmp_path, capsys):
    path = write_study(tmp_path)
    assert orl_main(["study", "run", str(path), "--only", "nope-s9", *study_args(tmp_path)]) == 2
    assert "no run, variant, condition or axis value ['nope-s9']" in capsys.readouterr().err
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StudyError, match="does not answer"):
        check_ray_address(f"127.0.0.1:{port}", timeout=1)
    assert not (tmp_path / "runs").exists()


def test_tiny_study_runs_with_two_workers_and_is_not_run_twice(tmp_path, capsys):
    path = write_study(tmp_path)
    assert orl_main(["study", "run", str(path), "--workers", "2", *study_args(tmp_path)]) == 0
    records = store_of(tmp_path).records()
    assert sorted(r["key"] for r in records) == ["narrow-s0", "narrow-s1", "wide-s0", "wide-s1"]
    record = next(r for r in records if r["key"] == "wide-s1")
    assert record["seed"] == 1 and record["config"]["model"]["embed_dim"] == 16
    assert record["steps"] == 6 and record["final"]["episodes"] == 2
    assert set(record["final"]["return"]) == {"Pendulum-v1"}
    assert len(record["datasets"]) == 1 and len(next(iter(record["datasets"].values()))) == 64
    assert record["wall_s"] > 0 and record["machine"]["cores"] >= 1 and record["orl_version"]
    assert [p["step"] for p in record.get("curve", [])] == []  # no periodic evaluation asked
    assert len(json.dumps(record)) < 8000
    capsys.readouterr()
    assert orl_main(["study", "status", str(path), *study_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 recorded" in out and "recorded runs per condition: narrow 2/2, wide 2/2" in out
    assert orl_main(["study", "run", str(path), *study_args(tmp_path)]) == 0
    assert "every selected run is recorded" in capsys.readouterr().out
    assert len(store_of(tmp_path).records()) == 4

    # a changed study file makes the old records stale: reported, not mixed in, rerun in new dirs
    path = write_study(tmp_path, overrides={"train.steps": 3})
    study = load_study(path)
    current, stale = split_records(store_of(tmp_path).records(), study.runs)
    assert current == {} and len(stale) == 4
    assert orl_main(["study", "status", str(path), *study_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 missing" in out and "4 stale record(s)" in out


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_study_resumes_with_one_record_per_run(tmp_path):
    path = write_study(tmp_path, overrides={"train.steps": 400, "train.checkpoint_every": 5})
    command = [sys.executable, "-m", "orl.cli", "study", "run", str(path), "--workers", "2",
               *study_args(tmp_path)]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    runs = tmp_path / "runs" / "tiny"
    while time.monotonic() < deadline and not list(runs.glob("*/checkpoints/step_*")):
        time.sleep(0.2)
    proc.terminate()  # SIGTERM to the study alone: it stops the runs it started
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5  # the runs' SIGTERM ends them at once
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "a run outlived its study"
    assert len(store_of(tmp_path).records()) < 4
    assert orl_main(["study", "run", str(path), "--workers", "2", *study_args(tmp_path)]) == 0
    keys = [r["key"] for r in store_of(tmp_path).records()]
    assert sorted(keys) == ["narrow-s0", "narrow-s1", "wide-s0", "wide-s1"]


def test_a_killed_attempt_counts_until_its_last_write(tmp_path):
    from orl.study.runner import _close_attempt, _open_attempt, _time_file

    run_dir = tmp_path / "runs" / "tiny" / "wide-s0-abc"
    run_dir.mkdir(parents=True)
    _open_attempt(run_dir)
    times = json.loads(_time_file(run_dir).read_text())
    times["open_since"] -= 100  # the attempt began 100 s ago ...
    _time_file(run_dir).write_text(json.dumps(times))
    (run_dir / "metrics.jsonl").write_text("{}\n")  # ... wrote now, and was killed
    _open_attempt(run_dir)
    assert json.loads(_time_file(run_dir).read_text())["seconds"] == pytest.approx(100, abs=2)
    assert _close_attempt(run_dir, 5.0) == pytest.approx(105, abs=2)
    _open_attempt(run_dir)  # a closed attempt is not counted again
    assert _close_attempt(run_dir, 1.0) == pytest.approx(106, abs=2)


def test_status_shows_the_stage_of_a_partial_continual_run(tmp_path, capsys):
    path = write_study(tmp_path)
    study = load_study(path)
    run_dir = Places.of(study, tmp_path / "runs").run_dir(study.runs[0])
    run_dir.mkdir(parents=True)
    (run_dir / "continual.json").write_text(json.dumps(
        {"stages": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "stage": 1, "steps_done": 40}))
    assert orl_main(["study", "status", str(path), *study_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "40 (stage 2/3)" in out and "1 partial, 3 missing" in out


def test_the_estimate_counts_what_a_partial_run_has_left(tmp_path, capsys):
    from orl.study.progress import share_done

    path = write_study(tmp_path, overrides={"train.steps": 20}, budget={"minutes_per_run": 60})
    study = load_study(path)
    assert orl_main(["study", "status", str(path), *study_args(tmp_path)]) == 0
    assert "4 run(s) left = 4.0 core-hours" in capsys.readouterr().out
    run_dir = Places.of(study, tmp_path / "runs").run_dir(study.runs[0])
    run_dir.mkdir(parents=True)  # 40 of its 3 x 20 steps done: a third of an hour left
    (run_dir / "continual.json").write_text(json.dumps(
        {"stages": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "stage": 2, "steps_done": 40}))
    assert orl_main(["study", "status", str(path), *study_args(tmp_path)]) == 0
    assert "4 run(s) left = 3.3 core-hours" in capsys.readouterr().out
    progress = Progress(study, Places.of(study, tmp_path / "runs"), study.runs, workers=2)
    assert progress.eta_minutes() == pytest.approx(200 / 2)  # the bar's ETA: the same 200 min
    assert str(progress.bar).endswith("0/4 [00:00, ETA 100 min]")  # tqdm's own guess left out
    progress.close()
    single = study.runs[1]
    assert share_done(single, {"state": "partial", "step": 5}) == 0.25
    assert share_done(single, {"state": "partial", "step": None}) == 0.0
    assert share_done(single, {"state": "running", "step": 25}) == 1.0
    assert share_done(single, {"state": "recorded", "step": 20}) == 1.0


def test_status_only_shows_the_selected_runs(tmp_path, capsys):
    path = write_study(tmp_path, budget={"minutes_per_run": 60})
    assert orl_main(["study", "status", str(path), "--only", "narrow", *study_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "narrow-s0" in out and "narrow-s1" in out and "wide-s" not in out
    assert "2 missing" in out and "per condition: narrow 0/2\n" in out
    assert "2 run(s) left = 2.0 core-hours" in out
    assert orl_main(["study", "status", str(path), "--only", "nope", *study_args(tmp_path)]) == 2
    assert "no run, variant, condition or axis value ['nope']" in capsys.readouterr().err


def _append_many(folder, worker, count):
    store = ResultsStore(folder)
    for i in range(count):
        store.append({"key": f"w{worker}-r{i}", "config_hash": "h", "pad": "x" * 3000})


def test_concurrent_appends_lose_nothing_and_never_duplicate(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ResultsStore(tmp_path)
    assert len(store.records()) == 100
    assert not store.append({"key": "w0-r0", "config_hash": "h"})  # already there
    assert len(store.records()) == 100


def test_a_corrupt_line_is_reported_with_its_number_and_left_alone(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"key": "a", "config_hash": "h"})
    with open(store.path, "a") as f:
        f.write('{"key": "b", "config_ha')  # a writer killed mid-line
    before = store.path.read_text()
    with pytest.raises(StudyError, match="line 2"):
        store.records()
    assert store.path.read_text() == before


def synthetic_records(study, scores):
    """Records of ``study`` whose final success per task is ``scores[label]`` (runs x tasks)."""
    out = []
    for run in study.runs:
        row = scores[run.label][run.seed]
        out.append({"key": run.key, "config_hash": run.config_hash, "seed": run.seed,
                    "final": {"success": {f"t{i}": float(v) for i, v in enumerate(row)}},
                    "metrics": {"P": float(np.mean(row))}})
    return out


def test_expected_minutes_per_variant_measured_then_budgeted(tmp_path):
    study = load_study(write_study(tmp_path, seeds=[0, 1, 2],
                                   budget={"minutes_per_run": 10, "minutes": {"narrow": 2}}))
    assert set(expected_minutes(study, {}).values()) == {2, 10}  # budget per variant, else default
    records = {"wide-s0": {"wall_s": 60}, "wide-s1": {"wall_s": 300}}
    minutes = expected_minutes(study, records)
    assert minutes["wide-s2"] == 3.0 and minutes["narrow-s2"] == 2  # wide measured: mean 3 min
    unbudgeted = load_study(write_study(tmp_path, budget={}))
    assert set(expected_minutes(unbudgeted, {}).values()) == {None}
    assert set(expected_minutes(unbudgeted, {"wide-s0": {"wall_s": 240}}).values()) == {4.0}


def numpy_iqm(scores):
    flat = np.sort(scores.ravel())
    cut = len(flat) // 4
    return flat[cut: len(flat) - cut].mean()


def numpy_stratified_ci(scores, reps, rng):
    """Percentile CI of the IQM, resampling runs with replacement within each task."""
    runs, tasks = scores.shape
    stats = [numpy_iqm(np.stack([scores[rng.integers(0, runs, runs), t] for t in range(tasks)], 1))
             for _ in range(reps)]
    return np.percentile(stats, [2.5, 97.5])


def test_report_statistics_agree_with_numpy_and_write_the_docs_section(tmp_path):
    path = write_study(tmp_path, seeds=[0, 1, 2, 3, 4, 5, 6, 7], eval={"episodes": 2, "num_envs": 2})
    study = load_study(path)
    rng = np.random.default_rng(0)
    scores = {"wide": np.clip(rng.normal(0.7, 0.15, (8, 6)), 0, 1),
              "narrow": np.clip(rng.normal(0.3, 0.15, (8, 6)), 0, 1)}
    store = store_of(tmp_path)
    for record in synthetic_records(study, scores):
        store.append(record)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tiny.md").write_text(f"# Tiny\n\nText above.\n\n{BEGIN}\nold\n{END}\n\nText below.\n")
    text = report(study, store.folder, docs=docs, reps=1000, seed=0)
    out = json.loads((store.folder / "report.json").read_text())
    for label, values in scores.items():
        point, low, high = out["aggregates"][label]["IQM"]
        assert point == pytest.approx(numpy_iqm(values), abs=1e-12)
        assert out["aggregates"][label]["mean"][0] == pytest.approx(values.mean(), abs=1e-12)
        median_of_task_means = np.median(values.mean(axis=0))  # rliable: median over tasks
        assert out["aggregates"][label]["median"][0] == pytest.approx(median_of_task_means, abs=1e-12)
        assert out["aggregates"][label]["optimality gap"][0] == pytest.approx(1 - values.mean(), abs=1e-12)
        ref_low, ref_high = numpy_stratified_ci(values, 1000, np.random.default_rng(1))
        assert low == pytest.approx(ref_low, abs=0.015) and high == pytest.approx(ref_high, abs=0.015)
        assert out["scalars"][label]["P"][0] == pytest.approx(values.mean(axis=1).mean())
    (pair,) = out["pairs"]
    assert pair["x"] == "wide" and pair["low"] > 0.5 and pair["verdict"] == "wide beats narrow"
    page = (docs / "tiny.md").read_text()
    assert page.startswith("# Tiny\n\nText above.") and page.rstrip().endswith("Text below.")
    assert "old" not in page and text in page and "not separated at this budget" in page
    assert (docs / "tiny" / "performance_profile.png").is_file()
    report(study, store.folder, docs=docs, reps=200, seed=0)  # rewriting keeps one section
    assert (docs / "tiny.md").read_text().count(BEGIN) == 1


def test_a_study_can_fill_a_results_page_of_another_name(tmp_path):
    path = write_study(tmp_path, page="methods", eval={"episodes": 2, "num_envs": 2})
    study = load_study(path)
    rng = np.random.default_rng(2)
    for record in synthetic_records(study, {"wide": rng.uniform(0, 1, (2, 3)),
                                             "narrow": rng.uniform(0, 1, (2, 3))}):
        store_of(tmp_path).append(record)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "methods.md").write_text("# Methods\n\nWritten by hand.\n")
    text = report(study, store_of(tmp_path).folder, docs=docs, reps=100, seed=0)
    page = (docs / "methods.md").read_text()
    assert page.startswith("# Methods\n\nWritten by hand.") and BEGIN in page and text in page
    assert not (docs / "tiny.md").exists() and (docs / "tiny" / "performance_profile.png").is_file()


def test_another_bootstrap_leaves_the_stores_report_and_the_page_alone(tmp_path, capsys):
    path = write_study(tmp_path, eval={"episodes": 2, "num_envs": 2})
    study = load_study(path)
    rng = np.random.default_rng(4)
    for record in synthetic_records(study, {"wide": rng.uniform(0, 1, (2, 3)),
                                             "narrow": rng.uniform(0, 1, (2, 3))}):
        store_of(tmp_path).append(record)
    folder = store_of(tmp_path).folder
    docs = tmp_path / "docs"
    assert orl_main(["study", "report", str(path), "--reps", "100", "--write-docs",
                     "--docs-dir", str(docs), *study_args(tmp_path)]) == 2
    assert "--write-docs" in capsys.readouterr().err and not docs.exists()
    assert orl_main(["study", "report", str(path), "--seed", "3", "--reps", "100",
                     *study_args(tmp_path)]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("Study `tiny`") and "not written" in printed.err
    assert "](" not in printed.out  # links no plot: none was kept
    assert {p.name for p in folder.iterdir()} <= {"runs.jsonl", ".runs.lock"}
    out = tmp_path / "seed3"
    assert orl_main(["study", "report", str(path), "--seed", "3", "--reps", "100", "--out", str(out),
                     *study_args(tmp_path)]) == 0
    assert (out / "report.md").read_text() in capsys.readouterr().out and (out / "report.json").is_file()
    assert not (folder / "report.md").exists()


def test_the_papers_numbers_are_printed_beside_the_studys(tmp_path):
    paper = {"note": "Table 1", "values": {"wide": {"mean": 0.61, "P": 0.5}, "narrow": {"IQM": 0.2}}}
    study = load_study(write_study(tmp_path, paper=paper, eval={"episodes": 2, "num_envs": 2}))
    scores = {"wide": np.array([[0.2, 0.4, 0.6], [0.4, 0.6, 0.8]]),
              "narrow": np.array([[0.0, 0.1, 0.2], [0.1, 0.2, 0.3]])}
    for record in synthetic_records(study, scores):
        store_of(tmp_path).append(record)
    text = report(study, store_of(tmp_path).folder, reps=200, seed=0)
    assert "Against the paper (Table 1):" in text
    assert "| wide | mean | 0.610 | 0.500 [" in text  # mean of wide's runs x tasks
    assert "| wide | P | 0.500 | 0.500 [" in text  # a run metric (synthetic P: each run's mean)
    assert "| narrow | IQM | 0.200 | 0.150 [" in text
    np.random.seed(123)  # rliable draws from the global generator: the report seeds it
    assert report(study, store_of(tmp_path).folder, reps=200, seed=0) == text


def test_overlapping_conditions_are_not_separated(tmp_path):
    path = write_study(tmp_path, seeds=[0, 1, 2, 3, 4], eval={"episodes": 2, "num_envs": 2})
    study = load_study(path)
    rng = np.random.default_rng(3)
    same = {"wide": rng.uniform(0, 1, (5, 4)), "narrow": rng.uniform(0, 1, (5, 4))}
    for record in synthetic_records(study, same):
        store_of(tmp_path).append(record)
    report(study, store_of(tmp_path).folder, reps=500)
    (pair,) = json.loads((store_of(tmp_path).folder / "report.json").read_text())["pairs"]
    assert pair["low"] < 0.5 < pair["high"] and pair["verdict"] == "not separated at this budget"


def test_a_verdict_must_hold_for_every_bootstrap_seed(monkeypatch):
    """A pair whose lower bound crosses 0.5 from one bootstrap seed to the next is on the edge,
    not a win; the CI shown is the report's seed's."""
    from orl.study import report as rep

    lows, seeds = iter([0.502, 0.502, 0.498, 0.502, 0.504]), []

    def scripted(score_dict, func, reps, seed):
        seeds.append(seed)
        return {"pair": 0.6}, {"pair": np.array([[next(lows)], [0.7]])}

    monkeypatch.setattr(rep, "bootstrap", scripted)
    finals = {"a": np.ones((5, 1)), "b": np.zeros((5, 1))}
    scores = rep.Scores(tasks=["t"], tasks_of={"a": ["t"], "b": ["t"]}, finals=finals)
    (pair,) = rep.improvement(scores, [("a", "b")], reps=100, seed=3)
    assert seeds == [3, 4, 5, 6, 7]
    assert (pair["low"], pair["high"], pair["low_over_seeds"]) == (0.502, 0.7, [0.498, 0.504])
    assert pair["verdict"] == ("on the edge: not separated at this budget (lower bound 0.498 to "
                               "0.504 over the bootstrap's seeds)")


@pytest.mark.parametrize("bounds, verdict", [
    ([(0.51, 0.7), (0.52, 0.7)], "a beats b"),
    ([(0.3, 0.45), (0.3, 0.49)], "b beats a"),
    ([(0.4, 0.6), (0.45, 0.55)], "not separated at this budget"),
    ([(0.3, 0.49), (0.3, 0.501)], "on the edge: not separated at this budget (upper bound 0.490 to "
                                   "0.501 over the bootstrap's seeds)"),
])
def test_pair_verdict(bounds, verdict):
    from orl.study.report import pair_verdict

    assert pair_verdict("a", "b", bounds) == verdict


def test_no_verdict_before_every_seed_is_in(tmp_path):
    path = write_study(tmp_path, seeds=[0, 1, 2, 3, 4], eval={"episodes": 2, "num_envs": 2})
    study = load_study(path)
    rng = np.random.default_rng(0)
    scores = {"wide": np.clip(rng.normal(0.8, 0.05, (5, 6)), 0, 1),
              "narrow": np.clip(rng.normal(0.2, 0.05, (5, 6)), 0, 1)}
    records = synthetic_records(study, scores)
    for record in records:
        if record["seed"] == 0:  # one run each: no interval, and no "not separated" either
            store_of(tmp_path).append(record)
    report(study, store_of(tmp_path).folder, reps=300)
    (pair,) = json.loads((store_of(tmp_path).folder / "report.json").read_text())["pairs"]
    assert pair["verdict"] == "no verdict before every seed is in (wide 1/5 runs, narrow 1/5 runs)"
    for record in records:
        if 0 < record["seed"] < 3:  # 3 of the 5 seeds
            store_of(tmp_path).append(record)
    text = report(study, store_of(tmp_path).folder, reps=300)
    (pair,) = json.loads((store_of(tmp_path).folder / "report.json").read_text())["pairs"]
    assert pair["low"] > 0.5  # separated so far, yet no verdict
    assert pair["verdict"] == "no verdict before every seed is in (wide 3/5 runs, narrow 3/5 runs)"
    assert "wide beats" not in text
    for record in records:
        if record["seed"] >= 3:
            store_of(tmp_path).append(record)
    report(study, store_of(tmp_path).folder, reps=300)
    (pair,) = json.loads((store_of(tmp_path).folder / "report.json").read_text())["pairs"]
    assert pair["verdict"] == "wide beats narrow"


def test_a_one_seed_study_has_no_interval_to_judge_by(tmp_path):
    path = write_study(tmp_path, seeds=[0], eval={"episodes": 2, "num_envs": 2})
    study = load_study(path)
    scores = {"wide": np.full((1, 6), 0.9), "narrow": np.full((1, 6), 0.1)}
    for record in synthetic_records(study, scores):
        store_of(tmp_path).append(record)
    report(study, store_of(tmp_path).folder, reps=300)
    (pair,) = json.loads((store_of(tmp_path).folder / "report.json").read_text())["pairs"]
    assert pair["verdict"] == "not separated at this budget (a CI needs at least 2 runs of each)"


def test_ray_launcher_runs_the_tiny_study_on_a_local_head(tmp_path):
    pytest.importorskip("ray", reason="the cluster extra (CI installs it)")
    path = write_study(tmp_path, seeds=[0], variants={"narrow": {"model.embed_dim": 8}}, pairs=[])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        assert orl_main(["study", "run", str(path), "--launcher", "ray", "--address",
                         f"127.0.0.1:{port}", *study_args(tmp_path)]) == 0
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
    (record,) = store_of(tmp_path).records()
    assert record["key"] == "narrow-s0" and record["steps"] == 6


def test_run_dir_name_carries_the_config_hash(tmp_path):
    study = load_study(write_study(tmp_path))
    run: RunSpec = study.runs[0]
    places = Places.of(study, tmp_path / "runs")
    assert places.run_dir(run).name == f"narrow-s0-{run.config_hash[:8]}"
    assert places.results == (tmp_path / "results" / "tiny").resolve()


def test_extra_evaluations_prune_and_fine_tune_the_final_checkpoint(tmp_path):
    prune = {"ratio": 0.5, "reconstruct": "none"}
    path = write_study(tmp_path, seeds=[0], variants={"narrow": {"model.embed_dim": 8}}, pairs=[
        ["narrow[pruned]", "narrow"]], evals={
        "pruned": {"prune": prune, "calibration": {"episodes": 2, "windows": 8}},
        "tuned": {"prune": prune, "calibration": {"episodes": 2, "windows": 8}, "finetune_steps": 3}})
    assert orl_main(["study", "run-one", str(path), "narrow-s0", *study_args(tmp_path)]) == 0
    (record,) = store_of(tmp_path).records()
    assert set(record["extra"]) == {"pruned", "tuned"}
    assert set(record["extra"]["pruned"]["return"]) == {"Pendulum-v1"}
    run_dir = Places.of(load_study(path), tmp_path / "runs").run_dir(load_study(path).runs[0])
    assert (run_dir / "pruned-pruned" / "state.json").is_file()
    assert (run_dir / "finetuned-tuned" / "checkpoints" / "final").is_dir()
    study = load_study(path)
    assert study.conditions() == ["narrow", "narrow[pruned]", "narrow[tuned]"]
    with pytest.raises(StudyError, match="finetune_steps fine-tunes a pruned model"):
        load_study(write_study(tmp_path, evals={"x": {"finetune_steps": 3}}))


def test_one_run_per_condition_gives_no_interval_and_no_verdict(tmp_path):
    path = write_study(tmp_path, seeds=[0], eval={"episodes": 2, "num_envs": 2})
    study = load_study(path)
    scores = {"wide": np.array([[0.9, 0.8, 1.0]]), "narrow": np.array([[0.1, 0.2, 0.0]])}
    for record in synthetic_records(study, scores):
        store_of(tmp_path).append(record)
    text = report(study, store_of(tmp_path).folder, reps=100)
    out = json.loads((store_of(tmp_path).folder / "report.json").read_text())
    assert out["aggregates"]["wide"]["IQM"][1:] == [None, None]
    (pair,) = out["pairs"]
    assert pair["p"] is None and pair["verdict"].startswith("not separated at this budget")
    assert "wide beats" not in text and "narrow beats" not in text and "[no CI: one run]" in text


def test_a_prompt_longer_than_a_trajectory_fails_before_any_run(tmp_path, capsys):
    path = write_study(tmp_path, variants={"prompted": {"agent.name": "prompt_dt",
                                                        "sampler.prompt_len": 40}}, pairs=[])
    assert orl_main(["study", "run", str(path), *study_args(tmp_path)]) == 2
    assert "run prompted-s0: sampler.prompt_len=40 is longer than" in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("tiny/prompted*"))


def test_unseen_tasks_overlapping_training_fail_before_any_run(tmp_path, capsys):
    held_out = {"data.datasets": [], "data.eval_tasks": [], "data.tasks": ["reach-v3"],
                "data.unseen_tasks": ["reach-v3"], "agent.name": "prompt_dt", "sampler.prompt_len": 2}
    path = write_study(tmp_path, variants={"held-out": held_out}, pairs=[])
    assert orl_main(["study", "run", str(path), *study_args(tmp_path)]) == 2
    assert "run held-out-s0: data.unseen_tasks overlap the training tasks" in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("tiny/held-out*"))


def test_report_tables_go_to_wandb_as_tables():
    import wandb

    from orl.study.report import log_tables

    class Run:
        def __init__(self):
            self.logged = {}

        def log(self, data):
            self.logged.update(data)

    table = {"wide": dict.fromkeys(("mean", "median", "IQM", "optimality gap"), (0.5, 0.4, 0.6))}
    pairs = [{"x": "wide", "y": "narrow", "p": 0.7, "low": 0.55, "high": 0.85,
              "verdict": "wide beats narrow"}]
    run = Run()
    log_tables(run, table, pairs)
    aggregates, improvement = run.logged["study/aggregates"], run.logged["study/improvement"]
    assert isinstance(aggregates, wandb.Table) and aggregates.data[0][:4] == ["wide", 0.5, 0.4, 0.6]
    assert "IQM low" in aggregates.columns and improvement.data[0][-1] == "wide beats narrow"


def test_a_conditions_interval_does_not_depend_on_the_others():
    from orl.study.report import bootstrap

    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(5, 4)), rng.uniform(size=(3, 4))
    def mean(s):
        return np.array([np.mean(s)])
    alone = bootstrap({"a": a}, mean, 200, 0)
    both = bootstrap({"b": b, "a": a}, mean, 200, 0)
    assert both[0]["a"] == alone[0]["a"]
    np.testing.assert_array_equal(both[1]["a"], alone[1]["a"])


@pytest.mark.parametrize("shape_x, shape_y", [((5, 10), (5, 10)), ((3, 4), (7, 4)), ((1, 2), (2, 2))])
def test_report_iqm_and_improvement_equal_rliables(shape_x, shape_y):
    """The report's numpy IQM and probability of improvement against rliable's scipy-based
    ones, on success rates with many ties (and identical samples, where P is one half)."""
    from rliable import metrics

    from orl.study.report import iqm, iqm_per_point, probability_of_improvement

    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, shape_x) / 5
    y = rng.integers(0, 6, shape_y) / 5
    for a in (x, y, rng.uniform(size=(5, 3))):
        assert iqm(a.ravel()) == pytest.approx(metrics.aggregate_iqm(a), abs=1e-12)
    assert probability_of_improvement(x, y) == pytest.approx(
        metrics.probability_of_improvement(x, y), abs=1e-12)
    assert probability_of_improvement(y, x) == pytest.approx(
        metrics.probability_of_improvement(y, x), abs=1e-12)
    assert probability_of_improvement(x, x) == 0.5
    curves = rng.integers(0, 6, (*shape_x, 4)) / 5  # runs x tasks x points
    np.testing.assert_allclose(iqm_per_point(curves),
                               [metrics.aggregate_iqm(curves[..., i]) for i in range(4)], atol=1e-12)
