"""Building blocks shared by the self-training UDA methods (DACS, DAFormer, HRDA, MIC).

Each block is one idea from the papers, written so that a whole training step stays capturable
as one CUDA graph (``shared/design/PERFORMANCE.md``):

* **No host synchronisation.** Nothing reads a tensor's value on the host: no ``.item()``,
  ``torch.unique``, ``nonzero``, data-dependent boolean indexing or Python ``if`` on a tensor.
  Random decisions ("apply the colour jitter?", "which classes to paste?") are device tensors
  applied with ``torch.where``; every op has a static output shape. The test suite runs every
  block on ``device="meta"`` tensors, which raise on any value read.
* **Explicit randomness.** Every random draw comes from the ``generator`` argument, a
  ``torch.Generator`` on the tensors' device, so a checkpoint can store its state and a run is
  reproducible. ``None`` falls back to the device's default generator (not checkpointed).
  Under CUDA-graph capture a custom generator must be registered with the graph
  (``torch.cuda.CUDAGraph.register_generator_state``).

Conventions: images are float ``(B, 3, H, W)`` RGB in [0, 1] (models normalise internally),
labels int64 ``(B, H, W)`` train ids with ``ignore_index`` (255) for unlabelled pixels, pixel
weights float ``(B, H, W)``.

References: Mean Teacher (Tarvainen & Valpola, NeurIPS 2017); ClassMix (Olsson et al., WACV
2021); DACS (Tranheden et al., WACV 2021, github.com/vikolss/DACS); DAFormer (Hoyer et al.,
CVPR 2022, github.com/lhoyer/DAFormer); MIC (Hoyer et al., CVPR 2023, github.com/lhoyer/MIC).
The references' photometric augmentation is kornia 0.5.8's ``ColorJitter`` (pinned by DAFormer
and MIC) and ``GaussianBlur2d``; its quirks are reproduced and documented below.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Generator = torch.Generator | None
JitterConvention = Literal["kornia", "torchvision"]
ChannelOrder = Literal["rgb", "bgr"]
PseudoWeighting = Literal["fraction", "per_pixel", "none"]

# ITU-R 601 luma weights as torchvision's rgb_to_grayscale uses them.
_GRAY = (0.2989, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# Mean teacher
# --------------------------------------------------------------------------------------------


#: How the teacher's normalisation layers predict (``EMATeacher(bn=...)``, ``uda.teacher_bn``).
TEACHER_BN = ("batch", "ema")


class EMATeacher(nn.Module):
    """Exponential-moving-average teacher (Mean Teacher; DACS and DAFormer's ``ema_model``).

    ``theta_t <- alpha_t * theta_t + (1 - alpha_t) * theta_s`` with
    ``alpha_t = min(1 - 1 / (step + 1), alpha)``: ``step=0`` copies the student, small steps
    average it uniformly, and from ``step >= 1 / (1 - alpha) - 1`` the rate is ``alpha``. The
    caller picks the warm-up's start (``uda.ema_first_update``): DACS ``trainUDA.py`` calls
    ``update_ema_variables(iteration=i_iter)`` after optimiser step ``i_iter``, so its first
    update copies the student (``step = i``); DAFormer ``mmseg/models/uda/dacs.py`` copies
    the weights at iteration 0 (``_init_ema_weights``) and calls ``_update_ema(local_iter)``
    at the start of every later iteration, i.e. after optimiser step ``local_iter - 1``, so
    its first update averages with weight 1/2 (``step = i + 1``).

    How the teacher predicts (``bn``, a choice the references leave implicit, STYLE.md
    'Avoid' 6):

    * ``"batch"`` (default; every reference): the teacher runs as the references run it, in
      train mode with dropout and DropPath off (DACS ``ema_model.train()``; DAFormer, HRDA and
      MIC switch ``_DropoutNd`` and ``DropPath`` off before every teacher pass), so its
      BatchNorm layers normalise with the statistics of the batch it predicts, and only the
      *parameters* are averaged. Here every module except the normalisation layers with
      running statistics (``BatchNorm*``, ``SyncBatchNorm``, ``InstanceNorm*``) is put in eval
      mode. Those layers update the teacher's own running statistics as a side effect, as in
      the references; nothing reads them and nothing of the student changes. Frozen BN
      (``torchvision.ops.FrozenBatchNorm2d``, DeepLabV2 ``bn: frozen``) and LayerNorm (MiT)
      do not depend on the mode.
    * ``"ema"``: the teacher predicts in eval mode (normalising with running statistics), and
      those statistics follow the student's the same way: **floating-point buffers saved in
      the state dict** (BatchNorm running mean/var) get the same EMA; **all other buffers**
      (integer counters such as ``num_batches_tracked``, non-persistent constants such as
      input-normalisation tables) are copied from the student, so constants never drift.

    ``forward`` runs the wrapped copy under ``torch.no_grad``; :meth:`train` never switches
    dropout or DropPath back on.

    Example::

        teacher = EMATeacher(model, alpha=0.999)
        teacher.update(model, step)              # after the optimiser step
        logits = teacher(target_images)["main"]
    """

    def __init__(self, student: nn.Module, alpha: float = 0.999, *, bn: str = "batch") -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if bn not in TEACHER_BN:
            raise ValueError(f"bn must be one of {TEACHER_BN}, got {bn!r}")
        self.alpha = float(alpha)
        self.bn = bn
        self.model = copy.deepcopy(student)
        self.model.requires_grad_(False)
        self._predict_mode()
        # Which buffers are averaged is fixed by the architecture: decide once, by position in
        # ``buffers()`` order (the same order for the student, a DDP wrapper included).
        non_persistent = {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in self.model.named_modules()
            for name in module._non_persistent_buffers_set
        }
        self._ema_buffers: list[int] = []
        self._copied_buffers: list[int] = []
        if bn == "ema":  # "batch": the teacher's buffers are its own, as in the references
            for i, (name, buf) in enumerate(self.model.named_buffers()):
                if buf.is_floating_point() and name not in non_persistent:
                    self._ema_buffers.append(i)
                else:
                    self._copied_buffers.append(i)

    def _predict_mode(self) -> None:
        """Eval mode everywhere (``"ema"``) or everywhere but the normalisation layers that
        have batch statistics (``"batch"``)."""
        self.model.eval()
        if self.bn == "batch":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.training = True

    def train(self, mode: bool = True) -> EMATeacher:
        # The teacher predicts pseudo-labels: dropout/DropPath must stay off whatever mode the
        # method is put in (DAFormer switches them off by hand before every teacher pass).
        self.training = mode
        self._predict_mode()
        return self

    def alpha_at(self, step: int | Tensor) -> float | Tensor:
        """``min(1 - 1 / (step + 1), alpha)``; a tensor ``step`` gives a device tensor."""
        if isinstance(step, Tensor):
            t = step.to(torch.float32)
            return (1.0 - 1.0 / (t + 1.0)).clamp(max=self.alpha)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return min(1.0 - 1.0 / (step + 1), self.alpha)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int | Tensor) -> None:
        """One EMA step towards ``student`` (the module the teacher was copied from).

        ``step`` as a Python int bakes ``alpha_t`` into the kernels as a constant; pass a 0-d
        device tensor (incremented in place) when the update is captured in a CUDA graph, so
        that every replay uses the current rate. Uses ``torch._foreach_*`` ops: a handful of
        fused kernels for the whole model instead of one Python-level op per tensor.
        """
        t_params = list(self.model.parameters())
        s_params = list(student.parameters())
        t_bufs = list(self.model.buffers())
        s_bufs = list(student.buffers())
        if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
            raise ValueError(
                "student does not match the teacher's architecture: "
                f"{len(s_params)} vs {len(t_params)} parameters, "
                f"{len(s_bufs)} vs {len(t_bufs)} buffers"
            )
        teacher_ema = t_params + [t_bufs[i] for i in self._ema_buffers]
        student_ema = s_params + [s_bufs[i] for i in self._ema_buffers]
        alpha = self.alpha_at(step)
        if isinstance(alpha, Tensor):
            alpha = alpha.to(teacher_ema[0].device) if teacher_ema else alpha
            torch._foreach_mul_(teacher_ema, alpha)
            torch._foreach_addcmul_(teacher_ema, student_ema, [1.0 - alpha] * len(student_ema))
        else:
            torch._foreach_mul_(teacher_ema, alpha)
            torch._foreach_add_(teacher_ema, student_ema, alpha=1.0 - alpha)
        if self._copied_buffers:
            torch._foreach_copy_(
                [t_bufs[i] for i in self._copied_buffers],
                [s_bufs[i] for i in self._copied_buffers],
            )

    def forward(self, *args: object, **kwargs: object) -> object:
        """The teacher's prediction, without autograd (dropout and DropPath off)."""
        if self.model.training:  # someone called .train() on the inner model directly
            self._predict_mode()
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, bn={self.bn!r}"


# --------------------------------------------------------------------------------------------
# Cross-domain mixing (ClassMix / DACS)
# --------------------------------------------------------------------------------------------


def _check_labels(labels: Tensor) -> None:
    if labels.ndim != 3 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor of shape (B, H, W), got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor of shape (B, 3, H, W), got "
            f"{images.dtype} {tuple(images.shape)}"
        )


def _compute_dtype(images: Tensor) -> Tensor:
    """Half-precision images are augmented in float32 (HSV and blur arithmetic), then cast back."""
    return images.float() if images.element_size() < 4 else images


def _rand(
    generator: Generator,
    shape: Sequence[int],
    device: torch.device,
    low: float = 0.0,
    high: float = 1.0,
) -> Tensor:
    """Uniform ``U(low, high)`` draws in float32 from ``generator``."""
    u = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return u if (low, high) == (0.0, 1.0) else u * (high - low) + low


def class_mix_masks(
    labels: Tensor,
    generator: Generator,
    *,
    ignore_index: int = 255,
    num_classes: int = 19,
    per_image: bool = True,
    count_ignore: bool | None = None,
) -> Tensor:
    """ClassMix masks: for each image, paste the pixels of half of the source's classes.

    For each image of the source batch, ``ceil(n / 2)`` of the ``n`` candidate classes are
    chosen uniformly at random (without replacement) and the mask is True on the pixels whose
    label is a chosen class (DACS Sec. 3.2, "half of the classes of the source image").

    Candidate classes:

    ============================================  ==========  ============  =================
    reference                                      per_image   count_ignore  candidates
    ============================================  ==========  ============  =================
    DACS paper                                     True        False         classes in image
    DACS code (``trainUDA.py``; the DACS recipe)   True        True          ``unique(label)``
    DAFormer / HRDA / MIC (``get_class_masks``)    False       True          ``unique(batch)``
    ============================================  ==========  ============  =================

    The DACS code's ignore filter (``classes=classes[classes!=ignore_label]``) is commented
    out, so its recipe default counts the ignore label (``uda.mix_count_ignore: true``);
    ``false`` is the paper's "half of the classes of the source image".
    ``count_ignore=None`` resolves to ``not per_image``, so ``per_image=False`` reproduces
    DAFormer exactly: ``torch.unique(labels)`` of the *whole batch* (the ignore label counting
    as one more "class" when any pixel of the batch carries it), a fresh choice per image, and
    a mask that only covers the chosen classes that occur in that image (possibly none). When
    the ignore "class" is chosen, the source's ignored pixels are pasted (their mixed label is
    ``ignore_index``, so they stay out of the loss). Labels outside ``[0, num_classes)`` other
    than ``ignore_index`` are treated like ``ignore_index``.

    Implementation: presence of each class in a ``(B, C + 1)`` table by scatter (no
    full-resolution one-hot), random scores ranked by ``argsort`` (exactly ``ceil(n / 2)``
    chosen even with tied scores), then one gather per pixel.

    Args:
        labels: ``(B, H, W)`` integer source labels.
        generator: random source, on the labels' device.
    Returns:
        ``(B, H, W)`` bool mask, True where the mixed image takes the *source* pixel.
    """
    _check_labels(labels)
    if count_ignore is None:
        count_ignore = not per_image
    b = labels.shape[0]
    c = num_classes
    dev = labels.device
    flat = labels.reshape(b, -1)
    # Slot c collects the ignore label (and any out-of-range value).
    slot = torch.where((flat >= 0) & (flat < c), flat, c)
    present = torch.zeros(b, c + 1, dtype=torch.bool, device=dev).scatter_(1, slot, True)
    if not count_ignore:
        present[:, c] = False
    if not per_image:
        present = present.any(dim=0, keepdim=True).expand(b, c + 1)
    k = (present.sum(dim=1, keepdim=True) + 1) // 2  # ceil(n / 2)
    # Random ranking of the present classes (absent ones score 2 > any U[0,1) draw, so they
    # come last); the k lowest ranks are a uniform random k-subset.
    scores = torch.where(present, _rand(generator, (b, c + 1), dev), 2.0)
    order = scores.argsort(dim=1)
    ranks = torch.arange(c + 1, device=dev).expand(b, c + 1)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    chosen = present & (rank < k)
    return chosen.gather(1, slot).view_as(labels)


def mix(mask: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """``mask * a + (1 - mask) * b``: DACS ``oneMix`` for images, labels and pixel weights.

    ``mask`` is ``(B, H, W)``; it is broadcast over the channel dim of ``(B, C, H, W)``
    images. With a bool mask (what :func:`class_mix_masks` returns) this is ``torch.where``,
    exact for any dtype, so mixed labels stay int64. A float mask blends float data (a soft
    mask); for integer data a float mask must be binary and is read as ``mask != 0``. One of
    ``a`` and ``b`` may be a Python number (e.g. the source pixel weight 1.0).
    """
    ref = a if isinstance(a, Tensor) else b
    if not isinstance(ref, Tensor):
        raise TypeError("mix needs at least one tensor among a and b")
    m = mask.unsqueeze(1) if ref.ndim == mask.ndim + 1 else mask
    if m.dtype == torch.bool:
        return torch.where(m, a, b)
    if not ref.is_floating_point():
        return torch.where(m != 0, a, b)
    m = m.to(ref.dtype)
    return m * a + (1.0 - m) * b


# --------------------------------------------------------------------------------------------
# Pseudo-labels
# --------------------------------------------------------------------------------------------


def pseudo_labels(
    teacher_logits: Tensor,
    threshold: float = 0.968,
    *,
    margins: tuple[int, int, int, int] = (0, 0, 0, 0),
    weighting: PseudoWeighting = "fraction",
) -> tuple[Tensor, Tensor]:
    """Teacher pseudo-labels and their pixel weights (DACS Sec. 3.3; DAFormer ``dacs.py``).

    ``p = softmax(logits)``; label = ``argmax p``, confidence = ``max p``. Weighting:

    * ``"fraction"`` (DACS and DAFormer/HRDA/MIC): one scalar for the whole batch, the fraction
      of pixels with confidence ``>= threshold`` (counted over all pixels, margins included,
      as the references do), broadcast to every pixel. DACS ``pixel_weight =
      "threshold_uniform"``.
    * ``"per_pixel"``: ``1[confidence >= threshold]`` per pixel (DACS ``"threshold"``).
    * ``"none"``: all ones (DACS ``pixel_weight = False``; MIC without a threshold).

    ``margins = (top, bottom, left, right)`` rows/columns whose weight is then set to 0:
    DAFormer ignores the top 15 and bottom 120 rows of Cityscapes crops (rectification
    artefacts and the ego-car); left/right are an extension (0 in the references).

    Args:
        teacher_logits: ``(B, C, H, W)``, already at the label resolution; any float dtype
            (the softmax runs in float32).
    Returns:
        ``(labels, weight)``: int64 ``(B, H, W)`` and float32 ``(B, H, W)``.
    """
    if teacher_logits.ndim != 4:
        raise ValueError(f"teacher_logits must be (B, C, H, W), got {tuple(teacher_logits.shape)}")
    if len(margins) != 4 or any(int(m) != m or m < 0 for m in margins):
        raise ValueError(
            f"margins must be 4 non-negative ints (top, bottom, left, right), got {margins}"
        )
    probs = torch.softmax(teacher_logits.detach().float(), dim=1)
    confidence, labels = probs.max(dim=1)
    if weighting == "fraction":
        fraction = (confidence >= threshold).float().mean()
        weight = torch.ones_like(confidence) * fraction
    elif weighting == "per_pixel":
        weight = (confidence >= threshold).float()
    elif weighting == "none":
        weight = torch.ones_like(confidence)
    else:
        raise ValueError(f"weighting must be 'fraction', 'per_pixel' or 'none', got {weighting!r}")
    top, bottom, left, right = (int(m) for m in margins)
    h, w = weight.shape[-2:]
    # Static slices: the margins are Python ints, so this is no data-dependent indexing.
    if top:
        weight[:, :top, :] = 0
    if bottom:
        weight[:, max(h - bottom, 0) :, :] = 0
    if left:
        weight[:, :, :left] = 0
    if right:
        weight[:, :, max(w - right, 0) :] = 0
    return labels, weight


# --------------------------------------------------------------------------------------------
# Photometric augmentation (DACS / DAFormer "strong transform")
# --------------------------------------------------------------------------------------------


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(B, 3, H, W)`` RGB in [0, 1] -> hue in turns [0, 1), saturation, value (``(B, H, W)``).

    The standard hexcone model, as PIL/torchvision/kornia (kornia adds ``1e-6`` to the
    saturation's denominator; here S is exact).
    """
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Inverse of :func:`_rgb_to_hsv` (any real hue, taken modulo one turn).

    Branch-free form ``f(n) = v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``
    for ``n = 5, 3, 1`` (R, G, B): no gather over the six hexcone sectors.
    """
    h6 = h * 6.0
    vs = v * s
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(v - vs * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


def _per_image(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _adjust_brightness(x: Tensor, f: Tensor, convention: JitterConvention) -> Tensor:
    # kornia 0.5.8 adds (f - 1); torchvision multiplies by f.
    if convention == "kornia":
        return (x + _per_image(f - 1.0)).clamp(0.0, 1.0)
    return (x * _per_image(f)).clamp(0.0, 1.0)


def _adjust_contrast(x: Tensor, f: Tensor, convention: JitterConvention) -> Tensor:
    # kornia 0.5.8 multiplies by f; torchvision blends with the image's mean grey level.
    f = _per_image(f)
    if convention == "kornia":
        return (x * f).clamp(0.0, 1.0)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1.0 - f) * mean).clamp(0.0, 1.0)


def _adjust_saturation(
    x: Tensor,
    f: Tensor,
    convention: JitterConvention,
    hsv: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    # kornia 0.5.8 scales S in HSV (clamped to [0, 1]); torchvision blends with the grey image.
    if convention == "kornia":
        h, s, v = _rgb_to_hsv(x) if hsv is None else hsv
        return _hsv_to_rgb(h, (s * f.view(-1, 1, 1)).clamp(0.0, 1.0), v)
    f = _per_image(f)
    return (f * x + (1.0 - f) * _gray(x)).clamp(0.0, 1.0)


def _adjust_hue(x: Tensor, f: Tensor, hsv: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    # Both conventions rotate the HSV hue by f turns (kornia: f * 2 pi radians).
    h, s, v = _rgb_to_hsv(x) if hsv is None else hsv
    return _hsv_to_rgb(h + f.view(-1, 1, 1), s, v)


def color_jitter(
    images: Tensor,
    generator: Generator,
    *,
    strength: float = 0.2,
    p_skip: float = 0.2,
    per_image: bool = False,
    convention: JitterConvention = "kornia",
    random_order: bool = True,
    same_order: bool = False,
    channels: ChannelOrder = "rgb",
) -> Tensor:
    """Colour jitter of the DACS/DAFormer strong transform (kornia ``ColorJitter(s, s, s, s)``).

    Applied when ``u > p_skip`` with ``u ~ U(0, 1)`` (DAFormer ``color_jitter > p``: with the
    config's "probability" 0.2 the jitter runs 80% of the time); one decision for the batch
    as DAFormer draws it once per iteration, or one per image with ``per_image=True``.
    Per-image factors (kornia's ``same_on_batch=False``): brightness, contrast and saturation
    ``~ U(max(0, 1 - s), 1 + s)``, hue shift ``~ U(-s, s)`` turns (kornia's hue range is in
    [-0.5, 0.5] of a turn and is multiplied by 2 pi; ``s = 0.2`` is up to +-72 degrees).

    ``convention`` picks what the four ops mean:

    * ``"kornia"`` (DACS, DAFormer, MIC: kornia 0.5.8, today's ``kornia.ColorJiggle``):
      brightness adds ``f - 1``, contrast multiplies by ``f``, saturation multiplies HSV
      saturation by ``f``, each clamped to [0, 1];
    * ``"torchvision"`` (``torchvision ColorJitter``, today's ``kornia.ColorJitter``):
      brightness multiplies, contrast and saturation blend with the grey mean / grey image.

    The hue op is the same HSV rotation in both. ``random_order=True`` applies the four ops
    in a random order per image (kornia 0.5.8 draws one ``randperm(4)`` per call, and DACS
    and DAFormer call it once per image; torchvision also permutes): each of the four slots
    then evaluates all four ops and keeps one with ``torch.where`` (static shapes, ~4x the
    arithmetic of a fixed order). ``same_order=True`` draws one order for the whole batch, as
    one kornia call on the batch does (MIC's masked images, ``masking_consistency_module.py``
    calls ``strong_transform`` once on them). ``random_order=False`` uses the fixed order
    brightness, contrast, saturation, hue. The result is clamped to [0, 1].

    ``channels="bgr"`` jitters the images as if their channels were in BGR order: DACS
    (``trainUDA.py`` -> ``transformsgpu.colorJitter``) hands kornia its BGR, mean-subtracted
    input converted back to [0, 1], still in BGR order, so kornia's hue and saturation
    formulas read blue as red. The images are flipped to BGR, jittered, and flipped back.
    With the kornia convention only the hue op differs (the rotation runs the other way
    round the colour wheel, the same as negating the hue factor); brightness, contrast and
    HSV saturation do not depend on the channel order.

    Draws, in this order: the apply decision(s), the four factor vectors ``(B,)``, then (with
    ``random_order``) ``(B, 4)`` permutation scores (``(1, 4)`` with ``same_order``).
    """
    _check_images(images)
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if convention not in ("kornia", "torchvision"):
        raise ValueError(f"convention must be 'kornia' or 'torchvision', got {convention!r}")
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    b, dev = images.shape[0], images.device
    apply = _rand(generator, (b if per_image else 1,), dev) > p_skip
    lo = max(0.0, 1.0 - strength)
    hi_brightness = min(1.0 + strength, 2.0) if convention == "kornia" else 1.0 + strength
    hue = min(strength, 0.5)
    fb = _rand(generator, (b,), dev, lo, hi_brightness)
    fc = _rand(generator, (b,), dev, lo, 1.0 + strength)
    fs = _rand(generator, (b,), dev, lo, 1.0 + strength)
    fh = _rand(generator, (b,), dev, -hue, hue)

    x = _compute_dtype(images)
    if channels == "bgr":
        x = x.flip(1)
    if random_order:
        order = _rand(generator, (1 if same_order else b, 4), dev).argsort(dim=1).expand(b, 4)
        for slot in range(4):
            hsv = _rgb_to_hsv(x)  # shared by the saturation (kornia) and hue candidates
            candidates = (
                _adjust_brightness(x, fb, convention),
                _adjust_contrast(x, fc, convention),
                _adjust_saturation(x, fs, convention, hsv),
                _adjust_hue(x, fh, hsv),
            )
            op = _per_image(order[:, slot])
            x = torch.where(
                op == 0,
                candidates[0],
                torch.where(
                    op == 1, candidates[1], torch.where(op == 2, candidates[2], candidates[3])
                ),
            )
    else:
        x = _adjust_brightness(x, fb, convention)
        x = _adjust_contrast(x, fc, convention)
        x = _adjust_saturation(x, fs, convention)
        x = _adjust_hue(x, fh)
    if channels == "bgr":
        x = x.flip(1)
    return torch.where(_per_image(apply), x.clamp(0.0, 1.0).to(images.dtype), images)


def blur_kernel_size(side: int) -> int:
    """DACS/DAFormer's blur kernel size for an image side: the largest odd number
    ``<= ceil(0.1 * side)``, i.e. ``floor(ceil(0.1 side) - 0.5 + ceil(0.1 side) % 2)``
    (512 -> 51, 720 -> 71, 1024 -> 103)."""
    c = math.ceil(0.1 * side)
    return math.floor(c - 0.5 + c % 2)


def _gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """``(B, size)`` normalised 1-D Gaussians, taps at ``-size//2 .. size//2`` (kornia)."""
    x = torch.arange(size, device=sigma.device, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2.0 * sigma.float().view(-1, 1) ** 2))
    return g / g.sum(dim=1, keepdim=True)


def _blur_with_sigma(images: Tensor, sigma: Tensor) -> Tensor:
    """Gaussian blur of each image with its own ``sigma`` (``(B,)``), DAFormer's kernel size,
    reflect padding (kornia's default border): separable depthwise convolutions."""
    b, c, h, w = images.shape
    ky, kx = blur_kernel_size(h), blur_kernel_size(w)
    x = images.reshape(1, b * c, h, w)
    if ky > 1:
        wy = _gaussian_kernels(sigma, ky).to(images.dtype)
        x = F.pad(x, (0, 0, ky // 2, ky // 2), mode="reflect")
        x = F.conv2d(x, wy.unsqueeze(1).expand(b, c, ky).reshape(b * c, 1, ky, 1), groups=b * c)
    if kx > 1:
        wx = _gaussian_kernels(sigma, kx).to(images.dtype)
        x = F.pad(x, (kx // 2, kx // 2, 0, 0), mode="reflect")
        x = F.conv2d(x, wx.unsqueeze(1).expand(b, c, kx).reshape(b * c, 1, 1, kx), groups=b * c)
    return x.view(b, c, h, w)


def gaussian_blur(
    images: Tensor,
    generator: Generator,
    *,
    p: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, 1.15),
    per_image: bool = False,
    same_sigma: bool = False,
) -> Tensor:
    """Gaussian blur of the DACS/DAFormer strong transform (kornia ``GaussianBlur2d``).

    Applied with probability ``p`` (DAFormer: ``blur > 0.5``, ``blur ~ U(0, 1)``), one decision
    per batch (DAFormer draws it once per iteration) or per image. Each image gets its own
    ``sigma ~ U(sigma_range)`` (DACS and DAFormer draw it once per ``strong_transform`` call,
    one call per mixed image), the same in both axes; ``same_sigma=True`` uses one sigma for
    the whole batch (MIC calls ``strong_transform`` once on its masked batch). Kernel sizes
    from :func:`blur_kernel_size` of the height and the width.

    Draws, in this order: the apply decision(s), then ``sigma`` ``(B,)`` (``(1,)`` with
    ``same_sigma``).
    """
    _check_images(images)
    b, dev = images.shape[0], images.device
    apply = _rand(generator, (b if per_image else 1,), dev) < p
    sigma = _rand(generator, (1 if same_sigma else b,), dev, *sigma_range).expand(b)
    blurred = _blur_with_sigma(_compute_dtype(images), sigma).to(images.dtype)
    return torch.where(_per_image(apply), blurred, images)


def strong_augment(
    images: Tensor,
    generator: Generator,
    *,
    jitter_strength: float = 0.2,
    jitter_p_skip: float = 0.2,
    blur: bool = True,
    blur_p: float = 0.5,
    per_image: bool = False,
    convention: JitterConvention = "kornia",
    random_order: bool = True,
    same_order_and_sigma: bool = False,
    channels: ChannelOrder = "rgb",
) -> Tensor:
    """DACS/DAFormer strong transform of the mixed images: colour jitter, then Gaussian blur
    (``strong_transform`` after ``one_mix``; MIC applies it to its masked images too).
    ``blur=False`` skips the blur and its random draws (DAFormer's ``blur`` flag).

    ``same_order_and_sigma=False``: each image as its own ``strong_transform`` call (DACS and
    DAFormer on their mixed images): its own jitter order and blur sigma. True: the batch as
    one call (MIC on its masked images): one jitter order and one sigma for all images, the
    jitter factors still per image (kornia's ``same_on_batch=False``). ``channels="bgr"``:
    the jitter sees BGR images (DACS), see :func:`color_jitter`."""
    out = color_jitter(
        images,
        generator,
        strength=jitter_strength,
        p_skip=jitter_p_skip,
        per_image=per_image,
        convention=convention,
        random_order=random_order,
        same_order=same_order_and_sigma,
        channels=channels,
    )
    if blur:
        out = gaussian_blur(
            out, generator, p=blur_p, per_image=per_image, same_sigma=same_order_and_sigma
        )
    return out


# --------------------------------------------------------------------------------------------
# Masked image consistency (MIC)
# --------------------------------------------------------------------------------------------


def block_mask(
    shape: Sequence[int],
    generator: Generator,
    *,
    block_size: int = 64,
    ratio: float = 0.7,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """MIC's random block mask (``BlockMaskGenerator``): 1 = keep the pixel, 0 = masked out.

    A ``(round(H / block_size), round(W / block_size))`` grid of independent draws per image,
    each block kept when ``u > ratio`` (kept with probability ``1 - ratio``: MIC masks 70% of
    the 64x64 patches), upsampled to ``(H, W)`` with nearest interpolation (mmseg ``resize``'s
    default), so blocks are uneven when ``H`` is not a multiple of ``block_size``. The grid has
    at least one cell per side. Masked image: ``images * block_mask(...)``.

    Args:
        shape: ``(B, H, W)`` (or ``(B, C, H, W)``) of the images to mask.
        device: where to build the mask; default the generator's device.
    Returns:
        ``(B, 1, H, W)`` mask of ``dtype``.
    """
    if len(shape) not in (3, 4):
        raise ValueError(f"shape must be (B, H, W) or (B, C, H, W), got {tuple(shape)}")
    b, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    gh, gw = max(1, round(h / block_size)), max(1, round(w / block_size))
    keep = (_rand(generator, (b, 1, gh, gw), torch.device(device)) > ratio).to(dtype)
    return F.interpolate(keep, size=(h, w), mode="nearest")


# --------------------------------------------------------------------------------------------
# Labels at feature resolution (DAFormer's ImageNet feature distance)
# --------------------------------------------------------------------------------------------


def downscale_label_ratio(
    labels: Tensor,
    scale_factor: int,
    min_ratio: float,
    num_classes: int,
    ignore_index: int = 255,
) -> Tensor:
    """Labels at ``1 / scale_factor`` resolution, kept only where one class dominates.

    DAFormer ``mmseg/utils/utils.py``: the ignore label counts as an extra class; each
    ``scale_factor x scale_factor`` cell (trailing rows/columns that do not fill a cell are
    dropped, as ``avg_pool2d``) takes its most frequent class (first one on ties), and
    becomes ``ignore_index`` if that is the ignore class or if it covers less than
    ``min_ratio`` of the cell. DAFormer uses it with ``min_ratio = 0.75`` to select the
    thing-class cells where the feature distance applies.

    Implementation: per-cell class counts by one ``scatter_add`` into ``(B, C + 1, h, w)``
    (index ``class * h * w + cell``): memory is the int64 index (8 bytes per pixel) instead of
    the reference's full-resolution float one-hot (``4 (C + 1)`` bytes per pixel).

    Args:
        labels: ``(B, H, W)`` or ``(B, 1, H, W)`` integer labels.
    Returns:
        int64 labels ``(B, H // s, W // s)`` (``(B, 1, ...)`` for a ``(B, 1, H, W)`` input).
    """
    keep_dim = labels.ndim == 4
    if keep_dim:
        if labels.shape[1] != 1:
            raise ValueError(f"labels must be (B, H, W) or (B, 1, H, W), got {tuple(labels.shape)}")
        labels = labels[:, 0]
    _check_labels(labels)
    s = int(scale_factor)
    if s != scale_factor or s < 1:
        raise ValueError(f"scale_factor must be a positive integer, got {scale_factor}")
    b, height, width = labels.shape
    h, w = height // s, width // s
    if h == 0 or w == 0:
        raise ValueError(f"labels {height}x{width} are smaller than one {s}x{s} cell")
    c = num_classes
    dev = labels.device
    lab = labels[:, : h * s, : w * s]
    slot = torch.where((lab >= 0) & (lab < c), lab, c)
    # Cell index of every pixel: static, from the shape alone.
    rows = torch.arange(h * s, device=dev) // s
    cols = torch.arange(w * s, device=dev) // s
    cell = rows.view(-1, 1) * w + cols.view(1, -1)
    index = (slot * (h * w) + cell).reshape(b, -1)
    counts = torch.zeros(b, (c + 1) * h * w, dtype=torch.float32, device=dev)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    ratio = counts.view(b, c + 1, h, w) / float(s * s)
    best_ratio, best = ratio.max(dim=1)
    out = torch.where((best == c) | (best_ratio < min_ratio), ignore_index, best)
    return out.unsqueeze(1) if keep_dim else out


__all__ = [
    "EMATeacher",
    "block_mask",
    "blur_kernel_size",
    "class_mix_masks",
    "color_jitter",
    "downscale_label_ratio",
    "gaussian_blur",
    "mix",
    "pseudo_labels",
    "strong_augment",
]
