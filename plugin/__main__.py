"""``python -m unigap ...`` (also ``torchrun --nproc_per_node K -m unigap selfplay CONFIG.yaml``)."""

import sys

from .cli import main

sys.exit(main())
