"""Grid parsing and expansion, run folder names, and validation before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gbw.config import ConfigError, load_config, to_dict
from gbw.sweep.plan import Grid, expand, parse_grid, parse_seeds, split_values, validate
from gbw.sweep.runner import config_dict


def test_split_values_keeps_brackets_and_quotes_together():
    assert split_values("none,gbw,if") == ["none", "gbw", "if"]
    assert split_values("[8,8,16,16],[16, 16]") == ["[8,8,16,16]", "[16, 16]"]
    assert split_values("{a: 1, b: 2},'x,y',3") == ["{a: 1, b: 2}", "'x,y'", "3"]


def test_grid_expansion_is_the_product_seed_by_seed():
    grids = [parse_grid("weighting.name=none,gbw,if"), parse_grid("data.source.rcs=false,true")]
    specs = expand("c.yaml", [1, 2], grids, ["train.max_iters=5"])
    assert len(specs) == 3 * 2 * 2
    # all settings of seed 1 first, the grids' product in the order given
    assert [s.name for s in specs[:6]] == [
        "name=none+rcs=false-s1",
        "name=none+rcs=true-s1",
        "name=gbw+rcs=false-s1",
        "name=gbw+rcs=true-s1",
        "name=if+rcs=false-s1",
        "name=if+rcs=true-s1",
    ]
    assert {s.seed for s in specs[6:]} == {2}
    s = specs[3]
    assert s.setting == "weighting.name=gbw, data.source.rcs=true"
    assert s.values == {"weighting.name": "gbw", "data.source.rcs": "true"}
    assert s.overrides == ["train.max_iters=5", "weighting.name=gbw", "data.source.rcs=true"]
    assert len({x.setting for x in specs}) == 6
    # no grid: one run per seed
    assert [x.name for x in expand("c.yaml", [3, 4], [])] == ["s3", "s4"]


def test_run_names_are_single_safe_path_components_and_unique():
    grids = [
        parse_grid("data.source.rcs=false,true"),
        parse_grid("data.target.rcs=false,true"),  # same last component: full keys
        parse_grid("model.kwargs.widths=[8,8],[8, 8],a/b"),
    ]
    specs = expand(None, [1], grids)
    names = [s.name for s in specs]
    assert len(set(names)) == len(names) == 12
    for n in names:
        assert "/" not in n and " " not in n and Path(n).name == n
    assert names[0].startswith("data.source.rcs=false+data.target.rcs=false+widths=8_8~")
    # two values differing only in characters that are replaced get different hashes
    assert names[0] != names[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weighting.name", "expected KEY=VALUE1"),
        ("weighting.name=none,,gbw", "empty value"),
        ("seed=1,2", "use --seeds"),
        ("name=a,b", "sets it for every run"),
        ("weighting.name=gbw,gbw", "listed twice"),
    ],
)
def test_bad_grids_are_rejected(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(text)


def test_bad_seeds_and_clashing_overrides():
    assert parse_seeds("1,2,3") == [1, 2, 3]
    for bad in ("1,x", "1,1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="also a grid key"):
        expand(None, [1], [Grid("weighting.name", ("gbw",))], ["weighting.name=none"])
    with pytest.raises(ConfigError, match="sets 'seed'"):
        expand(None, [1], [], ["seed=3"])


def test_validate_names_the_bad_key_or_value(tmp_path):
    def check(grid: str, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            validate(expand(None, [1], [parse_grid(grid)]), tmp_path)

    check("weighting.nam=none,gbw", r"unknown key 'weighting.nam'; did you mean 'weighting.name'")
    check("train.max_iters=10,abc", r"bad value for 'train.max_iters'")
    check("weighting.name=none,gbww", r"weighting.name='gbww': expected one of")
    check("method=dacs,dac", r"method='dac': expected one of")
    check("uda.ema_alph=0.9", r"unknown key 'uda.ema_alph'")
    check("train.devices=1,2", r"one process on one device")
    exps = validate(expand(None, [7], [parse_grid("weighting.lam=0.1,10")]), tmp_path)
    assert [(e.seed, e.name, e.weighting.lam) for e in exps] == [
        (7, "lam=0.1-s7", 0.1),
        (7, "lam=10-s7", 10.0),
    ]
    assert exps[0].out_dir == str(tmp_path.resolve())
    # the fast dict of the runner is the config module's to_dict
    assert config_dict(exps[0]) == to_dict(exps[0])
    full = load_config(None, ["model.kwargs={widths: [8]}", "eval.resize=[64,32]"])
    assert config_dict(full) == to_dict(full)
