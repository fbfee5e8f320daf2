"""``python -m bridge`` is the ``incident-bridge`` command."""

import sys

from bridge.cli import main

sys.exit(main())
