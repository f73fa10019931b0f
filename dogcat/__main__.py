"""`python -m dogcat` is the `dogcat` command."""

import sys

try:  # Ctrl-C while the command line module loads: one line and 130, as anywhere later
    from dogcat.cli import run
except KeyboardInterrupt:
    print("dogcat: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

run()
