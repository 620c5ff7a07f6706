"""Runnable examples that use the service the way a user would.

- :mod:`examples.train_digits`: train a small CNN on scikit-learn's digits with every
  gradient computed by the service (``python -m examples.train_digits``).
- :mod:`examples.saliency`: ask the service for ``grad/x`` of the predicted class and
  draw it beside each digit (``python -m examples.saliency``).

They need the ``examples`` extra: ``pip install '.[examples]'``.
"""
