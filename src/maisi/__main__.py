"""``python -m maisi`` runs the command line (also under ``torchrun -m maisi``)."""

from __future__ import annotations

import sys

from maisi.cli import console_main

sys.exit(console_main())
