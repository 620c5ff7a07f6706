"""Shape arithmetic: output sizes by their defining inequality, counts, and every rejection."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cnncore import ParameterError, ShapeError, conv2d_geometry, linear_info, pool2d_geometry
from cnncore.geometry import conv_out_size

# (size, kernel, stride, pad_lo, pad_hi, dilation), every combination that gives a window
SIZES = [
    case
    for case in itertools.product([1, 4, 7, 10], [1, 2, 3, 5], [1, 2, 3], [0, 1, 2], [0, 1], [1, 2])
    if case[0] + case[3] + case[4] >= case[5] * (case[1] - 1) + 1
]


@pytest.mark.parametrize(("size", "k", "s", "lo", "hi", "d"), SIZES, ids=str)
def test_out_size_is_the_number_of_windows_that_fit(
    size: int, k: int, s: int, lo: int, hi: int, d: int
) -> None:
    out = conv_out_size(size, k, s, lo, hi, d)
    padded, extent = size + lo + hi, d * (k - 1) + 1
    assert out >= 1
    assert (out - 1) * s + extent <= padded  # the last window fits
    assert out * s + extent > padded  # one more would not


# ceil_mode is pooling's: symmetric padding of at most half the kernel, no dilation
POOL_SIZES = [
    case[:4] for case in SIZES if case[3] == case[4] and 2 * case[3] <= case[1] and case[5] == 1
]


@pytest.mark.parametrize(("size", "k", "s", "p"), POOL_SIZES, ids=str)
def test_ceil_mode_adds_at_most_one_window_starting_inside(
    size: int, k: int, s: int, p: int
) -> None:
    floor, ceil = (
        conv_out_size(size, k, s, p, p),
        conv_out_size(size, k, s, p, p, ceil_mode=True),
    )
    assert ceil - floor in (0, 1)
    if ceil > floor:  # the extra window starts in the input or the leading padding
        assert (ceil - 1) * s < size + p


@pytest.mark.parametrize(("h", "w"), [(5, 5), (6, 9), (1, 4)], ids=str)
@pytest.mark.parametrize(("k", "d"), [(1, 1), (3, 1), (4, 1), ((2, 5), 1), (3, 2)], ids=str)
def test_same_padding_preserves_size(h: int, w: int, k: Any, d: int) -> None:
    g = conv2d_geometry(
        (1, 2, h, w), (3, 2, *((k, k) if isinstance(k, int) else k)), padding="same", dilation=d
    )
    assert (g.out_h, g.out_w) == (h, w)
    assert g.pb - g.pt in (0, 1)
    assert g.pr - g.pl in (0, 1)


@pytest.mark.parametrize(
    ("h", "k", "s", "exact", "unused"),
    [(7, 3, 2, True, 0), (8, 3, 2, False, 1), (12, 3, 3, True, 0), (11, 3, 3, False, 2)],
    ids=["7-k3-s2", "8-k3-s2", "12-k3-s3", "11-k3-s3"],
)
def test_exact_and_unused_flags(h: int, k: int, s: int, exact: bool, unused: int) -> None:
    # unused = size - (last window's end) = h - ((out - 1) * s + k), with out from the floor formula
    info = conv2d_geometry((1, 1, h, h), (1, 1, k, k), stride=s).info
    assert info.exact is exact
    assert info.unused == (unused, unused)
    pool = pool2d_geometry((1, 1, h, h), kernel_size=k, stride=s).info
    assert (pool.exact, pool.unused) == (exact, (unused, unused))


@pytest.mark.parametrize(("f", "d1", "d2"), [(3, 3, 16), (5, 1, 6), (1, 64, 32)], ids=str)
def test_param_count_is_the_tutorials(f: int, d1: int, d2: int) -> None:
    info = conv2d_geometry((1, d1, 8, 8), (d2, d1, f, f), padding=f // 2).info
    assert info.param_count == (f * f * d1 + 1) * d2


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_flops_are_twice_the_macs(groups: int) -> None:
    conv = conv2d_geometry((2, 4, 9, 9), (8, 4 // groups, 3, 3), stride=2, groups=groups).info
    assert conv.macs == 2 * 8 * conv.output_shape[2] * conv.output_shape[3] * (4 // groups) * 9
    assert conv.flops == 2 * conv.macs
    lin = linear_info((3, 2, 5), (10, 7))
    assert lin.macs == 3 * 10 * 7
    assert lin.flops == 2 * lin.macs
    assert lin.param_count == 10 * 7 + 7


CONV_REJECTS = [
    pytest.param({"stride": True}, ParameterError, "stride", id="bool-stride"),
    pytest.param({"stride": 1.0}, ParameterError, "stride", id="float-stride"),
    pytest.param({"stride": 0}, ParameterError, "stride", id="zero-stride"),
    pytest.param({"stride": (1, 0)}, ParameterError, "stride", id="zero-stride-w"),
    pytest.param({"padding": -1}, ParameterError, "padding", id="negative-padding"),
    pytest.param({"padding": (1, 2, 3)}, ParameterError, "padding", id="padding-3-tuple"),
    pytest.param({"padding": "full"}, ParameterError, "padding", id="padding-word"),
    pytest.param({"padding": "same", "stride": 2}, ParameterError, "padding", id="same-stride-2"),
    pytest.param({"dilation": 0}, ParameterError, "dilation", id="zero-dilation"),
    pytest.param({"groups": 3}, ShapeError, "x", id="groups-not-dividing"),
    pytest.param({"groups": 0}, ParameterError, "groups", id="zero-groups"),
]


@pytest.mark.parametrize(("kwargs", "error", "arg"), CONV_REJECTS)
def test_conv_rejects(kwargs: dict[str, Any], error: type, arg: str) -> None:
    with pytest.raises(error) as info:
        conv2d_geometry((1, 4, 8, 8), (4, 4, 3, 3), **kwargs)
    assert info.value.arg == arg


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "groups", "arg"),
    [
        pytest.param((1, 4, 8), (4, 4, 3, 3), 1, "x", id="3d-x"),
        pytest.param((1, 4, 8, 8), (4, 4, 3), 1, "w", id="3d-w"),
        pytest.param((1, 0, 8, 8), (4, 0, 3, 3), 1, "x", id="empty-channels"),
        pytest.param((1, 3, 8, 8), (4, 4, 3, 3), 1, "w", id="channel-mismatch"),
        pytest.param((1, 4, 8, 8), (4, 4, 3, 3), 2, "w", id="group-channel-mismatch"),
        pytest.param((1, 4, 8, 8), (3, 2, 3, 3), 2, "w", id="filters-not-divisible"),
        pytest.param((1, 4, 2, 8), (4, 4, 3, 3), 1, "x", id="kernel-over-input"),
    ],
)
def test_conv_shape_rejects(x_shape: Any, w_shape: Any, groups: int, arg: str) -> None:
    with pytest.raises(ShapeError) as info:
        conv2d_geometry(x_shape, w_shape, groups=groups)
    assert info.value.arg == arg


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        pytest.param({"kernel_size": 3, "padding": 2}, "padding", id="pad-over-half"),
        pytest.param({"kernel_size": (2, 4), "padding": (1, 3)}, "padding", id="pad-over-half-w"),
        pytest.param({"kernel_size": 2, "padding": (0, 0, 0, 0)}, "padding", id="pad-4-tuple"),
        pytest.param({"kernel_size": 2, "mode": "median"}, "mode", id="bad-mode"),
        pytest.param({"kernel_size": 2, "stride": False}, "stride", id="bool-stride"),
        pytest.param({"kernel_size": 2.0}, "kernel_size", id="float-kernel"),
        pytest.param(
            {"kernel_size": 2, "count_include_pad": "yes"}, "count_include_pad", id="str-flag"
        ),
    ],
)
def test_pool_rejects(kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(ParameterError) as info:
        pool2d_geometry((1, 1, 8, 8), **kwargs)
    assert info.value.arg == arg


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "arg"),
    [
        pytest.param((2, 3, 4), (11, 5), "w", id="feature-mismatch"),
        pytest.param((6,), (6, 5), "x", id="1d-x"),
        pytest.param((2, 6), (6,), "w", id="1d-w"),
        pytest.param((2, 0), (0, 5), "x", id="empty-features"),
    ],
)
def test_linear_rejects(x_shape: Any, w_shape: Any, arg: str) -> None:
    with pytest.raises(ShapeError) as info:
        linear_info(x_shape, w_shape)
    assert info.value.arg == arg


def test_remembered_checks_never_take_a_bool_for_an_int() -> None:
    """The checks are remembered by argument (cnncore.geometry._remembered); ``True``
    equals ``1`` and hashes like it, so a remembered ``stride=1`` must not answer for
    ``stride=True``, nor ``(1, 1)`` for ``(1, True)``, nor ``False`` for ``0``; a list is
    checked afresh."""
    x, w = (1, 2, 6, 6), (3, 2, 3, 3)
    good = conv2d_geometry(x, w, stride=1)
    assert conv2d_geometry(x, w, stride=1) is good  # remembered
    assert conv2d_geometry(x, w, stride=[1, 1]) == good  # unhashable: checked, same answer
    for stride in (True, (1, True)):
        with pytest.raises(ParameterError) as err:
            conv2d_geometry(x, w, stride=stride)
        assert err.value.arg == "stride"
    pool2d_geometry(x, kernel_size=2, ceil_mode=False)
    with pytest.raises(ParameterError):
        pool2d_geometry(x, kernel_size=2, ceil_mode=0)  # equal to False, but not a bool
    linear_info((2, 4), (4, 3), bias=True)
    with pytest.raises(ShapeError):
        linear_info((2, 4), (5, 3), bias=True)  # an error is never remembered as an answer
    with pytest.raises(ShapeError):
        linear_info((2, 4), (5, 3), bias=True)
