"""``python -m connscan``: the same as the ``connscan`` command."""
import sys

from connscan.cli import main

sys.exit(main())
