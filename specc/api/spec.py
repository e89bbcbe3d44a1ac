"""The API's first stage: a spec file or string and overrides -> a checked Spec (specc.load), and
what `specc check` and `specc show` make of it (a Report, a stage's text). `specc check` and
`specc show` call these; no torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from specc.language.diagnostics import DataError, Diagnostic, SpecError, UsageError

STRING_NAME = "<string>"  # how diagnostics name a spec given as text
STAGES = ("ast", "code", "plan", "data")


def set_text(key: str, value) -> str:
    """One override as the command line writes it after --set: `key=value`. A str is spec text as
    typed after `--set key=` (`"adam(wd=0.1)"`, `'"other.csv"'` for a string); numbers, booleans,
    paths, tuples and lists are written as the spec writes them."""
    if not isinstance(key, str):
        raise UsageError(f"overrides: keys are strings such as 'data.batch', found {key!r}")
    return f"{key}={_literal(key, value)}"


def _literal(key: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # inf and nan have no literal in the language: written as Python spells them, the checker
        # refuses them at the --set as it refuses `--set key=inf`
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_literal(key, v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    raise UsageError(f"overrides[{key!r}]: expected a number, a bool, a string of spec text, a path, a tuple or a "
                     f"list, found {type(value).__name__}")


def override_list(overrides) -> list[str]:
    """A dict of overrides as --set texts in its order; a list or tuple of `key=value` texts as given."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [set_text(k, v) for k, v in overrides.items()]
    if isinstance(overrides, (list, tuple)) and all(isinstance(s, str) for s in overrides):
        return list(overrides)
    raise UsageError(f"overrides: expected a dict such as {{'n_factors': 80}}, found {type(overrides).__name__}")


def _is_path(given) -> bool:
    """A Path, or a str with no line break or brace that names a file or ends .spec; else spec text."""
    if isinstance(given, Path):
        return True
    if not isinstance(given, str):
        raise UsageError(f"expected a spec's path or text, found {type(given).__name__}")
    return "\n" not in given and "{" not in given and (given.endswith(".spec") or Path(given).is_file())


@dataclass(frozen=True)
class Spec:
    """A checked spec: its text (`.text`), where it came from (`.path`, None for a string), the
    overrides it was checked with (as --set texts), the warnings the check gave, and the checked
    value every stage reads (`.checked`)."""

    checked: object = field(repr=False)  # specc.language.spec.Spec
    sets: tuple[str, ...]
    warnings: tuple[Diagnostic, ...]
    path: Path | None
    name: str

    @property
    def text(self) -> str:
        return self.checked.source.text

    def check(self, data: bool = True) -> Report:
        """What `specc check` says: the summary (reading the data unless `data` is False), or the data's error."""
        return _report(self, data)

    def show(self, stage: str = "code") -> str:
        """What `specc show --stage STAGE` prints: ast, code, plan or data."""
        return stage_text(self, stage)[0]

    def plot_schedule(self):
        """The learning rate and momentum of every group at every step (`specc show --stage plan --png`), a figure."""
        from specc.data.prepare import prepare
        from specc.model.plan import make_plan
        from specc.training.optim import simulate_schedules
        from specc.training.plot import schedule_figure

        spec = self.checked
        plan = make_plan(spec, prepare(spec.data, spec.model.inputs))
        from specc.api.display import shown

        return shown(schedule_figure(plan, simulate_schedules(spec, plan, max_steps=20_000), f"{spec.name}: the plan"))

    def _repr_html_(self) -> str:
        from specc.api.display import diagnostics_html, pre_html

        return (f"<b>spec {self.name}</b>" + (f" ({len(self.sets)} overrides)" if self.sets else "")
                + diagnostics_html(self.warnings) + pre_html(self.text))


def load(path_or_text, overrides=None, name: str | None = None) -> Spec:
    """A checked spec from a file or from spec text, with `overrides` ({key: value}, as --set key=value)
    applied; SpecError with every diagnostic (positions name the file, or `name`, `<string>` by default)."""
    sets = override_list(overrides)
    if name is not None and not isinstance(name, str):
        raise UsageError(f"name: expected a str such as 'ratings.spec', found {type(name).__name__}")
    from specc.language.parse import read_source, text_source
    from specc.training.run import load_source

    if _is_path(path_or_text):
        path = Path(path_or_text)
        if not path.is_file():
            raise UsageError(f"{path}: {'not a regular file' if path.exists() else 'no such spec file'}")
        source = read_source(path)
        checked, warnings = load_source(source, sets, path.resolve().parent)
    else:
        path = None
        source = text_source(name or STRING_NAME, path_or_text)
        checked, warnings = load_source(source, sets)  # its paths relative to the working folder
        # the name runs/<name>/ and the exported model take: `name`'s stem, but "spec" for a bracketed
        # name such as <string> or <cell>, which names a text rather than a file
        stem = Path(name).stem if name else ""
        checked = dataclasses.replace(checked, name=stem if stem and not stem.startswith("<") else "spec")
    return Spec(checked, tuple(sets), tuple(warnings), path, checked.name)


@dataclass(frozen=True)
class Report:
    """What `specc check` found: `ok`, the diagnostics (errors and warnings: code, message, line,
    column, notes), a data error where the data did not read, and the summary it prints when ok."""

    ok: bool
    diagnostics: tuple[Diagnostic, ...]
    summary: str | None = None
    data_error: DataError | None = None

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def render(self) -> str:
        """What `specc check` prints: the diagnostics (on stderr), then the summary or the data error."""
        parts = [d.render() for d in self.diagnostics]
        parts += [self.data_error.render()] if self.data_error is not None else []
        parts += [self.summary] if self.summary is not None else []
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()

    def _repr_html_(self) -> str:
        from specc.api.display import diagnostics_html, message_html, pre_html

        head = '<b style="color: #1e8449">ok</b>' if self.ok else '<b style="color: #c0392b">failed</b>'
        return (f'<div class="specc-report">{head}{diagnostics_html(self.diagnostics)}'
                + (message_html(self.data_error.render()) if self.data_error is not None else "")
                + (pre_html(self.summary) if self.summary is not None else "") + "</div>")


def check(path_or_text, overrides=None, name: str | None = None, data: bool = True) -> Report:
    """`specc check` as a value: a Report, never an exception for a mistake in the spec or its data."""
    try:
        spec = load(path_or_text, overrides, name)
    except SpecError as err:
        return Report(False, err.diagnostics)
    return spec.check(data)


def _report(spec: Spec, data: bool) -> Report:
    from specc.language.summary import summary

    try:
        text = summary(spec.checked, read_data=data)
    except SpecError as err:
        return Report(False, spec.warnings + err.diagnostics)
    except DataError as err:
        return Report(False, spec.warnings, data_error=err)
    return Report(True, spec.warnings, text)


def stage_text(spec: Spec, stage: str, png=False) -> tuple[str, bytes | None]:
    """`specc show --stage STAGE`'s text, and with `png` (true, or the path it will be written to, which the
    text names) its picture (image samples, the schedule)."""
    if stage not in STAGES:
        raise UsageError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
    checked = spec.checked
    if stage == "ast":
        from specc.language import ast, overrides
        from specc.language.parse import parse

        tree, _ = overrides.apply(parse(checked.source), list(spec.sets))  # checked: it applies
        return ast.dump(tree), None
    if stage == "data":
        from specc.data.preview import preview

        return preview(checked, png or None)
    from specc.data.prepare import prepare

    prepared = prepare(checked.data, checked.model.inputs)
    if stage == "code":
        from specc.model.lower import lower
        from specc.model.sized import sized_model

        # The data decides embedding sizes in blocks such as tabular(...) and the procs' constants.
        return lower(sized_model(checked, prepared), prepared.stats, tables=prepared.tables).code.strip("\n"), None
    from specc.language.summary import describe
    from specc.model.plan import make_plan
    from specc.training.optim import simulate_schedules
    from specc.training.plot import schedule_png

    plan = make_plan(checked, prepared)
    picture = schedule_png(plan, simulate_schedules(checked, plan, max_steps=20_000),
                           f"{checked.name}: the plan") if png else None
    return describe(checked, plan), picture
