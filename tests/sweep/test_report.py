"""``gbw report --sweep`` on a hand-made sweep folder: aggregates, paired intervals and the
seeds left out, against values computed here; unfinished runs are not counted."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from gbw.cli import main
from gbw.config import load_config, to_dict

T_975_2 = 4.302652729749  # t_{0.975, 2}


def _run(out, name, setting, values, seed, miou, road, step=10, root=""):
    d = out / "runs" / name
    d.mkdir(parents=True)
    ov = ["train.max_iters=10", "data.minicity_size=quick"]
    ov += [f"data.source.root={root}"] if root else []
    cfg = to_dict(load_config(None, ov))
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {"step": step, "classes": [0, 1], "mIoU": miou, "IoU/road": road, "IoU/sidewalk": 0.0}
    metrics |= {"recall/road": road, "recall/sidewalk": 0.0}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return {
        "name": name,
        "setting": setting,
        "values": values,
        "seed": seed,
        "run_dir": f"runs/{name}",
    }


def test_report_by_hand(tmp_path, minicity_root):
    out = tmp_path / "sw"
    runs = []
    base = {1: 0.40, 2: 0.42, 3: 0.44, 5: 0.50}  # seed 5: no partner
    gbw = {1: 0.41, 2: 0.44, 3: 0.47, 4: 0.60}  # seed 4: no partner; deltas 1, 2, 3 points
    for s, v in base.items():
        runs.append(_run(out, f"none-s{s}", "w=none", {"w": "none"}, s, v, 0.9, root=minicity_root))
    for s, v in gbw.items():
        runs.append(_run(out, f"gbw-s{s}", "w=gbw", {"w": "gbw"}, s, v, 0.8, root=minicity_root))
    runs.append(_run(out, "if-s1", "w=if", {"w": "if"}, 1, 0.99, 0.99, step=5))  # unfinished
    manifest = {"config": "c.yaml", "grids": [{"key": "w", "values": ["none", "gbw", "if"]}]}
    (out / "manifest.json").write_text(
        json.dumps(manifest | {"seeds": [1, 2, 3, 4, 5], "runs": runs})
    )

    assert main(["report", "--sweep", str(out)]) == 0  # default baseline: first grid value
    data = json.loads((out / "sweep.json").read_text())
    gbw_cmp = next(c for c in data["comparisons"] if c["setting"] == "w=gbw")
    m = gbw_cmp["mIoU"]
    assert m["seeds"] == [1, 2, 3] and m["only_setting"] == [4] and m["only_baseline"] == [5]
    assert m["mean"] == pytest.approx(2.0) and m["std"] == pytest.approx(1.0)
    assert m["low"] == pytest.approx(2 - T_975_2 / math.sqrt(3), abs=1e-9)
    assert m["high"] == pytest.approx(2 + T_975_2 / math.sqrt(3), abs=1e-9)
    assert m["verdict"] == "no clear change"
    road = gbw_cmp["IoU/road"]
    assert road["mean"] == pytest.approx(-10.0) and road["std"] == pytest.approx(0.0)
    assert road["verdict"] == "worse"  # every seed 10 points lower: a zero-width interval below 0
    s_none = next(s for s in data["settings"] if s["setting"] == "w=none")
    assert s_none["mIoU"]["mean"] == pytest.approx(100 * sum(base.values()) / 4)
    assert s_none["mIoU"]["n"] == 4 and s_none["seeds"] == [1, 2, 3, 5]
    s_if = next(s for s in data["settings"] if s["setting"] == "w=if")
    assert s_if["mIoU"]["n"] == 0  # metrics.json before train.max_iters does not count
    md = (out / "sweep.md").read_text()
    assert "seed(s) 4 only in w=gbw; seed(s) 5 only in w=none" in md
    assert "Not finished (left out): if-s1" in md
    assert (
        "| w=gbw | 4 | 48.0 ± 8.4 | w=none | +2.0 [-0.5, +4.5] | **no clear change** | 1,2,3 |"
        in md
    )
    # classes rarest source class first, with their source share
    share = data["source_share_pct"]
    assert data["classes"] == sorted(share, key=share.get) and set(share) == {"road", "sidewalk"}
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    row = next(r for r in rows if r["setting"] == "w=gbw" and r["metric"] == "mIoU")
    assert row["baseline"] == "w=none" and row["left_out_seeds"] == "4 5"
    assert float(row["ci_low"]) == pytest.approx(2 - T_975_2 / math.sqrt(3), rel=1e-5)
