"""`python -m bot.cli`: the `sesame` command."""

import sys

from bot.cli import main

sys.exit(main())
