"""`python -m specc`: the same as the `specc` command."""

import sys

from specc.commands.cli import command

sys.exit(command())
