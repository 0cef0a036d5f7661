"""``gbw sweep`` end to end on CPU worker processes: runs, manifest, skipping finished runs,
the report against the runs' own metrics, failures, conflicts and CLI errors."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from gbw.analysis.stats import t_quantile
from gbw.cli import main


def _sweep(cfg, out, *args: str) -> int:
    return main(["sweep", str(cfg), *args, "--out", str(out)])


def test_sweep_trains_skips_and_reports(tiny_yaml, tmp_path, capsys):
    cfg = tiny_yaml(method="dacs")
    out = tmp_path / "sw"
    args = ("--seeds", "1,2", "--grid", "weighting.name=none,gbw", "--jobs", "2")
    assert _sweep(cfg, out, *args) == 0
    text = capsys.readouterr().out
    assert "4 runs - 0 finished (skipped), 0 to resume, 4 new" in text
    names = ["name=none-s1", "name=gbw-s1", "name=none-s2", "name=gbw-s2"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == names
    assert {r["status"] for r in manifest["runs"]} == {"finished"}
    assert manifest["grids"] == [{"key": "weighting.name", "values": ["none", "gbw"]}]
    assert manifest["seeds"] == [1, 2] and manifest["config"] == str(cfg)
    for n in names:
        assert (out / "runs" / n / "metrics.json").exists()
        assert "=== finished" in (out / "logs" / f"{n}.log").read_text()
    stamps = {n: (out / "runs" / n / "metrics.json").stat().st_mtime_ns for n in names}

    # a second call trains nothing
    assert _sweep(cfg, out, *args) == 0
    assert "4 runs - 4 finished (skipped)" in capsys.readouterr().out
    assert stamps == {n: (out / "runs" / n / "metrics.json").stat().st_mtime_ns for n in names}

    # the report against the runs' own metrics, computed here by hand
    m = {n: json.loads((out / "runs" / n / "metrics.json").read_text()) for n in names}
    d = [100 * (m[f"name=gbw-s{s}"]["mIoU"] - m[f"name=none-s{s}"]["mIoU"]) for s in (1, 2)]
    mean = (d[0] + d[1]) / 2
    half = t_quantile(0.975, 1) * statistics.stdev(d) / math.sqrt(2)
    data = json.loads((out / "sweep.json").read_text())
    (comp,) = data["comparisons"]
    assert comp["setting"] == "weighting.name=gbw" and comp["baseline"] == "weighting.name=none"
    assert comp["mIoU"]["mean"] == pytest.approx(mean, abs=1e-9)
    if half > 0:
        assert comp["mIoU"]["low"] == pytest.approx(mean - half, abs=1e-9)
    none = [100 * m[f"name=none-s{s}"]["mIoU"] for s in (1, 2)]
    (s_none,) = [s for s in data["settings"] if s["setting"] == "weighting.name=none"]
    assert s_none["mIoU"]["mean"] == pytest.approx(statistics.fmean(none))
    assert s_none["mIoU"]["std"] == pytest.approx(statistics.stdev(none))
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    road = [r for r in rows if r["setting"] == "weighting.name=none" and r["class"] == "road"]
    assert road[0]["metric"] == "IoU"
    road_iou = [100 * m[f"name=none-s{s}"]["IoU/road"] for s in (1, 2)]
    assert float(road[0]["mean"]) == pytest.approx(statistics.fmean(road_iou), rel=1e-5)
    md = (out / "sweep.md").read_text()
    assert "| weighting.name=gbw | 2 |" in md and "## Per-class recall" in md

    # gbw report --sweep with another baseline and output folder
    rep = tmp_path / "rep"
    assert (
        main(["report", "--sweep", str(out), "--baseline", "weighting.name=gbw", "--out", str(rep)])
        == 0
    )
    data = json.loads((rep / "sweep.json").read_text())
    assert [c["setting"] for c in data["comparisons"]] == ["weighting.name=none"]
    assert data["comparisons"][0]["mIoU"]["mean"] == pytest.approx(-mean, abs=1e-9)


def test_failed_run_is_reported_and_the_others_finish(tiny_yaml, tmp_path, capsys):
    cfg = tiny_yaml(weighting={"class_stats": str(tmp_path / "missing.npy")})
    out = tmp_path / "sw"
    # IF needs class_stats (missing file): that run fails, the run without weighting does not
    assert _sweep(cfg, out, "--grid", "weighting.name=none,if", "--jobs", "2") == 1
    text = capsys.readouterr().out
    assert "FAILED (FileNotFoundError" in text and "logs/name=if-s1.log" in text
    assert (out / "runs/name=none-s1/metrics.json").exists()
    assert (
        "missing.npy: class statistics file not found" in (out / "logs/name=if-s1.log").read_text()
    )
    status = {
        r["name"]: r["status"] for r in json.loads((out / "manifest.json").read_text())["runs"]
    }
    assert status == {"name=none-s1": "finished", "name=if-s1": "failed"}
    md = (out / "sweep.md").read_text()
    assert "Not finished (left out): name=if-s1" in md


def test_run_states_from_the_folder(tmp_path):
    import yaml

    from gbw.config import ConfigError
    from gbw.sweep.plan import expand, parse_grid, validate
    from gbw.sweep.runner import config_dict, plan_runs

    out = tmp_path / "sw"
    specs = expand(None, [1], [parse_grid("weighting.lam=1,2,3,4,5,6,7")], ["train.max_iters=8"])
    exps = validate(specs, out / "runs")

    def folder(i: int, config: dict | None, step: int | None = None, ckpt: bool = False) -> None:
        d = out / "runs" / specs[i].name
        (d / "checkpoints").mkdir(parents=True)
        if config is not None:
            (d / "config.yaml").write_text(yaml.safe_dump(config))
        if step is not None:
            (d / "metrics.json").write_text(json.dumps({"step": step, "mIoU": 0.5}))
        if ckpt:
            (d / "checkpoints/last.ckpt").write_bytes(b"x")

    same = [config_dict(e) for e in exps]
    moved = same[1] | {"out_dir": "/elsewhere/runs"}  # a moved sweep folder still matches
    folder(1, moved, step=8)
    folder(2, same[2], ckpt=True)
    folder(3, same[3], step=4, ckpt=True)  # metrics of an earlier, shorter schedule
    folder(4, same[4] | {"seed": 9})  # an attempt of another config without results
    folder(5, same[5] | {"seed": 9}, step=8)  # results of another config
    folder(6, None, ckpt=True)  # results without a config
    with pytest.raises(ConfigError, match=r"2 run folder.*hold results of another config"):
        plan_runs(specs, out)
    planned = plan_runs(specs, out, overwrite=True)
    states = [p.state for p in planned]
    assert states == ["new", "finished", "resume", "resume", "new", "conflict", "conflict"]
    assert "seed" in planned[5].detail and "no readable config.yaml" in planned[6].detail


def test_fresh_restart_deletes_only_the_run_folder(tiny_yaml, tmp_path):
    from gbw.config import load_config, save_config
    from gbw.engine.run_folder import MARKER
    from gbw.sweep.worker import run_one

    run_dir = tmp_path / "sw/runs/r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / MARKER).write_text("gbw run folder\n")  # gbw made it: it may restart it
    (run_dir / "checkpoints/last.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "sw/keep.txt").write_text("outside the run folder")
    cfg = tmp_path / "r.yaml"
    save_config(load_config(tiny_yaml(), ["train.max_iters=2"]), cfg)
    task = {
        "config": str(cfg),
        "run_dir": str(run_dir),
        "log": str(tmp_path / "sw/logs/r.log"),
        "lock": str(tmp_path / "sw/.locks/r.lock"),
        "fresh": False,
    }
    failed = run_one(task)  # resuming the broken checkpoint fails, with the reason in the log
    assert failed["status"] == "failed" and "CheckpointError" in failed["error"]
    done = run_one(task | {"fresh": True})
    assert done["status"] == "finished" and done["steps"] == 2
    assert (run_dir / "metrics.json").exists() and (tmp_path / "sw/keep.txt").exists()
    log = (tmp_path / "sw/logs/r.log").read_text()
    assert log.count("=== gbw sweep run r: attempt started") == 2


def test_cli_errors_come_before_anything_runs(tiny_yaml, tmp_path, capsys):
    cfg = tiny_yaml()
    out = tmp_path / "sw"
    cases = [
        (["--grid", "weighting.nam=none,gbw"], "unknown key 'weighting.nam'; did you mean"),
        (["--grid", "train.max_iters=4,four"], "bad value for 'train.max_iters'"),
        (["--grid", "seed=1,2"], "use --seeds"),
        (["--grid", "weighting.name"], "expected KEY=VALUE1"),
        (["--seeds", "1,a"], "--seeds '1,a'"),
        (
            ["--grid", "weighting.name=none,gbw", "--baseline", "weighting.name=if"],
            "no setting has",
        ),
        (["--grid", "weighting.name=none,gbw", "--baseline", "optim.lr=1"], "not a grid key"),
    ]
    for extra, message in cases:
        assert _sweep(cfg, out, *extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gbw sweep: error:"), err
        assert message in err[0], (extra, err)
    assert not out.exists()
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--out", str(out)]) == 2
    assert "config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--out", str(out)])  # neither runs nor --sweep
    assert main(["report", "--sweep", str(out)]) == 2
    assert "no sweep manifest" in capsys.readouterr().err


def test_dry_run_lists_runs_and_creates_nothing(tiny_yaml, tmp_path, capsys):
    out = tmp_path / "sw"
    assert (
        _sweep(tiny_yaml(), out, "--seeds", "1,2", "--grid", "weighting.lam=0.1,1", "--dry-run")
        == 0
    )
    text = capsys.readouterr().out
    assert "4 runs - 0 finished (skipped), 0 to resume, 4 new" in text
    assert "lam=0.1-s2" in text and "weighting.lam=0.1" in text
    assert not out.exists()
