"""GPU calibration: microbenchmarks that measure a GPU into kvsim's tables, and the profile installer.

``kvsim calibrate`` drives this package. The torch-free parts (table schemas, writer and reader, the task
plan and budget, shapes, the installer) import cheaply; the benchmark modules import torch (and the
kernels module triton) and are loaded only when a run starts.
"""

from kvsim.calibrate.plan import FAMILIES, TASKS, Task, select_tasks
from kvsim.calibrate.tables import SCHEMAS, TableWriter, read_meta, read_table, read_tables, write_table

__all__ = [
    "FAMILIES",
    "SCHEMAS",
    "TASKS",
    "TableWriter",
    "Task",
    "read_meta",
    "read_table",
    "read_tables",
    "select_tasks",
    "write_table",
]
