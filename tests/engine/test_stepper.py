"""The step runners: eager, channels-last and the captured whole-iteration CUDA graph.

The CPU tests check what graph mode changes in the optimisers and its errors; the CUDA tests
(skipped without a GPU) check that replaying the captured iteration trains exactly like the
eager loop, refills its inputs every iteration, and runs every method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

from gbw.config import ExperimentConfig, load_config
from gbw.engine.stepper import (
    GraphedStepRunner,
    StepRunner,
    _fill,
    graph_mode,
    make_capturable,
    make_step_runner,
    set_learning_rates,
)
from gbw.engine.trainer import _make_fabric, setup_method
from tiny_networks import UNTRAINED_TEACHER, tiny_method

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
METHODS = ("source_only", "dacs", "advent", "minent", "adaptsegnet", "daformer", "hrda", "mic")


def config(method: str, *extra: str, accelerator: str = "cpu") -> ExperimentConfig:
    return load_config(
        None,
        [
            *tiny_method(method),
            "weighting.name=gbw",
            "optim.lr=0.01",
            "optim.head_lr_mult=1.0",
            f"train.accelerator={accelerator}",
            "train.deterministic=false",
            "train.max_iters=100",
            *extra,
        ],
    )


def batches(n: int, size: int, device: torch.device | str, seed: int = 0) -> list[tuple]:
    """``n`` different (source, target) pairs: graph replays must see each one."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, 19, (2, size, size), generator=g)
        label[:, :2] = 255
        src = {"image": torch.rand(2, 3, size, size, generator=g), "label": label}
        tgt = {"image": torch.rand(2, 3, size, size, generator=g)}
        out.append(tuple({k: v.to(device) for k, v in b.items()} for b in (src, tgt)))
    return out


def train_steps(exp: ExperimentConfig, data: list[tuple], seed: int = 0):
    """Run ``len(data)`` iterations with the runner ``exp`` asks for; (method, logs per step)."""
    fabric = _make_fabric(exp)
    torch.manual_seed(seed)
    method, optimizers = setup_method(fabric, exp)
    runner = make_step_runner(fabric, exp, method, optimizers)
    logs = []
    for it, (src, tgt) in enumerate(data):
        out = runner(it, src, tgt if method.uses_target else None)
        logs.append({k: float(v) for k, v in out.items()})  # read before the next replay
    return method, runner, logs


# ---------------------------------------------------------------------------------- CPU


def test_make_capturable_gives_device_learning_rates_and_capturable_kernels():
    net = torch.nn.Linear(3, 2)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    adamw = torch.optim.AdamW(net.parameters(), lr=0.01)
    optimizers = {"sgd": sgd, "adamw": adamw}
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    make_capturable(optimizers, torch.device("cpu"))
    assert sgd.param_groups[0]["fused"] and adamw.param_groups[0]["capturable"]
    lr = sgd.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(0.1)
    set_learning_rates(optimizers, 0.5)
    assert sgd.param_groups[0]["lr"] is lr  # filled in place: a captured graph reads it
    assert float(lr) == pytest.approx(0.05)
    assert float(adamw.param_groups[0]["lr"]) == pytest.approx(0.005)


def test_fused_sgd_with_a_tensor_learning_rate_steps_like_plain_sgd():
    """Graph mode's SGD (fused kernel, device learning rate) computes the references' update."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for group in opt_b.param_groups:
        group["initial_lr"] = group["lr"]
    make_capturable({"model": opt_b}, torch.device("cpu"))
    for step in range(4):
        x = torch.randn(5, 4)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            net(x).square().sum().backward()
        opt_a.param_groups[0]["lr"] = 0.1 * (1 - step / 4)
        set_learning_rates({"model": opt_b}, 1 - step / 4)
        opt_a.step()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_make_capturable_takes_a_resumed_optimiser_and_refuses_an_unknown_one():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    state = opt.state_dict()  # as a checkpoint stores it, then loaded into a fresh optimiser
    fresh = torch.optim.Adam(net.parameters(), lr=0.1)
    fresh.load_state_dict(state)
    make_capturable({"model": fresh}, torch.device("cpu"))
    group = fresh.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor)
    steps = [s["step"] for s in fresh.state.values()]
    assert steps and all(s.dtype == torch.float32 and float(s) == 1 for s in steps)
    with pytest.raises(ValueError, match="RMSprop"):
        make_capturable({"d": torch.optim.RMSprop(net.parameters())}, torch.device("cpu"))


def test_a_graph_mode_checkpoint_resumes_eagerly_on_the_cpu():
    """Optimiser state saved in graph mode (tensor learning rates, capturable Adam) steps
    eagerly on the CPU after :func:`make_eager`."""
    from gbw.engine.stepper import make_eager

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    opt.param_groups[0]["initial_lr"] = 0.01
    make_capturable({"model": opt}, torch.device("cpu"))
    fresh = torch.optim.AdamW(net.parameters(), lr=0.01)
    fresh.load_state_dict(opt.state_dict())  # as a resumed run loads it
    make_eager({"model": fresh}, torch.device("cpu"))
    group = fresh.param_groups[0]
    assert group["lr"] == pytest.approx(0.01) and not isinstance(group["lr"], torch.Tensor)
    assert not group["capturable"]
    net(torch.ones(1, 3)).sum().backward()
    fresh.step()  # a capturable AdamW would refuse the CPU
    set_learning_rates({"model": fresh}, 0.5)
    assert group["lr"] == pytest.approx(0.005)


def test_graph_mode_needs_cuda_with_a_clear_error():
    exp = config("source_only", "train.cuda_graph=true")
    fabric = _make_fabric(exp)
    method, optimizers = setup_method(fabric, exp)
    with pytest.raises(ValueError, match=r"train\.cuda_graph needs a CUDA device"):
        GraphedStepRunner(fabric, exp, method, optimizers)


def test_graph_mode_is_on_by_default_for_one_cuda_device_only():
    from types import SimpleNamespace

    def fabric(kind: str, world: int) -> SimpleNamespace:
        return SimpleNamespace(device=torch.device(kind), world_size=world)

    auto = config("dacs")
    assert auto.train.cuda_graph is None
    assert graph_mode(auto, fabric("cuda", 1))
    assert not graph_mode(auto, fabric("cuda", 2)) and not graph_mode(auto, fabric("cpu", 1))
    off = config("dacs", "train.cuda_graph=false")
    assert not graph_mode(off, fabric("cuda", 1))
    assert graph_mode(config("dacs", "train.cuda_graph=true"), fabric("cpu", 1))  # then errors


def test_static_inputs_refuse_a_batch_of_another_shape():
    static = {"image": torch.zeros(2, 3, 8, 8), "name": ["a", "b"]}
    _fill(static, {"image": torch.ones(2, 3, 8, 8), "name": ["c", "d"]}, 5)
    assert static["image"].eq(1).all()
    with pytest.raises(ValueError, match=r"iteration 6: batch key 'image' is .*\(2, 3, 8, 9\)"):
        _fill(static, {"image": torch.ones(2, 3, 8, 9)}, 6)
    with pytest.raises(ValueError, match="'image' is missing"):
        _fill(static, {}, 7)


def test_eager_runner_is_the_loop_it_replaced():
    """StepRunner = set learning rates, training_step, after_optimizer_step (DACS: EMA)."""
    exp = config("dacs")
    method, runner, logs = train_steps(exp, batches(3, 32, "cpu"))
    assert type(runner) is StepRunner
    assert all(math.isfinite(v) for step in logs for v in step.values())
    lr = runner.optimizers["model"].param_groups[0]["lr"]
    assert lr == pytest.approx(0.01 * (1 - 2 / 100) ** 0.9)
    student = list(method._modules["model"].parameters())
    teacher = list(method.teacher.model.parameters())
    assert not all(torch.equal(s, t) for s, t in zip(student, teacher, strict=True))


def test_channels_last_trains_with_nhwc_weights_and_images():
    exp = config("dacs", "train.channels_last=true")
    method, runner, logs = train_steps(exp, batches(2, 32, "cpu"))
    convs = [p for p in method._modules["model"].parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    prepared = runner.prepare({"image": torch.rand(2, 3, 8, 8), "label": torch.zeros(2, 8, 8)})
    assert prepared["image"].is_contiguous(memory_format=torch.channels_last)
    eager = train_steps(
        dataclasses.replace(exp, train=dataclasses.replace(exp.train, channels_last=False)),
        batches(2, 32, "cpu"),
    )[2]
    for a, b in zip(logs, eager, strict=True):  # same numbers, other memory layout
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_compiled_networks_train_like_eager_ones():
    """``train.compile``: same losses as eager (Inductor on the CPU), same parameter names."""
    data = batches(2, 32, "cpu", seed=3)
    exp = config("dacs", "train.compile=true")
    m, runner, logs = train_steps(exp, data)
    eager_m, _, eager = train_steps(config("dacs"), data)
    assert type(runner) is StepRunner
    assert m._modules["model"]._compiled_call_impl is not None  # nn.Module.compile, in place
    assert m._modules["teacher"]._compiled_call_impl is not None
    assert list(m.state_dict()) == list(eager_m.state_dict())
    for a, b in zip(logs, eager, strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    with pytest.raises(ValueError, match="alternatives"):
        graph_mode(config("dacs", "train.compile=true", "train.cuda_graph=true"), None)


class _FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` on the CPU: ``replay`` re-runs the runner's
    step on its static buffers and writes the results into the captured output tensors, as a
    real replay overwrites them in place. (The capture itself runs the step in Python, so
    :func:`_fake_capture` puts every parameter, buffer, optimiser state and generator back
    afterwards: a real capture computes nothing.)"""

    runner: GraphedStepRunner | None = None

    def __init__(self) -> None:
        self.generators: list[torch.Generator] = []

    def register_generator_state(self, gen: torch.Generator) -> None:
        self.generators.append(gen)

    def replay(self) -> None:
        r = _FakeGraph.runner
        out = r.run_step(r.index, r.static_source, r.static_target)
        for k, v in out.items():
            r.static_logs[k].copy_(v)


@contextlib.contextmanager
def _fake_capture(graph: _FakeGraph, **kwargs):
    r = _FakeGraph.runner
    tensors = list(r.method.state_dict(keep_vars=True).values())
    for opt in r.optimizers.values():
        tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    saved = [x.detach().clone() for x in tensors]
    generators = [(g, g.get_state()) for g in r.method.generators()]
    yield
    with torch.no_grad():
        for x, s in zip(tensors, saved, strict=True):
            x.copy_(s)
    for g, s in generators:
        g.set_state(s)


def emulate_cuda_graphs(monkeypatch) -> None:
    """Let :class:`GraphedStepRunner` run on the CPU with :class:`_FakeGraph`."""
    from types import SimpleNamespace

    stream = SimpleNamespace(wait_stream=lambda s: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", _fake_capture)


@pytest.mark.parametrize("method", ["source_only", "dacs"])
def test_graph_runner_feeds_every_batch_and_learning_rate_to_the_replays(monkeypatch, method):
    """The runner's own logic, on the CPU (a fake graph that re-runs the step): warm-up
    iterations, capture at the right one, every later batch copied into the static inputs,
    learning rates and the step counter updated in place, DACS's generator registered, and
    the eager runner's losses (SGD: fused vs for-each kernels, rounding only; the fake replay
    draws DACS's random numbers in the eager order, a real graph does not)."""
    emulate_cuda_graphs(monkeypatch)
    data = batches(6, 32, "cpu", seed=4)
    eager = train_steps(config(method, "optim.name=sgd"), data)[2]
    exp = config(method, "optim.name=sgd", "train.cuda_graph=true", "train.cuda_graph_warmup=2")
    fabric = _make_fabric(exp)
    torch.manual_seed(0)
    m, optimizers = setup_method(fabric, exp)
    monkeypatch.setattr("gbw.engine.stepper.check_graph_support", lambda fabric: None)
    runner = GraphedStepRunner(fabric, exp, m, optimizers, warmup=2)
    _FakeGraph.runner = runner
    lr = optimizers["model"].param_groups[0]["lr"]
    logs = []
    for it, (src, tgt) in enumerate(data):
        out = runner(it, src, tgt if m.uses_target else None)
        assert (runner.graph is not None) == (it >= 2)  # captured at iteration 2
        assert int(runner.index) == it and optimizers["model"].param_groups[0]["lr"] is lr
        assert float(lr) == pytest.approx(0.01 * (1 - it / 100) ** 0.9)
        logs.append({k: float(v) for k, v in out.items()})
    assert len(runner.graph.generators) == (1 if method == "dacs" else 0)
    for a, b in zip(logs, eager, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert len({tuple(step.values()) for step in logs}) == 6


# --------------------------------------------------------------------------------- CUDA


@needs_cuda
def test_graph_replay_trains_exactly_like_the_eager_loop():
    """Source-only, fp32: the captured iteration, replayed on 8 different batches, gives the
    eager loop's losses and parameters (fused vs for-each SGD: rounding only)."""
    data = batches(8, 64, "cuda", seed=1)
    eager = config(
        "source_only", "train.precision=32-true", "train.cuda_graph=false", accelerator="cuda"
    )
    graph = config(
        "source_only",
        "train.precision=32-true",
        "train.cuda_graph=true",
        "train.cuda_graph_warmup=2",
        accelerator="cuda",
    )
    m_eager, _, logs_eager = train_steps(eager, data)
    m_graph, runner, logs_graph = train_steps(graph, data)
    assert runner.graph is not None  # iterations 3..7 were replays
    for a, b in zip(logs_eager, logs_graph, strict=True):
        assert a["src.ce"] == pytest.approx(b["src.ce"], rel=1e-3)
    assert len({round(step["src.ce"], 6) for step in logs_graph[3:]}) == 5  # new batch each time
    for p, q in zip(m_eager.parameters(), m_graph.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_graph_mode_runs_every_method_in_bf16(method):
    data = batches(7, 64, "cuda", seed=2)
    exp = config(method, "train.cuda_graph=true", "train.cuda_graph_warmup=2", accelerator="cuda")
    m, runner, logs = train_steps(exp, data)
    assert runner.graph is not None
    assert all(math.isfinite(v) for step in logs for v in step.values())
    assert len({tuple(step.values()) for step in logs[3:]}) == 4  # every replay recomputes
    weights = m.weighting_logs()
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    if hasattr(m, "teacher"):  # the EMA teacher follows the student inside the graph
        s = next(m._modules["model"].parameters())
        t = next(m.teacher.model.parameters())
        assert not torch.equal(s, t) and (s - t).abs().max() < 1


@needs_cuda
def test_gbw_train_in_graph_mode_logs_checkpoints_and_resumes(minicity_root, tmp_path, tiny_config):
    """``gbw train`` with ``train.cuda_graph``: real loader (2 workers, pinned memory), logs
    and checkpoints from replays, and a resume that captures again."""
    from gbw.engine.trainer import train

    args = (
        "method=dacs",
        "weighting.name=gbw",
        "train.accelerator=cuda",
        "train.cuda_graph=true",
        "train.cuda_graph_warmup=2",
        "train.ckpt_every=4",
        "data.num_workers=2",
        *UNTRAINED_TEACHER,
    )
    first = train(tiny_config(minicity_root, str(tmp_path), *args, "train.max_iters=6"))
    rows = (first.run_dir / "scalars.csv").read_text().splitlines()
    losses = [float(r.split(",")[2]) for r in rows if ",loss/mix.ce," in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert len(set(losses)) == 3
    assert any(",mix/weight/road," in r for r in rows)
    resumed = train(
        tiny_config(minicity_root, str(tmp_path), *args, "train.max_iters=10"), resume=True
    )
    assert resumed.steps == 4 and 0.0 <= resumed.metrics["mIoU"] <= 1.0
