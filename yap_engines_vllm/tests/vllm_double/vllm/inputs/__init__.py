"""Double of vllm.inputs: TokensPrompt (a raw prompt, vllm/inputs/llm.py) and
TokensInput / tokens_input (the engine input a renderer produces,
vllm/inputs/engine.py), both TypedDicts as in 0.25.1."""

from typing import Literal, NotRequired, TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]


class TokensInput(TypedDict):
    type: Literal["token"]
    prompt_token_ids: list[int]
    prompt: NotRequired[str]
    cache_salt: NotRequired[str]


def tokens_input(prompt_token_ids: list[int], *, prompt: str | None = None, cache_salt: str | None = None) -> TokensInput:
    inputs = TokensInput(type="token", prompt_token_ids=prompt_token_ids)
    if prompt is not None:
        inputs["prompt"] = prompt
    if cache_salt is not None:
        inputs["cache_salt"] = cache_salt
    return inputs
