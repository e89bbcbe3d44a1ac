"""`python -m specc`: the same as the `specc` command."""

import sys

from specc.commands.cli import main

sys.exit(main())
