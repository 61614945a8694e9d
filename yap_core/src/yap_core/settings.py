"""Settings: environment variable, then plugins.toml, then the default.

Each group of settings is a msgspec Struct; a field ``chat_max_out`` is set by
the environment variable ``CHAT_MAX_OUT`` or the key ``chat_max_out`` in its
plugins.toml section (``[core]`` for the core, ``[hf]``, ``[vllm]`` ... for a
plugin). Unknown keys in a section are an error: no setting is accepted and
then ignored. Plugins load their own section with ``Config.section``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect as mi

T = TypeVar("T", bound=msgspec.Struct)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it and the fix."""


def doc(description: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, **constraints)


def read_data_file(setting: str, path: str | None, builtin: str) -> tuple[str, str]:
    """(text, source) of the file a setting names (``PERSONAS_FILE`` ...), or
    of the built-in ``yap_core/data/<builtin>`` when the setting is empty."""
    if path is None:
        raw = files("yap_core").joinpath(f"data/{builtin}").read_text(encoding="utf-8")
        return raw, f"built-in {builtin}"
    file = Path(path)
    if not file.is_file():
        raise SettingsError(f"{setting}: no such file {file}")
    return file.read_text(encoding="utf-8"), str(file)


class Config:
    """The raw sources of a deployment's settings."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        toml: Mapping[str, Any] | None = None,
        toml_path: Path | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.toml = dict(toml or {})
        self.toml_path = toml_path

    @classmethod
    def discover(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read plugins.toml from YAP_PLUGINS_TOML, else ./plugins.toml if present."""
        env = dict(os.environ if env is None else env)
        explicit = env.get("YAP_PLUGINS_TOML")
        path = Path(explicit) if explicit else Path("plugins.toml")
        if explicit and not path.is_file():
            raise SettingsError(f"YAP_PLUGINS_TOML: no such file {path}")
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        return cls(env, data, path if path.is_file() else None)

    def section(self, name: str, type_: type[T]) -> T:
        """Build ``type_`` from env > toml[name] > defaults, validated."""
        table = self.toml.get(name, {})
        if not isinstance(table, dict):
            raise SettingsError(f"plugins.toml: [{name}] must be a table")
        info = mi.type_info(type_)
        assert isinstance(info, mi.StructType)
        fields = {f.name: f for f in info.fields}
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise SettingsError(
                f"plugins.toml [{name}]: unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(fields))}"
            )
        data: dict[str, Any] = dict(table)
        for fname, field in fields.items():
            raw = self.env.get(fname.upper())
            if raw is not None:
                data[fname] = _from_env(fname.upper(), raw, field.type)
        try:
            return msgspec.convert(data, type_)
        except msgspec.ValidationError as exc:
            raise SettingsError(_explain(name, str(exc))) from exc


def _from_env(env_name: str, raw: str, t: mi.Type) -> Any:
    """Turn one environment string into the JSON-ish value its field expects."""
    # Annotated[X | None, doc(...)] arrives as Metadata(Union): unwrap it first
    inner = t.type if isinstance(t, mi.Metadata) else t
    if isinstance(inner, mi.UnionType):
        if raw.strip() == "" and any(isinstance(x, mi.NoneType) for x in inner.types):
            return None
        inner = next(x for x in inner.types if not isinstance(x, mi.NoneType))
    if isinstance(inner, mi.Metadata):
        inner = inner.type
    value = raw.strip()
    if isinstance(inner, mi.BoolType):
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise SettingsError(f"{env_name}={value!r}: expected 1/0, true/false, yes/no or on/off")
    if isinstance(inner, mi.IntType):
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{env_name}={value!r}: expected an integer") from None
    if isinstance(inner, mi.FloatType):
        try:
            return float(value)
        except ValueError:
            raise SettingsError(f"{env_name}={value!r}: expected a number") from None
    if isinstance(inner, mi.VarTupleType | mi.ListType):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _explain(section: str, message: str) -> str:
    # msgspec says "... - at `$.chat_max_out`"; name the env variable instead.
    if "at `$." in message:
        text, _, where = message.rpartition(" - at `$.")
        key = where.rstrip("`").split(".")[0].split("[")[0]
        return f"{key.upper()} ([{section}] {key}): {text}"
    return f"[{section}]: {message}"


def describe(type_: type[msgspec.Struct]) -> list[tuple[str, str, str]]:
    """(ENV_NAME, default, description) for each field: the README's table."""
    rows = []
    info = mi.type_info(type_)
    assert isinstance(info, mi.StructType)
    for f in info.fields:
        # doc()'s description, as msgspec reads it (string annotations included)
        extra = f.type.extra_json_schema if isinstance(f.type, mi.Metadata) else None
        desc = (extra or {}).get("description", "")
        default = "(required)" if f.required else repr(f.default)
        rows.append((f.name.upper(), default, desc))
    return rows


# ---------------------------------------------------------------------------
# The core's own settings ([core] in plugins.toml).

DeployMode = Literal["both", "chat", "tool"]
EventLoop = Literal["uvloop", "asyncio"]
ToolDtype = Literal["auto", "float32", "bfloat16", "float16"]


class CoreSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text_api_key: Annotated[
        tuple[str, ...], doc("Accepted API key(s), comma-separated for rotation. Required; no default.")
    ] = ()
    inference_engine: Annotated[str, doc("Chat engine plugin: hf, vllm, trt, scripted or a third party's.")] = "hf"
    tool_classifier: Annotated[str, doc("Classifier plugin name.")] = "classifier"
    deploy_mode: Annotated[DeployMode, doc("both (classifier + chat), chat, or tool (classifier only).")] = "both"
    chat_model: Annotated[
        str | None, doc("Chat model: local folder, .gguf file or hub id. Empty: the engine's default.")
    ] = None
    tool_model: Annotated[
        str | None, doc("Classifier model folder or hub id. Empty: the classifier's built default.")
    ] = None
    yap_cache_dir: Annotated[
        str | None, doc("Cache for built artefacts (the default classifier). Empty: ~/.cache/yap.")
    ] = None

    chat_prompt_max_tokens: Annotated[int, doc("Longest accepted system prompt, in tokens.", ge=1)] = 1500
    history_max_tokens: Annotated[int, doc("History budget; oldest whole turns are dropped past it.", ge=0)] = 3000
    user_utt_max_tokens: Annotated[int, doc("Utterance budget; the beginning is kept.", ge=1)] = 350
    chat_max_out: Annotated[int, doc("Most tokens in one reply (and the max of sampling.max_tokens).", ge=1)] = 150
    chat_timeout_s: Annotated[float, doc("A turn running longer gets error `timeout` and is aborted.", gt=0)] = 60.0

    chat_temperature: Annotated[float, doc("Default temperature.", ge=0, le=2)] = 0.7
    chat_top_p: Annotated[float, doc("Default top_p.", gt=0, le=1)] = 0.9
    chat_top_k: Annotated[int, doc("Default top_k (-1: off).", ge=-1)] = -1
    chat_min_p: Annotated[float, doc("Default min_p.", ge=0, le=1)] = 0.0
    chat_repetition_penalty: Annotated[float, doc("Default repetition penalty.", gt=0, le=2)] = 1.1
    chat_presence_penalty: Annotated[float, doc("Default presence penalty.", ge=-2, le=2)] = 0.0
    chat_frequency_penalty: Annotated[float, doc("Default frequency penalty.", ge=-2, le=2)] = 0.0

    concurrent_model_call: Annotated[
        bool, doc("1: run classifier and chat together, holding tokens until the decision is sent.")
    ] = False
    screen_check_prefix: Annotated[
        str, doc("Put before the user text when the classifier says yes.")
    ] = "[The user has asked you to look at their screen; a screenshot is being taken.] "
    followup_prefix: Annotated[str, doc("Put before a followup's analysis_text.")] = "[Screen analysis] "
    personas_file: Annotated[
        str | None, doc("TOML file of persona templates. Empty: the built-in personas.")
    ] = None
    banned_phrases_file: Annotated[
        str | None, doc("Text file, one phrase a line, whose tokens are biased away. Empty: built-in list.")
    ] = None

    max_concurrent_connections: Annotated[int, doc("Most open WebSockets; more get 1013.", ge=1)] = 100
    ws_max_message_bytes: Annotated[int, doc("Largest inbound frame; larger closes with 1009.", ge=256)] = 65536
    ws_idle_timeout_s: Annotated[float, doc("Inbound silence (no turn running) that closes with 4000.", gt=0)] = 150.0
    ws_max_messages_per_window: Annotated[int, doc("start/message/followup per window (0: off).", ge=0)] = 20
    ws_message_window_seconds: Annotated[float, doc("Window for the message limit.", gt=0)] = 60.0
    ws_max_cancels_per_window: Annotated[int, doc("cancel frames per window (0: off).", ge=0)] = 20
    ws_cancel_window_seconds: Annotated[float, doc("Window for the cancel limit.", gt=0)] = 60.0
    token_frame_interval_ms: Annotated[
        float,
        doc(
            "Least time between two token frames of one turn on a socket; pieces that come "
            "meanwhile join the waiting frame (0: every piece goes out at once). The first "
            "token frame and the frames after the last never wait.",
            ge=0,
            le=1000,
        ),
    ] = 0.0
    ws_permessage_deflate: Annotated[
        bool,
        doc(
            "Accept a client's permessage-deflate offer. Off: token frames are ~100 bytes, and "
            "compressing them cost the server 7-10 us a frame and ~100 KiB a socket (docs/benchmarks.md)."
        ),
    ] = False
    ws_send_queue_max: Annotated[
        int, doc("Frames queued to one slow client before it is closed (1008... see docs).", ge=8)
    ] = 1024
    auth_max_failures: Annotated[int, doc("Failed auths per client address per window before throttling.", ge=1)] = 10
    auth_failure_window_s: Annotated[float, doc("Window for auth-failure throttling.", gt=0)] = 60.0
    trusted_proxies: Annotated[
        tuple[str, ...], doc("Proxy addresses whose X-Forwarded-For is trusted (comma-separated).")
    ] = ()
    allowed_origins: Annotated[
        tuple[str, ...], doc("Origin allow-list for /ws (comma-separated). Empty: any origin.")
    ] = ()
    drain_timeout_s: Annotated[float, doc("On SIGTERM, how long running turns may finish.", ge=0)] = 30.0

    tool_decision_threshold: Annotated[float, doc("P(screenshot) at or above which the decision is yes.", ge=0, le=1)] = 0.5
    tool_history_tokens: Annotated[int, doc("Classifier input window in tokens (clamped to the model's max).", ge=16)] = 256
    tool_timeout_s: Annotated[float, doc("A decision slower than this counts as no.", gt=0)] = 1.0
    tool_batch_size: Annotated[int, doc("Classifier micro-batch size.", ge=1)] = 32
    tool_batch_wait_ms: Annotated[float, doc("How long a micro-batch waits to fill.", ge=0)] = 2.0
    tool_dtype: Annotated[
        ToolDtype,
        doc("Classifier precision. auto: float16 on CUDA, bfloat16 on a CPU with native bf16 (AVX512-BF16, AMX, Arm BF16), else float32."),
    ] = "auto"
    tool_cuda_graphs: Annotated[
        bool, doc("CUDA only (ignored on CPU): replay the classifier from CUDA graphs captured at start-up.")
    ] = True

    log_level: Annotated[str, doc("Python log level.")] = "INFO"
    turn_timing_log: Annotated[
        bool,
        doc("Log one line per turn (logger yap.timing) splitting its time to first token: server work before the engine, the engine, after."),
    ] = False
    event_loop: Annotated[
        EventLoop, doc("asyncio event loop: uvloop (faster per frame and per turn; Linux and macOS) or asyncio.")
    ] = "uvloop"

    server_workers: Annotated[
        int,
        doc("Server processes sharing the port and one engine (each runs its own event loop; MAX_CONCURRENT_CONNECTIONS holds for them together). More than 1 needs an engine that can be shared (vllm, scripted).", ge=1, le=64),
    ] = 1

    otel_exporter_otlp_endpoint: Annotated[
        str | None,
        doc("OTLP/HTTP collector base URL (http://host:4318); metrics and traces go to /v1/metrics, /v1/traces. Empty: no telemetry at all."),
    ] = None
    otel_metric_export_interval: Annotated[
        int, doc("Milliseconds between metric exports (when the endpoint is set).", ge=100)
    ] = 15000
    otel_service_name: Annotated[str, doc("service.name of exported telemetry.", min_length=1)] = "yap"
    sentry_dsn: Annotated[
        str | None, doc("Sentry DSN; errors are reported (needs yap-core[sentry]). Empty: no Sentry. Never logged.")
    ] = None
    sentry_error_interval_s: Annotated[
        float, doc("At most one Sentry event per error class per this many seconds.", gt=0)
    ] = 60.0

    def plugin_names(self) -> list[str]:
        """The plugins this deployment selects: the engine unless DEPLOY_MODE=tool,
        the classifier unless DEPLOY_MODE=chat (once when both are one plugin)."""
        names = [self.inference_engine] if self.deploy_mode != "tool" else []
        if self.deploy_mode != "chat" and self.tool_classifier not in names:
            names.append(self.tool_classifier)
        return names

    def validate(self) -> None:
        """Cross-field checks done at start-up, before any model loads."""
        if not self.text_api_key and self.deploy_mode in ("both", "chat", "tool"):
            raise SettingsError("TEXT_API_KEY is required: set it to one key or several separated by commas")
        if any(not k for k in self.text_api_key):
            raise SettingsError("TEXT_API_KEY: empty key in the list")


def load_core(config: Config) -> CoreSettings:
    settings = config.section("core", CoreSettings)
    settings.validate()
    return settings
