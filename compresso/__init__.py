"""compresso: make BERT-family encoders smaller and faster, from YAML recipes.

From Python (a notebook, a script)::

    import compresso

    run = compresso.apply("recipes/quickstart.yaml", output_dir="runs/qs", evaluate=False)
    bundle = compresso.load(run.final_stage)               # model + tokenizer + lineage
    results = compresso.evaluate({"teacher": "../shared/teachers/ro-bert-small-cased",
                                  "student": run.final_stage}, teachers=["teacher"], tasks=["sapn"])

Names are imported on first use, so that ``import compresso`` (and ``compresso --help``) does
not pay for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "CompressionStrategy": "compresso.strategy",
    "InputPath": "compresso.strategy",
    "ModelBundle": "compresso.strategy",
    "RunContext": "compresso.strategy",
    "StrategyError": "compresso.strategy",
    "StrategyParams": "compresso.strategy",
    "apply": "compresso.api",
    "evaluate": "compresso.api",
    "load": "compresso.api",
    "publish": "compresso.api",
    "RunResult": "compresso.engine",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'compresso' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
