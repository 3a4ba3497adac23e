"""Profiler: runs LLaVA with each reducer, times each phase, reads GPU energy through NVML,
and validates the cost model's predictions. Also holds the JSON Lines row schema that every
command writes (`profiler.rows`). Imports reducers and costmodel, never reports.
"""
