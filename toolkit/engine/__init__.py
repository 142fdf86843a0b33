"""The training engine shared by pretraining and fine-tuning.

* :mod:`~toolkit.engine.runtime` — device, precision, DDP, seeding (the only module that knows CUDA)
* :mod:`~toolkit.engine.schedules` — optimisers and learning-rate schedules from the config
* :mod:`~toolkit.engine.checkpoint` — atomic, ``weights_only``-loadable checkpoints
* :mod:`~toolkit.engine.logging` — CSV / JSONL / TensorBoard metrics and the loss-curve PNG
* :mod:`~toolkit.engine.loop` — :func:`train`, the one loop, and the :class:`Task` it runs
"""

from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from toolkit.engine.loop import LoopSettings, Task, TrainResult, step_generator, train
from toolkit.engine.runtime import Runtime, setup_runtime, teardown

__all__ = [
    "LoopSettings",
    "Runtime",
    "Task",
    "TrainResult",
    "checkpoint_path",
    "load_checkpoint",
    "save_checkpoint",
    "setup_runtime",
    "step_generator",
    "teardown",
    "train",
]
