"""``python -m gatedrnn``: the ``gatedrnn`` command (also what ``torchrun -m gatedrnn`` runs)."""

import sys

from .cli import main

sys.exit(main())
