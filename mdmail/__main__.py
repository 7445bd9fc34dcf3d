"""python -m mdmail runs the mdmail command."""

import sys

from mdmail.cli import main

sys.exit(main())
