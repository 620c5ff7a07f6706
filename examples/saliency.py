"""Saliency maps: which pixels the digits model's decision depends on, asked of the service.

    python -m examples.saliency [--url URL] [--model FILE] [--out PNG]

For a dozen held-out digits (the first of each class, then the first two the model
gets wrong) the script asks the service for the gradient of the predicted class's
score with respect to the input pixels, ``d out[c] / d x``, by sending
``dout = onehot(c)`` to ``/v1/network/backward``, and draws each digit beside the
magnitude of that gradient (Simonyan et al., 2014). Bright pixels are those where a
small change moves the score most. Without ``--url`` it starts the service on a free
loopback port for the duration. Writes one PNG (default ``saliency.png``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

from examples.train_digits import LABELS, layers, load_split, read_model, service_url
from service.client import Client

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "service/default_models/digits/model.json"
COLUMNS = 4  # digit-and-map pairs per row
FIGSIZE = (8.0, 3.6)  # inches; at DPI the picture is 800 × 360 pixels
DPI = 100


def pick(y: np.ndarray, predicted: np.ndarray, wrong: int = 2) -> np.ndarray:
    """Indices of the first sample of each class, then of the first ``wrong`` samples
    misclassified (fewer if there are fewer). ``y``, ``predicted``: (N,) labels."""
    firsts = [int(np.flatnonzero(y == c)[0]) for c in np.unique(y)]
    misses = [int(i) for i in np.flatnonzero(predicted != y) if i not in firsts][:wrong]
    return np.array(firsts + misses)


def predict(client: Client, net: list[dict[str, Any]], x: np.ndarray) -> np.ndarray:
    """The class (N,) the network ``net`` (wire layers) predicts for each of ``x`` (N, 1, 8, 8)."""
    return np.argmax(client.network_forward(x, net)["out"], axis=1)


def saliency(
    client: Client, net: list[dict[str, Any]], x: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """``|d out[c] / d x|`` (N, 8, 8) of ``x`` (N, 1, 8, 8) for each sample's class ``c``
    in ``classes`` (N,): the service backpropagates ``dout = onehot(c)``."""
    onehot = np.eye(len(LABELS), dtype=x.dtype)[classes]
    dx: np.ndarray = client.network_backward(x, net, dout=onehot)["dx"]
    return np.abs(dx[:, 0])


def draw(x: np.ndarray, y: np.ndarray, predicted: np.ndarray, maps: np.ndarray, out: Path) -> None:
    """Write the picture: each digit ``x`` (N, 1, 8, 8) with its label ``y`` and
    prediction, beside its gradient magnitude ``maps`` (N, 8, 8) scaled to its own maximum."""
    rows = -(-len(x) // COLUMNS)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 2 * COLUMNS, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(len(x)):
        left, right = (
            axes[i // COLUMNS, 2 * (i % COLUMNS)],
            axes[i // COLUMNS, 2 * (i % COLUMNS) + 1],
        )
        left.imshow(x[i, 0], cmap="gray_r", vmin=0, vmax=1)
        verdict = "" if predicted[i] == y[i] else " ✗"
        left.set_title(f"{LABELS[y[i]]} → {LABELS[predicted[i]]}{verdict}", fontsize=9)
        right.imshow(maps[i] / max(float(maps[i].max()), 1e-12), cmap="inferno", vmin=0, vmax=1)
        right.set_title("|∂score/∂x|", fontsize=9)
    fig.suptitle("digits: label → prediction, and |gradient| of the predicted score", fontsize=10)
    fig.savefig(out, dpi=DPI)  # Agg, the default canvas of a bare Figure


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.saliency",
        description="Draw saliency maps of the digits model, with gradients from cnn-service.",
    )
    parser.add_argument("--url", help="a running service (default: start one on a free port)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="digits model.json")
    parser.add_argument("--out", type=Path, default=Path("saliency.png"), help="the PNG to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Pick the digits, ask the service for their saliency, write the PNG."""
    args = parse_args(argv)
    data = load_split()
    net = layers(read_model(args.model))
    with service_url(args.url) as url, Client(url) as client:
        chosen = pick(data.y_test, predict(client, net, data.x_test))
        x, y = data.x_test[chosen], data.y_test[chosen]
        predicted = predict(client, net, x)
        maps = saliency(client, net, x, predicted)
    draw(x, y, predicted, maps, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
