"""TEST DOUBLE of vLLM 0.25.1 (see ../README.md). Not vLLM."""

from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.25.1+double"
__version_tuple__ = (0, 25, 1, "double")
IS_DOUBLE = True

__all__ = ["SamplingParams", "RequestOutputKind", "TokensPrompt", "__version__", "IS_DOUBLE"]
