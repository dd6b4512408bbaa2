"""``python -m trtserve.cli``: the same as the ``trtserve`` command."""

import sys

from trtserve.cli.parser import main

sys.exit(main())
