"""Saliency maps: which pixels the digits model's decision depends on, asked of the service.

    python -m examples.saliency [--url URL] [--api-key KEY] [--model NAME] [--out PNG]

For a dozen held-out digits (the first of each class, then the first two the model
gets wrong) the script asks the served model (``digits``, the default model) for the
gradient of the predicted class's score with respect to the input pixels,
``d out[c] / d x``, over the Open Inference Protocol: ``out_grad = onehot(c)`` in,
``grad/x`` out (``POST /v2/models/digits/infer``, binary tensors). It draws each digit
beside the magnitude of that gradient (Simonyan et al., 2014): bright pixels are those
where a small change moves the score most. Without ``--url`` it starts the service
(which serves its default models) on a free loopback port for the duration. Writes one
PNG (default ``saliency.png``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

from examples.train_digits import LABELS, load_split, service_url
from service.client import Client, ServiceError

COLUMNS = 4  # digit-and-map pairs per row
FIGSIZE = (8.0, 3.6)  # inches; at DPI the picture is 800 × 360 pixels
DPI = 100


def pick(y: np.ndarray, predicted: np.ndarray, wrong: int = 2) -> np.ndarray:
    """Indices of the first sample of each class, then of the first ``wrong`` samples
    misclassified (fewer if there are fewer). ``y``, ``predicted``: (N,) labels."""
    firsts = [int(np.flatnonzero(y == c)[0]) for c in np.unique(y)]
    misses = [int(i) for i in np.flatnonzero(predicted != y) if i not in firsts][:wrong]
    return np.array(firsts + misses)


def predict(client: Client, model: str, x: np.ndarray) -> np.ndarray:
    """The class (N,) the served ``model`` predicts for each of ``x`` (N, 1, 8, 8)."""
    return np.argmax(client.infer(model, x, outputs=["out"])["out"], axis=1)


def saliency(client: Client, model: str, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``|d out[c] / d x|`` (N, 8, 8) of ``x`` (N, 1, 8, 8) for each sample's class ``c``
    in ``classes`` (N,): the served ``model`` backpropagates ``out_grad = onehot(c)``."""
    onehot = np.eye(len(LABELS), dtype=x.dtype)[classes]
    dx = client.infer(model, x, out_grad=onehot, outputs=["grad/x"])["grad/x"]
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
        row, pair = divmod(i, COLUMNS)
        left, right = axes[row, 2 * pair], axes[row, 2 * pair + 1]
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
    parser.add_argument("--api-key", help="for a service that needs one (CNN_API_KEYS)")
    parser.add_argument("--model", default="digits", help="the served model's name (digits)")
    parser.add_argument("--out", type=Path, default=Path("saliency.png"), help="the PNG to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Pick the digits, ask the service for their saliency, write the PNG."""
    args = parse_args(argv)
    data = load_split()
    with service_url(args.url) as url, Client(url, api_key=args.api_key) as client:
        predicted = predict(client, args.model, data.x_test)
        chosen = pick(data.y_test, predicted)
        x, y, predicted = data.x_test[chosen], data.y_test[chosen], predicted[chosen]
        maps = saliency(client, args.model, x, predicted)
    draw(x, y, predicted, maps, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except ServiceError as err:  # a message, not a traceback
        raise SystemExit(f"cnn-service: {err}") from None
