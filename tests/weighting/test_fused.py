"""The fused pass (gbw.weighting.fused) equals the closed forms, the autograd reference and the
plain weighted cross-entropy, in its torch implementation and in the Triton kernels: on the CPU
through Triton's interpreter, in a child process (the interpreter must be chosen before Triton is
first imported), and compiled on CUDA in the gpu-marked tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import gbw
import gbw.weighting.fused as fused
from gbw.weighting.losses import REDUCTIONS
from gbw.weighting.reference import autograd_grad_sqnorms, per_class_ce

VARIANTS = ["class", "channel"]
DTYPE_IDS = ["f64", "f32", "bf16"]
# bf16 logits are computed in float32: the pass agrees with the float64 closed form on the
# same (bf16-rounded) logits to float32 accuracy; its bf16 gradient to one bf16 rounding.
TOL = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 2e-5, "atol": 1e-7},
    torch.bfloat16: {"rtol": 2e-5, "atol": 1e-7},
}
GRAD_TOL = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-14},
    torch.float32: {"rtol": 1e-5, "atol": 1e-8},
    torch.bfloat16: {"rtol": 1e-2, "atol": 1e-5},
}


def _case(seed: int, dtype=torch.float64, shape=(2, 7, 5, 6), ignore_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    b, c = shape[0], shape[1]
    z = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    tshape = (b, *shape[2:])
    y = torch.randint(0, c, tshape, generator=gen)
    y[torch.rand(tshape, generator=gen) < ignore_frac] = 255
    w = torch.rand(tshape, generator=gen, dtype=torch.float64).to(dtype)
    return z, y, w


# set by test_triton_kernels_in_interpreter for its child process
CHILD = os.environ.get("GBW_TEST_TRITON_INTERPRETER") == "1"
in_child = pytest.mark.skipif(not CHILD, reason="runs in test_triton_kernels_in_interpreter")


@pytest.fixture(params=["torch", "triton"] if CHILD else ["torch"])
def impl(request):
    """The torch implementation; in the child, also Triton's kernels through its interpreter."""
    return request.param


@pytest.mark.slow
@pytest.mark.skipif(CHILD, reason="this is the child")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_kernels_in_interpreter():
    """Runs every triton-parametrised test of this file with TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "GBW_TEST_TRITON_INTERPRETER": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    res = subprocess.run(
        [*cmd, "-k", "triton and not cuda and not f64 and not interpreter"],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    tail = res.stdout[-4000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    assert " passed" in res.stdout and "skipped" not in res.stdout, tail


def _pass(z, y, w, impl, **kw):
    return fused.gbw_pass(z, y, pixel_weight=w, impl=impl, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=DTYPE_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("use_w", [False, True])
@pytest.mark.parametrize("offset", [0, 1])
def test_signal_equals_closed_form_and_autograd(impl, dtype, variant, use_w, offset):
    if impl == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels compute in float32 (fused='triton' rejects float64)")
    z, y, w = _case(11, dtype)
    w = w if use_w else None
    g, counts, _ = _pass(z, y, w, impl, variant=variant, count_offset=offset)
    z64 = z.double()  # the same (possibly bf16-rounded) numbers, in float64
    w64 = None if w is None else w.double()
    closed, n = gbw.class_grad_sqnorms(
        z64, y, pixel_weight=w64, variant=variant, count_offset=offset, return_counts=True
    )
    ref = autograd_grad_sqnorms(z64, lambda t: per_class_ce(t, y, w64, 255, offset), variant)
    assert g.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(g.double(), closed, **TOL[dtype])
    torch.testing.assert_close(g.double(), ref, rtol=max(TOL[dtype]["rtol"], 1e-9), atol=1e-12)
    assert torch.equal(counts.double(), n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_equals_weighted_cross_entropy(impl, dtype, reduction):
    if impl == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels compute in float32 (fused='triton' rejects float64)")
    z, y, w = _case(12, dtype)
    v = torch.rand(7, dtype=torch.float64).to(dtype) * 2
    za = z.clone().requires_grad_(True)
    zb = z.clone().requires_grad_(True)
    _, _, fp = _pass(za, y, w, impl)
    ours = fp.loss(za, y, v, w, reduction)
    ref = gbw.weighted_cross_entropy(zb, y, v, w, reduction=reduction)
    torch.testing.assert_close(ours, ref, **TOL[torch.float32 if dtype != torch.float64 else dtype])
    seed = torch.rand(ours.shape, generator=torch.Generator().manual_seed(0), dtype=ours.dtype)
    (ga,) = torch.autograd.grad((ours * seed).sum(), za)
    (gb,) = torch.autograd.grad((ref * seed).sum(), zb)
    assert ga.dtype == dtype
    torch.testing.assert_close(ga, gb, **GRAD_TOL[dtype])


@pytest.mark.parametrize(
    "make",
    [
        lambda f: gbw.GBW(7, lam=0.01, fused=f),
        lambda f: gbw.GBW(7, lam=0.01, variant="channel", fused=f),
        lambda f: gbw.GBW(7, lam=0.3, scale="mean", present_only=True, fused=f),
        lambda f: gbw.GBW(7, lam=0.01, variant="channel", use_pixel_weight=False, fused=f),
        lambda f: gbw.GBW.authors(7, lam=0.001, fused=f),
    ],
    ids=["class", "channel", "class_mean_present", "channel_no_w_in_g", "authors"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS[1:])
def test_gbw_fused_equals_unfused(impl, make, dtype):
    z, y, w = _case(13, dtype, shape=(2, 7, 9, 8))
    y[y == 3] = 0  # an absent class
    za = z.clone().requires_grad_(True)
    zb = z.clone().requires_grad_(True)
    a, b = make(impl), make(False)
    la, lb = a.cross_entropy(za, y, w), b.cross_entropy(zb, y, w)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.last_g, b.last_g, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(a.last_weights, b.last_weights, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.last_counts, b.last_counts)
    (ga,) = torch.autograd.grad(la, za)
    (gb,) = torch.autograd.grad(lb, zb)
    torch.testing.assert_close(ga, gb, **GRAD_TOL[dtype])


def test_chunks_channels_last_and_flat_inputs_give_the_same_numbers(monkeypatch):
    z, y, w = _case(14, torch.float32, shape=(2, 7, 9, 11))
    ref_g, _, ref_fp = _pass(z, y, w, "torch", variant="channel")
    monkeypatch.setattr(fused, "CPU_CHUNK", 50)  # 3 pixels a chunk, a ragged last one
    assert len(fused._chunks(99, 14, z.device)) == 33
    for zz in (z, z.contiguous(memory_format=torch.channels_last)):
        zz = zz.clone().requires_grad_(True)
        g, _, fp = _pass(zz, y, w, "torch", variant="channel")
        torch.testing.assert_close(g, ref_g, rtol=1e-6, atol=0)
        torch.testing.assert_close(fp.lse, ref_fp.lse)
        (gz,) = torch.autograd.grad(fp.loss(zz, y, torch.ones(7), w, "sum"), zz)
        (gr,) = torch.autograd.grad(gbw.weighted_cross_entropy(zz, y, None, w, reduction="sum"), zz)
        torch.testing.assert_close(gz, gr)
    # (N, C) logits: every row one pixel
    zf, yf, wf = _case(15, torch.float64, shape=(40, 5))
    for variant in VARIANTS:
        g, _, _ = _pass(zf, yf, wf, "torch", variant=variant)
        torch.testing.assert_close(
            g, gbw.class_grad_sqnorms(zf, yf, pixel_weight=wf, variant=variant)
        )


@in_child
def test_triton_kernels_check_labels_and_pixel_weights():
    z, y, w = _case(16, torch.float32)
    bad = y.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"target values must be in \[0, 7\) or ignore_index"):
        _pass(z, bad, None, "triton")
    for value in (-1.0, float("nan"), float("inf")):
        wb = w.clone()
        wb[1, 2, 3] = value
        with pytest.raises(ValueError, match="pixel_weight must be finite and >= 0"):
            _pass(z, y, wb, "triton", use_pixel_weight=False)


def test_all_ignored_and_non_finite_logits(impl):
    z, y, _ = _case(17, torch.float32)
    s = gbw.GBW(7, present_only=True, fused=impl)
    loss = s.cross_entropy(z.requires_grad_(True), torch.full_like(y, 255))
    assert loss.item() == 0 and torch.equal(s.last_weights, torch.ones(7))
    zn = z.detach().clone()
    zn[0, :, 0, 0] = float("nan")
    y[0, 0, 0] = 1  # a labelled pixel
    s.cross_entropy(zn, y)
    assert torch.equal(s.last_weights, torch.ones(7)) and int(s.fallbacks) == 2


def test_no_host_sync_meta_tensors_both_paths():
    z = torch.empty(2, 19, 16, 16, device="meta", requires_grad=True)
    y = torch.empty(2, 16, 16, dtype=torch.long, device="meta")
    w = torch.empty(2, 16, 16, device="meta")
    for f in ("off", "torch", "auto"):
        for variant in VARIANTS:
            s = gbw.GBW(19, variant=variant, scale="mean", present_only=True, fused=f)
            loss = s.cross_entropy(z, y, w)
            assert loss.shape == ()
            loss.backward()
            assert z.grad.shape == z.shape
            z.grad = None


def test_modes_resolve_and_bad_settings_raise(monkeypatch):
    z = torch.zeros(1, 3, 2, 2)
    assert fused.resolve("auto", z) == fused.AUTO["cpu"]
    assert fused.resolve(fused.check_fused(True), z) == "torch"
    assert fused.resolve(fused.check_fused(False), z) == "off"
    assert fused.resolve("auto", z.to("meta")) == "torch"
    with pytest.raises(ValueError, match="fused must be a bool or one of"):
        gbw.GBW(3, fused="fast")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if fused.triton_available():
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            fused.resolve("triton", z)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        with pytest.raises(ValueError, match="use fused='torch' for float64"):
            fused.resolve("triton", z.double())
    monkeypatch.setattr(fused, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        fused.resolve("triton", z)
    assert fused.resolve("on", z) == "torch"


def test_import_gbw_does_not_import_triton():
    import subprocess
    import sys

    code = (
        "import sys, torch, gbw\n"
        "z = torch.randn(2, 3, 4, 4, requires_grad=True)\n"
        "gbw.GBW(3).cross_entropy(z, torch.zeros(2, 4, 4, dtype=torch.long)).backward()\n"
        "print('triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_selects_the_implementation():
    from gbw.config import ExperimentConfig
    from gbw.engine.trainer import weighting_factory

    exp = ExperimentConfig()
    exp.model.num_classes = 5
    for name in ("gbw", "gbw_authors"):
        exp.weighting.name, exp.weighting.fused = name, "off"
        assert weighting_factory(exp)("src").fused == "off"
    exp.weighting.fused = "quick"
    with pytest.raises(ValueError, match="fused must be a bool or one of"):
        weighting_factory(exp)("src")


# --- CUDA: the compiled kernels ----------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS[1:])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(2, 19, 64, 64), (3, 19, 37, 53)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_triton_equals_cpu_reference(dtype, variant, shape, channels_last):
    z, y, w = _case(18, dtype, shape=shape)
    zc = z.cuda()
    if channels_last:
        zc = zc.contiguous(memory_format=torch.channels_last)
    zc.requires_grad_(True)
    zr = z.clone().requires_grad_(True)
    a = gbw.GBW(19, lam=1e-3, variant=variant, fused="triton")
    b = gbw.GBW(19, lam=1e-3, variant=variant, fused="torch")
    la, lb = a.cross_entropy(zc, y.cuda(), w.cuda()), b.cross_entropy(zr, y, w)
    torch.testing.assert_close(la.cpu(), lb, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.last_g.cpu(), b.last_g, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(a.last_weights.cpu(), b.last_weights, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.last_counts.cpu(), b.last_counts)
    la.backward()
    lb.backward()
    torch.testing.assert_close(zc.grad.cpu(), zr.grad, **GRAD_TOL[dtype])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_triton_makes_no_host_sync(variant):
    z = torch.randn(2, 19, 64, 64, device="cuda", requires_grad=True)
    y = torch.randint(0, 19, (2, 64, 64), device="cuda")
    w = torch.rand(2, 64, 64, device="cuda")
    s = gbw.GBW(19, variant=variant, present_only=True, scale="mean", fused="triton")
    s.cross_entropy(z, y, w).backward()  # warm-up: compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        s.cross_entropy(z, y, w).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS[1:])
def test_cuda_graph_replay_equals_eager(variant, dtype):
    shape, gen = (2, 19, 48, 40), torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        z = (torch.randn(shape, generator=gen) * 3).to(dtype).cuda()
        y = torch.randint(0, 19, (2, 48, 40), generator=gen)
        y[torch.rand(2, 48, 40, generator=gen) < 0.1] = 255
        batches.append((z, y.cuda(), torch.rand(2, 48, 40, generator=gen).cuda()))
    s = gbw.GBW(19, lam=1e-3, variant=variant, fused="triton")
    sz = batches[0][0].clone().requires_grad_(True)
    sy, sw = batches[0][1].clone(), batches[0][2].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (compilation, lazy init)
        for _ in range(2):
            sz.grad = None
            s.cross_entropy(sz, sy, sw).backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    sz.grad = None
    with torch.cuda.graph(graph):
        loss = s.cross_entropy(sz, sy, sw)
        loss.backward()
    for z, y, w in batches[1:] + batches[:1]:
        with torch.no_grad():
            sz.copy_(z)
            sy.copy_(y)
            sw.copy_(w)
        graph.replay()
        ref = gbw.GBW(19, lam=1e-3, variant=variant, fused="triton")
        ze = z.clone().requires_grad_(True)
        le = ref.cross_entropy(ze, y, w)
        le.backward()
        torch.testing.assert_close(loss, le, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(s.last_weights, ref.last_weights, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(sz.grad, ze.grad, rtol=1e-6, atol=1e-8)
