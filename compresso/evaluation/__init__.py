"""The Romanian evaluation suite: UPOS, XPOS, NER, SAPN, SAR, STS and DI, with loyalty and efficiency.

Use it as the ``evaluate:``/``report:`` sections of a recipe, from the command line
(``compresso evaluate``), or from Python::

    import compresso
    results = compresso.evaluate({"teacher": "../shared/teachers/ro-bert-small-cased", "student": "runs/x/00-distill"},
                                 teachers=["teacher"], tasks=["upos", "sapn"], out_dir="runs/x/evaluation")

    # or, with EvalModel objects:
    from compresso.evaluation import EvalModel, evaluate_models
    results = evaluate_models([EvalModel("teacher", "../shared/teachers/ro-bert-small-cased", "teacher"),
                               EvalModel("student", "runs/x/00-distill", "student")],
                              {"tasks": ["upos", "sapn"]}, None, Path("runs/x/evaluation"),
                              torch.device("cuda"), seed=42, console=Console())
"""

import importlib

_LAZY = {"EvaluateConfig": "config", "ReportConfig": "config", "EvalModel": "runner", "EvaluationError": "runner",
         "check_data": "runner", "evaluate_models": "runner", "preflight": "runner", "select_models": "runner"}

__all__ = ["EvalModel", "EvaluateConfig", "EvaluationError", "ReportConfig", "check_data", "evaluate_models",
           "preflight", "select_models"]


def __getattr__(name: str):
    # imported on first use: `compresso evaluate --help` must not pay for torch
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'compresso.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"compresso.evaluation.{module}"), name)
    globals()[name] = value
    return value
