"""Check: syntax tree -> checked spec (specc.language.spec). Resolves names, types, widths and values,
and reports every error it finds at once; one module per block (data, model, train), the values
and calls they share in `values`, the whole file in `driver`."""

from specc.language.check.driver import check
from specc.language.check.values import (
    BLOCKS, COLUMN_TYPES, DATA_SETTINGS, LOSSES, METRICS, OPTIONAL_BLOCKS, RESERVED, SIGNATURES, TRAIN_SETTINGS, Param,
)

__all__ = ["BLOCKS", "COLUMN_TYPES", "DATA_SETTINGS", "LOSSES", "METRICS", "OPTIONAL_BLOCKS", "RESERVED", "SIGNATURES",
           "TRAIN_SETTINGS", "Param", "check"]
