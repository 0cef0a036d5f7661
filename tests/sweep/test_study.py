"""``gbw study --quick`` end to end: the fixed sweep, study.md with every table, the weight
spread and the figures."""

from __future__ import annotations

import json

import pytest

from gbw.cli import main
from gbw.sweep.study import LAMBDAS, WEIGHTINGS, plan_study


def test_study_plan_is_fixed_and_complete():
    full = plan_study()
    # 7 weightings x 2 settings x 5 seeds + 6 lambdas x 3 seeds + 2 RCS settings x 5 seeds
    assert len(full.specs) == 7 * 2 * 5 + 6 * 3 + 2 * 5 == 98
    assert len({s.name for s in full.specs}) == 98
    assert full.lambda_seeds == [1, 2, 3]
    lam = [s for s in full.specs if "gbw_mean_lam" in s.setting]
    assert {s.values["setting"] for s in lam} == {"self_training"}
    assert all("weighting.scale=mean" in s.overrides for s in lam)
    paper = next(s for s in full.specs if s.setting == "self_training/gbw")
    for item in ("weighting.variant=class", "weighting.lam=1.0", "weighting.use_pixel_weight=true"):
        assert item in paper.overrides
    rcs = [s for s in full.specs if s.setting.endswith("+rcs")]
    assert {s.setting for s in rcs} == {"self_training/none+rcs", "self_training/gbw+rcs"}
    assert all("data.source.rcs=true" in s.overrides for s in rcs)
    assert ("self_training/gbw+rcs", "self_training/none+rcs") in full.comparisons
    assert len(WEIGHTINGS) == 7 and len(LAMBDAS) == 6
    quick = plan_study(quick=True)
    assert quick.seeds == [1, 2] and len(quick.specs) == 44
    assert all("train.max_iters=4" in s.overrides for s in quick.specs)


@pytest.mark.slow
def test_quick_study_end_to_end(minicity_root, tmp_path):
    out = tmp_path / "study"
    args = ["study", "--quick", "--out", str(out), "--data-root", minicity_root, "--jobs", "2"]
    assert main(args) == 0
    md = (out / "study.md").read_text()
    for section in (
        "## Class weighting strategies (Table 4b's shape)",
        "## Rare-class sampling and GBW, self-training (Table 4a's shape)",
        "## GBW's λ, self-training (Table 5's shape)",
        "## The 6 rarest source classes (Fig. 4b's shape)",
        "## How far the weights move from uniform",
        "Machine: ",
        "Wall time: ",
        "torch ",
        "The best GBW for the rare-class-sampling table is, by rule, the paper's variant",
    ):
        assert section in md, section
    assert md.count("no clear change") + md.count("better") + md.count("worse") >= 20
    assert "GBW on top of S (w/ GBW + S minus w/ S): Δ = " in md
    for fig in (
        "self_training_fig2_weights_src.png",
        "self_training_fig2_weights_mix.png",
        "self_training_fig6a_max_weight.png",
        "self_training_fig6b_std_vs_gain.png",
        "self_training_fig4a_confusion_delta.png",
        "source_only_fig4a_confusion_delta.png",
    ):
        assert (out / "figures" / fig).stat().st_size > 1000, fig
        assert f"figures/{fig}" in md
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "study" and len(manifest["runs"]) == 44
    assert {r["status"] for r in manifest["runs"]} == {"finished"}
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["comparisons"]) == 2 * 6 + 6 + 3
    # GBW moves its weights away from 1; no weighting has none to show
    assert "| GBW as in the paper (class variant, Eq. 12, λ = 1) | source-only | src |" in md
    assert "| no class weighting |" not in md.split("## How far the weights")[1].split("##")[0]
    # a rerun trains nothing, rewrites the report and adds no study time
    assert "over 1 invocation(s)" in md
    assert main(args) == 0
    times = json.loads((out / "study_time.json").read_text())["invocations"]
    assert [i["runs_trained"] for i in times] == [44, 0]
    assert "over 1 invocation(s)" in (out / "study.md").read_text()
