"""The engine end to end: training, kill-and-resume, configs, checkpoints, predict, DDP."""

from __future__ import annotations

import json

import pytest
import torch

from gbw.config import ConfigError, load_config
from gbw.engine.checkpoint import CheckpointError, load_checkpoint
from gbw.engine.run_folder import RunExistsError
from gbw.engine.stepper import lr_factor
from gbw.engine.trainer import train
from kill_resume import assert_same_method_state, last_checkpoint, train_killed_at


@pytest.mark.parametrize("method", ["source_only", "dacs"])
def test_training_runs_logs_weights_and_changes_losses(
    minicity_root, tmp_path, method, tiny_config
):
    exp = tiny_config(
        minicity_root,
        str(tmp_path),
        f"method={method}",
        "train.max_iters=6",
        "weighting.name=gbw",
        "train.ckpt_every=3",
    )
    result = train(exp)
    run = result.run_dir
    for name in (
        "config.yaml",
        "meta.json",
        "scalars.csv",
        "metrics.json",
        "weights_summary.json",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).exists(), name
    rows = (run / "scalars.csv").read_text().splitlines()
    losses = [float(r.split(",")[2]) for r in rows if ",loss/src.ce," in r]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[0] != losses[-1]
    terms = ["src"] + (["mix"] if method == "dacs" else [])
    for term in terms:  # every weighted term logs its per-class weights
        assert any(f",{term}/weight/road," in r for r in rows)
    summary = json.loads((run / "weights_summary.json").read_text())
    assert set(summary) == set(terms) and summary["src"]["road"]["steps"] == 6
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"]
    assert 0.0 <= result.metrics["mIoU"] <= 1.0


def test_kill_and_resume_is_bit_identical(minicity_root, tmp_path, monkeypatch, tiny_config):
    args = ("method=dacs", "train.max_iters=8", "train.ckpt_every=3", "weighting.name=gbw")
    full = train(tiny_config(minicity_root, str(tmp_path / "a"), *args))

    from gbw.uda.dacs import DACS

    exp_b = tiny_config(minicity_root, str(tmp_path / "b"), *args)
    train_killed_at(monkeypatch, DACS, exp_b, step=5)
    assert last_checkpoint(tmp_path / "b/tiny")["step"] == 3
    with pytest.raises(RunExistsError, match="--resume"):
        train(exp_b)  # refuses to overwrite a run that holds checkpoints
    resumed = train(exp_b, resume=True)
    assert_same_method_state(full.run_dir, resumed.run_dir)
    assert json.dumps(full.metrics) == json.dumps(resumed.metrics)  # NaN-safe equality
    # the log holds each step once
    steps = [
        r.split(",")[0]
        for r in (resumed.run_dir / "scalars.csv").read_text().splitlines()
        if ",loss/src.ce," in r
    ]
    assert steps == sorted(set(steps), key=int)


def test_bad_config_keys_and_values_name_the_key(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.max_iter'; did you mean 'train.max_iters'"
    ):
        load_config(None, ["train.max_iter=3"])
    with pytest.raises(ConfigError, match=r"bad value for 'optim.lr'"):
        load_config(None, ["optim.lr=fast"])
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  nam: tinyseg\n")
    with pytest.raises(
        ConfigError, match=r"exp.yaml: unknown key 'model.nam'; did you mean 'model.name'"
    ):
        load_config(cfg)
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  max_iters: 7\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nseed: 3\n")
    exp = load_config(child)
    assert exp.train.max_iters == 7 and exp.seed == 3
    from gbw.config import method_config
    from gbw.uda.dacs import DACSConfig

    with pytest.raises(ConfigError, match=r"unknown key 'uda.ema_alpah'; did you mean 'ema_alpha'"):
        method_config(DACSConfig, {"ema_alpah": 0.9}, "dacs")


def test_truncated_and_foreign_checkpoints_give_clear_errors(minicity_root, tmp_path, tiny_config):
    run = train(tiny_config(minicity_root, str(tmp_path), "train.max_iters=2")).run_dir
    good = run / "checkpoints" / "last.ckpt"
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(
        CheckpointError, match=r"truncated.ckpt: cannot read checkpoint .*truncated"
    ):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a gbw checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_cli_eval_predict_and_errors(minicity_root, tmp_path, capsys, tiny_config):
    from gbw.cli import main
    from gbw.data.io import read_rgb

    run = train(tiny_config(minicity_root, str(tmp_path), "train.max_iters=2")).run_dir
    assert (
        main(["eval", str(run), "eval.subset=5", "--cpu", "--json", str(tmp_path / "m.json")]) == 0
    )
    assert "mean" in capsys.readouterr().out
    assert "mIoU" in json.loads((tmp_path / "m.json").read_text())
    from gbw.data.minicity import MiniCity

    ds = MiniCity("target_val", minicity_root, size="quick")
    images = [ds.samples[i].image for i in range(2)]
    assert (
        main(
            [
                "predict",
                str(run),
                *map(str, images),
                "--out",
                str(tmp_path / "pred"),
                "--trainids",
                "--cpu",
            ]
        )
        == 0
    )
    for img in images:
        color = read_rgb(tmp_path / "pred" / f"{img.stem}_color.png")
        assert color.shape == (*read_rgb(img).shape[:2], 3)
        ids = tmp_path / "pred" / f"{img.stem}_trainIds.png"
        assert ids.exists()
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "norun")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_lr_schedule_poly_and_warmup():
    exp = load_config(
        None,
        [
            "train.max_iters=100",
            "optim.power=1.0",
            "optim.warmup_iters=10",
            "optim.warmup_ratio=0.0",
        ],
    )
    assert lr_factor(exp, 0) == 0.0
    assert lr_factor(exp, 5) == pytest.approx(0.5 * 0.95)
    assert lr_factor(exp, 50) == pytest.approx(0.5)
    assert lr_factor(exp, 100) == 0.0


@pytest.mark.slow
def test_two_process_ddp_training(minicity_root, tmp_path, train_two_processes):
    """gbw train with 2 CPU processes (gloo): runs, and both ranks saw different data."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text("method: source_only\n")
    overrides = [
        f"out_dir={tmp_path}",
        "name=ddp",
        "model.name=tinyseg",
        "model.kwargs={widths: [8, 8, 16, 16], aspp_channels: 8, decoder_channels: 8}",
        "data.minicity_size=quick",
        "data.batch_size=2",
        "data.num_workers=0",
        f"data.source.root={minicity_root}",
        f"data.target.root={minicity_root}",
        f"data.val.root={minicity_root}",
        "train.max_iters=4",
        "train.log_every=2",
        "eval.subset=6",
        "weighting.name=gbw",
    ]
    train_two_processes(cfg, overrides)
    run = tmp_path / "ddp"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert (run / "checkpoints" / "last.ckpt").exists()
