"""Run by torchrun from tests/test_distributed.py: the `specc train` pipeline as this rank
(specc.training.run.train_run, rank 0 writing the run folder), then this rank's final weights saved by
this script, not by specc, to WEIGHTS/rank<R>.safetensors, so the test can compare the ranks, and
the names of the threads this process still runs once it has left the process group, to
WEIGHTS/rank<R>.threads.json (Linux's /proc/self/task; an empty list elsewhere).

usage: ddp_worker.py SPEC OUT WEIGHTS [--resume] [--flat]   (--flat: the device step with FlatAdam,
the update the CUDA graph captures)"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from specc.training import distributed
from specc.training.options import RunOptions
from specc.training.run import load_spec, train_run
from specc.training.world import from_env

spec_path, out, weights = sys.argv[1:4]
world = distributed.start(from_env(), "cpu")
try:
    spec, _ = load_spec(spec_path)
    result = train_run(spec, Path(out), RunOptions("cpu", quiet=True, resume="--resume" in sys.argv[4:], world=world,
                                                   device_step="flat" if "--flat" in sys.argv[4:] else False))
finally:
    distributed.finish(world)
save_file({k: v.detach().contiguous() for k, v in result.model.state_dict().items()},
          str(Path(weights) / f"rank{world.rank}.safetensors"))
tasks, names = Path("/proc/self/task"), []
for task in tasks.iterdir() if tasks.is_dir() else ():
    try:
        names.append((task / "comm").read_text().strip())
    except OSError:  # a thread that ended meanwhile
        pass
(Path(weights) / f"rank{world.rank}.threads.json").write_text(json.dumps(names))
