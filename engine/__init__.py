"""The learner side of selfcorrect-rl: config, the training loop and the maths of an update."""

import logging as _logging

# On a machine without a GPU DeepSpeed warns "Setting accelerator to CPU" when it is first imported, before
# engine/console.py can send the line to train.log: on a CPU machine that is the intended set-up, so it is
# dropped here (the console's pattern for it stays for processes that import DeepSpeed another way).
_logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())
