"""The array checks, now in :mod:`cnncore.checks` (this module re-exports them)."""

from .checks import FLOAT_DTYPES, as_float_array, check_bias, check_dout, common_dtype

__all__ = ["FLOAT_DTYPES", "as_float_array", "check_bias", "check_dout", "common_dtype"]
