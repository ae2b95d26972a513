"""Step-time prediction: model ops x GPU profile x parallelism x batch -> time with a per-op breakdown."""

from kvsim.perf.batchspec import parse_batch_spec
from kvsim.perf.ops import OP_NAMES, BatchSums, OpWork, op_work
from kvsim.perf.predictor import Deployment, StepTime, StepTimePredictor, validate_batch

__all__ = [
    "OP_NAMES",
    "BatchSums",
    "Deployment",
    "OpWork",
    "StepTime",
    "StepTimePredictor",
    "op_work",
    "parse_batch_spec",
    "validate_batch",
]
