"""The learner side of selfcorrect-rl: config, the training loop and the maths of an update."""

import glob as _glob
import logging as _logging
import os as _os

# No GPU device at all (NVIDIA or AMD): engine/runtime/console.py and the filter below treat DeepSpeed's CPU note as benign.
NO_GPU = not (_glob.glob("/dev/nvidia[0-9]*") or _os.path.exists("/dev/kfd"))

# On a machine without a GPU DeepSpeed warns "Setting accelerator to CPU" when it is first imported, before
# engine/runtime/console.py can send the line to train.log: there it is the intended set-up, so it is dropped (the
# console's pattern for it stays for processes that import DeepSpeed another way). With a GPU present the line
# stays: there it says CUDA was not found.
if NO_GPU:
    _logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())
