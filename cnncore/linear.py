"""Work in progress (being written this session)."""


def linear_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise NotImplementedError


def linear_backward(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise NotImplementedError
