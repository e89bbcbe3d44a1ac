"""Commands: the command line -> the stages. cli (the `specc` command: every subcommand, its arguments
and exit codes), tune and tune_storage (`specc tune`: Optuna over the search block, and its study)."""
