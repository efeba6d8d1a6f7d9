"""``python -m steward_proxy`` runs the ``steward`` command line."""

import sys

from steward_proxy.cli import main

sys.exit(main())
