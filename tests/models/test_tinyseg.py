"""TinySeg: the CPU model of the embedded benchmark."""

from __future__ import annotations

import torch

from gbw.models import build_model, count_parameters


def test_tinyseg_shapes_and_parameter_count() -> None:
    model = build_model("tinyseg", num_classes=19)
    assert count_parameters(model) == 322_203  # stated in gbw.models.tiny's docstring
    out = model(torch.rand(2, 3, 128, 128), return_features=True)
    assert out["main"].shape == (2, 19, 32, 32) and model.output_stride == 4
    assert [f.shape[-1] for f in out["features"]] == [64, 32, 16, 16]
    assert set(out) == {"main", "features"}


def test_tinyseg_trains_with_batch_one_and_evaluates_any_size() -> None:
    torch.manual_seed(0)
    model = build_model("tinyseg", num_classes=4).train()
    opt = torch.optim.SGD(model.param_groups(0.01), lr=0.01, momentum=0.9)
    x, y = torch.rand(1, 3, 64, 64), torch.randint(0, 4, (1, 16, 16))
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x)["main"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 100, 76))["main"].shape == (1, 4, 25, 19)
