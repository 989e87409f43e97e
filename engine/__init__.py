"""The learner side of selfcorrect-rl: config, the training loop and the maths of an update."""

import logging as _logging

from engine.console import NO_GPU as _NO_GPU  # a small module: no torch

# On a machine without a GPU DeepSpeed warns "Setting accelerator to CPU" when it is first imported, before
# engine/console.py can send the line to train.log: there it is the intended set-up, so it is dropped (the
# console's pattern for it stays for processes that import DeepSpeed another way). With a GPU present the line
# stays: there it says CUDA was not found.
if _NO_GPU:
    _logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())
