"""Engine conformance kit: the checks every Yap engine passes, as a pytest plugin.

It is registered as the pytest plugin ``yap_conformance`` (entry point
``pytest11``), so it is active wherever yap-core is installed. To run it
against your engine, add one test module:

    # tests/test_conformance.py
    from yap_core.testing import EngineConformance

    class TestConformance(EngineConformance):
        pass

and point it at the engine, either by plugin name on the command line (built
through ``PluginHost`` and the deployment's ``Config.discover()``):

    pytest tests/test_conformance.py --yap-engine myengine

or by overriding the ``yap_engine`` fixture (any scope; ``session`` loads the
model once) to return an engine that is built but NOT started:

    @pytest.fixture(scope="session")
    def yap_engine():
        return MyEngine(model="tiny")

The kit starts the engine once (``await engine.start()``) in its own event
loop and closes it at the end of the session, so it needs no pytest-asyncio.
Your own tests can share that loop and engine through the ``yap_kit``
fixture: ``yap_kit.engine``, ``yap_kit.run(coro)``, ``yap_kit.ids(text)``,
``yap_kit.collect(request)``.

Class attributes tune the kit for an engine:
- ``prefix_caching`` (True): the engine keeps a prefix cache, so a second
  ``prefill`` of the same ids reports cached tokens and a stream on a cached
  prefix reports ``cached_prompt_tokens > 0``. False: it must report 0.
- ``abort_bound_s`` (5.0): how long an abort may take to free the request.
- ``concurrency`` (4): streams run together in the interleaving check.

A check of a sampling key the engine lists in ``unsupported_sampling()``
(stop strings) is reported as skipped, never as passed.

What is checked: the Engine protocol's shape; streaming (several deltas,
cumulative counts, exactly one finish_reason, on the last delta); usage
counts; max_tokens gives "length"; stop strings give "stop" and are not
emitted; temperature 0 is deterministic; abort through ``abort()``,
``aclose()`` and task cancellation frees the request (``stats().running``
back to 0) and the engine keeps serving; N concurrent streams progress
interleaved and all finish; ``prefill`` and cached prompt tokens.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import pytest

from yap_core.contracts import SAMPLING_KEYS, Delta, Engine, GenerationRequest, Sampling

T = TypeVar("T")

_PROMPT = (
    "The following is a conversation between a helpful assistant and a user. "
    "User: Tell me about the history of the city of Lyon in France, its rivers, "
    "its food and its famous festival of lights. Assistant:"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("yap", "Yap engine conformance kit")
    group.addoption(
        "--yap-engine",
        action="store",
        default=None,
        metavar="NAME",
        help="engine plugin to run the conformance kit against (default yap_engine fixture)",
    )


class YapKit:
    """The started engine under test, and an event loop to drive it from sync tests."""

    def __init__(self, engine: Engine, runner: asyncio.Runner) -> None:
        self.engine = engine
        self._runner = runner

    def run(self, awaitable: Awaitable[T], timeout: float = 120.0) -> T:
        """Run a coroutine in the kit's event loop (the engine's), bounded in time."""

        async def bounded() -> T:
            return await asyncio.wait_for(awaitable, timeout)

        return self._runner.run(bounded())

    def ids(self, text: str = _PROMPT) -> tuple[int, ...]:
        return tuple(self.engine.tokenizer.encode(text, add_special_tokens=False))

    def request(self, ids: tuple[int, ...] | None = None, **sampling: Any) -> GenerationRequest:
        return GenerationRequest(
            request_id=f"kit-{uuid.uuid4().hex[:12]}",
            prompt_token_ids=ids if ids is not None else self.ids(),
            sampling=Sampling(**sampling),
        )

    async def collect(self, request: GenerationRequest) -> list[Delta]:
        return [delta async for delta in self.engine.stream(request)]

    async def running(self) -> int:
        return (await self.engine.stats()).running

    async def wait_idle(self, bound_s: float, baseline: int = 0) -> float:
        """Seconds until stats().running is back to `baseline`; fails past `bound_s`."""
        start = time.monotonic()
        while True:
            running = await self.running()
            if running <= baseline:
                return time.monotonic() - start
            if time.monotonic() - start > bound_s:
                raise AssertionError(f"stats().running still {running} (expected {baseline}) {bound_s}s after the abort")
            await asyncio.sleep(0.01)


class _KitSession:
    """Per pytest session: one event loop, and the engines the kit started in it."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.started: dict[int, Engine] = {}

    def close(self) -> None:
        try:
            for engine in self.started.values():
                self.runner.run(engine.close())
        finally:
            self.runner.close()


@pytest.fixture(scope="session")
def _yap_kit_session() -> Iterator[_KitSession]:
    session = _KitSession()
    yield session
    session.close()


@pytest.fixture(scope="session")
def yap_engine(request: pytest.FixtureRequest) -> Engine:
    """The engine under test, built but not started. Override it in your
    conftest, or pass --yap-engine NAME to build an installed plugin's engine."""
    name = request.config.getoption("--yap-engine")
    if not name:
        raise pytest.UsageError(
            "the Yap conformance kit needs an engine: pass --yap-engine NAME "
            "or override the yap_engine fixture (see yap_core.testing)"
        )
    from yap_core.plugins import PluginHost
    from yap_core.settings import Config

    host = PluginHost()
    host.load(name)
    return host.engine_factory(name)(Config.discover())


@pytest.fixture
def yap_kit(yap_engine: Engine, _yap_kit_session: _KitSession) -> YapKit:
    """The started engine and the loop it runs in (started once per session)."""
    kit = YapKit(yap_engine, _yap_kit_session.runner)
    if id(yap_engine) not in _yap_kit_session.started:
        kit.run(yap_engine.start(), timeout=600)
        _yap_kit_session.started[id(yap_engine)] = yap_engine
    return kit


def _check_counts(deltas: list[Delta], prompt_len: int) -> None:
    assert deltas, "the stream yielded nothing"
    finals = [i for i, d in enumerate(deltas) if d.finish_reason is not None]
    assert finals == [len(deltas) - 1], f"finish_reason must be set on the last delta only (at {finals})"
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts), f"completion_tokens must be cumulative: {counts}"
    for d in deltas:
        assert d.prompt_tokens == prompt_len, f"prompt_tokens {d.prompt_tokens} != {prompt_len} prompt ids"
        assert 0 <= d.cached_prompt_tokens <= d.prompt_tokens


class EngineConformance:
    """Subclass as ``TestSomething(EngineConformance)`` to run the kit."""

    prefix_caching: bool = True
    abort_bound_s: float = 5.0
    concurrency: int = 4

    # --- shape -------------------------------------------------------------
    def test_protocol_shape(self, yap_kit: YapKit) -> None:
        engine = yap_kit.engine
        assert isinstance(engine, Engine), "the engine does not have the shape of yap_core.contracts.Engine"
        for attr in ("name", "version", "model_id"):
            assert isinstance(getattr(engine, attr), str) and getattr(engine, attr), f"engine.{attr} must be a non-empty str"
        assert isinstance(engine.max_model_len, int) and engine.max_model_len > len(yap_kit.ids())
        unsupported = engine.unsupported_sampling()
        assert unsupported <= SAMPLING_KEYS, f"unknown sampling keys {sorted(unsupported - SAMPLING_KEYS)}"
        ids = yap_kit.ids("hello world")
        assert ids and all(isinstance(i, int) for i in ids)
        assert isinstance(engine.tokenizer.decode(list(ids)), str)

    # --- streaming and usage -----------------------------------------------
    def test_streams_several_deltas_with_cumulative_counts(self, yap_kit: YapKit) -> None:
        req = yap_kit.request(temperature=0.0, max_tokens=16, ignore_eos=True)
        deltas = yap_kit.run(yap_kit.collect(req))
        assert len(deltas) >= 2, "a 16-token reply should arrive as several deltas, not one"
        _check_counts(deltas, len(req.prompt_token_ids))
        assert deltas[-1].completion_tokens == 16
        assert deltas[-1].finish_reason == "length"
        assert "".join(d.text for d in deltas).strip(), "16 tokens decoded to no text"

    def test_usage_counts(self, yap_kit: YapKit) -> None:
        req = yap_kit.request(temperature=0.0, max_tokens=8)
        deltas = yap_kit.run(yap_kit.collect(req))
        _check_counts(deltas, len(req.prompt_token_ids))
        last = deltas[-1]
        assert 1 <= last.completion_tokens <= 8
        assert last.finish_reason in ("stop", "length")
        if last.finish_reason == "length":
            assert last.completion_tokens == 8

    def test_max_tokens_gives_length(self, yap_kit: YapKit) -> None:
        for n in (1, 5):
            req = yap_kit.request(temperature=0.0, max_tokens=n, ignore_eos=True)
            deltas = yap_kit.run(yap_kit.collect(req))
            assert deltas[-1].finish_reason == "length"
            assert deltas[-1].completion_tokens == n

    def test_temperature_zero_is_deterministic(self, yap_kit: YapKit) -> None:
        texts = []
        # a first run fills the prefix cache: reduced precision (bf16) may
        # round a cached prefix differently from a fresh one, so compare runs
        # made in the same cache state
        yap_kit.run(yap_kit.collect(yap_kit.request(temperature=0.0, max_tokens=20, ignore_eos=True)))
        for _ in range(2):
            req = yap_kit.request(temperature=0.0, max_tokens=20, ignore_eos=True)
            texts.append("".join(d.text for d in yap_kit.run(yap_kit.collect(req))))
        assert texts[0] == texts[1], f"greedy decoding differs between runs: {texts!r}"
        assert texts[0]

    def test_stop_string_ends_with_stop_and_is_not_emitted(self, yap_kit: YapKit) -> None:
        if "stop" in yap_kit.engine.unsupported_sampling():
            pytest.skip("the engine declares stop strings unsupported")
        full = "".join(
            d.text for d in yap_kit.run(yap_kit.collect(yap_kit.request(temperature=0.0, max_tokens=24, ignore_eos=True)))
        )
        stop = _pick_stop(full)
        req = yap_kit.request(temperature=0.0, max_tokens=24, ignore_eos=True, stop=(stop,))
        deltas = yap_kit.run(yap_kit.collect(req))
        text = "".join(d.text for d in deltas)
        assert deltas[-1].finish_reason == "stop", f"stop {stop!r} in {full!r} did not stop the reply"
        assert stop not in text
        assert text == full[: full.index(stop)], f"expected the reply cut before {stop!r}: {text!r}"

    # --- abort -------------------------------------------------------------
    def _long_request(self, yap_kit: YapKit) -> GenerationRequest:
        ids = yap_kit.ids()
        n = max(8, min(4000, yap_kit.engine.max_model_len - len(ids) - 1))
        return yap_kit.request(ids, temperature=0.0, max_tokens=n, ignore_eos=True)

    def test_abort_by_id_frees_the_request(self, yap_kit: YapKit) -> None:
        req = self._long_request(yap_kit)

        async def scenario() -> list[Delta]:
            before = await yap_kit.running()
            stream = yap_kit.engine.stream(req)
            try:
                got = [await anext(stream)]
                assert await yap_kit.running() == before + 1
                await yap_kit.engine.abort(req.request_id)
                # freed without the consumer reading on
                await yap_kit.wait_idle(self.abort_bound_s, before)

                # the stream then ends promptly; a closing delta, if any, says "abort"
                async def rest() -> None:
                    async for d in stream:
                        got.append(d)

                await asyncio.wait_for(rest(), self.abort_bound_s)
                return got
            finally:
                await _aclose(stream)  # a failed check leaves nothing running for the next one

        got = yap_kit.run(scenario())
        reasons = [d.finish_reason for d in got if d.finish_reason is not None]
        assert reasons in ([], ["abort"]), f"after abort the stream ended with {reasons}"
        assert got[-1].completion_tokens < req.sampling.max_tokens
        self._still_serves(yap_kit)

    def test_aclose_frees_the_request(self, yap_kit: YapKit) -> None:
        req = self._long_request(yap_kit)

        async def scenario() -> None:
            before = await yap_kit.running()
            stream = yap_kit.engine.stream(req)
            await anext(stream)
            assert await yap_kit.running() == before + 1
            await _aclose(stream)
            await yap_kit.wait_idle(self.abort_bound_s, before)

        yap_kit.run(scenario())
        self._still_serves(yap_kit)

    def test_cancelling_the_consumer_frees_the_request(self, yap_kit: YapKit) -> None:
        req = self._long_request(yap_kit)

        async def scenario() -> None:
            first = asyncio.Event()

            async def consume() -> None:
                async for _ in yap_kit.engine.stream(req):
                    first.set()

            before = await yap_kit.running()
            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), 60)
            assert await yap_kit.running() == before + 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await yap_kit.wait_idle(self.abort_bound_s, before)

        yap_kit.run(scenario())
        self._still_serves(yap_kit)

    def test_abort_of_unknown_id_is_ignored(self, yap_kit: YapKit) -> None:
        yap_kit.run(yap_kit.engine.abort("kit-no-such-request"))
        self._still_serves(yap_kit)

    def _still_serves(self, yap_kit: YapKit) -> None:
        deltas = yap_kit.run(yap_kit.collect(yap_kit.request(temperature=0.0, max_tokens=3, ignore_eos=True)))
        assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 3

    # --- concurrency -------------------------------------------------------
    def test_concurrent_streams_interleave(self, yap_kit: YapKit) -> None:
        n, tokens = self.concurrency, 12
        reqs = [yap_kit.request(temperature=0.0, max_tokens=tokens, ignore_eos=True) for _ in range(n)]
        order: list[str] = []

        async def one(req: GenerationRequest) -> list[Delta]:
            out = []
            async for d in yap_kit.engine.stream(req):
                order.append(req.request_id)
                out.append(d)
            return out

        async def scenario() -> list[list[Delta]]:
            return await asyncio.gather(*(one(r) for r in reqs))

        before = yap_kit.run(yap_kit.running())
        results = yap_kit.run(scenario())
        for req, deltas in zip(reqs, results, strict=True):
            _check_counts(deltas, len(req.prompt_token_ids))
            assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == tokens
        firsts = [order.index(r.request_id) for r in reqs]
        lasts = [len(order) - 1 - order[::-1].index(r.request_id) for r in reqs]
        assert max(firsts) < min(lasts), f"streams did not progress together (arrival order {order})"
        texts = {"".join(d.text for d in deltas) for deltas in results}
        assert len(texts) == 1, "the same greedy request gave different text when run concurrently"
        yap_kit.run(yap_kit.wait_idle(self.abort_bound_s, before))

    # --- prefix cache ------------------------------------------------------
    def test_prefill_and_cached_prompt_tokens(self, yap_kit: YapKit) -> None:
        engine = yap_kit.engine
        # a prompt of its own, long enough for block-granular caches
        ids = yap_kit.ids(f"{uuid.uuid4().hex} " + _PROMPT * 3)
        first = yap_kit.run(engine.prefill(ids))
        second = yap_kit.run(engine.prefill(ids))
        longer = ids + yap_kit.ids(" And what about its football club?")
        deltas = yap_kit.run(yap_kit.collect(yap_kit.request(longer, temperature=0.0, max_tokens=4)))
        cached = deltas[-1].cached_prompt_tokens
        assert 0 <= first <= len(ids)
        if self.prefix_caching:
            assert 0 < second <= len(ids), f"second prefill of the same {len(ids)} ids found {second} cached"
            assert cached > 0, "a prompt extending a prefilled prefix reported no cached tokens"
            assert cached <= len(longer)
        else:
            assert second == 0 and cached == 0, "an engine without prefix caching must report 0 cached tokens"
        assert all(d.cached_prompt_tokens == cached for d in deltas)


def _pick_stop(text: str) -> str:
    """A short piece of `text` whose first occurrence is well inside it."""
    for start in range(max(1, len(text) // 3), len(text) - 3):
        piece = text[start : start + 3]
        if piece.strip() and text.index(piece) > 0:
            return piece
    raise AssertionError(f"the reply {text!r} is too short to pick a stop string from")


async def _aclose(stream: AsyncIterator[Delta]) -> None:
    close = getattr(stream, "aclose", None)
    assert close is not None, "Engine.stream must return an async generator (or an iterator with aclose)"
    await close()
