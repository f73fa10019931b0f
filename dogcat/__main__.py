"""`python -m dogcat` is the `dogcat` command."""

import sys

from dogcat.cli import main

sys.exit(main())
