"""The built-in ``distill`` strategy: multi-teacher, cross-tokenizer masked-LM distillation.

``DistillStrategy`` is imported lazily so that tokenizer worker processes, which import this
package's ``data`` module, do not pay for transformers.
"""

from __future__ import annotations

__all__ = ["DistillStrategy", "DistillParams"]


def __getattr__(name: str):
    if name == "DistillStrategy":
        from compresso.strategies.distill.strategy import DistillStrategy

        return DistillStrategy
    if name == "DistillParams":
        from compresso.strategies.distill.params import DistillParams

        return DistillParams
    raise AttributeError(name)
