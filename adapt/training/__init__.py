"""Lightning glue: training loops for the adaptation methods and for contrastive pretraining.

The models themselves are plain torch modules defined elsewhere in ``adapt``; this package
only owns loops, optimisers, schedules, devices and loggers.
"""

import logging
import warnings

# Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch pytree API.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)

import lightning.pytorch as _pl  # noqa: E402  # sets its loggers to INFO when first imported

# Lightning's start-up chatter (accelerator availability, product tips) only with `adapt -vv`.
if logging.getLogger("adapt").getEffectiveLevel() > logging.DEBUG:
    for _name in (_pl.__name__, "lightning.fabric"):
        logging.getLogger(_name).setLevel(logging.WARNING)
