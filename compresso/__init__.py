"""compresso: make BERT-family encoders smaller and faster, from YAML recipes."""

from compresso.models import load
from compresso.strategy import (
    CompressionStrategy,
    InputPath,
    ModelBundle,
    RunContext,
    StrategyError,
    StrategyParams,
)

__version__ = "0.1.0"

__all__ = ["CompressionStrategy", "InputPath", "ModelBundle", "RunContext", "StrategyError",
           "StrategyParams", "load", "__version__"]
