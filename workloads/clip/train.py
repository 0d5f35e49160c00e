"""Entry point launched by `accelerate launch` in the rendered job script (see workload.yaml)."""

import sys

from hpcai.train.clip import main

sys.exit(main())
