"""Bad input gets one clear line and loses nothing (issue 10): run folders, --overwrite,
non-finite losses, file permissions, interrupted writes, early config validation, CLI errors,
--resume parsing."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gbw.cli import _split_resume, main
from gbw.config import ConfigError, ExperimentConfig, load_config
from gbw.engine.checkpoint import load_checkpoint, save_checkpoint
from gbw.engine.nonfinite import NonFiniteLossError, NonFiniteWatch
from gbw.engine.run_folder import MARKER, RunExistsError, claim_run_dir
from gbw.engine.trainer import train
from gbw.fileio import OutputError, atomic_write, file_mode, remove_stale_temps, write_json

SRC = Path(__file__).resolve().parents[2] / "src"


def _tiny(tiny_config, root, out, *extra):
    return tiny_config(root, str(out), "train.max_iters=4", "train.ckpt_every=2", *extra)


def _gbw(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gbw.cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def _one_error_line(res: subprocess.CompletedProcess, code: int = 2) -> str:
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# --- run names and --overwrite --------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "", "/tmp/x", "a/b", "a\\b", " x", "x\n"])
def test_run_name_must_be_one_plain_component(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run name must be one plain folder name"):
        load_config(None, [f"out_dir={tmp_path / 'out'}"], base=ExperimentConfig(name=name))
    exp = ExperimentConfig(name=name, out_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="plain folder name"):
        train(exp)  # library use is checked too, before anything exists
    assert not (tmp_path / "out").exists()


def test_name_dotdot_with_overwrite_deletes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("keep me")
    (out / "other").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"name: ..\nout_dir: {out}\n")
    res = _gbw("train", str(config), "--overwrite")
    assert "run name must be one plain folder name" in _one_error_line(res)
    assert (tmp_path / "precious.txt").read_text() == "keep me" and (out / "other").is_dir()


def _fake_run(run: Path, marker: bool = True) -> None:
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "config.yaml").write_text("name: x\n")
    (run / "meta.json").write_text("{}")
    if marker:
        (run / MARKER).write_text("gbw run\n")


def test_overwrite_deletes_only_marked_run_folders_inside_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    ours = out / "a"
    _fake_run(ours)
    (ours / "extra.txt").write_text("old")
    claim_run_dir(ours, out, resuming=False, overwrite=True)
    assert not (ours / "extra.txt").exists() and (ours / MARKER).is_file()

    old = out / "legacy"  # holds checkpoints but no marker: gbw did not create it as a run
    _fake_run(old, marker=False)
    with pytest.raises(RunExistsError, match="marker"):
        claim_run_dir(old, out, resuming=False, overwrite=True)
    assert (old / "checkpoints" / "last.ckpt").exists()

    elsewhere = tmp_path / "elsewhere" / "b"  # not directly inside out_dir
    _fake_run(elsewhere)
    with pytest.raises(RunExistsError, match="directly inside out_dir"):
        claim_run_dir(elsewhere, out, resuming=False, overwrite=True)
    assert elsewhere.exists()

    real = tmp_path / "disk2" / "c"
    _fake_run(real)
    link = out / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(RunExistsError, match="symbolic link"):
        claim_run_dir(link, out, resuming=False, overwrite=True)
    assert (real / "checkpoints" / "last.ckpt").exists()


def test_overwrite_never_deletes_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "runs"
    run = out / "here"
    _fake_run(run)
    monkeypatch.chdir(run)
    with pytest.raises(RunExistsError, match="working directory"):
        claim_run_dir(run, out, resuming=False, overwrite=True)
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_foreign_folder_is_never_written_into(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    foreign = out / "photos"
    foreign.mkdir(parents=True)
    (foreign / "a.jpg").write_bytes(b"jpeg")
    for overwrite in (False, True):
        with pytest.raises(RunExistsError, match="not a gbw run folder"):
            claim_run_dir(foreign, out, resuming=False, overwrite=overwrite)
    assert sorted(p.name for p in foreign.iterdir()) == ["a.jpg"]


def test_failed_start_leaves_no_run_folder(minicity_root, tmp_path, tiny_config) -> None:
    missing = tmp_path / "no_such_cityscapes"
    exp = _tiny(
        tiny_config,
        minicity_root,
        tmp_path,
        "data.val.name=cityscapes",
        "data.val.split=val",
        f"data.val.root={missing}",
    )
    with pytest.raises(FileNotFoundError, match="no_such_cityscapes"):
        train(exp)
    assert not (tmp_path / "tiny").exists()
    exp = _tiny(tiny_config, minicity_root, tmp_path, "model.pretrained=/nonexistent/w.pth")
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained"):
        train(exp)
    assert not (tmp_path / "tiny").exists()


def test_rerun_reuses_a_folder_left_without_checkpoints(
    minicity_root, tmp_path, tiny_config, monkeypatch
) -> None:
    from gbw.uda.source_only import SourceOnly

    original = SourceOnly.training_step

    def crash(self, source, target, step):
        raise RuntimeError("simulated crash before the first checkpoint")

    monkeypatch.setattr(SourceOnly, "training_step", crash)
    exp = _tiny(tiny_config, minicity_root, tmp_path)
    with pytest.raises(RuntimeError, match="simulated"):
        train(exp)
    assert (tmp_path / "tiny" / MARKER).exists()
    monkeypatch.setattr(SourceOnly, "training_step", original)
    train(exp)  # no --overwrite needed: nothing was saved
    rows = (tmp_path / "tiny" / "scalars.csv").read_text().splitlines()
    assert rows.count("step,tag,value") == 1


def test_stale_checkpoint_temp_files_are_removed_at_start(
    minicity_root, tmp_path, tiny_config
) -> None:
    exp = _tiny(tiny_config, minicity_root, tmp_path)
    train(exp)
    ckpt = tmp_path / "tiny" / "checkpoints"
    stale = [ckpt / ".step_0000006.ckpt.k2j3.tmp", ckpt / ".last.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = ckpt / "notes.txt"
    keep.write_text("mine")
    exp = _tiny(tiny_config, minicity_root, tmp_path, "train.max_iters=6")
    train(exp, resume=True)
    assert not any(p.exists() for p in stale) and keep.exists()


# --- non-finite losses ----------------------------------------------------------------------


def _nan_at(monkeypatch, iteration: int) -> None:
    """Make the source loss NaN at one iteration (0-based)."""
    from gbw.uda.source_only import SourceOnly

    original = SourceOnly.training_step

    def step_with_nan(self, source, target, step):
        if int(step.index) == iteration:
            source = {**source, "image": source["image"] * float("nan")}
        return original(self, source, target, step)

    monkeypatch.setattr(SourceOnly, "training_step", step_with_nan)


def test_nonfinite_loss_stops_and_keeps_last_finite_checkpoint(
    minicity_root, tmp_path, tiny_config, monkeypatch
) -> None:
    _nan_at(monkeypatch, 4)  # iteration 5
    exp = tiny_config(
        minicity_root,
        str(tmp_path),
        "train.max_iters=10",
        "train.ckpt_every=2",
        "train.log_every=3",
    )
    with pytest.raises(NonFiniteLossError, match=r"iteration 5: loss term 'src.ce' is not finite"):
        train(exp)
    ckpt = tmp_path / "tiny" / "checkpoints"
    state = load_checkpoint(ckpt / "last.ckpt")
    assert state["step"] == 4  # the checkpoint at 6 would hold NaN weights: not written
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
    assert not (ckpt / "step_0000006.ckpt").exists()
    assert not (tmp_path / "tiny" / "metrics.json").exists()


def test_lr_1e6_exits_nonzero_with_one_line(minicity_root, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "\n".join(
            [
                f"out_dir: {tmp_path}",
                "name: big",
                "model: {name: tinyseg, kwargs: {widths: [8, 8, 16, 16], aspp_channels: 8, "
                "decoder_channels: 8}}",
                "data: {minicity_size: quick, batch_size: 2, num_workers: 0, "
                f"source: {{root: {minicity_root}}}, val: {{root: {minicity_root}}}}}",
                "train: {accelerator: cpu, progress: false, max_iters: 8, ckpt_every: 4}",
                "eval: {subset: 4}",
                "optim: {name: adamw, lr: 1.0e+6}",
            ]
        )
    )
    line = _one_error_line(_gbw("train", str(config)), code=1)
    assert "not finite" in line and "iteration" in line
    last = tmp_path / "big" / "checkpoints" / "last.ckpt"
    if last.exists():
        state = load_checkpoint(last)
        assert all(
            torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point()
        )


def test_skip_step_skips_the_bad_iteration_and_restores_buffers(
    minicity_root, tmp_path, tiny_config, monkeypatch
) -> None:
    _nan_at(monkeypatch, 2)
    exp = tiny_config(
        minicity_root,
        str(tmp_path),
        "train.max_iters=5",
        "train.ckpt_every=5",
        "train.on_nonfinite=skip_step",
        "train.log_every=1",
    )
    result = train(exp)
    rows = (result.run_dir / "scalars.csv").read_text().splitlines()
    assert [r for r in rows if "diag/skipped_step" in r] == ["3,diag/skipped_step,1.0"]
    state = load_checkpoint(result.run_dir / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_skip_step_stops_after_too_many_skips(
    minicity_root, tmp_path, tiny_config, monkeypatch
) -> None:
    from gbw.uda.source_only import SourceOnly

    original = SourceOnly.training_step

    def always_nan(self, source, target, step):
        return original(self, {**source, "image": source["image"] * float("nan")}, target, step)

    monkeypatch.setattr(SourceOnly, "training_step", always_nan)
    exp = tiny_config(
        minicity_root,
        str(tmp_path),
        "train.max_iters=20",
        "train.on_nonfinite=skip_step",
        "train.max_skipped_steps=3",
    )
    with pytest.raises(NonFiniteLossError, match="3 consecutive optimiser steps were skipped"):
        train(exp)


def test_nonfinite_watch_finds_the_first_bad_term_without_reading_back() -> None:
    w = NonFiniteWatch("cpu")
    w.update(0, {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "diag.x": torch.tensor(0.0)})
    w.update(1, {"a": torch.tensor(1.0), "b": torch.tensor(float("inf"))})
    w.update(2, {"a": torch.tensor(float("nan")), "b": torch.tensor(float("nan"))})
    assert w.check() == (1, "b", float("inf"))
    assert NonFiniteWatch("cpu").check() is None
    m = torch.device("meta")  # no value is read during update: meta tensors have none
    wm = NonFiniteWatch(m)
    wm.update(torch.tensor(3, device=m), {"a": torch.empty((), device=m)})


# --- file permissions and interrupted writes -------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, monkeypatch) -> None:
    import gbw.fileio as fileio
    from gbw.data.io import write_png

    old = os.umask(umask)
    monkeypatch.setattr(fileio, "_UMASK", None)
    try:
        assert file_mode() == 0o666 & ~umask
        save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
        write_png(tmp_path / "m.png", np.zeros((4, 4), dtype=np.uint8))
        write_json(tmp_path / "s.json", {"x": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("reference: an ordinary file")
        for name in ("a.ckpt", "m.png", "s.json"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask, name
    finally:
        os.umask(old)
        monkeypatch.setattr(fileio, "_UMASK", None)


def _full_disk_after(monkeypatch, nbytes: int) -> None:
    """Writes through os.fdopen fail with ENOSPC after ``nbytes`` bytes."""
    import gbw.fileio as fileio

    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        written = [0]
        write = f.write

        def limited(data):
            written[0] += len(data)
            if written[0] > nbytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(data)

        f.write = limited
        return f

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)


def test_full_disk_names_the_path_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    before = target.read_bytes()
    _full_disk_after(monkeypatch, 100)
    with pytest.raises(OutputError, match=f"no space left on device while writing {target}"):
        save_checkpoint({"step": 2, "w": torch.zeros(10000)}, target)
    assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_read_only_folder_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match="read-only file system while writing"):
        write_json(tmp_path / "x.json", {})


def test_remove_stale_temps_touches_only_its_pattern(tmp_path: Path) -> None:
    for name in (".a.ckpt.x1.tmp", "b.tmp", ".hidden", "c.ckpt"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".a.ckpt.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "b.tmp", "c.ckpt"]


def test_atomic_write_removes_its_temp_file_on_any_error(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), atomic_write(tmp_path / "x.bin") as f:
        f.write(b"partial")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []


# --- config validation at load time ---------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("weighting.lam=0", "weighting.lam=0.0: expected a finite number > 0"),
        ("weighting.lam=-1", "weighting.lam=-1.0"),
        ("optim.lr=-0.1", "optim.lr=-0.1: expected a finite number >= 0"),
        ("weighting.name=gbww", "weighting.name='gbww': expected one of none, gbw"),
        ("weighting.variant=row", "weighting.variant='row'"),
        ("method=dac", "method='dac': expected one of"),
        ("model.name=resnet", "model.name='resnet': expected one of"),
        ("data.batch_size=0", "data.batch_size=0: expected an integer >= 1"),
        ("train.max_iters=-3", "train.max_iters=-3: expected an integer >= 0"),
        ("model.num_classes=16", "model.num_classes=16 disagrees with data.source"),
        ("data.source.crop=[512]", "data.source.crop=[512]"),
        ("eval.mode=sliding", "eval.mode='sliding'"),
        ("train.precision=fp16", "train.precision='fp16'"),
        ("data.target.rcs=true", "data.target.rcs=True"),
        ("optim.betas=[0.9,1.5]", "optim.betas"),
    ],
)
def test_config_values_are_checked_when_loaded(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_config_fails_before_any_folder_exists(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"out_dir: {tmp_path / 'out'}\nweighting: {{name: gbw, lam: 0}}\n")
    line = _one_error_line(_gbw("train", str(config)))
    assert "weighting.lam=0" in line and "> 0" in line
    assert not (tmp_path / "out").exists()


def test_mapping_overrides_replace_instead_of_merging() -> None:
    base = ["model.kwargs={widths: [8, 8, 16, 16], aspp_channels: 8}"]
    assert load_config(None, [*base, "model.kwargs={}"]).model.kwargs == {}
    assert load_config(None, [*base, "model.kwargs=null"]).model.kwargs == {}
    assert load_config(None, [*base, "model.kwargs={aspp_channels: 4}"]).model.kwargs == {
        "aspp_channels": 4
    }
    merged = load_config(None, [*base, "model.kwargs.aspp_channels=4"]).model.kwargs
    assert merged == {"widths": [8, 8, 16, 16], "aspp_channels": 4}


# --- the command line -----------------------------------------------------------------------


def test_resume_flag_never_swallows_the_next_word(tmp_path: Path) -> None:
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    assert _split_resume(["train", "c.yaml", "--resume", "train.max_iters=8"]) == [
        "train",
        "c.yaml",
        "--resume=last",
        "train.max_iters=8",
    ]
    assert _split_resume(["train", "--resume", "c.yaml"]) == ["train", "--resume=last", "c.yaml"]
    assert _split_resume(["train", "c.yaml", "--resume", str(ckpt)])[-1] == f"--resume={ckpt}"
    assert _split_resume(["train", "c.yaml", "--resume", "runs/a/step_1.ckpt"])[-1] == (
        "--resume=runs/a/step_1.ckpt"
    )
    assert _split_resume(["train", "c.yaml", "--resume=p.ckpt", "x=1"])[-2:] == [
        "--resume=p.ckpt",
        "x=1",
    ]
    assert _split_resume(["train", "c.yaml", "--resume"])[-1] == "--resume=last"


def test_resume_then_override_and_nothing_to_resume(minicity_root, tmp_path, tiny_config) -> None:
    exp = _tiny(tiny_config, minicity_root, tmp_path)
    config = tmp_path / "c.yaml"
    from gbw.config import save_config

    save_config(exp, config)
    res = _gbw("train", str(config), "--resume", "train.max_iters=6")
    assert "nothing to resume" in _one_error_line(res)  # not a silent start at step 0
    assert not (tmp_path / "tiny" / "checkpoints").exists()
    assert _gbw("train", str(config)).returncode == 0
    res = _gbw("train", str(config), "--resume", "train.max_iters=6")
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_checkpoint(tmp_path / "tiny/checkpoints/last.ckpt")["step"] == 6


def test_checkpoint_that_does_not_fit_is_one_line(minicity_root, tmp_path, tiny_config) -> None:
    exp = _tiny(tiny_config, minicity_root, tmp_path)
    train(exp)
    run = tmp_path / "tiny"
    res = _gbw("eval", str(run), "model.kwargs.decoder_channels=16")
    assert "weights do not fit model 'tinyseg'" in _one_error_line(res)
    state = load_checkpoint(run / "checkpoints/last.ckpt")
    del state["method"]
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "broken.ckpt")
    assert "has no 'method' entry" in _one_error_line(_gbw("eval", str(tmp_path / "broken.ckpt")))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in _one_error_line(_gbw("eval", str(bad)))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("weighting: {lam: -1}\n")
    res = _gbw("--debug", "train", str(config))
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_main_maps_errors_to_exit_codes(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config file not found" in err


# --- distinct outputs ------------------------------------------------------------------------


def test_report_on_two_runs_with_the_same_name_keeps_both(
    minicity_root, tmp_path, tiny_config
) -> None:
    import shutil

    from gbw.analysis.report import report_runs

    train(_tiny(tiny_config, minicity_root, tmp_path / "a", "weighting.name=gbw"))
    shutil.copytree(tmp_path / "a" / "tiny", tmp_path / "b" / "tiny")
    report_runs([str(tmp_path / "a/tiny"), str(tmp_path / "b/tiny")], str(tmp_path / "rep"))
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "a_tiny IoU" in text and "b_tiny IoU" in text
    figs = sorted(p.name for p in (tmp_path / "rep").glob("*fig2*"))
    assert figs == ["a_tiny_fig2_weights_src.png", "b_tiny_fig2_weights_src.png"]
    rows = (tmp_path / "rep" / "report.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == {"a_tiny", "b_tiny"}
    # the same folder twice is still two columns
    report_runs([str(tmp_path / "a/tiny")] * 2, str(tmp_path / "rep2"))
    assert "tiny#2 IoU" in (tmp_path / "rep2" / "report.md").read_text()


@pytest.mark.parametrize(
    ("method", "override", "message"),
    [
        ("dacs", "uda.ema_alpha=2", "uda.ema_alpha must be a number in [0, 1], got 2.0"),
        ("dacs", "uda.pseudo_threshold=-0.5", "uda.pseudo_threshold must be a number in [0, 1]"),
        ("dacs", "uda.pseudo_margins=[1,2]", "uda.pseudo_margins must be 4 non-negative"),
        ("dacs", "uda.teacher_bn=running", "uda.teacher_bn must be one of"),
        ("daformer", "uda.fd_lambda=-1", "uda.fd_lambda must be a number >= 0"),
        ("hrda", "uda.hr_loss_weight=1.5", "uda.hr_loss_weight must be a number in [0, 1]"),
        ("mic", "uda.mask_ratio=1", "uda.mask_ratio must be a number in [0, 1)"),
        ("mic", "uda.base=segformer", "uda.base must be one of"),
        ("adaptsegnet", "uda.gan=wgan", "uda.gan must be one of"),
        ("advent", "uda.disc_betas=[0.9]", "uda.disc_betas must be 2 numbers"),
        ("minent", "uda.lambda_ent_aux=-1", "uda.lambda_ent_aux must be a number >= 0"),
        ("source_only", "uda.ce_reduction=avg", "uda.ce_reduction must be one of"),
        ("dacs", "uda.no_such_key=1", "unknown key 'uda.no_such_key'"),
    ],
)
def test_method_settings_are_checked_when_loaded(method: str, override: str, message: str):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"method={method}", override])
    assert message in str(info.value)
