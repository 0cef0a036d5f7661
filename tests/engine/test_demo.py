"""`gbw demo --quick` end to end: trains 4 runs, writes tables and figures, says what it found."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from gbw.cli import main
from gbw.config import load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "minicity"


@pytest.mark.slow
def test_quick_demo_end_to_end(minicity_root, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--data-root", minicity_root]) == 0
    text = capsys.readouterr().out
    for run in (
        "source_only-none-s1",
        "source_only-gbw-s1",
        "self_training-none-s1",
        "self_training-gbw-s1",
    ):
        assert run in text
        assert (out / "runs" / run / "metrics.json").exists()
    assert "| **mIoU** |" in text
    # the runs are configs/minicity/*.yaml (one definition of the budget), shortened by --quick
    assert "shorter than the study's budget" in text
    for run, stem in (
        ("source_only-gbw-s1", "source_only_gbw"),
        ("self_training-none-s1", "self_training"),
    ):
        stored = yaml.safe_load((out / "runs" / run / "config.yaml").read_text())
        config = to_dict(load_config(CONFIGS / f"{stem}.yaml"))
        for key in ("model", "optim", "uda", "weighting"):
            assert stored[key] == config[key], (run, key)
        assert stored["data"]["batch_size"] == config["data"]["batch_size"]
        assert stored["data"]["minicity_size"] == "quick"
    assert "Domain gap (source-only, no GBW, seed 1)" in text
    assert text.count("Found for ") == 2  # one honest line per setting
    for fig in (
        "fig2_weights_src.png",
        "fig2_weights_mix.png",
        "fig6a_max_weight.png",
        "fig6b_std_vs_gain.png",
        "fig5_qualitative.png",
        "fig4a_confusion_delta.png",
    ):
        assert (out / fig).stat().st_size > 1000, fig
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["setting"] for r in rows} == {"source_only", "self_training"}
    assert {r["weighting"] for r in rows} == {"none", "gbw"}
    # rarest source class first in the table
    shares = [
        float(r["src_px_pct"])
        for r in rows
        if r["setting"] == "source_only" and r["weighting"] == "none"
    ]
    assert shares == sorted(shares)
    # a second call reuses the finished runs instead of training again
    assert main(["demo", "--quick", "--out", str(out), "--data-root", minicity_root]) == 0
    assert "reused" in capsys.readouterr().out
    # other GBW options are other runs: the lambda-1 runs stay as they are
    before = (out / "runs" / "self_training-gbw-s1" / "metrics.json").read_bytes()
    assert main(["demo", "--quick", "--out", str(out), "--data-root", minicity_root,
                 "--lam", "0.5"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "self_training-gbw-lam0.5-s1" in text and text.count("reused") == 2  # the none runs
    assert (out / "runs" / "self_training-gbw-s1" / "metrics.json").read_bytes() == before
    assert (out / "runs" / "self_training-gbw-lam0.5-s1" / "metrics.json").exists()


def test_demo_never_deletes_a_run_of_other_settings(minicity_root, tmp_path, capsys):
    """A demo folder whose run was made with other settings (another gbw version, a hand edit)
    is one error line and stays as it is; --overwrite trains that run again."""
    out = tmp_path / "demo"
    run = out / "runs" / "source_only-none-s1"
    run.mkdir(parents=True)
    (run / ".gbw-run").write_text("gbw run folder\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "source_only-none-s1", "seed": 7}))
    (run / "meta.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    argv = ["demo", "--quick", "--out", str(out), "--data-root", minicity_root, "--jobs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run of other settings (differs in" in err[0]
    assert "--overwrite" in err[0] and (run / "notes.txt").read_text() == "mine"
    assert not (out / "runs" / "source_only-gbw-s1").exists()  # checked before any training
    assert main([*argv, "--overwrite"]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["seed"] == 1 and (run / "metrics.json").exists()
