"""Training: GraphModule + plan + data -> weights, metrics and a run folder. loop, steps, fastpath (the
loop and its steps), optim, metrics, checkpoint, lrfind, distributed (data parallelism), tracking,
runfolder, run (the `specc train` pipeline end to end), plot, weights_header."""
