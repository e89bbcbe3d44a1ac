"""The Python API: specc.load, specc.train, Run and the rest, over the stages the CLI calls."""
