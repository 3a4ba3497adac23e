"""The JSON Lines row schema shared by every command: builders, reader and writer, identities.

One row is one prediction, measurement, evaluation or published number; a report can mix them.
Common keys: ``schema_version``, ``kind`` (see :data:`KINDS`), ``status`` (ok | failed | oom,
with ``error``), ``model``, ``gpu`` (``cpu`` on a CPU), ``reducer`` (``none`` for the
baseline), ``keep``, ``visual_tokens``. Values carry units in their names (``prefill_time_s``,
``energy_j``, ``flops``...); a value that could not be obtained is ``null`` with
``<name>_unavailable_reason`` beside it. Imports nothing else of this project.
"""

from .identity import identity
from .io import RowError, append_rows, read_rows, repair_tail
from .schema import (KINDS, SCHEMA_VERSION, eval_row, failed_row, graph_timing_row, prediction_rows, profile_row,
                     published_row, reducer_timing_row)

__all__ = ["KINDS", "SCHEMA_VERSION", "RowError", "append_rows", "read_rows", "repair_tail", "identity",
           "prediction_rows", "profile_row", "eval_row", "published_row", "reducer_timing_row", "graph_timing_row",
           "failed_row"]
