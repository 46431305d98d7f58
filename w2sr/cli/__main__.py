"""``python -m w2sr.cli``: the same as the ``w2sr`` command."""
import sys

from w2sr.cli import main

sys.exit(main())
