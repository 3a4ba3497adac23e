"""Analytical roofline cost model of a VLM: FLOPs, bytes moved, memory and time per op.

Specs (GPUs, LLMs, vision encoders, VLM presets) are data files under ``costmodel/data``;
:func:`predict` and :func:`sweep` turn them into baseline-vs-reduced predictions for a number
of kept visual tokens, a reducer's own per-layer schedule and cost, and the decode of a whole
request; :func:`solve_target` and :func:`break_even` ask the other way round.
``Options(compat="llm-viewer")`` reproduces LLM-Viewer exactly; the default mode corrects its
miscounts and adds the vision encoder and projector. Imports nothing else of this project (a
reducer is any object with the methods :mod:`costmodel.schedule` reads).
"""

from .prediction import Cost, OpCost, Prediction, assumptions, predict
from .predict import COMPAT_MODES, QUANTITIES, STAGES, Options, PredictError, Sweep, keep_from_retention, sweep
from .calibrate import Calibration, TimePoint, fit_energy, fit_time, relative_errors, shipped_calibrations
from .energy import EnergyCoefficients, first_guess
from .validation import ValidateError, compare, measured_rows, validate
from .inverse import BreakEven, TargetAnswer, break_even, defined_keeps, solve_target
from .specs import (gpu_for_device_name, GPUSpec, LLMSpec, SpecError, VisionSpec, VLMSpec, gpu_names, load_gpu, load_model,
                    model_names)

__all__ = [
    "COMPAT_MODES", "QUANTITIES", "STAGES", "Cost", "OpCost", "Options", "Prediction", "PredictError",
    "Sweep", "keep_from_retention", "predict", "sweep", "assumptions", "GPUSpec", "LLMSpec", "SpecError", "VisionSpec",
    "VLMSpec", "Calibration", "TimePoint", "fit_energy", "fit_time", "relative_errors", "shipped_calibrations",
    "EnergyCoefficients", "ValidateError", "BreakEven", "TargetAnswer", "break_even", "defined_keeps", "solve_target",
    "compare", "measured_rows", "validate", "first_guess", "gpu_for_device_name", "gpu_names", "load_gpu", "load_model",
    "model_names",
]
