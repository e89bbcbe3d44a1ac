"""Run a specc command under an audit hook and print, as JSON, the files it opened for reading and
for writing, the renames, and any unpickling. Used by tests/test_security.py."""

import json
import os
import sys

events = {"read": set(), "write": set(), "rename": set(), "unpickle": [], "exec": []}


def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writing = any(c in (mode or "") for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        events["write" if writing else "read"].add(os.path.abspath(path))
    elif event in ("os.rename", "os.replace"):
        events["rename"].add(os.path.abspath(os.fsdecode(args[1])))
    elif event == "pickle.find_class":
        events["unpickle"].append(f"{args[0]}.{args[1]}")
    elif event in ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn"):
        events["exec"].append(repr(args)[:200])


sys.addaudithook(hook)
from specc.commands.cli import main  # noqa: E402

code = main(sys.argv[1:])
print(json.dumps({"code": code, **{k: sorted(v) if isinstance(v, set) else v for k, v in events.items()}}))
