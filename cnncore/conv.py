"""2-D convolution (cross-correlation, as PyTorch's ``F.conv2d``), forward and backward.

The tutorial writes one output pixel of a ``f×f`` kernel as
``u_ij = sum_p sum_q x_{i+p-1, j+q-1} * w_pq + b`` and observes that ``dL/dW`` is the
input cross-correlated with ``dL/dU``, ``dL/dX`` is the zero-padded ``dL/dU``
cross-correlated with the kernel rotated by 180°, and ``dL/db`` is the sum of ``dL/dU``.
Here they are matrix products over an *im2col* matrix ``cols`` (every receptive field of
the padded input, one column each):

- forward: ``out = W @ cols``; the bias is one more column of ``W`` against a row of ones
  in ``cols``, so the GEMM adds it and the ``dW`` GEMM returns ``db`` as its last column;
- ``dW = dU @ colsᵀ``;
- ``dX``: ``Wᵀ @ dU`` scattered back onto the input, one strided add per kernel offset
  (col2im), or, for stride 1, the second observation itself: a forward convolution of
  the padded ``dU`` with the rotated kernel (:attr:`DxPath.CORRELATION`).

How a layer is computed is one value, a :class:`ConvPlan`, chosen once from the shapes by
:func:`conv2d_plan`: its :class:`ConvPath` (one GEMM over the whole batch, one GEMM per
sample over chunks of the batch, or one GEMM per band of output rows), its
:class:`DxPath`, and its chunks, bands and threads. :func:`conv2d_forward`,
:func:`conv2d_inference` and :func:`conv2d_backward` dispatch on it, and
:meth:`ConvPlan.memory` counts the buffers of the same paths. Every path computes the
same sums: results differ between paths only in rounding (GEMMs of other shapes block
their inner dimension differently), and never between one thread and several (each
chunk writes only its own samples, and partial ``dW`` are added in chunk order). The
measurements behind each rule are dated records in ``docs/decisions/``.

Layout of the columns: ``(N, G, C/G * KH * KW [+ 1], out_h * L)``, the batch outermost so
that the GEMM output is already ``(N, F, ...)``. With a horizontal stride of 1, each
output row is computed ``L = Wp`` (padded width) wide: a window then moves through memory
by a constant shift, so building the columns and scattering them back copy and add long
contiguous runs. The ``Wp - out_w`` junk columns are cropped from the output and get a
zero gradient. With a horizontal stride above 1, ``L = out_w``.

The plain-loop twins that read like the tutorial are
:func:`cnncore.reference.conv_forward_naive` and
:func:`cnncore.reference.conv_backward_naive`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .checks import as_float_array, check_bias, check_dout, common_dtype
from .errors import ParameterError
from .geometry import Conv2dGeometry, conv2d_geometry
from .op import Memory
from .threads import WORKERS, map_threads

__all__ = [
    "LIMITS",
    "Conv2dCache",
    "ConvLimits",
    "ConvPath",
    "ConvPlan",
    "DxPath",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_inference",
    "conv2d_plan",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- the plan


class ConvPath(enum.Enum):
    """How a convolution's forward pass computes, and so what it caches for the backward."""

    WHOLE_BATCH = "whole-batch"
    """One GEMM ``W @ cols`` over the whole batch, ``cols`` of shape ``(G, C/G * KH * KW,
    N * out_h * out_w)`` (no junk columns, no row of ones), kept for ``dW``; dX by one
    ``Wᵀ @ dout`` over every kernel row."""

    PER_SAMPLE = "per-sample"
    """One GEMM per sample over chunks of the batch (:attr:`ConvPlan.forward_chunks`), the
    im2col matrix of the whole batch kept for ``dW``; the chunks run on threads when
    :attr:`ConvPlan.forward_workers` says so."""

    BANDS = "bands"
    """One GEMM per band of :attr:`ConvPlan.band_rows` output rows of one sample, built in a
    buffer that stays in cache; only the padded input is kept, and the backward pass
    builds each band's columns again for ``dW``."""


class DxPath(enum.Enum):
    """How :func:`conv2d_backward` computes ``dX``."""

    COL2IM = "col2im"
    """``Wᵀ @ dout`` (every window's share), added back onto the padded input one strided
    add per kernel offset, a group of kernel rows (:attr:`ConvPlan.row_groups`) and a
    chunk of the batch (:attr:`ConvPlan.backward_chunks`) at a time."""

    CORRELATION = "correlation"
    """``dout`` zero-padded by the kernel's reach less the forward padding, correlated with
    the kernel rotated by 180° (stride 1 only), by :func:`conv2d_inference` with
    :attr:`ConvPlan.dx_plan`."""


@dataclass(frozen=True)
class ConvLimits:
    """The sizes :func:`conv2d_plan` chooses paths, chunks, bands and threads by.

    The defaults are measured (``docs/decisions/``); tests pass others to reach a path
    with small shapes.

    Attributes
    ----------
    batch_max_pixels
        Largest ``out_h * out_w`` trained as :attr:`ConvPath.WHOLE_BATCH` (batch > 1), at a
        horizontal stride of 1 and above 1: per-sample GEMMs of small outputs have too few
        columns for the BLAS rate (``2026-12-02-conv-whole-batch-gemm.md``).
    inference_batch_max_pixels
        The same for :func:`conv2d_inference`, whose per-sample layers compute in bands
        held in cache (``2026-12-02-conv-inference-in-bands.md``).
    share_bytes
        Size of one chunk's dX shares (``Wᵀ @ dout``), rounded up to one sample: still in
        cache when col2im adds them, and reused from the heap
        (``2026-11-26-conv-chunks-of-the-batch.md``).
    band_bytes
        Size of one band of columns: in cache between the copy that builds it and the GEMM
        that reads it, with a few hundred GEMM columns (ResNet-18's 56x56: 7 rows of 58).
    min_depth
        Smallest inner dimension of a col2im ``Wᵀ @ dout`` GEMM: wider layers take a group
        of kernel rows at a time, for less peak memory
        (``2026-11-26-conv-dx-by-kernel-rows.md``).
    blas_serial_mnk
        Largest ``M*N*K`` that OpenBLAS runs on one thread (``GEMM_MULTITHREAD_THRESHOLD``
        4 times ``SMP_THRESHOLD_MIN`` 65536, its ``interface/gemm.c``): layers whose
        per-sample GEMMs are all this small run their chunks on threads of their own.
    min_chunk_macs
        Smallest average forward work per chunk (multiply-adds) worth a thread
        (``2026-11-26-conv-chunks-on-threads.md``).
    workers
        Threads for such chunks (:data:`cnncore.threads.WORKERS`); 1 runs them serially.
    """

    batch_max_pixels: tuple[int, int] = (784, 196)
    inference_batch_max_pixels: tuple[int, int] = (196, 196)
    share_bytes: int = 1 << 20
    band_bytes: int = 1 << 20
    min_depth: int = 128
    blas_serial_mnk: int = 4 * 65536
    min_chunk_macs: int = 1 << 21
    workers: int = WORKERS


LIMITS = ConvLimits()
"""The measured :class:`ConvLimits` every convolution is planned with by default."""


@dataclass(frozen=True)
class ConvPlan:
    """How one convolution computes: made by :func:`conv2d_plan`, read by the passes.

    Attributes
    ----------
    geom
        The geometry it was made for (a pass refuses a plan made for another).
    itemsize
        Bytes per element of the computation (4 or 8).
    path
        The path of :func:`conv2d_forward`, and so of :func:`conv2d_backward`'s ``dW``.
    inference_path
        The path of :func:`conv2d_inference`.
    dx
        How :func:`conv2d_backward` computes ``dX``.
    forward_chunks, backward_chunks
        Chunks of the batch of :attr:`ConvPath.PER_SAMPLE`'s GEMMs and of col2im (their
        columns or shares fill about :attr:`ConvLimits.share_bytes`).
    forward_workers, backward_workers
        Threads those chunks run on (1: serially).
    row_groups
        Kernel rows whose col2im share is one GEMM.
    band_rows
        Output rows per band of :attr:`ConvPath.BANDS`.
    dx_plan
        With :attr:`DxPath.CORRELATION`, the plan of that convolution (its forward pass
        alone is used), else None.
    """

    geom: Conv2dGeometry
    itemsize: int
    path: ConvPath
    inference_path: ConvPath
    dx: DxPath
    forward_chunks: tuple[slice, ...]
    backward_chunks: tuple[slice, ...]
    forward_workers: int
    backward_workers: int
    row_groups: tuple[slice, ...]
    band_rows: int
    dx_plan: ConvPlan | None = None

    def memory(self, *, dx: bool = True) -> Memory:
        """Bytes the passes of this plan allocate besides their inputs, outputs and
        gradients (the graph engine's budget, measured against tracemalloc in the tests).

        ``dx=False`` counts a backward pass as col2im whatever :attr:`dx` says.
        """
        return _memory(self, dx)


def conv2d_plan(
    geom: Conv2dGeometry,
    itemsize: int,
    *,
    path: ConvPath | None = None,
    dx: DxPath | None = None,
    limits: ConvLimits | None = None,
) -> ConvPlan:
    """Choose how a convolution of geometry ``geom`` computes, from its shapes alone.

    The rule, unless ``path`` or ``dx`` is given:

    - :attr:`ConvPath.WHOLE_BATCH` when the batch has more than one sample and
      ``out_h * out_w`` is at most :attr:`ConvLimits.batch_max_pixels` (for inference,
      :attr:`ConvLimits.inference_batch_max_pixels`);
    - else :attr:`ConvPath.PER_SAMPLE` when its chunks of the batch are worth threads
      of their own (:func:`_small_chunks`), so that one thread and several give the same
      bits;
    - else :attr:`ConvPath.BANDS`;
    - ``dX`` by :attr:`DxPath.CORRELATION` at stride 1 with padding within the kernel's
      reach when the batch's pixels are at least twice the filters of a group (the
      rotated kernel is a copy, which that keeps below col2im's passes;
      ``2026-12-02-conv-dx-by-correlation.md``), else :attr:`DxPath.COL2IM`.

    Parameters
    ----------
    geom
        The layer's geometry (:func:`cnncore.conv2d_geometry`).
    itemsize
        Bytes per element of the computation's dtype (4 for float32, 8 for float64).
    path
        Force a path, for forward and inference alike (any path computes any layer).
    dx
        Force a dX path.
    limits
        The sizes the rule uses; by default :data:`LIMITS` (read at each call).

    Raises
    ------
    ParameterError
        If ``dx`` is :attr:`DxPath.CORRELATION` for a layer with a stride above 1 or
        padding beyond the kernel's reach.
    """
    return _plan(geom, itemsize, path, dx, LIMITS if limits is None else limits)


@functools.lru_cache(maxsize=1024)
def _plan(
    g: Conv2dGeometry, itemsize: int, path: ConvPath | None, dx: DxPath | None, limits: ConvLimits
) -> ConvPlan:
    """:func:`conv2d_plan`, once per distinct argument: a plan is a value of its shapes,
    and a graph asks again for every call (a tiny network's plans took half its time)."""
    rows = _row_groups(g, limits.min_depth)
    forward_chunks = _sample_chunks(g, slice(0, g.kh), itemsize, limits.share_bytes)
    backward_chunks = _sample_chunks(g, rows[0], itemsize, limits.share_bytes)
    forward_small = _small_chunks(g, len(forward_chunks), limits)
    backward_small = _small_chunks(g, len(backward_chunks), limits)
    if path is None:
        train = _path(g, forward_small, limits.batch_max_pixels)
        infer = _path(g, forward_small, limits.inference_batch_max_pixels)
    else:
        train = infer = path
    if dx is None:
        dx = DxPath.CORRELATION if _correlates(g) else DxPath.COL2IM
    elif dx is DxPath.CORRELATION and not _can_correlate(g):
        raise ParameterError(
            "dX by correlation needs stride 1 and padding within the kernel's reach, "
            f"got stride ({g.sh}, {g.sw}) and padding ({g.pt}, {g.pb}, {g.pl}, {g.pr})",
            arg="plan",
        )
    dx_plan = None
    if dx is DxPath.CORRELATION:
        # Only its forward pass runs: its own dX path is never used.
        dx_plan = conv2d_plan(_correlation_geometry(g), itemsize, dx=DxPath.COL2IM, limits=limits)
    return ConvPlan(
        geom=g,
        itemsize=itemsize,
        path=train,
        inference_path=infer,
        dx=dx,
        forward_chunks=tuple(forward_chunks),
        backward_chunks=tuple(backward_chunks),
        forward_workers=limits.workers if forward_small else 1,
        backward_workers=limits.workers if backward_small else 1,
        row_groups=tuple(rows),
        band_rows=max(1, min(g.out_h, limits.band_bytes // ((_depth(g) + 1) * g.out_w * itemsize))),
        dx_plan=dx_plan,
    )


def _path(g: Conv2dGeometry, small_chunks: bool, batch_max_pixels: tuple[int, int]) -> ConvPath:
    if g.n > 1 and g.out_h * g.out_w <= batch_max_pixels[g.sw != 1]:
        return ConvPath.WHOLE_BATCH
    return ConvPath.PER_SAMPLE if small_chunks else ConvPath.BANDS


def _depth(g: Conv2dGeometry) -> int:
    """Rows of the im2col matrix without the bias row: ``C/G * KH * KW``."""
    return g.c // g.groups * g.kh * g.kw


def _row_groups(g: Conv2dGeometry, min_depth: int) -> list[slice]:
    """Kernel rows whose share of dX is one GEMM ``Wᵀ @ dout``, at least ``min_depth`` deep."""
    per_row = g.c // g.groups * g.kw
    r = min(g.kh, max(1, -(-min_depth // per_row)))
    return [slice(i, min(i + r, g.kh)) for i in range(0, g.kh, r)]


def _sample_chunks(g: Conv2dGeometry, rows: slice, itemsize: int, budget: int) -> list[slice]:
    """Chunks of the batch whose dX shares for kernel ``rows`` fill about ``budget`` bytes."""
    per_sample = g.c * (rows.stop - rows.start) * g.kw * g.out_h * _row_len(g) * itemsize
    r = max(1, budget // per_sample)
    return [slice(i, min(i + r, g.n)) for i in range(0, g.n, r)]


def _small_chunks(g: Conv2dGeometry, chunks: int, limits: ConvLimits) -> bool:
    """Whether a layer's chunks of the batch are worth threads of their own, whatever the
    number of workers: when there are several chunks, the per-sample GEMMs (forward and
    ``dW``: ``F/G x (C/G*KH*KW + 1) x out_h*L``; ``Wᵀ @ dout`` is no larger) are too small
    for BLAS's own threads, the chunks have :attr:`ConvLimits.min_chunk_macs` of work on
    average, and no output row has junk columns (those of a chunk's last sample reach into
    the next chunk's first plane: a read-modify-write that would race with its thread)."""
    mnk = g.f // g.groups * (_depth(g) + 1) * g.out_h * _row_len(g)
    return (
        chunks > 1
        and _row_len(g) == g.out_w
        and mnk <= limits.blas_serial_mnk
        and g.n * g.groups * mnk >= chunks * limits.min_chunk_macs
    )


def _can_correlate(g: Conv2dGeometry) -> bool:
    """Stride 1 and padding within the kernel's reach (dout's padding is not negative)."""
    reach_h, reach_w = g.dh * (g.kh - 1), g.dw * (g.kw - 1)
    return g.sh == g.sw == 1 and max(g.pt, g.pb) <= reach_h and max(g.pl, g.pr) <= reach_w


def _correlates(g: Conv2dGeometry) -> bool:
    """Whether dX is computed by correlation by default (see :func:`conv2d_plan`)."""
    return _can_correlate(g) and g.n * g.out_h * g.out_w >= 2 * (g.f // g.groups)


def _correlation_geometry(g: Conv2dGeometry) -> Conv2dGeometry:
    """The geometry of the convolution that computes dX by correlation: ``dout``
    ``(N, F, H', W')`` with the rotated kernel ``(C, F/G, KH, KW)``, stride 1, padded by
    the kernel's reach less the forward padding."""
    return conv2d_geometry(
        g.output_shape,
        (g.c, g.f // g.groups, g.kh, g.kw),
        stride=1,
        padding=_correlation_padding(g),
        dilation=(g.dh, g.dw),
        groups=g.groups,
        bias=False,
    )


def _correlation_padding(g: Conv2dGeometry) -> tuple[int, int, int, int]:
    reach_h, reach_w = g.dh * (g.kh - 1), g.dw * (g.kw - 1)
    return reach_h - g.pt, reach_h - g.pb, reach_w - g.pl, reach_w - g.pr


def _checked_plan(plan: ConvPlan | None, g: Conv2dGeometry, itemsize: int) -> ConvPlan:
    """``plan``, or the default one, after checking it was made for this convolution."""
    if plan is None:
        return conv2d_plan(g, itemsize)
    if not isinstance(plan, ConvPlan):
        raise ParameterError(f"plan must be a ConvPlan, got {type(plan).__name__}", arg="plan")
    if plan.geom != g or plan.itemsize != itemsize:
        made = {**dataclasses.asdict(plan.geom), "itemsize": plan.itemsize}
        here = {**dataclasses.asdict(g), "itemsize": itemsize}
        diff = ", ".join(
            f"{k} {made[k]!r} (this one {here[k]!r})" for k in made if made[k] != here[k]
        )
        raise ParameterError(f"plan was made for another convolution: {diff}", arg="plan")
    return plan


# --------------------------------------------------------------------------- public passes


@dataclass(frozen=True)
class Conv2dCache:
    """What :func:`conv2d_backward` needs from :func:`conv2d_forward`.

    Attributes
    ----------
    plan
        The plan the forward pass ran (its :attr:`ConvPlan.geom` is the geometry).
    cols
        The im2col matrix: ``(N, G, C/G * KH * KW + bias, out_h * L)`` for
        :attr:`ConvPath.PER_SAMPLE` (last row ones when there is a bias), ``(G, C/G * KH *
        KW, N * out_h * out_w)`` for :attr:`ConvPath.WHOLE_BATCH`, None for
        :attr:`ConvPath.BANDS`.
    w
        The weight in the computation's dtype, shape ``(F, C/G, KH, KW)``.
    has_bias
        Whether the forward pass had a bias (``db`` is ``None`` otherwise).
    padded
        For :attr:`ConvPath.BANDS`: the zero-padded input as a flat buffer
        (:func:`_padded_buffer`; a view of ``x`` itself when there is no padding, so
        ``x`` must not change before the backward pass).
    """

    plan: ConvPlan
    cols: np.ndarray | None
    w: np.ndarray
    has_bias: bool
    padded: np.ndarray | None = None

    @property
    def geom(self) -> Conv2dGeometry:
        """The resolved geometry (shapes, stride, padding, dilation, groups)."""
        return self.plan.geom


def conv2d_forward(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    plan: ConvPlan | None = None,
) -> tuple[np.ndarray, Conv2dCache]:
    """Forward pass of a 2-D convolution: ``out = x ⋆ w + b`` (cross-correlation).

    The vectorised twin of :func:`cnncore.reference.conv_forward_naive`: GEMMs over an
    im2col matrix, no Python loop over channels or pixels.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Input. float32 and float64 keep their dtype; integer and bool become float64.
    w : array_like, shape (F, C // groups, KH, KW)
        Kernels.
    b : array_like, shape (F,), optional
        Bias, one per kernel; ``None`` for none.
    stride : int or (int, int)
        Step between windows, ``>= 1``.
    padding : int, (int, int), (int, int, int, int), "same" or "valid"
        Zero padding: on every side, ``(ph, pw)``, ``(top, bottom, left, right)``,
        ``"same"`` (stride 1 only; the extra pixel of an odd total goes to the
        bottom/right) or ``"valid"`` (none).
    dilation : int or (int, int)
        Spacing between kernel taps, ``>= 1``.
    groups : int
        Channel groups: input channels ``g*C/G .. (g+1)*C/G`` feed only kernels
        ``g*F/G .. (g+1)*F/G``. ``groups=C`` is a depthwise convolution.
    plan : ConvPlan, optional
        How to compute (:func:`conv2d_plan` of this geometry and dtype); by default the
        one :func:`conv2d_plan` chooses.

    Returns
    -------
    out : numpy.ndarray, shape (N, F, H', W')
        ``H' = floor((H + pad_top + pad_bottom - dilation*(KH - 1) - 1) / stride) + 1``,
        likewise ``W'``. The dtype is float64 if any of ``x``, ``w``, ``b`` is
        float64 (or integer), else float32.
    cache : Conv2dCache
        For :func:`conv2d_backward`. Holds the im2col matrix, ``KH*KW`` times the
        size of the (padded) input, or, for :attr:`ConvPath.BANDS`, only the padded input
        (a view of ``x`` when there is no padding: ``x`` must then not change before the
        backward pass).

    Raises
    ------
    DtypeError
        If an array is not float32, float64, integer or bool (complex, say).
    ShapeError
        If ``x`` or ``w`` is not 4-D, the channels do not match ``groups``, ``b`` is
        not ``(F,)``, or the output would have a non-positive size.
    ParameterError
        If ``stride``, ``padding``, ``dilation`` or ``groups`` is malformed or out
        of range (for instance ``stride=0``, ``stride=True``, ``stride=1.5``, or
        ``padding="same"`` with a stride above 1), or ``plan`` was made for another
        geometry or dtype.
    """
    x, w, b, g = _prepare(x, w, b, stride, padding, dilation, groups)
    plan = _checked_plan(plan, g, x.itemsize)
    if plan.path is ConvPath.WHOLE_BATCH:
        return _forward_batched(x, w, b, plan)
    if plan.path is ConvPath.PER_SAMPLE:
        return _forward_per_sample(x, w, b, plan)
    out, buf = _forward_in_bands(x, w, b, plan)
    return out, Conv2dCache(plan=plan, cols=None, w=w, has_bias=b is not None, padded=buf)


def conv2d_inference(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    plan: ConvPlan | None = None,
) -> np.ndarray:
    """:func:`conv2d_forward`'s output alone, for a pass no backward follows.

    Same parameters and errors; the plan's :attr:`ConvPlan.inference_path` decides, which
    holds no cache: bands of output rows where the training pass would keep the im2col
    matrix of the whole batch (the same bits as :func:`conv2d_forward` for a layer both
    compute in bands; a layer trained as one GEMM over the batch may differ in the last
    bits, within the same round-off bound).
    """
    x, w, b, g = _prepare(x, w, b, stride, padding, dilation, groups)
    plan = _checked_plan(plan, g, x.itemsize)
    if plan.inference_path is ConvPath.WHOLE_BATCH:
        return _forward_batched(x, w, b, plan)[0]
    if plan.inference_path is ConvPath.PER_SAMPLE:
        return _forward_per_sample(x, w, b, plan)[0]
    return _forward_in_bands(x, w, b, plan)[0]


def conv2d_backward(
    dout: Any, cache: Conv2dCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Backward pass of :func:`conv2d_forward`.

    The vectorised twin of :func:`cnncore.reference.conv_backward_naive`. In the
    tutorial's terms: ``dw`` is the input correlated with ``dout`` (GEMMs with the cached
    im2col matrix, or with each band's columns built again), ``dx`` is the padded
    ``dout`` correlated with the 180°-rotated kernel (computed as the plan's
    :class:`DxPath` says), and ``db`` is the sum of ``dout``.

    Parameters
    ----------
    dout : array_like, shape (N, F, H', W')
        Upstream gradient, the shape of the forward output. Cast to the forward
        pass's dtype.
    cache : Conv2dCache
        The second value returned by :func:`conv2d_forward`.

    Returns
    -------
    dx : numpy.ndarray, shape (N, C, H, W)
        Gradient with respect to ``x``. Input rows/columns that no window covered
        get zero.
    dw : numpy.ndarray, shape (F, C // groups, KH, KW)
        Gradient with respect to ``w``.
    db : numpy.ndarray of shape (F,), or None
        Gradient with respect to ``b``; ``None`` when the forward pass had no bias.

    Raises
    ------
    ShapeError
        If ``dout``'s shape differs from the forward output's.
    DtypeError
        If ``dout`` is not float32, float64, integer or bool.
    """
    plan, w = cache.plan, cache.w
    g = plan.geom
    dout = check_dout(dout, g.output_shape, w.dtype)
    dx = _dx_by_correlation(dout, w, plan) if plan.dx is DxPath.CORRELATION else None
    if plan.path is ConvPath.WHOLE_BATCH:
        return _backward_batched(dout, cache, dx)
    G, lw = g.groups, _row_len(g)
    k = _depth(g)
    cols = cache.cols
    if plan.path is ConvPath.BANDS:  # dW first, while dout is out_w wide
        assert cache.padded is not None
        dwb = _dw_in_bands(dout, cache.padded, plan, cache.has_bias)
        if dx is not None:
            return dx, *_split_dw(dwb, w, k, cache.has_bias)

    if lw != g.out_w:
        # Junk columns get a zero gradient, so they add nothing below.
        wide = np.zeros((g.n, g.f, g.out_h, lw), dtype=w.dtype)
        wide[..., : g.out_w] = dout
        dout = wide
    d = dout.reshape(g.n, G, g.f // G, g.out_h * lw)

    # Per chunk of samples: dW (unless computed in bands above), the input correlated
    # with dout, one GEMM per sample summed over the chunk (with a bias, the row of ones
    # in the columns makes the last column db); then dX by col2im (unless computed
    # above), a group of kernel rows at a time, so that the shares (KH*KW times the
    # input) never exist all at once.
    if dx is None:
        dxbuf = _DxBuffer(g, w.dtype)
        wts = [_kernel_rows(w, g, rows).swapaxes(-1, -2) for rows in plan.row_groups]

    def backward_chunk(samples: slice) -> np.ndarray | None:
        dwb = None if cols is None else np.matmul(d[samples], cols[samples].swapaxes(-1, -2))
        for rows, wt in zip(plan.row_groups, wts, strict=True) if dx is None else ():
            dcols = np.matmul(wt, d[samples])
            dcols = dcols.reshape(-1, g.c, rows.stop - rows.start, g.kw, g.out_h, lw)
            for r, i in enumerate(range(rows.start, rows.stop)):
                for j in range(g.kw):
                    dxbuf.offset(i, j)[samples] += dcols[:, :, r, j]
        return None if dwb is None else dwb.sum(axis=0)

    partials = _map_chunks(backward_chunk, plan.backward_chunks, plan.backward_workers)
    if cols is not None:  # (G, F/G, k [+ 1]), summed in chunk order whichever thread ran it
        dwb = _sum_in_order([p for p in partials if p is not None])
    if dx is None:
        dx = dxbuf.dx()
    return dx, *_split_dw(dwb, w, k, cache.has_bias)


def _prepare(
    x: Any, w: Any, b: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Conv2dGeometry]:
    """The arrays of a convolution in their common dtype, and its checked geometry."""
    x = as_float_array(x, "x")
    w = as_float_array(w, "w")
    b = None if b is None else as_float_array(b, "b")
    g = conv2d_geometry(
        x.shape,
        w.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=b is not None,
    )
    dtype = common_dtype(x, w, b)
    return x.astype(dtype, copy=False), w.astype(dtype, copy=False), check_bias(b, g.f, dtype), g


def _split_dw(
    dwb: np.ndarray, w: np.ndarray, k: int, bias: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``dw`` and ``db`` from the ``(G, F/G, k [+ 1])`` product whose last column is ``db``."""
    dw = dwb[..., :k].reshape(w.shape)
    db = dwb[..., k].reshape(w.shape[0]) if bias else None
    return dw, db


def _sum_in_order(arrays: list[np.ndarray]) -> np.ndarray:
    """``arrays[0] + arrays[1] + ...``, added in list order into the first."""
    total = arrays[0]
    for array in arrays[1:]:
        total += array
    return total


def _gemm_kernel(
    w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry, ones: np.ndarray
) -> np.ndarray:
    """The kernel as GEMM operands ``(G, F/G, C/G * KH * KW [+ 1])``; with a bias, the bias
    is its last column and ``ones`` (the row of the columns it multiplies) is set to 1,
    so that the GEMM adds it."""
    wmat = w.reshape(g.groups, g.f // g.groups, -1)
    if b is None:
        return wmat
    ones[...] = 1
    return np.concatenate([wmat, b.reshape(g.groups, g.f // g.groups, 1)], axis=-1)


# --------------------------------------------------------------------------- per sample


def _forward_per_sample(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, plan: ConvPlan
) -> tuple[np.ndarray, Conv2dCache]:
    """:attr:`ConvPath.PER_SAMPLE`: one GEMM per sample, over chunks of the batch."""
    g = plan.geom
    G, lw, dtype = g.groups, _row_len(g), x.dtype
    k = _depth(g)
    cols = np.empty((g.n, G, k + (b is not None), g.out_h * lw), dtype=dtype)
    parts = _window_parts(_padded_buffer(x, g), g)  # of (N, G, C/G, KH, KW, out_h, L)
    receptive = cols[:, :, :k].reshape(g.n, G, g.c // G, g.kh, g.kw, g.out_h, lw)
    assert np.may_share_memory(receptive, cols)  # a view: only the K axis was split
    wmat = _gemm_kernel(w, b, g, cols[:, :, k:])
    out = np.empty((g.n, G, g.f // G, g.out_h * lw), dtype=dtype)

    def forward_chunk(samples: slice) -> None:
        # A chunk of samples at a time, so that the GEMM reads columns still in cache.
        for taps, windows in parts:
            receptive[samples, :, :, :, taps] = windows[samples]
        np.matmul(wmat, cols[samples], out=out[samples])

    _map_chunks(forward_chunk, plan.forward_chunks, plan.forward_workers)
    out = out.reshape(g.n, g.f, g.out_h, lw)
    if lw != g.out_w:
        out = np.ascontiguousarray(out[..., : g.out_w])
    return out, Conv2dCache(plan=plan, cols=cols, w=w, has_bias=b is not None)


def _map_chunks(run: Callable[[slice], T], chunks: tuple[slice, ...], workers: int) -> list[T]:
    """``[run(c) for c in chunks]``, on ``workers`` threads of :mod:`cnncore.threads`
    when more than one. Each chunk writes only its own samples' slices of the outputs;
    the results come back in chunk order."""
    if workers <= 1:
        return [run(samples) for samples in chunks]
    return map_threads(run, list(chunks), workers)


def _kernel_rows(w: np.ndarray, g: Conv2dGeometry, rows: slice) -> np.ndarray:
    """The kernel rows ``rows`` as GEMM operands: shape ``(G, F/G, C/G * len(rows) * KW)``."""
    wg = w.reshape(g.groups, g.f // g.groups, g.c // g.groups, g.kh, g.kw)
    return wg[:, :, :, rows].reshape(g.groups, g.f // g.groups, -1)


# --------------------------------------------------------------------------- bands of rows


def _forward_in_bands(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, plan: ConvPlan
) -> tuple[np.ndarray, np.ndarray]:
    """:attr:`ConvPath.BANDS`: the output, one GEMM per band of output rows
    (:func:`_bands`), written in place; and the flat padded input the bands were copied
    from (:func:`_padded_buffer`)."""
    g = plan.geom
    G, ow = g.groups, g.out_w
    band = _band_buffer(plan, b is not None, x.dtype)
    wmat = _gemm_kernel(w, b, g, band[:, _depth(g) :])
    buf = _padded_buffer(x, g)
    out = np.empty(g.output_shape, dtype=x.dtype)
    grouped = out.reshape(g.n, G, g.f // G, g.out_h * ow)
    for n, top, bottom, cols in _bands(band, buf, g):
        np.matmul(wmat, cols, out=grouped[n, :, :, top * ow : bottom * ow])
    return out, buf


def _band_buffer(plan: ConvPlan, bias: bool, dtype: np.dtype) -> np.ndarray:
    """The buffer of :func:`_bands`: ``(G, C/G * KH * KW [+ 1], band_rows * out_w)``; with a
    bias, its last row (set to 1 by :func:`_gemm_kernel` or the caller) multiplies the
    kernel's bias column."""
    g = plan.geom
    return np.empty((g.groups, _depth(g) + bias, plan.band_rows * g.out_w), dtype=dtype)


def _bands(
    band: np.ndarray, buf: np.ndarray, g: Conv2dGeometry
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Each band of output rows of each sample: ``(n, top, bottom, cols)``, with ``cols``
    (a view of ``band``, ``(G, C/G * KH * KW [+ 1], (bottom - top) * out_w)``) holding the
    receptive fields of sample ``n``'s output rows ``top:bottom`` (no junk columns); the
    next band overwrites them."""
    G, ow = g.groups, g.out_w
    k = _depth(g)
    rows = band.shape[-1] // ow
    parts = _window_parts(buf, g)  # of (N, G, C/G, KH, KW, oh, L)
    for n in range(g.n):
        for top in range(0, g.out_h, rows):
            bottom = min(top + rows, g.out_h)
            cols = band[:, :, : (bottom - top) * ow]
            receptive = cols[:, :k].reshape(G, g.c // G, g.kh, g.kw, bottom - top, ow)
            for taps, windows in parts:
                receptive[:, :, :, taps] = windows[n, :, :, :, :, top:bottom, :ow]
            yield n, top, bottom, cols


def _dw_in_bands(dout: np.ndarray, buf: np.ndarray, plan: ConvPlan, bias: bool) -> np.ndarray:
    """``dW`` (with ``db`` as its last column when ``bias``), ``(G, F/G, C/G*KH*KW [+ 1])``,
    of :attr:`ConvPath.BANDS`: the columns of each band of output rows copied again from
    the padded input ``buf``, and multiplied by that band of ``dout`` (``(N, F, out_h,
    out_w)``) while still in cache; the bands' products are added in order.

    Each product is computed transposed, ``cols @ doutᵀ``, which OpenBLAS runs faster
    when ``F/G`` is small (``2026-12-02-conv-training-in-bands.md``); the sum is
    transposed once.
    """
    g = plan.geom
    G, fg, ow = g.groups, g.f // g.groups, g.out_w
    band = _band_buffer(plan, bias, dout.dtype)
    k = _depth(g)
    band[:, k:] = 1
    d = dout.reshape(g.n, G, fg, g.out_h * ow)
    total = np.zeros((G, k + bias, fg), dtype=dout.dtype)
    product = np.empty_like(total)
    for n, top, bottom, cols in _bands(band, buf, g):
        np.matmul(cols, d[n, :, :, top * ow : bottom * ow].swapaxes(-1, -2), out=product)
        total += product
    return np.ascontiguousarray(total.swapaxes(-1, -2))


# --------------------------------------------------------------------------- dX by correlation


def _dx_by_correlation(dout: np.ndarray, w: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """:attr:`DxPath.CORRELATION`: ``dout`` zero-padded by the kernel's reach less the
    forward padding on each side, cross-correlated with the kernel rotated by 180° and its
    in/out channels swapped (group by group), by :func:`conv2d_inference` with
    :attr:`ConvPlan.dx_plan`. Input pixel ``u`` gets ``sum_i dout[u + pad_top - i*dh] *
    w[i]``, which is that correlation at ``u``."""
    g = plan.geom
    G, fg, cg = g.groups, g.f // g.groups, g.c // g.groups
    grouped = w.reshape(G, fg, cg, g.kh, g.kw).transpose(0, 2, 1, 3, 4)
    rotated = np.ascontiguousarray(grouped[..., ::-1, ::-1]).reshape(g.c, fg, g.kh, g.kw)
    return conv2d_inference(
        dout,
        rotated,
        stride=1,
        padding=_correlation_padding(g),
        dilation=(g.dh, g.dw),
        groups=G,
        plan=plan.dx_plan,
    )


# --------------------------------------------------------------------------- whole-batch GEMM


def _forward_batched(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, plan: ConvPlan
) -> tuple[np.ndarray, Conv2dCache]:
    """:attr:`ConvPath.WHOLE_BATCH`: one GEMM ``W @ cols`` with ``cols`` of shape
    ``(G, C/G * KH * KW, N * out_h * out_w)`` (no junk columns).

    The GEMM's output is ``(F, N, ...)``; the bias is added by the copy that puts it in
    ``(N, F, ...)`` order, which is needed anyway (a row of ones in ``cols`` would cost
    a copy of the whole kernel per call to append ``b`` to it).
    """
    g = plan.geom
    G, fg, cg = g.groups, g.f // g.groups, g.c // g.groups
    k = _depth(g)
    cols = np.empty((G, k, g.n, g.out_h, g.out_w), dtype=x.dtype)
    receptive = cols.reshape(G, cg, g.kh, g.kw, g.n, g.out_h, g.out_w)
    for taps, windows in _window_parts(_padded_buffer(x, g), g):
        receptive[:, :, :, taps] = windows[..., : g.out_w].transpose(1, 2, 3, 4, 0, 5, 6)
    cols = cols.reshape(G, k, g.n * g.out_h * g.out_w)
    gemm = np.matmul(w.reshape(G, fg, k), cols)  # (G, F/G, N * out_h * out_w)
    gemm = gemm.reshape(g.f, g.n, g.out_h, g.out_w).transpose(1, 0, 2, 3)
    out = np.empty(g.output_shape, dtype=x.dtype)
    if b is None:
        out[...] = gemm
    else:
        np.add(gemm, b.reshape(g.f, 1, 1), out=out)
    return out, Conv2dCache(plan=plan, cols=cols, w=w, has_bias=b is not None)


def _backward_batched(
    dout: np.ndarray, cache: Conv2dCache, dx: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`conv2d_backward` of :attr:`ConvPath.WHOLE_BATCH`: one ``dW`` GEMM over the
    whole batch, then (unless ``dx`` is given) one ``Wᵀ @ dout`` over every kernel row,
    scattered back by col2im."""
    g, w, cols = cache.geom, cache.w, cache.cols
    assert cols is not None
    G, cg = g.groups, g.c // g.groups
    d = np.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(G, g.f // G, -1)
    dw = np.matmul(d, cols.swapaxes(-1, -2)).reshape(w.shape)  # (G, F/G, k)
    db = d.sum(axis=-1).reshape(g.f) if cache.has_bias else None
    if dx is not None:
        return dx, dw, db
    dxbuf = _DxBuffer(g, w.dtype)
    # Every kernel row in one GEMM: the shares are the size of the cached columns, and
    # the kernel's rows need no copy (a gather of KW-long runs per kernel row).
    wt = w.reshape(G, g.f // G, -1).swapaxes(-1, -2)
    dcols = np.matmul(wt, d).reshape(G, cg, g.kh, g.kw, g.n, g.out_h, g.out_w)
    for i in range(g.kh):
        for j in range(g.kw):
            share = dcols[:, :, i, j].reshape(g.c, g.n, g.out_h, g.out_w)
            dxbuf.offset(i, j)[..., : g.out_w] += share.swapaxes(0, 1)
    return dxbuf.dx(), dw, db


# --------------------------------------------------------------------------- im2col helpers


def _row_len(g: Conv2dGeometry) -> int:
    """Length of a computed output row: the padded width when ``sw == 1``, else ``out_w``."""
    return g.padded_hw[1] if g.sw == 1 else g.out_w


def _buffer_size(g: Conv2dGeometry) -> int:
    """Elements of the flat padded-input buffer, with slack for the last junk columns."""
    hp, wp = g.padded_hw
    slack = g.dw * (g.kw - 1) if g.sw == 1 else 0
    return g.n * g.c * hp * wp + slack


def _padded_buffer(x: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    """``x`` zero-padded, as a flat buffer of :func:`_buffer_size` elements."""
    hp, wp = g.padded_hw
    if (hp, wp) == (g.h, g.w) and _buffer_size(g) == x.size and x.flags.c_contiguous:
        return x.reshape(-1)  # read only: the windows of the forward pass are a view
    # Zeros only where x does not go: the top and bottom rows (with the slack after the
    # last plane), then the left and right columns of x's rows.
    buf = np.empty(_buffer_size(g), dtype=x.dtype)
    size = g.n * g.c * hp * wp
    buf[size:] = 0
    xp = buf[:size].reshape(g.n, g.c, hp, wp)
    bottom, right = g.pt + g.h, g.pl + g.w
    xp[:, :, : g.pt] = 0
    xp[:, :, bottom:] = 0
    xp[:, :, g.pt : bottom, : g.pl] = 0
    xp[:, :, g.pt : bottom, right:] = 0
    xp[:, :, g.pt : bottom, g.pl : right] = x
    return buf


def _unpad(buf: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    """The ``(N, C, H, W)`` interior of a flat padded buffer, as a new array."""
    hp, wp = g.padded_hw
    xp = buf[: g.n * g.c * hp * wp].reshape(g.n, g.c, hp, wp)
    return np.ascontiguousarray(xp[:, :, g.pt : g.pt + g.h, g.pl : g.pl + g.w])


def _window_parts(buf: np.ndarray, g: Conv2dGeometry) -> list[tuple[slice, np.ndarray]]:
    """The receptive fields as ``(taps, windows)`` pairs: ``windows`` of shape
    ``(N, G, C/G, KH, len(taps), out_h, L)`` holds the kernel columns ``taps``.

    With a horizontal stride of 1 (or a dilation), that is :func:`_windows` whole. With a
    stride ``sw > 1``, neighbouring window cells are ``sw`` values apart, and numpy copies
    them one by one; so the padded input is first split into ``sw`` phases of its columns
    (column ``c`` goes to phase ``c % sw``, position ``c // sw``), one pass, and kernel
    columns ``r, r + sw, ...`` read phase ``r`` at unit stride
    (``2026-12-02-conv-strided-column-phases.md``).
    """
    G, cg = g.groups, g.c // g.groups
    if g.sw == 1 or g.dw != 1:
        windows = _windows(buf, g)
        return [(slice(None), windows.reshape(g.n, G, cg, *windows.shape[2:]))]
    hp, wp = g.padded_hw
    xp = buf[: g.n * g.c * hp * wp].reshape(g.n, g.c, hp, wp)
    q = -(-wp // g.sw)
    phases = np.empty((g.sw, g.n, g.c, hp, q), dtype=buf.dtype)
    e = buf.itemsize
    parts = []
    for r in range(min(g.sw, g.kw)):
        count = len(range(r, wp, g.sw))
        phases[r, ..., :count] = xp[..., r :: g.sw]
        # Kernel column r + m*sw of window column l reads padded column (l + m)*sw + r.
        taps = len(range(r, g.kw, g.sw))
        shape = (g.n, G, cg, g.kh, taps, g.out_h, g.out_w)
        strides = (g.c * hp * q, cg * hp * q, hp * q, g.dh * q, 1, g.sh * q, 1)
        view = as_strided(phases[r], shape, tuple(st * e for st in strides), writeable=False)
        parts.append((slice(r, None, g.sw), view))
    return parts


def _dx_phases(g: Conv2dGeometry) -> tuple[int, int, int, int, int] | None:
    """The shape of :class:`_DxBuffer`'s column phases, ``(phases, N, C, Hp, ceil(Wp /
    sw))``, or None when it adds into the flat padded buffer (stride 1, or a dilation)."""
    if g.sw == 1 or g.dw != 1:
        return None
    hp, wp = g.padded_hw
    return min(g.sw, g.kw), g.n, g.c, hp, -(-wp // g.sw)


def _dx_buffer_size(g: Conv2dGeometry) -> int:
    """Elements of :class:`_DxBuffer`'s buffer."""
    phases = _dx_phases(g)
    return _buffer_size(g) if phases is None else math.prod(phases)


class _DxBuffer:
    """Where col2im adds dX's shares: a zeroed padded input, written through one view per
    kernel offset, then cropped to dX.

    With a horizontal stride of 1 (or a dilation), the flat padded buffer of
    :func:`_buffer_size` and the offsets' :func:`_windows`. With a stride ``sw > 1``, its
    columns are split into ``sw`` phases, as the forward pass's :func:`_window_parts`
    reads them: kernel column ``j`` of window column ``l`` is padded column ``l*sw + j``,
    value ``l + j // sw`` of phase ``j % sw``, so each add writes runs of ``out_w``
    neighbouring values instead of values ``sw`` apart (no SIMD for those); the phases
    are interleaved once into dX (``docs/decisions/2026-12-05-conv-col2im-phases.md``).
    """

    def __init__(self, g: Conv2dGeometry, dtype: np.dtype) -> None:
        self.g = g
        phases = _dx_phases(g)
        self.phased = phases is not None
        self.buf = np.zeros(_dx_buffer_size(g) if phases is None else phases, dtype=dtype)
        if phases is None:
            self.windows = _windows(self.buf, g, writeable=True)

    def offset(self, i: int, j: int) -> np.ndarray:
        """The cells of kernel offset ``(i, j)`` of every window, ``(N, C, out_h, L)``."""
        g = self.g
        if not self.phased:
            return self.windows[:, :, i, j]
        top = i * g.dh
        m = j // g.sw
        return self.buf[
            j % g.sw, :, :, top : top + (g.out_h - 1) * g.sh + 1 : g.sh, m : m + g.out_w
        ]

    def dx(self) -> np.ndarray:
        """dX, ``(N, C, H, W)``: the buffer without its padding."""
        g = self.g
        if not self.phased:
            return _unpad(self.buf, g)
        # Input column x is padded column x + pl: phase (x + pl) % sw, at (x + pl) // sw.
        dx = (np.zeros if g.kw < g.sw else np.empty)((g.n, g.c, g.h, g.w), dtype=self.buf.dtype)
        for r in range(min(g.sw, g.kw)):
            x0 = (r - g.pl) % g.sw
            count = len(range(x0, g.w, g.sw))
            if count:
                m0 = (x0 + g.pl) // g.sw
                dx[..., x0 :: g.sw] = self.buf[r, :, :, g.pt : g.pt + g.h, m0 : m0 + count]
        return dx


def _windows(buf: np.ndarray, g: Conv2dGeometry, *, writeable: bool = False) -> np.ndarray:
    """View ``(N, C, KH, KW, out_h, L)`` of every receptive field of the padded input.

    Element ``[n, c, i, j, y, l]`` is the padded input at row ``y*sh + i*dh`` and
    column ``l*sw + j*dw`` (which runs into the next row for the junk columns
    ``l >= out_w`` when ``L`` is the padded width; the buffer's slack covers the end).
    """
    hp, wp = g.padded_hw
    e = buf.itemsize
    shape = (g.n, g.c, g.kh, g.kw, g.out_h, _row_len(g))
    strides = (g.c * hp * wp * e, hp * wp * e, g.dh * wp * e, g.dw * e, g.sh * wp * e, g.sw * e)
    return as_strided(buf, shape, strides, writeable=writeable)


# --------------------------------------------------------------------------- memory


PYTHON_BYTES = 4096
"""Allowance for the Python objects of one convolution pass (its geometry, plan, cache,
and the views of its band and window loops): about 2 KB measured by tracemalloc, beyond
:data:`cnncore.graph.PYTHON_BYTES_PER_NODE`."""


def _memory(plan: ConvPlan, dx: bool) -> Memory:
    """:meth:`ConvPlan.memory`, in the paths' order: the buffers each pass allocates, in
    elements, times the item size.

    Forward: the padded input, its column phases (stride > 1, :func:`_window_parts`), wide
    rows (junk columns), the kernel with its bias column; the cache is the im2col matrix
    (:attr:`ConvPath.PER_SAMPLE`), the compact columns (:attr:`ConvPath.WHOLE_BATCH`) or
    the padded input (:attr:`ConvPath.BANDS`, with one band of columns as a temporary).
    Backward: the padded dX buffer, each chunk's partial ``dW`` and one chunk's ``dW``
    GEMM and dX shares per thread, col2im's ufunc buffers; with
    :attr:`DxPath.CORRELATION`, the larger of that convolution (the rotated kernel, its
    cache and forward temporaries) and dW's temporaries alone.
    """
    g, isz = plan.geom, plan.itemsize
    lw = _row_len(g)
    bias = int(g.bias)
    k = _depth(g)
    wide = g.n * g.f * g.out_h * lw if lw != g.out_w else 0
    buffer = _buffer_size(g)
    cols = g.n * g.groups * (k + bias) * g.out_h * lw
    chunks = plan.backward_chunks
    per_chunk = max(c.stop - c.start for c in chunks)
    threads = plan.backward_workers
    depth = max(r.stop - r.start for r in plan.row_groups)
    dw_rows = g.f * (k + bias)
    shares = per_chunk * g.c * depth * g.kw * g.out_h * lw
    dx_buffer = _dx_buffer_size(g)
    backward = (
        wide
        + dx_buffer
        + len(chunks) * dw_rows  # the partial dW of every chunk, kept until summed
        + threads * (per_chunk * dw_rows + shares)  # one chunk's dW GEMM and dX shares
        + 2 * g.f * k  # the kernel rows as GEMM operands; dW cut from the bias column
    )
    hp, wp = g.padded_hw
    phases = g.sw * g.n * g.c * hp * -(-wp // g.sw) if g.sw > 1 and g.dw == 1 else 0
    forward = buffer + phases + wide + (g.f * (k + 1) if bias else 0)
    band = g.groups * (k + bias) * plan.band_rows * g.out_w
    if plan.path is ConvPath.BANDS:
        # The padded input is the cache; the backward pass copies the bands again for dW
        # (the phases, the band, the sum of the bands' products, one product, the sum
        # transposed), then dX.
        cols = buffer
        forward = phases + band + (g.f * (k + 1) if bias else 0)
        backward = phases + band + 3 * dw_rows + wide + dx_buffer + threads * shares + 2 * g.f * k
    if plan.path is ConvPath.WHOLE_BATCH:
        # Compact columns, the GEMM's (F, N, ...) output before its transpose (forward);
        # dout transposed, dW, every kernel row's shares. The bias add reads the GEMM
        # output transposed: numpy's ufunc iterator may buffer up to np.getbufsize()
        # (8192) elements of it.
        pixels = g.n * g.out_h * g.out_w
        cols = g.groups * k * pixels
        forward = buffer + phases + g.f * pixels + np.getbufsize()
        backward = dx_buffer + g.f * pixels + dw_rows + g.c * g.kh * g.kw * pixels
    # col2im's strided in-place adds: numpy's ufunc iterator may buffer up to
    # np.getbufsize() elements of each of their three operands, no more than an operand
    # holds (measured: 94 KB for a float32 layer of 2x8x30x30 padded to 32x32).
    backward += 3 * min(np.getbufsize(), g.n * g.c * g.out_h * lw)
    backward_bytes = backward * isz
    if dx and plan.dx is DxPath.CORRELATION:
        assert plan.dx_plan is not None
        # dX first (the rotated kernel, and that convolution's own cache and
        # temporaries); then dW's temporaries alone.
        if plan.path is ConvPath.WHOLE_BATCH:
            dw_part = g.f * g.n * g.out_h * g.out_w + dw_rows
        elif plan.path is ConvPath.BANDS:
            dw_part = phases + band + 3 * dw_rows + g.f * k
        else:
            dw_part = wide + (len(chunks) + threads * per_chunk) * dw_rows + g.f * k
        inner = _memory(plan.dx_plan, dx=False)
        dx_part = g.f * k * isz + inner.cache + inner.forward
        backward_bytes = max(dx_part, dw_part * isz)
    return Memory(
        cache=cols * isz,
        forward=forward * isz + PYTHON_BYTES,
        backward=backward_bytes + PYTHON_BYTES,
    )
