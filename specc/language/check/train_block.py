"""Check the train block: its syntax tree, the checked data and model -> TrainSpec (specc.language.spec): the
loss and metrics, the optimizer, the fit or the stages (freeze, fit, early_stop)."""

from __future__ import annotations

from specc.data.splits import validates
from specc.language import ast, codes
from specc.language.check.values import (
    LOSSES, METRICS, PRECISIONS, SIGNATURES, TRAIN_SETTINGS, Checker, Param, bind_args, constant, fmt, kind_of,
    shape_text, shown,
)
from specc.language.diagnostics import suggest
from specc.language.source import Span
from specc.language.spec import (
    CLASSES, FLOAT, IMPLICIT, DataSpec, EarlyStop, Fit, FitOneCycle, LRFind, LRSlice, ModelSpec, Optimizer, Stage, TrainSpec,
)
from specc.training import optimizers
from specc.training.losses import SETS, metric_key

_CALLS = tuple(SIGNATURES["fit"]) + tuple(SIGNATURES["stage"])
_CUTOFF = (Param("k"),)  # a ranking metric's one argument: ndcg(10)


def check_train(c: Checker, block: ast.Block, data: DataSpec | None, model: ModelSpec | None) -> TrainSpec | None:
    """The train block's settings and its stages (one, named 'train', without `stage` sections)."""
    settings = c.settings(block, TRAIN_SETTINGS, calls=_CALLS, sections=("stage",))
    found = settings.found
    sections = [s for s in settings.statements if isinstance(s, ast.Section)]
    fits = _calls_of(settings.statements, SIGNATURES["fit"])
    stops = _calls_of(settings.statements, ("early_stop",))
    target_kind = data.target.kind if data is not None else None
    loss = None
    if "loss" not in found:
        c.error(codes.MISSING, "the train block has no 'loss'", block.name.span, ["e.g. loss = mse"])
    else:
        loss = _loss_name(c, found["loss"].value, LOSSES, "loss", target_kind)
    metrics = _metrics(c, found["metrics"].value, target_kind) if "metrics" in found else []
    optimizer = _optimizer(c, found["optimizer"].value) if "optimizer" in found else optimizers.make(optimizers.DEFAULT)
    seed = c.integer(found["seed"].value, "seed") if "seed" in found else 0
    l2 = c.real(found["l2"].value, "l2", 0.0) if "l2" in found else 0.0
    stop_on_nan = c.boolean(found["stop_on_nan"].value, "stop_on_nan") if "stop_on_nan" in found else True
    precision = _precision(c, found["precision"].value) if "precision" in found else "fp32"
    groups = model.groups if model is not None else None
    monitors = _monitors(c, data, metrics, found.get("metrics"))
    stages: list = []
    if sections:
        for extra in fits + stops:
            c.error(codes.MISPLACED_STATEMENT, "with stages, fit and early_stop go inside a stage", extra.span)
        names: set[str] = set()
        for section in sections:
            if section.name.id in names:
                c.error(codes.DEFINED_TWICE, f"stage '{section.name.id}' is defined twice", section.name.span)
            names.add(section.name.id)
            stages.append(_stage(c, block, section.name.id, section.body, section.kind.span, groups, monitors))
    else:
        if not fits and not settings.unknown_call:
            c.error(codes.MISSING, "the train block has no fit statement", block.name.span,
                    ["e.g. fit_one_cycle(epochs=5, lr=5e-3)"])
        for extra in fits[1:]:
            c.error(codes.DEFINED_TWICE, "a train block has one fit statement", extra.span,
                    [f"the first is at line {fits[0].span.line}; several fits are stages: "
                     "stage NAME { ... }"])
        if fits:
            stop = _early_stop(c, stops, monitors)
            fit = _fit(c, fits[0].call)
            stages.append(None if fit is None or stop is False else Stage("train", fit, (), stop))
    if model is not None and data is not None and loss is not None:
        if data.feedback is None or data.per_user == (LOSSES[loss].compares == SETS):  # else _ranks says which
            _output_fits(c, model.node(model.output), data.target, loss)
        if data.feedback is not None:
            _ranks(c, model, data, loss, found["loss"].value.span)
    if model is not None and optimizer is not None:
        _fits_in_memory(c, model, optimizer)
    if c.errors or None in (loss, optimizer, seed, l2, stop_on_nan, precision) or not stages or None in stages:
        return None
    return TrainSpec(loss, tuple(metrics), optimizer, tuple(stages), seed, l2, stop_on_nan, precision)


def _monitors(c: Checker, data: DataSpec | None, metrics: list[str], line: ast.Assign | None) -> tuple[str, ...]:
    """What early_stop may watch: valid_loss and the metrics; nothing with `valid = none`, where the
    metrics are kept (the exported model names them for `specc evaluate`) with a warning."""
    if data is None or validates(data.valid):
        return ("valid_loss", *metrics)
    if metrics:
        c.warn(codes.UNSCORED_METRICS, "metrics are not computed while training: `valid = none` keeps no "
               "validation rows", line.value.span,
               ["the exported model names them, and `specc evaluate MODEL FILE` computes them on a file of other "
                "rows; remove them, or name a split in the data block (valid = random(0.2)), to see them each epoch"])
    return ()


def _precision(c: Checker, expr: ast.Expr) -> str | None:
    """fp32 or bf16."""
    if isinstance(expr, ast.Name) and expr.id in PRECISIONS:
        return expr.id
    name = expr.id if isinstance(expr, ast.Name) else None
    if name in ("fp16", "float16", "half"):
        notes = ["fp16 needs the loss scaled to keep small gradients from vanishing, which specc does not do; "
                 "bf16 has float32's range and needs none"]
    else:
        notes = (suggest(name, PRECISIONS) if name else None) or ["fp32: float32 throughout; bf16: the forward "
                                                                  "pass in bfloat16, weights in float32"]
    c.error(codes.WRONG_KIND, f"precision: expected fp32 or bf16, found {shown(expr)}", expr.span, notes)
    return None


def _calls_of(statements, names) -> list[ast.CallStmt]:
    return [s for s in statements if isinstance(s, ast.CallStmt) and s.call.func.id in names]


def _metrics(c: Checker, expr: ast.Expr, target_kind: str | None) -> list[str]:
    items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
    metrics: list[str] = []
    for item in items:
        metric = _metric(c, item, target_kind)
        if metric is not None and metric in metrics:
            c.error(codes.DEFINED_TWICE, f"metric '{metric}' is listed twice", item.span)
        elif metric is not None:
            metrics.append(metric)
    return metrics


def _metric(c: Checker, expr: ast.Expr, target_kind: str | None) -> str | None:
    """A metric by name (`rmse`), or a ranking metric with its cutoff (`ndcg(10)`, `ndcg(k=10)`), as its
    name in tables (`ndcg@10`)."""
    cut = isinstance(expr, ast.Call) and (expr.args or expr.keywords)
    name = _loss_name(c, expr.func if cut else expr, METRICS, "metric", target_kind)
    if name is None:
        return None
    if not METRICS[name].cutoff:
        if cut:
            c.error(codes.BAD_ARGUMENTS, f"metric '{name}' takes no arguments", expr.span)
            return None
        return name
    if not cut:
        c.error(codes.BAD_ARGUMENTS, f"metric '{name}' ranks the top k items: give k", expr.span,
                [f"e.g. {name}(10)"])
        return None
    if not c.args_ok(expr, _CUTOFF):
        return None
    k = c.integer(bind_args(expr, _CUTOFF)["k"], f"{name}'s k", low=1, high=10000)
    return None if k is None else metric_key(name, k)


def _fits_in_memory(c: Checker, model: ModelSpec, optimizer) -> None:
    """Before the data is read, the layers between known widths already give a lower bound."""
    from specc.model.plan import memory_error
    from specc.model.sized import known_params

    known = known_params(model)
    too_big = memory_error(model, optimizer, known, lower_bound=True)
    if too_big is not None:
        c.errors.append(too_big)


def _stage(c: Checker, block: ast.Block, name: str, body, span: Span, groups, monitors):
    """One `stage NAME { ... }`: freeze / unfreeze, one fit statement, an optional early_stop."""
    commands = [s for s in body if isinstance(s, ast.Command)]
    rest = [s for s in body if not isinstance(s, ast.Command)]
    statements = c.settings(block, (), calls=_CALLS, body=rest).statements
    fits = _calls_of(statements, SIGNATURES["fit"])
    stops = _calls_of(statements, ("early_stop",))
    frozen = _frozen(c, commands, groups)
    if groups is not None and frozen and set(frozen) >= set(groups):
        c.error(codes.CONFLICT, f"stage '{name}' freezes every group: nothing would train", span)
    if not fits:
        c.error(codes.MISSING, f"stage '{name}' has no fit statement", span, ["e.g. fit_one_cycle(epochs=1, lr=1e-3)"])
        return None
    for extra in fits[1:]:
        c.error(codes.DEFINED_TWICE, "a stage has one fit statement", extra.span, ["give each fit a stage of its own"])
    stop = _early_stop(c, stops, monitors)
    fit = _fit(c, fits[0].call)
    if fit is None or stop is False:
        return None
    return Stage(name, fit, tuple(frozen), stop)


def _frozen(c: Checker, commands: list[ast.Command], groups) -> list[str]:
    """The groups a stage's freeze and unfreeze lines leave frozen, in order."""
    frozen: list[str] = []
    for command in commands:
        word = command.name.id
        if word not in ("freeze", "unfreeze"):
            c.error(codes.UNKNOWN_SETTING, f"unknown statement '{word}' in a stage", command.name.span,
                    suggest(word, ("freeze", "unfreeze")) or ["a stage holds freeze, unfreeze and a fit"])
            continue
        if word == "freeze" and not command.args:
            c.error(codes.BAD_ARGUMENTS, "freeze needs the groups to freeze", command.span, ["e.g. freeze body"])
        for arg in command.args:
            if not isinstance(arg, ast.Name):
                c.error(codes.WRONG_KIND, f"{word}: expected a group name", arg.span)
            elif groups is not None and arg.id not in groups:
                c.error(codes.UNKNOWN_NAME, f"unknown group '{arg.id}'", arg.span,
                        suggest(arg.id, groups) or [f"the groups are {', '.join(groups)}"])
            elif word == "freeze":
                frozen.append(arg.id)
            elif arg.id in frozen:
                frozen.remove(arg.id)
        if word == "unfreeze" and not command.args:
            frozen.clear()
    return frozen


def _early_stop(c: Checker, stops, monitors):
    """The early_stop(...) statement, if any: EarlyStop, None, or False on an error."""
    if not stops:
        return None
    for extra in stops[1:]:
        c.error(codes.DEFINED_TWICE, "early_stop is given twice", extra.span)
    if not monitors:
        c.error(codes.CONFLICT, "early_stop watches the validation rows, and `valid = none` keeps none",
                stops[0].span, ["remove early_stop (the last epoch's weights are the model), or name a split in the "
                                "data block: valid = random(0.2)"])
        return False
    bound = c.bind(stops[0].call, "stage", "statement")
    if bound is None:
        return False
    _, args, _ = bound
    monitor = "valid_loss"
    if "monitor" in args:
        expr = args["monitor"]
        watched = _watched(expr)
        if watched not in monitors:
            name = watched or shown(expr)
            c.error(codes.UNKNOWN_NAME, f"early_stop can watch {', '.join(monitors)}, not '{name}'", expr.span,
                    suggest(name, monitors) or ["a metric must be in the train block's metrics"])
            return False
        monitor = watched
    patience = c.integer(args["patience"], "patience", low=1) if "patience" in args else 3
    keep = c.boolean(args["keep_best"], "keep_best") if "keep_best" in args else True
    if patience is None or keep is None:
        return False
    return EarlyStop(monitor, patience, keep)


def _watched(expr: ast.Expr) -> str | None:
    """What early_stop(monitor=...) names: `valid_loss`, `rmse`, or a ranking metric as `ndcg(10)` (ndcg@10)."""
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Call) and len(expr.args) == 1 and not expr.keywords and isinstance(expr.args[0], ast.Number) \
            and float(expr.args[0].value).is_integer():
        return metric_key(expr.func.id, int(expr.args[0].value))
    return None


def _lr(c: Checker, expr: ast.Expr):
    """A learning rate: a number, slice(high), slice(low, high), slice(high, div=10), or find."""
    if isinstance(expr, ast.Name) and expr.id == "find":
        return LRFind()
    if isinstance(expr, ast.Call) and expr.func.id == "slice":
        if not c.args_ok(expr, SIGNATURES["lr"]["slice"]):
            return None
        args = bind_args(expr, SIGNATURES["lr"]["slice"])
        first = c.real(args["low"], "lr", 0.0, low_open=True)
        second = c.real(args["high"], "lr", 0.0, low_open=True) if "high" in args else None
        div = c.real(args["div"], "div", 0.0, low_open=True) if "div" in args else 3.0
        if first is None or div is None or ("high" in args and second is None):
            return None
        if "div" in args and second is not None:
            c.error(codes.CONFLICT, "div applies to slice(high) alone: slice(1e-3, div=10)", args["div"].span)
            return None
        return LRSlice(first, second, div) if second is not None else LRSlice(None, first, div)
    return c.real(expr, "lr", 0.0, low_open=True)


def _ranks(c: Checker, model: ModelSpec, data: DataSpec, loss: str, span: Span) -> None:
    """Implicit feedback: the model scores a (user, item) pair from those two inputs, or (view = users) every
    item from the user alone (the exported model ranks every item for a user); the loss compares what the
    view gives it; a loss over sampled negatives needs some."""
    feedback = data.feedback
    used = (feedback.user,) if feedback.per_user else (feedback.user, feedback.item)
    # and the columns of side tables keyed by them, which the exported model looks up by its ids
    sides = {c.name for c in data.inputs if c.table is not None and data.table(c.table).key in used}
    other = [name for name in model.inputs if name not in used and name not in sides]
    missing = [name for name in used if name not in model.inputs]
    if other or missing:
        scores = f"every item from '{feedback.user}'" if feedback.per_user else \
            f"a pair from '{feedback.user}' and '{feedback.item}'"
        c.error(codes.BAD_COLUMN, f"a model of implicit feedback scores {scores} alone, but it "
                + (f"uses '{other[0]}'" if other else f"never uses '{missing[0]}'"), model.node(model.output).span,
                ["the exported model ranks every item for a user from " + ("it" if feedback.per_user else "these two")
                 + ("; a history column keyed by the user, e.g. rated: history(user, item), is the user's items"
                    if feedback.per_user else "")])
    compares = LOSSES[loss].compares
    if feedback.per_user != (compares == SETS):
        fitting = [n for n, d in LOSSES.items() if d.target == IMPLICIT and (d.compares == SETS) == feedback.per_user]
        view = "a user, its every item scored at once" if feedback.per_user else "an interaction, a (user, item) pair"
        c.error(codes.CONFLICT, f"loss '{loss}' compares " + ("a user's items" if compares == SETS else
                "each interaction") + f", but an example of implicit(..., view={feedback.view}) is {view}", span,
                [f"e.g. loss = {' or '.join(fitting)}"])
    elif LOSSES[loss].negatives and feedback.negatives == 0:
        c.error(codes.CONFLICT, f"loss '{loss}' compares each interaction with sampled negatives, but "
                "implicit(...) draws none", span, ["e.g. implicit(user, item, negatives=4)"])


def _output_fits(c: Checker, out, target, loss: str) -> None:
    """The model's output must be what the loss compares with the target."""
    if target.kind == IMPLICIT and LOSSES[loss].compares == SETS:
        if out.shape != (CLASSES,):
            c.error(codes.OUTPUT_MISMATCH, f"the model's output 'out' has {shape_text(out.shape)}, but '{loss}' takes "
                    "a score of every item for a user", out.span,
                    ["end the model with linear(classes): 'classes' is the number of items"])
    elif target.kind in (FLOAT, IMPLICIT):
        if out.shape != (1,):
            c.error(codes.OUTPUT_MISMATCH, f"the model's output 'out' has {shape_text(out.shape)}, but the target "
                    f"'{target.name}' is one number per row", out.span,
                    ["reduce it to width 1, e.g. with dot(a, b) or linear(1)"])
    elif len(out.shape) != 1 or out.shape[0] == 1:
        c.error(codes.OUTPUT_MISMATCH, f"'{loss}' needs one output per class, but 'out' has "
                f"{shape_text(out.shape)}", out.span,
                ["end the model with linear(classes): 'classes' is the number of target classes"])


def _loss_name(c: Checker, expr: ast.Expr, table: dict, what: str, target_kind: str | None) -> str | None:
    """A loss or metric by name (a key of `table`, LOSSES or METRICS), one that fits the target's kind."""
    if isinstance(expr, ast.Call) and not expr.args and not expr.keywords:
        expr = expr.func
    if not isinstance(expr, ast.Name):
        c.error(codes.WRONG_KIND, f"{what}: expected a name such as {next(iter(table))}, found {kind_of(expr)}",
                expr.span)
        return None
    if expr.id not in table:
        c.error(codes.UNKNOWN_FUNCTION, f"unknown {what} '{expr.id}'", expr.span,
                suggest(expr.id, table) or [f"known: {', '.join(table)}"])
        return None
    if target_kind is not None and table[expr.id].target != target_kind:
        needs = "an implicit feedback target" if table[expr.id].target == IMPLICIT else f"a {table[expr.id].target} target"
        found = "implicit feedback" if target_kind == IMPLICIT else f"a {target_kind}"
        c.error(codes.TARGET_KIND, f"{what} '{expr.id}' needs {needs}, but the target is {found}", expr.span)
        return None
    return expr.id


def _optimizer(c: Checker, expr: ast.Expr) -> Optimizer | None:
    """An optimizer call, bound against its declaration (specc.training.optimizers): every argument
    within its bounds, the others at their defaults, then the rule across them."""
    bound = c.bind(expr, "optimizer", "optimizer")
    if bound is None:
        return None
    func, args, _ = bound
    defn = optimizers.NAMES[func]
    values = {f.name: constant(c, f, args[f.name]) if f.name in args else f.default for f in defn.params}
    if None in values.values():
        return None
    problem = defn.validate(values) if defn.validate is not None else None
    if problem is not None:
        first, last = (args[p] for p in (problem.params[0], problem.params[-1]))
        c.error(codes.CONFLICT, problem.message, first.span.to(last.span), list(problem.notes))
        return None
    return defn.make(**values)


def _fit(c: Checker, call: ast.Call):
    """fit(epochs, lr) or fit_one_cycle(epochs, lr, ...)."""
    bound = c.bind(call, "fit", "fit")
    if bound is None:
        return None
    func, args, _ = bound
    epochs = c.integer(args["epochs"], "epochs", low=1)
    lr = _lr(c, args["lr"])
    if func == "fit":
        return None if None in (epochs, lr) else Fit(epochs, lr, call.span)
    pct = c.real(args["pct_start"], "pct_start", 0.0, 1.0, True, True) if "pct_start" in args else 0.3
    div = c.real(args["div"], "div", 0.0, low_open=True) if "div" in args else 25.0
    final_div = c.real(args["final_div"], "final_div", 0.0, low_open=True) if "final_div" in args else 1e4
    moms = c.numbers(args["moms"], "moms", (0.95, 0.85, 0.95), 0.0, 1.0) if "moms" in args else (0.95, 0.85, 0.95)
    if moms is not None and moms[0] != moms[2]:
        c.error(codes.CONFLICT, f"moms: the cycle ends where it starts (torch's OneCycleLR), found "
                f"{fmt(moms[0])} and {fmt(moms[2])}", args["moms"].span,
                [f"e.g. moms=({fmt(moms[0])}, {fmt(moms[1])}, {fmt(moms[0])})"])
        return None
    if None in (epochs, lr, pct, div, final_div, moms):
        return None
    return FitOneCycle(epochs, lr, pct, div, final_div, moms, call.span)
