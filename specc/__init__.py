"""specc: a declarative model-spec compiler (spec text -> torch training -> ONNX).

The Python API (docs/python.md): specc.load, specc.check, specc.train, specc.open_run, specc.lr_find,
specc.sweep, specc.tune, and the errors they raise. Each name is imported when first used, so that
`import specc` stays as light as before (no torch, numpy, pandas or matplotlib)."""

__version__ = "0.1.0"

# name -> the module that defines it; read by __getattr__ (PEP 562) on first use
_API = {
    "load": "specc.api.spec", "check": "specc.api.spec", "Spec": "specc.api.spec", "Report": "specc.api.spec",
    "train": "specc.api.run", "open_run": "specc.api.run", "Run": "specc.api.run",
    "lr_find": "specc.api.search", "sweep": "specc.api.search", "tune": "specc.api.search",
    "SpecError": "specc.language.diagnostics", "DataError": "specc.language.diagnostics",
    "UsageError": "specc.language.diagnostics", "Diagnostic": "specc.language.diagnostics",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'specc' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])


def load_ipython_extension(ipython) -> None:
    """`%load_ext specc`: the %%specc cell magic (specc.api.magic)."""
    from specc.api.magic import register

    register(ipython)
