"""examples/saliency.py: the picture is written, readable as a PNG of the stated size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from examples import saliency


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature, that the first chunk is
    an intact IHDR (its CRC) and that the file ends with an IEND chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29])
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_script_writes_the_picture(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "saliency.png"
    saliency.main(["--url", base_url, "--out", str(out)])
    expected = tuple(round(inches * saliency.DPI) for inches in saliency.FIGSIZE)
    assert png_size(out) == expected
    assert capsys.readouterr().out.strip() == f"wrote {out}"


@pytest.mark.parametrize(
    ("y", "predicted", "expected"),
    [
        pytest.param([0, 1, 0, 1, 1], [0, 1, 0, 1, 1], [0, 1], id="all-right"),
        pytest.param([0, 1, 0, 1, 1], [1, 1, 0, 0, 0], [0, 1, 3, 4], id="two-wrong-after-firsts"),
        pytest.param([1, 0, 1], [1, 0, 0], [1, 0, 2], id="class-order"),
    ],
)
def test_pick_takes_one_per_class_then_mistakes(
    y: list[int], predicted: list[int], expected: list[int]
) -> None:
    assert saliency.pick(np.array(y), np.array(predicted)).tolist() == expected
