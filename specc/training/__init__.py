"""Training: GraphModule + plan + data -> weights, metrics and a run folder. loop, steps, fastpath (the
loop and its steps), options (a run's options as one value), listeners (who watches a run: progress),
optim, metrics, checkpoint, lrfind, world (this process's place in a run), distributed (data
parallelism), tracking, runfolder, run (the `specc train` pipeline end to end), plot, weights_header."""
