"""``python -m trtserve.deploy``: the container entrypoint's helpers (see :mod:`trtserve.deploy.entrypoint`)."""

import sys

from trtserve.deploy.entrypoint import main

sys.exit(main())
