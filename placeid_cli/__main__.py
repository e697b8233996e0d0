"""``python -m placeid_cli``: the ``placeid`` command."""

import sys

from placeid_cli.main import main

sys.exit(main())
