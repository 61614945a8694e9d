"""Test clients: ``yap client warmup|live|conversation|history|cancel|idle|tool``.

Each talks to a running server through the wire protocol only (yap_core.wsclient),
prints what it saw with its timings, and exits 1 when a check fails (2 for a
usage error, as click does). Common options: ``--server`` (SERVER_WS_URL),
``--api-key`` (TEXT_API_KEY; the first key when several are listed), ``--timeout``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
import msgspec

from yap_core.latency_stats import fmt_ms, ms, summarize
from yap_core.wsclient import Frame, ProtocolError, Turn, YapConnection, new_id

DEFAULT_SERVER = "ws://127.0.0.1:8000/ws"
F = TypeVar("F", bound=Callable[..., Any])


class CheckFailed(Exception):
    """A client's check did not hold; the message says which."""


class Target(msgspec.Struct, frozen=True):
    url: str
    api_key: str
    timeout: float

    async def connect(self) -> YapConnection:
        return await YapConnection.open(self.url, self.api_key, open_timeout=self.timeout)


def _first_key(value: str) -> str:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys:
        raise click.BadParameter("empty API key", param_hint="--api-key / TEXT_API_KEY")
    return keys[0]


def target_options(fn: F) -> F:
    """--server, --api-key, --timeout, passed to the command as ``target``."""

    @click.option("--server", envvar="SERVER_WS_URL", default=DEFAULT_SERVER, show_default=True,
                  help="WebSocket URL of the server (env SERVER_WS_URL).")
    @click.option("--api-key", envvar="TEXT_API_KEY", required=True,
                  help="API key (env TEXT_API_KEY; the first one when several are listed).")
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
                  help="Seconds to wait for a turn (or a connection) before failing.")
    @functools.wraps(fn)
    def wrapper(server: str, api_key: str, timeout: float, **kwargs: Any) -> Any:
        return fn(target=Target(server, _first_key(api_key), timeout), **kwargs)

    return wrapper  # type: ignore[return-value]


def run_checked(main: Awaitable[None]) -> None:
    """Run a client; a failed check or a protocol/network failure exits 1."""
    try:
        asyncio.run(main)  # type: ignore[arg-type]
    except CheckFailed as exc:
        click.echo(f"FAIL: {exc}", err=True)
        sys.exit(1)
    except (ProtocolError, OSError) as exc:
        click.echo(f"FAIL: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # websockets' InvalidStatus, ConnectionClosed ...
        if type(exc).__module__.startswith("websockets"):
            click.echo(f"FAIL: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)
        raise


def persona_payload(personality: str | None, gender: str | None, chat_prompt: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if chat_prompt:
        out["chat_prompt"] = chat_prompt
    if personality:
        out["personality"] = personality
    if gender:
        out["gender"] = gender
    return out


def timing_line(turn: Turn) -> str:
    usage = turn.usage or {}
    return (
        f"toolcall {fmt_ms(ms(turn.toolcall_s))} ms | first token {fmt_ms(ms(turn.first_token_s))} ms | "
        f"3 words {fmt_ms(ms(turn.first_3_words_s))} ms | first sentence {fmt_ms(ms(turn.first_sentence_s))} ms | "
        f"total {fmt_ms(ms(turn.total_s))} ms | tokens {turn.tokens} | "
        f"prompt {usage.get('prompt_tokens', '-')} (cached {usage.get('cached_prompt_tokens', '-')})"
    )


def toolcall_line(turn: Turn) -> str:
    if turn.toolcall is None:
        return "toolcall: (none: chat-only deployment)"
    tc = turn.toolcall
    return f"toolcall: {tc.get('status')} tool={tc.get('tool')} confidence={tc.get('confidence')}"


def check_turn(turn: Turn, what: str, *, need_text: bool = True) -> None:
    """The invariants of a finished turn that every client checks."""
    if turn.end != "done":
        detail = turn.error or turn.end
        raise CheckFailed(f"{what}: the turn ended with {turn.end!r}, not done: {detail}")
    if need_text and not turn.text.strip():
        raise CheckFailed(f"{what}: empty reply")
    types = [f.type for f in turn.frames]
    if "toolcall" in types and "token" in types and types.index("toolcall") > types.index("token"):
        raise CheckFailed(f"{what}: a token came before the toolcall")
    if turn.final is not None and turn.final != turn.text:
        raise CheckFailed(f"{what}: final text differs from the streamed tokens")
    usage = turn.usage or {}
    if usage.get("cached_prompt_tokens", 0) > usage.get("prompt_tokens", 0):
        raise CheckFailed(f"{what}: cached_prompt_tokens > prompt_tokens in {usage}")


@click.group("client")
def client_group() -> None:
    """Test clients that drive a running server through the protocol."""


# --- warmup --------------------------------------------------------------------


@client_group.command()
@target_options
@click.option("--utterance", default="Hi! Tell me one fun fact about octopuses.", show_default=True)
@click.option("--personality", default=None, help="Persona name (letters, digits, _ and -).")
@click.option("--gender", type=click.Choice(["female", "male"]), default=None)
@click.option("--chat-prompt", default=None, help="Full system prompt (instead of a persona).")
@click.option("--double-ttfb", is_flag=True, help="Run the turn twice (fresh sessions): cold, then warm.")
def warmup(target: Target, utterance: str, personality: str | None, gender: str | None,
           chat_prompt: str | None, double_ttfb: bool) -> None:
    """One turn: prints the toolcall, the reply and its timings."""
    run_checked(_warmup(target, utterance, persona_payload(personality, gender, chat_prompt), double_ttfb))


async def _warmup(target: Target, utterance: str, persona: dict[str, Any], double: bool) -> None:
    async with await target.connect() as conn:
        turns = []
        for label in ("cold", "warm") if double else ("turn",):
            turn = await conn.turn("start", new_id(), {**persona, "user_utterance": utterance}, wait_s=target.timeout)
            check_turn(turn, label)
            turns.append(turn)
            click.echo(f"[{label}] {toolcall_line(turn)}")
            click.echo(f"[{label}] reply: {turn.text}")
            click.echo(f"[{label}] {timing_line(turn)}")
        if double:
            cold, warm = (t.first_token_s or t.total_s for t in turns)
            click.echo(f"first token: cold {cold * 1000:.1f} ms, warm {warm * 1000:.1f} ms ({cold / max(warm, 1e-9):.1f}x)")


# --- live ------------------------------------------------------------------------


def load_personas(path: Path) -> dict[str, dict[str, Any]]:
    """A TOML file of ``[name]`` tables with ``personality``/``gender`` or ``chat_prompt``."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--personas") from exc
    out: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if not isinstance(table, dict) or not set(table) <= {"personality", "gender", "chat_prompt"} or not table:
            raise click.BadParameter(
                f"{path}: [{name}] must hold personality/gender or chat_prompt", param_hint="--personas")
        out[name] = dict(table)
    return out


@client_group.command()
@target_options
@click.option("--personas", "personas_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TOML file of personas ([name] personality=..., gender=... or chat_prompt=...).")
@click.option("--persona", default=None, help="Persona (from --personas) to start with.")
def live(target: Target, personas_file: Path | None, persona: str | None) -> None:
    """Interactive chat: type a line, the reply streams. In a terminal, a line
    typed while a reply streams barges in; from a pipe, each line waits for the
    previous reply. Commands: /persona NAME, /personas, /cancel, /reset, /quit."""
    personas = load_personas(personas_file) if personas_file else {}
    if persona is not None and persona not in personas:
        raise click.BadParameter(f"unknown persona {persona!r}; known: {', '.join(personas) or '(no --personas file)'}",
                                 param_hint="--persona")
    run_checked(LiveChat(target, personas, persona).run())


class LiveChat:
    """The live client: one reader of stdin lines, one printer of frames."""

    def __init__(self, target: Target, personas: dict[str, dict[str, Any]], persona: str | None) -> None:
        self.target = target
        self.personas = personas
        self.persona = personas[persona] if persona else {}
        self.session_id: str | None = None
        self.running: str | None = None  # request id of the turn streaming now
        self.turn_ended = asyncio.Event()
        self.turn_ended.set()
        self.errors = 0
        self.tty = sys.stdin.isatty()

    def out(self, text: str, end: str = "\n") -> None:
        sys.stdout.write(text + end)
        sys.stdout.flush()

    def prompt(self) -> None:
        if self.tty:
            self.out("you> ", end="")

    async def run(self) -> None:
        async with await self.target.connect() as conn:
            printer = asyncio.create_task(self.print_frames(conn))
            try:
                self.prompt()
                while True:
                    reader = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
                    await asyncio.wait({reader, printer}, return_when=asyncio.FIRST_COMPLETED)
                    if printer.done():  # the server closed the socket (or printing failed)
                        reader.cancel()
                        code = printer.result()
                        raise CheckFailed(f"the server closed the socket with {code}")
                    line = reader.result()
                    if line == "" or not await self.handle(conn, line.strip()):
                        break
                await asyncio.wait_for(self.turn_ended.wait(), self.target.timeout)
                await conn.send("end", self.session_id)
                code = await asyncio.wait_for(printer, self.target.timeout)
            finally:
                printer.cancel()
        if code != 1000:
            raise CheckFailed(f"server closed with {code} after end, not 1000")
        if self.errors:
            raise CheckFailed(f"{self.errors} turn(s) ended in an error")

    async def handle(self, conn: YapConnection, line: str) -> bool:
        """One input line; False to stop."""
        if not line:
            self.prompt()
            return True
        if line in ("/quit", "/exit"):
            return False
        if line == "/personas":
            self.out(", ".join(self.personas) or "(no --personas file)")
        elif line.startswith("/persona "):
            name = line.split(None, 1)[1]
            if name not in self.personas:
                self.out(f"unknown persona {name!r}")
            else:
                self.persona, self.session_id = self.personas[name], None  # next line starts afresh
                self.out(f"persona: {name}")
        elif line == "/reset":
            self.session_id = None
            self.out("new session on the next line")
        elif line == "/cancel":
            await conn.send("cancel", self.session_id, payload={"reason": "user"})
        else:
            await self.say(conn, line)
            if not self.tty:  # a piped script is a conversation: one reply per line
                await asyncio.wait_for(self.turn_ended.wait(), self.target.timeout)
            return True
        self.prompt()
        return True

    async def say(self, conn: YapConnection, text: str) -> None:
        rid = new_id()
        self.running = rid
        self.turn_ended.clear()
        self.started = conn.clock()
        self.first: float | None = None
        if self.session_id is None:
            self.session_id = new_id()
            await conn.send("start", self.session_id, rid, {**self.persona, "user_utterance": text})
        else:
            await conn.send("message", self.session_id, rid, {"user_utterance": text})

    async def print_frames(self, conn: YapConnection) -> int | None:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                frame = await conn.recv(wait_s=10**9)
            except ConnectionClosed:
                return conn.close_code
            self.show(frame, conn.clock())

    def show(self, frame: Frame, now: float) -> None:
        p = frame.payload
        if frame.type == "toolcall":
            self.out(f"[toolcall {p.get('status')} {p.get('confidence')}]")
        elif frame.type == "token":
            if self.first is None:
                self.first = now - self.started
                self.out("bot> ", end="")
            self.out(str(p.get("text", "")), end="")
        elif frame.type == "done":
            u = p.get("usage") or {}
            first = "-" if self.first is None else f"{self.first * 1000:.0f}"
            self.out(f"\n[done {p.get('finish_reason')}: first token {first} ms, total "
                     f"{(now - self.started) * 1000:.0f} ms, {u.get('completion_tokens')} tokens]")
            self.end_turn(frame)
        elif frame.type == "cancelled":
            self.out(f"\n[cancelled: {p.get('reason')}]")
            self.end_turn(frame)
        elif frame.type == "error":
            self.errors += 1
            self.out(f"\n[error {p.get('code')}: {p.get('message')}]")
            self.end_turn(frame)
        elif frame.type == "session_end":
            self.out("[session ended]")

    def end_turn(self, frame: Frame) -> None:
        if frame.request_id == self.running:
            self.running = None
            self.turn_ended.set()
            self.prompt()


# --- conversation ----------------------------------------------------------------

CONVERSATION = (
    "Hi! I'm planning a small dinner party this weekend.",
    "There will be six of us. What's an easy main course?",
    "One guest is vegetarian. Would that still work?",
    "Great. What could I serve as a starter?",
    "Can you look at my screen and tell me if this recipe looks right?",
    "How long before the party should I start cooking?",
    "What drinks go well with that?",
    "Any quick dessert ideas that need no oven?",
    "How many people did I say were coming?",
    "Thanks, that's really helpful. Bye!",
)


@client_group.command()
@target_options
@click.option("--personality", default=None)
@click.option("--gender", type=click.Choice(["female", "male"]), default=None)
def conversation(target: Target, personality: str | None, gender: str | None) -> None:
    """A fixed 10-turn script in one session; checks each turn and that history is kept."""
    run_checked(_conversation(target, persona_payload(personality, gender, None)))


async def _conversation(target: Target, persona: dict[str, Any]) -> None:
    sid = new_id()
    async with await target.connect() as conn:
        ready = await conn.turn("start", sid, persona, wait_s=target.timeout)
        if ready.end != "ready":
            raise CheckFailed(f"start without an utterance answered {ready.end!r}, not ready")
        turns: list[Turn] = []
        for i, text in enumerate(CONVERSATION, 1):
            turn = await conn.turn("message", sid, {"user_utterance": text}, wait_s=target.timeout)
            check_turn(turn, f"turn {i}")
            turns.append(turn)
            click.echo(f"[{i:2}] user: {text}")
            click.echo(f"     {toolcall_line(turn)}")
            click.echo(f"     bot:  {turn.text.strip()}")
            click.echo(f"     {timing_line(turn)}")
        prompts = [int((t.usage or {}).get("prompt_tokens", 0)) for t in turns]
        if prompts[1] <= prompts[0]:
            raise CheckFailed(f"prompt tokens did not grow from turn 1 to 2 ({prompts[0]} -> {prompts[1]}): history lost")
        await conn.send("end", sid)
        code = await conn.wait_closed(target.timeout)
        if code != 1000:
            raise CheckFailed(f"end closed with {code}, not 1000")
    ttft = summarize([ms(t.first_token_s) for t in turns])
    click.echo(f"10 turns done; prompt tokens {prompts[0]} -> {prompts[-1]}; "
               f"first token p50 {fmt_ms(ttft.p50)} ms, max {fmt_ms(ttft.max)} ms")


# --- history recall --------------------------------------------------------------

RECALL_FACT = "Biscuit"
RECALL_QUESTION = "Quick question: what is my dog's name?"


def recall_history(pairs: int = 12) -> list[dict[str, str]]:
    """A long history with one fact to recall, buried in the middle."""
    chatter = [
        ("I just got back from a long walk by the river.", "That sounds lovely. How was the weather?"),
        ("Sunny but windy. I saw some herons.", "Herons are beautiful birds. Did they fly off?"),
        ("One did. Anyway, I have been busy with work.", "What kind of work keeps you busy these days?"),
        ("Mostly spreadsheets for the quarterly report.", "That can be tiring. Take breaks when you can."),
    ]
    history: list[dict[str, str]] = []
    for i in range(pairs):
        if i == pairs // 2:
            user, bot = f"By the way, my dog is called {RECALL_FACT}. He is a beagle.", f"{RECALL_FACT} the beagle! What a great name."
        else:
            user, bot = chatter[i % len(chatter)]
        history += [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
    return history


@client_group.command()
@target_options
@click.option("--pairs", type=click.IntRange(2, 200), default=12, show_default=True, help="History turns (user+assistant pairs).")
@click.option("--require-recall", is_flag=True, help="Fail when the reply does not name the fact (a model-quality check).")
@click.option("--bench", "rounds", type=click.IntRange(min=1), default=None,
              help="Also measure N rounds: first token with the history sent cold vs prefilled by a start without utterance.")
def history(target: Target, pairs: int, require_recall: bool, rounds: int | None) -> None:
    """Start with a long history, then ask about a fact in it."""
    run_checked(_history(target, pairs, require_recall, rounds))


async def _history(target: Target, pairs: int, require_recall: bool, rounds: int | None) -> None:
    hist = recall_history(pairs)
    async with await target.connect() as conn:
        turn = await conn.turn("start", new_id(), {"history": hist, "user_utterance": RECALL_QUESTION}, wait_s=target.timeout)
        check_turn(turn, "recall")
        recalled = RECALL_FACT.lower() in turn.text.lower()
        click.echo(f"history: {len(hist)} messages, prompt {(turn.usage or {}).get('prompt_tokens')} tokens")
        click.echo(f"reply: {turn.text.strip()}")
        click.echo(f"recalled {RECALL_FACT!r}: {'yes' if recalled else 'no'}")
        click.echo(timing_line(turn))
        if rounds:
            await _history_bench(conn, target, hist, rounds)
    if require_recall and not recalled:
        raise CheckFailed(f"the reply does not mention {RECALL_FACT!r}")


async def _history_bench(conn: YapConnection, target: Target, hist: list[dict[str, str]], rounds: int) -> None:
    cold: list[float | None] = []
    warm: list[float | None] = []
    for i in range(rounds):
        # Vary the question so no round's whole prompt is cached by an earlier one.
        question = f"{RECALL_QUESTION} (round {i})"
        t = await conn.turn("start", new_id(), {"history": hist, "user_utterance": question}, wait_s=target.timeout)
        check_turn(t, f"cold round {i}")
        cold.append(ms(t.first_token_s))
        sid = new_id()
        ready = await conn.turn("start", sid, {"history": hist}, wait_s=target.timeout)
        if ready.end != "ready":
            raise CheckFailed(f"prefill start answered {ready.end!r}, not ready")
        t = await conn.turn("message", sid, {"user_utterance": question}, wait_s=target.timeout)
        check_turn(t, f"prefilled round {i}")
        warm.append(ms(t.first_token_s))
    for label, xs in (("history sent with the utterance", cold), ("history prefilled (ready first)", warm)):
        s = summarize(xs)
        click.echo(f"{label}: first token avg {fmt_ms(s.avg)} p50 {fmt_ms(s.p50)} p90 {fmt_ms(s.p90)} ms (n={s.count})")


# --- cancel ------------------------------------------------------------------------


@client_group.command()
@target_options
@click.option("--after-tokens", type=click.IntRange(min=1), default=2, show_default=True,
              help="Cancel once this many token frames have arrived.")
@click.option("--quiet-s", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="How long to watch for stray frames of the cancelled turn.")
def cancel(target: Target, after_tokens: int, quiet_s: float) -> None:
    """Cancel a reply after its first tokens; check nothing of it follows; then recover."""
    run_checked(_cancel(target, after_tokens, quiet_s))


async def _cancel(target: Target, after_tokens: int, quiet_s: float) -> None:
    sid, rid = new_id(), new_id()
    ask = "Tell me a long story about a lighthouse keeper and a storm, in detail."
    async with await target.connect() as conn:
        t0 = await conn.send("start", sid, rid, {"user_utterance": ask})
        tokens = 0
        while tokens < after_tokens:
            frame = await conn.recv(target.timeout)
            if frame.request_id == rid and frame.type in ("done", "error"):
                raise CheckFailed(f"the turn ended ({frame.type}) before {after_tokens} tokens: nothing left to cancel")
            tokens += frame.type == "token" and frame.request_id == rid
        cancel_sent = await conn.send("cancel", sid, payload={"reason": "client-check"})
        # Everything until `cancelled` may still belong to the turn; after it, nothing may.
        while True:
            frame = await conn.recv(target.timeout)
            if frame.type == "cancelled":
                break
            if frame.request_id == rid and frame.type in ("done", "error"):
                raise CheckFailed(f"the turn ended with {frame.type} instead of cancelled (it finished first?)")
        latency = conn.clock() - cancel_sent
        if frame.request_id != rid:
            raise CheckFailed(f"cancelled names request {frame.request_id}, not the running {rid}")
        if frame.payload.get("reason") != "client-check":
            raise CheckFailed(f"cancelled reason {frame.payload.get('reason')!r} is not the one sent")
        # A ping orders the stream: its pong comes after anything sent before it.
        stray = await _frames_until_pong(conn, sid, "ping-after-cancel", target.timeout)
        await asyncio.sleep(quiet_s)
        stray += await _frames_until_pong(conn, sid, "ping-quiet", target.timeout)
        stray = [f for f in stray if f.request_id == rid]
        if stray:
            raise CheckFailed(f"{len(stray)} frame(s) of the cancelled turn after cancelled: {[f.type for f in stray]}")
        click.echo(f"cancelled after {tokens} tokens ({(cancel_sent - t0) * 1000:.1f} ms into the turn); "
                   f"cancelled frame {latency * 1000:.1f} ms after cancel; nothing followed")
        turn = await conn.turn("message", sid, {"user_utterance": "Sorry, never mind. Just say hello."},
                               wait_s=target.timeout)
        check_turn(turn, "recovery turn")
        click.echo(f"recovered: {turn.text.strip()!r}")
        click.echo(timing_line(turn))


async def _frames_until_pong(conn: YapConnection, sid: str, request_id: str, wait_s: float) -> list[Frame]:
    """Send a ping; the frames that arrive before its pong."""
    await conn.send("ping", sid, request_id)
    seen = []
    while (frame := await conn.recv(wait_s)).type != "pong":
        seen.append(frame)
    return seen


# --- idle --------------------------------------------------------------------------


@client_group.command()
@target_options
@click.option("--idle-timeout", type=click.FloatRange(min=0.1), default=150.0, show_default=True,
              help="The server's WS_IDLE_TIMEOUT_S: silence longer than this must close with 4000.")
@click.option("--skip-silence", is_flag=True, help="Check only end -> 1000 (the silence check waits the whole timeout).")
def idle(target: Target, idle_timeout: float, skip_silence: bool) -> None:
    """Check that `end` closes with 1000 and that silence closes with 4000."""
    run_checked(_idle(target, idle_timeout, skip_silence))


async def _idle(target: Target, idle_timeout: float, skip_silence: bool) -> None:
    sid = new_id()
    async with await target.connect() as conn:
        ready = await conn.turn("start", sid, {}, wait_s=target.timeout)
        if ready.end != "ready":
            raise CheckFailed(f"start answered {ready.end!r}, not ready")
        await conn.send("end", sid)
        code = await conn.wait_closed(target.timeout)
        if code != 1000 or not any(f.type == "session_end" for f in conn.drained):
            raise CheckFailed(f"end: close {code} with frames {[f.type for f in conn.drained]}, "
                              "expected session_end and 1000")
    click.echo("end -> session_end, close 1000: ok")
    if skip_silence:
        return
    async with await target.connect() as conn:
        t0 = conn.clock()
        code = await conn.wait_closed(idle_timeout + target.timeout)
        waited = conn.clock() - t0
    if code != 4000:
        raise CheckFailed(f"silence: closed with {code}, expected 4000")
    if waited < idle_timeout * 0.9:
        raise CheckFailed(f"silence: closed after {waited:.2f} s, before the idle timeout of {idle_timeout:g} s")
    click.echo(f"silence -> close 4000 after {waited:.2f} s: ok")


# --- tool --------------------------------------------------------------------------


class LabelledTurn(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    label: bool  # True: the user wants the screen looked at
    history: list[dict[str, str]] = []


def load_labelled(path: Path) -> list[LabelledTurn]:
    """JSONL: {"text": ..., "label": true|false|"yes"|"no", "history"?: [...]} per line."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if isinstance(raw, dict) and isinstance(raw.get("label"), str):
                if raw["label"] not in ("yes", "no"):
                    raise ValueError(f"label must be true/false or yes/no, not {raw['label']!r}")
                raw["label"] = raw["label"] == "yes"
            out.append(msgspec.convert(raw, LabelledTurn))
        except (ValueError, msgspec.ValidationError) as exc:
            raise click.BadParameter(f"{path}:{n}: {exc}", param_hint="--file") from exc
    if not out:
        raise click.BadParameter(f"{path}: no labelled turns", param_hint="--file")
    return out


async def turn_within_rate_limit(conn: YapConnection, kind: Literal["start", "message"], sid: str,
                                 payload: dict[str, Any], wait_s: float, retries: int = 3) -> Turn:
    """A turn that honours ``rate_limited``: wait its retry_after_ms, then send again."""
    for _ in range(retries):
        turn = await conn.turn(kind, sid, payload, wait_s=wait_s)
        err = turn.error or {}
        if turn.end != "error" or err.get("code") != "rate_limited" or not err.get("retryable"):
            return turn
        pause = float(err.get("retry_after_ms") or 1000) / 1000.0
        click.echo(f"(rate limited by the server: waiting {pause:.1f} s as it asks)", err=True)
        await asyncio.sleep(pause)
    return await conn.turn(kind, sid, payload, wait_s=wait_s)


def default_tool_file() -> Path:
    return Path(__file__).parent / "data" / "tool_turns.jsonl"


@client_group.command()
@target_options
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Labelled turns, JSONL (default: the packaged sample).")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fail below this accuracy.")
@click.option("--show-misses", is_flag=True, help="Print each misclassified turn.")
def tool(target: Target, path: Path | None, min_accuracy: float, show_misses: bool) -> None:
    """Replay labelled turns; report the classifier's accuracy, false positives and negatives."""
    run_checked(_tool(target, load_labelled(path or default_tool_file()), min_accuracy, show_misses))


async def _tool(target: Target, items: list[LabelledTurn], min_accuracy: float, show_misses: bool) -> None:
    tp = fp = tn = fn = 0
    latencies: list[float | None] = []
    async with await target.connect() as conn:
        for item in items:
            # One token is enough: the toolcall comes first, the reply is not the point.
            payload = {"user_utterance": item.text, "history": item.history, "sampling": {"max_tokens": 1}}
            turn = await turn_within_rate_limit(conn, "start", new_id(), payload, target.timeout)
            if turn.end != "done" or turn.toolcall is None:
                raise CheckFailed(f"{item.text!r}: no toolcall (turn ended {turn.end}: {turn.error})")
            said = turn.toolcall.get("status") == "yes"
            latencies.append(ms(turn.toolcall_s))
            tp, fp = tp + (said and item.label), fp + (said and not item.label)
            tn, fn = tn + (not said and not item.label), fn + (not said and item.label)
            if show_misses and said != item.label:
                click.echo(f"miss: expected {'yes' if item.label else 'no'}, got {turn.toolcall.get('status')} "
                           f"({turn.toolcall.get('confidence')}): {item.text}")
    total = tp + fp + tn + fn
    accuracy = (tp + tn) / total
    lat = summarize(latencies)
    click.echo(f"turns {total}: accuracy {accuracy:.3f}; true positives {tp}, true negatives {tn}, "
               f"false positives {fp}, false negatives {fn}")
    click.echo(f"precision {tp / max(tp + fp, 1):.3f}, recall {tp / max(tp + fn, 1):.3f}; "
               f"toolcall latency p50 {fmt_ms(lat.p50)} ms, p95 {fmt_ms(lat.p95)} ms")
    if accuracy < min_accuracy:
        raise CheckFailed(f"accuracy {accuracy:.3f} below --min-accuracy {min_accuracy}")
