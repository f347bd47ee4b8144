"""A continual study: records of continual runs and their single-task references, and a report
whose P/F/FWT and CW forward transfer are those of ``orl report`` (one implementation)."""

import json

import pytest
import yaml

from orl.agents.continual.report import continual_metrics, load_results, reference_curves
from orl.cli import main as orl_main
from orl.study import ResultsStore, load_study
from orl.study.places import Places
from orl.study.report import report


def test_study_metrics_equal_orl_report_with_same_seed_references(tmp_path, toys):
    base = toys.tiny_config(tmp_path, ["ToySignPlus-v0", "ToySignMinus-v0"])
    study_file = tmp_path / "studies" / "seq.yaml"
    study_file.parent.mkdir()
    study_file.write_text(yaml.safe_dump({
        "base": str(base), "seeds": [0], "references": "ref",
        "variants": {"finetune": {"continual.method": "finetune", "continual.final_episodes": 4},
                     "ref": {"continual.method": "finetune", "axes": {"task": {
                         "s0": {"continual.reference": "s0"}, "s1": {"continual.reference": "s1"}}}}},
        "eval": {"episodes": 2, "num_envs": 2}}, sort_keys=False))
    study = load_study(study_file)
    assert [r.key for r in study.runs] == ["finetune-s0", "ref+s0-s0", "ref+s1-s0"]
    runs = tmp_path / "runs"
    for run in study.runs:
        assert orl_main(["study", "run-one", str(study_file), run.key, "--runs-dir", str(runs)]) == 0
    places = Places.of(study, runs)
    store = ResultsStore(places.results)
    records = {r["key"]: r for r in store.records()}
    assert records["finetune-s0"]["steps"] == 20 and len(records["finetune-s0"]["continual"]["matrix"]) == 2
    # the final success is the 4-episode evaluation after the sequence, not R's last row
    final = json.loads((places.run_dir(study.runs[0]) / "continual.json").read_text())["final"]
    assert records["finetune-s0"]["final"]["episodes"] == 4
    assert list(records["finetune-s0"]["final"]["success"].values()) == final and len(final) == 2
    assert records["ref+s0-s0"]["final"]["episodes"] == 2

    run_dir = places.run_dir(study.runs[0])
    references = [places.run_dir(r) for r in study.runs[1:]]
    expected = continual_metrics(load_results(run_dir), reference_curves(references))
    assert expected["cw_forward_transfer"] is not None
    report(study, places.results, reps=200)
    scalars = json.loads((places.results / "report.json").read_text())["scalars"]
    assert set(scalars) == {"finetune"}  # the references are not a condition of the tables
    for name in ("performance", "forgetting", "forward_transfer", "cw_forward_transfer",
                 "added_parameters"):
        assert scalars["finetune"][name][0] == pytest.approx(expected[name])
    assert (places.results / "success_matrices.png").read_bytes()[:4] == b"\x89PNG"
    text = (places.results / "report.md").read_text()
    assert "success_matrices.png" in text and "4 evaluation episodes per task" in text
    # the per-task table: each task's place in the sequence, and its single-task references' row
    written = json.loads((places.results / "report.json").read_text())
    assert written["positions"] == {"ToySignPlus-v0": [1], "ToySignMinus-v0": [2]}
    singles = {t: v for key in ("ref+s0-s0", "ref+s1-s0")
               for t, v in records[key]["final"]["success"].items()}
    assert written["reference_success"] == singles
    assert "| condition | ToySignMinus-v0 (2) | ToySignPlus-v0 (1) |" in text
    row = [f"{singles[t]:.2f}" for t in ("ToySignMinus-v0", "ToySignPlus-v0")]
    assert f"| single-task references | {row[0]} | {row[1]} |" in text
    assert orl_main(["report", str(run_dir), "--reference", *map(str, references)]) == 0
    printed = json.loads((run_dir / "report.json").read_text())
    assert printed["cw_forward_transfer"] == pytest.approx(expected["cw_forward_transfer"])
    # P is the mean final success: the evaluation after the sequence is R's last row
    assert printed["performance"] == pytest.approx(sum(final) / 2) == scalars["finetune"]["performance"][0]
    assert printed["matrix"][-1] == final
    # F on the rows' episodes; a record made before final_matched existed is pointed out
    assert records["finetune-s0"]["continual"]["final_matched"] is not None
    assert "predate `final_matched`" not in text
    records["finetune-s0"]["continual"].pop("final_matched")
    store.path.write_text("".join(json.dumps(rec) + "\n" for rec in records.values()))
    assert "1 continual record(s) predate `final_matched`" in report(study, places.results, reps=200,
                                                                    write=False)
