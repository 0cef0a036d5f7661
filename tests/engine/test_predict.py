"""gbw predict: distinct outputs, per-file errors, conversions, folders, any size, protocols."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gbw.cli import main
from gbw.engine.predict import labels_at, predict_image
from gbw.engine.runs import load_trained
from gbw.engine.weights import WeightFile, save_weight_file
from gbw.models import build_model
from weight_files import smooth_image, tiny_weights


@pytest.fixture
def weights(tmp_path) -> Path:
    return tiny_weights(tmp_path / "tiny.pt")


def _predict(*args: str) -> int:
    return main(["predict", *args, "--cpu"])


def test_same_stem_different_extensions_write_two_masks(weights, tmp_path, capsys):
    Image.fromarray(smooth_image(40, 56, 1)).save(tmp_path / "a.png")
    Image.fromarray(smooth_image(40, 56, 2)).save(tmp_path / "a.webp", lossless=True)
    Image.fromarray(smooth_image(40, 56, 3)).save(tmp_path / "b.jpg")
    out = tmp_path / "out"
    files = [str(tmp_path / n) for n in ("a.png", "a.webp", "b.jpg")]
    assert _predict(str(weights), *files, "--out", str(out), "--trainids") == 0
    assert "predicted 3 image(s), wrote 6 file(s)" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "a.png_color.png",
        "a.png_trainIds.png",
        "a.webp_color.png",
        "a.webp_trainIds.png",
        "b_color.png",
        "b_trainIds.png",
    ]
    a_png = np.asarray(Image.open(out / "a.png_trainIds.png"))
    a_webp = np.asarray(Image.open(out / "a.webp_trainIds.png"))
    assert not np.array_equal(a_png, a_webp)  # each is its own image's mask


def test_inputs_that_would_share_a_file_are_refused_before_any_work(weights, tmp_path, capsys):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        Image.fromarray(smooth_image(16, 16)).save(tmp_path / d / "a.png")
    out = tmp_path / "out"
    code = _predict(
        str(weights), str(tmp_path / "x/a.png"), str(tmp_path / "y/a.png"), "--out", str(out)
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "x/a.png and" in err[0] and "y/a.png would both write" in err[0]
    assert not out.exists()
    # a mask that would overwrite an input
    Image.fromarray(smooth_image(16, 16)).save(tmp_path / "x" / "a_color.png")
    code = _predict(str(weights), str(tmp_path / "x"), "--out", str(tmp_path / "x"))
    assert code == 2 and "would overwrite an input" in capsys.readouterr().err


def test_unreadable_files_are_reported_one_line_each_and_the_rest_is_written(
    weights, tmp_path, capsys
):
    Image.fromarray(smooth_image(24, 32)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    args = [str(tmp_path / n) for n in ("broken.png", "good.png", "empty.jpg", "missing.png")]
    assert _predict(str(weights), *args, "--out", str(out)) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, captured.err
    for name in ("broken.png", "empty.jpg", "missing.png"):
        assert sum(name in line for line in errors) == 1
    assert "Traceback" not in captured.err
    assert (out / "good_color.png").is_file()
    assert "predicted 1 image(s), wrote 1 file(s)" in captured.out and "3 failed" in captured.out


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device while writing"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied while writing"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system while writing"),
    ],
)
def test_full_or_unwritable_output_folder_gives_one_line(
    weights, tmp_path, capsys, monkeypatch, error, message
):
    Image.fromarray(smooth_image(16, 16)).save(tmp_path / "a.png")

    def fail(path, array):
        raise error

    monkeypatch.setattr("gbw.engine.predict.write_png", fail)
    out = tmp_path / "out"
    assert _predict(str(weights), str(tmp_path / "a.png"), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gbw predict: error: {message} {out / 'a_color.png'}"]


def test_16_bit_and_greyscale_inputs_are_converted_with_a_note(weights, tmp_path, capsys):
    rgb = smooth_image(32, 48)
    Image.fromarray(rgb).save(tmp_path / "rgb8.png")
    import cv2  # 16-bit PNG writer (Pillow cannot write 16-bit RGB)

    cv2.imwrite(str(tmp_path / "rgb16.png"), (rgb.astype(np.uint16) * 257)[:, :, ::-1])
    grey = rgb[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    out = tmp_path / "out"
    names = ["rgb8.png", "rgb16.png", "grey8.png", "grey16.png"]
    assert (
        _predict(str(weights), *[str(tmp_path / n) for n in names], "--out", str(out), "--trainids")
        == 0
    )
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 3 and "16-bit RGB PNG scaled to 8 bits (/257)" in err
    assert "greyscale expanded to RGB" in err
    ids = {n: np.asarray(Image.open(out / n.replace(".png", "_trainIds.png"))) for n in names}
    # a 16-bit copy (v * 257) predicts exactly what its 8-bit original does: scaled, not clipped
    assert np.array_equal(ids["rgb16.png"], ids["rgb8.png"])
    assert np.array_equal(ids["grey16.png"], ids["grey8.png"])


def test_labels_at_equals_full_upsampling_then_argmax():
    torch.manual_seed(0)
    logits = torch.randn(1, 7, 9, 13)
    full = F.interpolate(logits, size=(37, 50), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(labels_at(logits, (37, 50)).long(), full)


def test_a_3000x4000_photo_gets_a_full_size_mask_and_overlay(tmp_path):
    weights = tiny_weights(tmp_path / "w.pt", resize=[1000, 750])  # eval protocol: fit 1000x750
    img = smooth_image(3000, 4000)
    Image.fromarray(img).save(tmp_path / "big.jpg", quality=90)
    out = tmp_path / "out"
    assert (
        _predict(
            str(weights), str(tmp_path / "big.jpg"), "--out", str(out), "--overlay", "--trainids"
        )
        == 0
    )
    color = np.asarray(Image.open(out / "big_color.png"))
    ids = np.asarray(Image.open(out / "big_trainIds.png"))
    over = np.asarray(Image.open(out / "big_overlay.png"))
    assert (
        color.shape == (3000, 4000, 3) and ids.shape == (3000, 4000) and over.shape == color.shape
    )
    assert len(np.unique(ids)) > 1
    # the overlay is the photo and the colour mask blended half and half
    photo = np.asarray(Image.open(tmp_path / "big.jpg")).astype(np.float32)
    assert np.abs(over - (photo + color) / 2).max() <= 1.0
    # the network saw the image scaled to fit 1000x750, as the protocol says
    exp, model, _ = load_trained(weights)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    small = smooth_image(300, 400)
    predict_image(model, small, exp)
    assert seen == [(750, 1000)]  # small images are scaled up to the protocol size too


def test_nested_folder_keeps_relative_paths_and_slides_as_the_run_says(
    tmp_path, monkeypatch, capsys
):
    weights = tiny_weights(tmp_path / "w.pt", mode="slide", crop=[32, 32], stride=[16, 16])
    src = tmp_path / "photos"
    for rel in ("a/b/one.png", "a/two.jpg", "three.webp", "a/b/c/four.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(48, 64)).save(src / rel)
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden").mkdir()
    Image.fromarray(smooth_image(8, 8)).save(src / ".hidden" / "skip.png")
    import gbw.engine.evaluate as ev

    calls = []
    original = ev.slide_logits
    monkeypatch.setattr(ev, "slide_logits", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    out = src / "masks"  # inside the input folder: never read back as an input
    assert _predict(str(weights), str(src), "--out", str(out)) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [
        "a/b/c/four_color.png",
        "a/b/one_color.png",
        "a/two_color.png",
        "three_color.png",
    ]
    assert calls == [[32, 32]] * 4  # sliding windows, chosen from the run's eval protocol
    assert _predict(str(weights), str(src), "--out", str(out), "--mode", "whole") == 0
    assert len(calls) == 4  # --mode whole overrides it
    capsys.readouterr()
    assert _predict(str(weights), str(tmp_path / "nothing_here"), "--out", str(out)) == 1
    (tmp_path / "empty").mkdir()
    assert _predict(str(weights), str(tmp_path / "empty"), "--out", str(out)) == 2
    assert "no images found" in capsys.readouterr().err


def test_hrda_on_an_odd_sized_image(tmp_path):
    """HRDA needs sides divisible by 8: the network input is rounded to them, the mask is not."""
    kwargs = {
        "encoder": "tiny",
        "embed_dim": 16,
        "channels": 16,
        "attention_embed_dim": 16,
        "detail_crop": [32, 32],
    }
    torch.manual_seed(0)
    model = build_model("hrda_daformer_mit", 5, **kwargs)
    wf = WeightFile(
        model={"name": "hrda_daformer_mit", "num_classes": 5, "kwargs": kwargs},
        state_dict=model.state_dict(),
        eval={"mode": "slide", "crop": [64, 64], "stride": [32, 32]},
    )
    weights = save_weight_file(tmp_path / "hrda.pt", wf)
    Image.fromarray(smooth_image(141, 203)).save(tmp_path / "odd.png")
    out = tmp_path / "out"
    assert _predict(str(weights), str(tmp_path / "odd.png"), "--out", str(out), "--trainids") == 0
    ids = np.asarray(Image.open(out / "odd_trainIds.png"))
    assert ids.shape == (141, 203) and ids.max() < 5
