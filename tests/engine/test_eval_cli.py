"""gbw eval: weight files without a run folder, --json into a folder that does not exist."""

from __future__ import annotations

import json

from gbw.cli import main
from weight_files import tiny_weights


def test_eval_of_a_weight_file_writes_json_into_a_new_folder(minicity_root, tmp_path, capsys):
    weights = tiny_weights(tmp_path / "tiny.pt")
    target = tmp_path / "not" / "yet" / "there" / "metrics.json"
    overrides = [f"data.val.root={minicity_root}", "data.minicity_size=quick", "eval.subset=3"]
    assert main(["eval", str(weights), *overrides, "--cpu", "--json", str(target)]) == 0
    assert "mean" in capsys.readouterr().out
    metrics = json.loads(target.read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["checkpoint_step"] == 0
