"""``python3 -m dockermirror.cli``, as well as the console script."""

import sys

from dockermirror.cli import main

sys.exit(main())
