"""The dataplane's shape-keyed budget memos: the same numbers as computing them afresh,
and an unloaded model is not kept alive by them."""

from __future__ import annotations

import gc
import weakref

import numpy as np

import cnncore
from service.app import open_repository
from service.dataplane import model_budget, network_budget
from service.settings import Settings


def test_model_budget_is_graph_infer_and_holds_the_model_weakly() -> None:
    model = open_repository(Settings()).entry("digits").model
    assert model is not None
    for backward in (False, True):
        info = model.graph.infer((3, 1, 8, 8))
        expected = (
            tuple(info.output_shape),
            info.total_flops,
            info.working_bytes(4, backward=backward),
        )
        assert model_budget(model, (3, 1, 8, 8), 4, backward) == expected
        assert model_budget(model, (3, 1, 8, 8), 4, backward) == expected  # remembered
    ref = weakref.ref(model)
    del model, info
    gc.collect()
    assert ref() is None


def test_network_budget_depends_on_shapes_not_values() -> None:
    w = np.ones((4, 2, 3, 3))
    first = network_budget([cnncore.Conv2d(w, None, padding=1)], (2, 2, 9, 9), 8, True)
    again = network_budget([cnncore.Conv2d(-w, None, padding=1)], (2, 2, 9, 9), 8, True)
    other = network_budget([cnncore.Conv2d(w, None, padding=0)], (2, 2, 9, 9), 8, True)
    assert first == again
    assert first != other
    info = cnncore.network.network_graph([cnncore.Conv2d(w, None, padding=0)]).infer((2, 2, 9, 9))
    assert other == (3 * info.total_flops, info.working_bytes(8, backward=True) + w.nbytes)
