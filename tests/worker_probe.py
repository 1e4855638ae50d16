"""A job for the scheduler's worker processes that reports which quantization backends got imported.

Kept apart from the test modules: a worker imports the module of its job function, and the test
modules import transformers' model classes at the top (which would import the backends first)."""

import sys


def quantization_backends_loaded(state, job, report):
    from transformers import BertModel  # noqa: F401  (model classes import transformers' quantizer integrations)

    from compresso.evaluation.runner import QUANTIZATION_BACKENDS

    return sorted(name for name in QUANTIZATION_BACKENDS if sys.modules.get(name) is not None)
