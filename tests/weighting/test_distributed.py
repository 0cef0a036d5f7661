"""Two gloo processes get identical weights, equal to one process on the global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gbw


def _global_batch():
    g = torch.Generator().manual_seed(123)
    z = torch.randn(4, 7, 6, 5, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 7, (4, 6, 5), generator=g)
    y[torch.rand(4, 6, 5, generator=g) < 0.2] = 255
    y[:2][y[:2] == 3] = 0  # class 3 only on rank 1's half
    w = torch.rand(4, 6, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, 5, generator=g) > 0.3
    return z, y, w, mask


def _strategies():
    return {
        "class": lambda: gbw.GBW(7, lam=0.001),
        "class_present_mean": lambda: gbw.GBW(7, lam=0.3, scale="mean", present_only=True),
        "channel_authors": lambda: gbw.GBW.authors(7, lam=0.001),
        "channel_w": lambda: gbw.GBW(7, lam=0.001, variant="channel"),
        "lbw": lambda: gbw.LossBasedWeighting(7, lam=1.0),
    }


def _compute(rank_slice: slice | None) -> dict[str, torch.Tensor]:
    z, y, w, mask = _global_batch()
    if rank_slice is not None:
        z, y, w, mask = z[rank_slice], y[rank_slice], w[rank_slice], mask[rank_slice]
    out = {}
    for name, make in _strategies().items():
        out[f"ce/{name}"] = make().weights(z, y, w)
    for variant in ("class", "channel"):  # the fused pass reduces its sums and counts too
        s = gbw.GBW(7, lam=0.001, variant=variant, fused="torch")
        s.cross_entropy(z, y, w)
        out[f"fused/{variant}"] = s.last_weights
    for variant in ("class", "channel"):
        out[f"ent/{variant}"] = gbw.GBW(7, lam=1e-4, variant=variant).entropy_weights(z, mask)
    out["ent/lbw"] = gbw.LossBasedWeighting(7).entropy_weights(z, mask)
    return out


def _worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        per = 4 // world
        out = _compute(slice(rank * per, (rank + 1) * per))
        torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_weights_equal_global_batch(tmp_path):
    ctx = mp.get_context("spawn")
    init_file = str(tmp_path / "init")
    procs = [ctx.Process(target=_worker, args=(r, 2, init_file, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, "a gloo worker failed"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _compute(None)
    for key, expected in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key}: ranks disagree"
        torch.testing.assert_close(ranks[0][key], expected, rtol=1e-10, atol=1e-12, msg=key)
        # and the split really matters: one rank alone gives other weights
    alone = _compute(slice(0, 2))
    assert not torch.allclose(alone["ce/class"], single["ce/class"])
