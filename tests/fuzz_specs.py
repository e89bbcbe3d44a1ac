"""Mutation fuzzing of parse and check: every mutated example spec must either check or fail with
SpecError diagnostics at valid positions. Never a Python exception of any other kind.

    python tests/fuzz_specs.py --count 10000 [--seed 1]      # the long run, by hand

tests/test_fuzz.py runs the same mutations through hypothesis for a few hundred cases in CI."""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specc.language import overrides  # noqa: E402
from specc.language.check import check  # noqa: E402
from specc.language.diagnostics import SpecError  # noqa: E402
from specc.language.parse import parse  # noqa: E402
from specc.language.source import Source  # noqa: E402

TOKENS = ["{", "}", "(", ")", "[", "]", ",", "=", ":", ";", "|>", "+", "-", "*", "/", '"', "#", "\n", "\t",
          "data", "model", "train", "embedding", "linear", "relu", "classes", "out", "1e-3", "0", "-1", "1.5",
          "true", "false", "x", "é", "\u2212", "\x00", "'", "fit", "fit_one_cycle", "csv", "npz", "tabular",
          "params", "n_factors", "params { n = 3 }\n", "1e400", "9" * 400, "conv2d(4, 3)", "max_pool(2)",
          "reshape((1, 28, 28))", "|> reshape((4, 14, 14))", "resnet(layers=[1])", "global_avg_pool", "padding=same",
          "stride=2", "leaky_relu(0.1)", "layer_norm",
          # recommenders: implicit feedback, ranking metrics, the splits they use
          "implicit(user, item)", "negatives=0", "top_k=", "sampling=popularity", "rating=rating, threshold=4",
          "bpr", "sampled_bce", "ndcg(10)", "map(0)", "recall", "per_user(0.2)", "leave_last(1, by=timestamp)",
          'file("u1.test")', "monitor=ndcg(10)", "rated: history(user, item)", "embedding_bag(rated, 4, mode=sqrtn)",
          "history(item, user)", "mode=sum",
          # set columns and float vectors of several columns
          'tags: categories(sep="|")', "categories", "categories(max_size=2)", 'sep=","', 'sep="||"',
          "embedding_bag(tags, 4)", "embedding(tags, 4)", "float(columns=[user, item])", "columns=[]",
          "genres: float(columns=[a, b])", "float(columns=[rating])",
          # near the nesting bound (E306: 200 levels), so that one insertion or two cross it
          " |> relu" * 150, "-" * 150, "(" * 150, "[" * 150, "relu(" * 150, " + 1" * 150, ")" * 150]


def examples() -> list[tuple[str, str]]:
    """The example specs, and the language reference's examples of set columns and float vectors of several
    columns (which no spec of specs/ has), to mutate."""
    docs = re.findall(r"```spec\n(.*?)```", (ROOT / "docs" / "language.md").read_text(), re.S)
    sets = [(f"language.md-{k}", text) for k, text in enumerate(docs) if "categories(" in text]
    return [(p.name, p.read_text()) for p in sorted((ROOT / "specs").glob("*.spec"))] + sets


def mutate(text: str, rng: random.Random) -> str:
    """One to three edits: delete, duplicate or swap characters, tokens or lines; insert tokens."""
    for _ in range(rng.randint(1, 3)):
        if not text:
            text = rng.choice(TOKENS)
            continue
        op = rng.randrange(8)
        i = rng.randrange(len(text))
        j = min(len(text), i + rng.randint(1, 12))
        lines = text.split("\n")
        k = rng.randrange(len(lines))
        if op == 0:
            text = text[:i] + text[i + 1:]
        elif op == 1:
            text = text[:i] + text[i:j] + text[i:]
        elif op == 2 and j > i + 1:
            text = text[:i] + text[j - 1] + text[i + 1:j - 1] + text[i] + text[j:]
        elif op == 3:
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif op == 4:
            text = text[:i] + text[j:]
        elif op == 5:
            lines.insert(k, lines[rng.randrange(len(lines))])
            text = "\n".join(lines)
        elif op == 6:
            del lines[k]
            text = "\n".join(lines)
        else:
            m = rng.randrange(len(lines))
            lines[k], lines[m] = lines[m], lines[k]
            text = "\n".join(lines)
    return text


def check_one(name: str, text: str) -> str:
    """'ok' or 'error'; raises AssertionError if the outcome breaks the contract."""
    source = Source(name, text)
    try:
        tree = parse(source)
        tree, errors = overrides.apply(tree, [])
        check(tree, {name: ROOT / "specs"})
        return "ok"
    except SpecError as err:
        assert err.diagnostics, "SpecError without diagnostics"
        for d in err.diagnostics:
            assert d.span is not None, f"no position: {d.message}"
            span = d.span
            assert 0 <= span.start <= span.end <= len(span.source.text), f"span out of range: {d.message}"
            assert span.line >= 1 and span.column >= 1
            d.render()  # rendering must not fail either
        return "error"


def run(count: int, seed: int, report_every: int = 0) -> dict:
    rng = random.Random(seed)
    specs = examples()
    outcomes = {"ok": 0, "error": 0}
    start = time.perf_counter()
    for n in range(count):
        name, text = rng.choice(specs)
        mutated = mutate(text, rng)
        try:
            outcomes[check_one(name, mutated)] += 1
        except Exception as exc:  # anything else breaks the contract: show how to reproduce it
            print(f"case {n} (seed {seed}) from {name} broke the contract: {type(exc).__name__}: {exc}")
            print(repr(mutated))
            raise
        if report_every and (n + 1) % report_every == 0:
            print(f"{n + 1} cases, {time.perf_counter() - start:.0f} s: {outcomes}", flush=True)
    outcomes["seconds"] = round(time.perf_counter() - start, 1)
    return outcomes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    result = run(args.count, args.seed, report_every=max(1, args.count // 10))
    print(f"{args.count} mutated specs: {result['ok']} checked, {result['error']} rejected with diagnostics, "
          f"0 broke the contract ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
