"""The optimizer registry: every optimizer a spec may name, declared once and torch-free: its
arguments (bounds, defaults), the plan's text, its state per weight for the memory check, and which
training paths take it. specc.training.optim builds each by name; docs/adding-an-optimizer.md says how to add one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from specc.language.spec import Optimizer
from specc.model.ops.base import Bool, Field, Problem, Real, Reals


def _always(opt: Optimizer) -> bool:
    return True


def _uses_momentum(opt: Optimizer) -> bool:
    return opt.momentum > 0


def _two_moments(opt: Optimizer) -> int:
    return 2


@dataclass(frozen=True, slots=True)
class OptimizerDef:
    """One optimizer of the language, declared once.

    name, doc      what a spec calls it (the kind of its specc.language.spec.Optimizer); one line
    params         its arguments in call order, each with its bounds and default (specc.model.ops.base's
                   fields: the checker binds a call against them; docs/language.md's table is checked
                   against their defaults)
    title          how the plan names it ("AdamW (decoupled weight decay)"), then `shown` arguments
                   (default: every one, in order) as name=value, then `suffix`
    state          (optimizer) -> float32 numbers it keeps per weight: the memory check (E307)
    cycles         (optimizer) -> whether fit_one_cycle cycles its momentum (Adam's beta1, SGD's and
                   RMSProp's momentum) against the learning rate, as torch's OneCycleLR does
    validate       (arguments) -> a Problem across them (E311 at the arguments it names)
    aliases        other names a spec may call it by (`adamw`)
    device_step    its update is AdamW's, which the device-resident step (and its CUDA graph)
                   computes from device tables: `--device-step` and the captured step take it
    data_parallel  its gradients all-reduce: it trains under torchrun (else `not_parallel` says why not)
    sparse_tables  embedding tables are lowered with sparse gradients (the rows a batch looked up)
    not_captured   why the CUDA-graph step cannot take it, where that is not just `device_step` False
    fastai2        (argument, fastai 2's value) for a default fastai 2 changed: the plan names it
    """

    name: str
    doc: str
    params: tuple[Field, ...]
    title: str
    state: Callable[[Optimizer], int]
    cycles: Callable[[Optimizer], bool]
    shown: tuple[str, ...] = ()
    suffix: str = ""
    validate: Callable[[dict], Problem | None] | None = None
    aliases: tuple[str, ...] = ()
    device_step: bool = False
    data_parallel: bool = True
    not_parallel: str = ""
    sparse_tables: bool = False
    not_captured: str = ""
    fastai2: tuple[tuple[str, object], ...] = ()

    def defaults(self) -> dict[str, object]:
        """Every argument's default, by name."""
        return {f.name: f.default for f in self.params}

    def make(self, **args) -> Optimizer:
        """The spec's value of this optimizer, the arguments not given at their defaults."""
        unknown = set(args) - {f.name for f in self.params}
        if unknown:
            raise TypeError(f"optimizer '{self.name}' has no argument {', '.join(sorted(unknown))}")
        return Optimizer(self.name, tuple({**self.defaults(), **args}.items()))

    def describe(self, opt: Optimizer) -> str:
        """The plan's line: its title, then its arguments as name=value."""
        names = self.shown or tuple(f.name for f in self.params)
        return f"{self.title}: {' '.join(f'{n}={_shown(getattr(opt, n))}' for n in names)}{self.suffix}"


def _shown(value) -> str:
    """A value as the plan shows it: numbers with %g, a tuple of them in brackets, true / false."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return f"({', '.join(_shown(v) for v in value)})"
    return f"{value:g}"


def written(value) -> str:
    """A value as a spec writes it (docs, notes): 1e-8 rather than %g's 1e-08."""
    if isinstance(value, tuple):
        return f"({', '.join(written(v) for v in value)})"
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m.group(1).lstrip('+')}{m.group(2)}", _shown(value))


def _nesterov(args: dict) -> Problem | None:
    """torch's Nesterov SGD looks ahead along the momentum, undamped."""
    if args["nesterov"] and (args["momentum"] == 0.0 or args["dampening"]):
        return Problem("nesterov needs a momentum above 0 and no dampening", params=("nesterov",))
    return None


_WD = Real("wd", 0.0, default=0.0, doc="decoupled weight decay: each step p -= lr * wd * p, apart from the gradient")
_EPS = Real("eps", 0.0, low_open=True, default=1e-8, doc="added to the denominator")
_BETAS = Reals("betas", (0.9, 0.999), example=(0.9, 0.99), doc="the moving averages of the gradient and its square")
_MOMENTUM = Real("momentum", 0.0, 1.0, high_open=True, default=0.0, doc="the moving average of the update")

DECLARED = (
    OptimizerDef("adam", "Adam with decoupled weight decay (torch's AdamW, fastai's default)", (_BETAS, _EPS, _WD),
                 "AdamW (decoupled weight decay)", _two_moments, _always, aliases=("adamw",), device_step=True,
                 fastai2=(("eps", 1e-5),)),
    OptimizerDef("sgd", "torch's SGD, its momentum and Nesterov forms, decoupled weight decay",
                 (_MOMENTUM, _WD, Bool("nesterov", doc="Nesterov's look-ahead"),
                  Real("dampening", 0.0, 1.0, high_open=True, default=0.0, doc="momentum = dampening: an EWMA")),
                 "SGD", lambda opt: int(opt.momentum > 0), _uses_momentum, shown=("momentum", "dampening", "nesterov",
                                                                                  "wd"),
                 suffix=" (decoupled)", validate=_nesterov),
    OptimizerDef("rmsprop", "torch's RMSprop: the gradient over the root of its squares' moving average",
                 (Real("alpha", 0.0, 1.0, high_open=True, default=0.99, doc="the moving average of g^2"), _EPS,
                  _MOMENTUM, _WD),
                 "RMSProp", lambda opt: 1 + int(opt.momentum > 0), _uses_momentum, suffix=" (decoupled)"),
    OptimizerDef("radam", "Adam with the variance of its adaptive rate rectified (torch's RAdam)", (_BETAS, _EPS, _WD),
                 "RAdam (decoupled weight decay)", _two_moments, _always),
    OptimizerDef("nadam", "Adam with Nesterov momentum (torch's NAdam)",
                 (_BETAS, _EPS, _WD, Real("momentum_decay", 0.0, default=4e-3, doc="how fast beta1's schedule decays")),
                 "NAdam (decoupled weight decay)", _two_moments, _always),
    OptimizerDef("sparse_adam", "lazy Adam for embedding tables: only the rows a batch looked up change",
                 (_BETAS, _EPS, _WD),
                 "sparse Adam (lazy: an embedding table's rows change only when a batch looks them up)", _two_moments,
                 _always, data_parallel=False, sparse_tables=True,
                 not_parallel="its gradients are the rows each process looked up, which the one all-reduce of dense "
                              "gradients cannot sum",
                 not_captured="sparse_adam's gradients are sparse (the rows a batch looked up), which the plain loop "
                              "takes"),
)
OPTIMIZERS: dict[str, OptimizerDef] = {d.name: d for d in DECLARED}
# Every name a spec may call, aliases beside their optimizer: the checker's signatures, in order.
NAMES: dict[str, OptimizerDef] = {name: d for d in DECLARED for name in (d.name, *d.aliases)}
DEFAULT = "adam"  # a train block without `optimizer`


def get(kind: str) -> OptimizerDef:
    """The declaration of an optimizer kind (KeyError for one never declared: the checker asks first)."""
    if kind not in OPTIMIZERS:
        raise KeyError(f"optimizer '{kind}' is not declared in specc.training.optimizers")
    return OPTIMIZERS[kind]


def make(kind: str, **args) -> Optimizer:
    """An optimizer value, the arguments not given at their defaults: make("sgd", momentum=0.9)."""
    return get(kind).make(**args)


# ---------------------------------------------------------------- which training paths take it


def device_step_refusal(opt: Optimizer) -> str | None:
    """Why `--device-step` cannot train with this optimizer (None: it can)."""
    if get(opt.kind).device_step:
        return None
    names = [name for name, d in NAMES.items() if d.device_step]
    return f"--device-step needs the Adam optimizer ({' or '.join(names)})"


def graph_refusal(opt: Optimizer) -> str | None:
    """Why the CUDA-graph step cannot take this optimizer (None: it can)."""
    defn = get(opt.kind)
    if defn.not_captured:
        return defn.not_captured
    if not defn.device_step:
        return f"the optimizer is {opt.kind}; the captured step reads Adam's learning rate and beta1 from device tables"
    return None


def parallel_refusal(opt: Optimizer) -> str | None:
    """Why this optimizer cannot train data-parallel under torchrun (None: it can)."""
    defn = get(opt.kind)
    if defn.data_parallel:
        return None
    return (f"{opt.kind} does not take part in data-parallel training: {defn.not_parallel}; train it in one process, "
            f"or with {DEFAULT}")
