"""``python -m gpusaxs.clients.dashboard`` = ``saxsleash dashboard``."""

import sys

from .cli import main

sys.exit(main())
