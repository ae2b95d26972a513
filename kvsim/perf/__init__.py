"""Step-time prediction: model ops x GPU profile x parallelism x batch -> time with a per-op breakdown."""

from kvsim.perf.batchspec import parse_batch_spec
from kvsim.perf.copies import HostCopyModel
from kvsim.perf.cuda_graph import cuda_graph_batch_sizes, default_cuda_graph_max_bs, padded_batch_size
from kvsim.perf.ops import OP_NAMES, BatchSums, OpWork, op_work
from kvsim.perf.predictor import OP_FAMILY, Deployment, StepTime, StepTimePredictor, validate_batch

__all__ = [
    "OP_FAMILY",
    "OP_NAMES",
    "BatchSums",
    "Deployment",
    "HostCopyModel",
    "OpWork",
    "StepTime",
    "StepTimePredictor",
    "cuda_graph_batch_sizes",
    "default_cuda_graph_max_bs",
    "op_work",
    "padded_batch_size",
    "parse_batch_spec",
    "validate_batch",
]
