"""``python -m service``: the same as the ``cnn-service`` command."""

from .cli import main

raise SystemExit(main())
