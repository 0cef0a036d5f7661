"""EDAPS: the training step on tiny models (finite, changing losses, with and without GBW, an
image without instances, the RoI-classification GBW extension), overfitting a few synthetic
scenes to PQ > 0.6 (things and stuff apart), and the engine on small fake SYNTHIA ->
Cityscapes trees with instances: prepare, train, panoptic evaluation, kill-and-resume
bit-identically, 2-process DDP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from panoptic_scenes import scene, write_cityscapes, write_synthia

from gbw.config import ExperimentConfig, load_config
from gbw.data.classes import THING_CLASSES
from gbw.data.panoptic import instance_targets
from gbw.engine.evaluate_panoptic import predict_panoptic
from gbw.engine.trainer import build_method, train
from gbw.metrics import PanopticQuality
from gbw.uda.base import Step
from kill_resume import assert_same_method_state, train_killed_at

STEP_TERMS = ("src.ce", "src.rpn_cls", "src.rpn_box", "src.roi_cls", "src.roi_box", "src.mask")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def edaps_config(*extra: str) -> ExperimentConfig:
    return load_config(
        None,
        [
            "method=edaps",
            "model.name=edaps_tiny",
            "optim.name=adamw",
            "optim.lr=5e-4",
            "optim.head_lr_mult=10",
            "uda.pseudo_threshold=0.0",  # an untrained teacher is never 96.8 % sure
            *extra,
        ],
    )


def scenes(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [scene(rng) for _ in range(n)]


def batch_of(items: list[dict], *, no_instances: tuple[int, ...] = ()) -> tuple[dict, dict]:
    image = torch.stack(
        [torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 255 for s in items]
    )
    label = torch.stack([torch.from_numpy(s["label"]).long() for s in items])
    pans = [torch.from_numpy(s["panoptic"]) for s in items]
    for i in no_instances:  # the thing pixels become road: an image without any instance
        label[i][label[i] >= 11] = 0
        pans[i] = torch.where(pans[i] >= 11_000, 0, pans[i])
    source = {"image": image, "label": label, "instances": [instance_targets(p) for p in pans]}
    return source, {"image": image.flip(-1)}


def run_steps(method, source: dict, target: dict, n: int) -> list[dict[str, float]]:
    opts = method.configure_optimizers()
    out = []
    for i in range(n):
        step = Step(i, lambda loss: loss.backward(), opts, n)
        logs = method.training_step(source, target, step)
        method.after_optimizer_step(step)
        out.append({k: float(v) for k, v in logs.items()})
    return out


@pytest.mark.parametrize("weighting", ["none", "gbw"])
def test_step_losses_are_finite_and_change(weighting):
    torch.manual_seed(0)
    method = build_method(edaps_config(f"weighting.name={weighting}"))
    source, target = batch_of(scenes(2), no_instances=(1,))
    assert len(source["instances"][1]["boxes"]) == 0
    logs = run_steps(method, source, target, 3)
    for key in (*STEP_TERMS, "src.fd", "mix.ce"):
        values = [log[key] for log in logs]
        assert all(math.isfinite(v) for v in values), (key, values)
    for key in (*STEP_TERMS, "mix.ce"):
        assert logs[0][key] != logs[-1][key], key
    assert set(method.weightings) == {"src", "mix"}  # GBW on the semantic terms only
    if weighting == "gbw":
        w = method.weightings["src"].last_weights
        assert w.shape == (19,) and not torch.allclose(w, torch.ones(19))


def test_gbw_on_roi_classification_is_an_option(tmp_path):
    torch.manual_seed(0)
    method = build_method(edaps_config("weighting.name=gbw", "uda.weight_instance_cls=true"))
    source, target = batch_of(scenes(2))
    logs = run_steps(method, source, target, 2)
    assert set(method.weightings) == {"src", "mix", "roi_cls"}
    roi = method.weightings["roi_cls"]
    assert roi.num_classes == 9 and roi.last_weights.shape == (9,)
    assert float(roi.last_weights.sum()) == pytest.approx(9.0, rel=1e-5)  # GBW's QP: sum = C
    assert math.isfinite(logs[-1]["src.roi_cls"])
    assert set(method.weighting_logs()) >= {"roi_cls/weights", "src/weights", "mix/weights"}
    # frequency baselines have statistics of the 19 model classes only
    from gbw.engine.trainer import weighting_factory

    stats = tmp_path / "stats.npy"
    np.save(stats, np.ones((3, 19), dtype=np.int64))
    make = weighting_factory(edaps_config("weighting.name=if", f"weighting.class_stats={stats}"))
    with pytest.raises(ValueError, match="not of the 9 classes of loss term 'roi_cls'"):
        make("roi_cls", num_classes=9)


def test_method_checks_its_network_its_data_and_graph_mode(tmp_path):
    with pytest.raises(ValueError, match="needs a panoptic network with an instance decoder"):
        build_method(edaps_config("model.name=daformer_mit", "model.kwargs={encoder: tiny}"))
    method = build_method(edaps_config())
    source, target = batch_of(scenes(2))
    del source["instances"]
    with pytest.raises(ValueError, match=r"set data\.source\.panoptic: true"):
        run_steps(method, source, target, 1)
    from types import SimpleNamespace

    from gbw.engine.stepper import graph_mode

    cuda = SimpleNamespace(device=torch.device("cuda"), world_size=1)
    assert not graph_mode(edaps_config(), cuda)  # auto: off for the detector
    with pytest.raises(ValueError, match="cannot be captured"):
        graph_mode(edaps_config("train.cuda_graph=true"), cuda)


@pytest.mark.slow
def test_overfits_a_few_minicity_images_to_pq_above_0_6(minicity_root):
    """Four MiniCity v2 source images with their instance maps, 800 steps of the EDAPS step
    (source = target images): the fused predictions reach PQ > 0.6 over the classes present;
    things and stuff reported apart."""
    from gbw.data.minicity import MiniCity

    ds = MiniCity("source_train", minicity_root, size="quick", with_panoptic=True)
    items = [ds[i] for i in range(4)]

    def batch(its: list[dict]) -> dict:
        image, label = (
            torch.stack([s["image"] for s in its]),
            torch.stack([s["label"] for s in its]),
        )
        return {
            "image": image,
            "label": label,
            "instances": [instance_targets(s["panoptic"]) for s in its],
        }

    torch.manual_seed(0)
    exp = edaps_config(
        "model.kwargs.dropout=0.0", "uda.fd_lambda=0", "eval.fusion.stuff_area=16",
        "data.minicity_size=quick",
    )  # fmt: skip
    method = build_method(exp)
    halves = [batch(items[:2]), batch(items[2:])]
    opts = method.configure_optimizers()
    for i in range(800):
        source = halves[i % 2]
        step = Step(i, lambda loss: loss.backward(), opts, 800)
        method.training_step(source, {"image": source["image"]}, step)
        method.after_optimizer_step(step)
    model = method.model.eval()
    _, panoptic, _ = predict_panoptic(model, batch(items)["image"], exp.eval, 19)
    metric = PanopticQuality()
    metric.update(panoptic, torch.stack([s["panoptic"] for s in items]))
    present = sorted({int(c) for s in items for c in torch.unique(s["label"]) if c < 19})
    m = metric.compute(classes=present)
    things, stuff = m.mean("pq", "things"), m.mean("pq", "stuff")
    print(f"overfit: PQ {m.mpq:.3f}, things {things:.3f}, stuff {stuff:.3f} over {present}")
    assert any(c in THING_CLASSES for c in present) and any(c not in THING_CLASSES for c in present)
    assert m.mpq > 0.6 and things > 0.2 and stuff > 0.6, (m.mpq, things, stuff)


# --- the engine on fake SYNTHIA -> Cityscapes trees with instances --------------------------


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    pytest.importorskip("cityscapesscripts")
    from gbw.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("panoptic_trees")
    write_synthia(root / "synthia", 6)
    write_cityscapes(root / "cityscapes", {"train": 4, "val": 3})
    prepare_dataset("synthia", root / "synthia", progress=False, panoptic=True)
    prepare_dataset("cityscapes", root / "cityscapes", progress=False, panoptic=True)
    return root


def engine_overrides(trees, out) -> list[str]:
    return [
        f"out_dir={out}",
        "name=edaps",
        "method=edaps",
        "model.name=edaps_tiny",
        "weighting.name=gbw",
        "optim.name=adamw",
        "optim.lr=5e-4",
        "uda.pseudo_threshold=0.0",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.source.name=synthia",
        "data.source.split=train",
        f"data.source.root={trees / 'synthia'}",
        "data.source.crop=[64,64]",
        "data.source.panoptic=true",
        "data.source.rcs=true",
        "data.source.rcs_min_pixels=50",
        "data.target.name=cityscapes",
        "data.target.split=train",
        f"data.target.root={trees / 'cityscapes'}",
        "data.target.crop=[64,64]",
        "data.val.name=cityscapes",
        "data.val.split=val",
        f"data.val.root={trees / 'cityscapes'}",
        "data.val.panoptic=true",
        "eval.classes=16",
        "eval.fusion.stuff_area=16",
        "eval.fusion.score_threshold=0.5",
        "train.accelerator=cpu",
        "train.progress=false",
        "train.log_every=1",
    ]


def test_engine_trains_evaluates_and_resumes_bit_identically(trees, tmp_path, monkeypatch):
    from gbw.uda.dacs import DACS

    args = ["train.max_iters=4", "train.ckpt_every=2"]
    full = train(load_config(None, [*engine_overrides(trees, tmp_path / "a"), *args]))
    metrics = json.loads((full.run_dir / "metrics.json").read_text())
    assert {"mIoU", "mPQ", "mSQ", "mRQ", "mPQ_things", "mPQ_stuff", "PQ/car"} <= set(metrics)
    assert metrics["classes"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    assert "PQ/terrain" not in metrics and 0.0 <= metrics["mPQ_stuff"] <= 1.0
    rows = (full.run_dir / "scalars.csv").read_text()
    for key in ("src.rpn_cls", "src.mask", "src.roi_box", "mix.ce"):
        assert f",loss/{key}," in rows, key

    exp = load_config(None, [*engine_overrides(trees, tmp_path / "b"), *args])
    train_killed_at(monkeypatch, DACS, exp, step=3)
    resumed = train(exp, resume=True)
    assert_same_method_state(full.run_dir, resumed.run_dir, prefix="model.instance_head.")


@pytest.mark.slow
def test_edaps_trains_on_two_processes(trees, tmp_path, train_two_processes):
    cfg = tmp_path / "edaps.yaml"
    cfg.write_text("method: edaps\nmodel:\n  name: edaps_tiny\n")
    train_two_processes(cfg, [*engine_overrides(trees, tmp_path), "train.max_iters=2"])
    run = tmp_path / "edaps"
    assert json.loads((run / "meta.json").read_text())["world_size"] == 2
    assert "mPQ" in json.loads((run / "metrics.json").read_text())
    assert set(json.loads((run / "weights_summary.json").read_text())) == {"src", "mix"}


def test_eval_and_predict_commands_agree_with_the_official_evaluator(trees, tmp_path, capsys):
    """``gbw predict`` writes COCO panoptic PNG + JSON that cityscapesscripts' evaluator scores
    (against createPanopticImgs' ground truth) exactly as ``gbw eval`` does, class by class."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic
    from PIL import Image

    from gbw.cli import main
    from gbw.data.classes import CITYSCAPES_CLASSES
    from gbw.data.panoptic import read_panoptic

    torch.manual_seed(0)
    run = train(
        load_config(None, [*engine_overrides(trees, tmp_path), "train.max_iters=2"])
    ).run_dir
    assert main(["eval", str(run), "--cpu", "--json", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert (
        "| **mean, things (6)** |" in out and "semantic branch" in out and "| car | thing |" in out
    )
    ours = json.loads((tmp_path / "eval.json").read_text())

    images = sorted((trees / "cityscapes" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(run),
                *map(str, images),
                "--out",
                str(pred),
                "--cpu",
                "--format",
                "panoptic",
                "--format",
                "panoptic_ids",
                "--overlay",
            ]
        )
        == 0
    )
    anns = []
    for image in images:
        stem = image.stem
        info = json.loads((pred / f"{stem}_panoptic.json").read_text())
        rgb = np.asarray(Image.open(pred / info["file_name"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        gbw = read_panoptic(pred / f"{stem}_panopticTrainIds.png")
        assert np.array_equal(np.where(ids == 0, 255_000, ids - 1), gbw)  # COCO id = gbw id + 1
        assert (pred / f"{stem}_overlay.png").is_file()
        anns.append(
            {
                "image_id": stem[: -len("_leftImg8bit")],
                "file_name": info["file_name"],
                "segments_info": info["segments_info"],
            }
        )
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": anns}))
    gt = tmp_path / "gt"
    gt.mkdir()
    convert2panoptic(
        str(trees / "cityscapes" / "gtFine"), str(gt), useTrainId=True, setNames=["val"]
    )
    ref = evaluatePanoptic(
        str(gt / "cityscapes_panoptic_val_trainId.json"),
        str(gt / "cityscapes_panoptic_val_trainId"),
        str(tmp_path / "pred.json"),
        str(pred),
        str(tmp_path / "official.json"),
    )
    compared = 0
    for c in ours["classes"]:
        name = CITYSCAPES_CLASSES[c]
        for m in ("pq", "sq", "rq"):
            value = ours[f"{m.upper()}/{name}"]
            expected = ref["per_class"][c][m]
            assert (math.isnan(value) and expected == 0.0) or value == pytest.approx(expected), (
                name,
                m,
            )
        compared += not math.isnan(ours[f"PQ/{name}"])
    assert compared >= 3  # road, building, sky at least
