"""The Romanian evaluation suite: UPOS, XPOS, NER, SAPN, SAR, STS and DI, with loyalty and efficiency.

Use it as the ``evaluate:``/``report:`` sections of a recipe, from the command line
(``compresso evaluate``), or from Python::

    from compresso.evaluation import EvalModel, evaluate_models
    results = evaluate_models([EvalModel("teacher", "../shared/teachers/ro-bert-small-cased", "teacher"),
                               EvalModel("student", "runs/x/00-distill", "student")],
                              {"tasks": ["upos", "sapn"]}, None, Path("runs/x/evaluation"),
                              torch.device("cuda"), seed=42, console=Console())
"""

from compresso.evaluation.config import EvaluateConfig, ReportConfig
from compresso.evaluation.runner import (
    EvalModel,
    EvaluationError,
    check_data,
    evaluate_models,
    preflight,
    select_models,
)

__all__ = ["EvalModel", "EvaluateConfig", "EvaluationError", "ReportConfig", "check_data", "evaluate_models",
           "preflight", "select_models"]
