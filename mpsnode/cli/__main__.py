"""``python -m mpsnode.cli``: the same as the ``mpsnode`` command."""

import sys

from mpsnode.cli.main import main

sys.exit(main())
