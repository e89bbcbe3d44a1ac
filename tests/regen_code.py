"""Regenerate the golden generated code: tests/data/golden/<spec>.code for every specs/*.spec.

    python tests/regen_code.py

Then read the diff: a golden file is a claim that the lowering is right."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def generated_code(spec_path: Path) -> str:
    from specc.data.prepare import prepare
    from specc.model.lower import lower
    from specc.model.sized import sized_model
    from specc.training.run import load_spec

    spec, _ = load_spec(spec_path)
    prepared = prepare(spec.data, spec.model.inputs)
    return lower(sized_model(spec, prepared), prepared.stats, tables=prepared.tables).code.strip("\n") + "\n"


def main() -> int:
    for spec in sorted((ROOT / "specs").glob("*.spec")):
        target = ROOT / "tests" / "data" / "golden" / f"{spec.stem}.code"
        target.write_text(generated_code(spec))
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
