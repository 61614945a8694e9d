"""Persona templates: the system prompt when a client sends no `chat_prompt`.

The templates live in a TOML file (built in: data/personas.toml; a deployment
points PERSONAS_FILE at its own). A file is checked completely at load, so a
broken template fails the start-up, not a user's turn.
"""

from __future__ import annotations

import re
import string
import tomllib
from typing import Literal

import msgspec

from yap_core.frames import PERSONALITY_PATTERN
from yap_core.prompt_types import PromptError
from yap_core.settings import SettingsError, read_data_file

GenderKey = Literal["female", "male", "none"]
_NAME = re.compile(PERSONALITY_PATTERN)
_PLACEHOLDERS = frozenset({"name", "noun"})


class _Gender(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    noun: str


class _Persona(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    template: str
    names: dict[GenderKey, str] = {}


class _PersonasFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    default: str
    genders: dict[GenderKey, _Gender]
    personas: dict[str, _Persona]


def _check_template(where: str, template: str) -> None:
    for _, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            continue
        if field not in _PLACEHOLDERS or spec or conv:
            raise SettingsError(
                f"{where}: unknown placeholder {{{field}}}; allowed: {{name}}, {{noun}}"
                " (write {{ and }} for literal braces)"
            )


class Personas:
    """Validated persona templates; immutable after load."""

    def __init__(self, data: _PersonasFile, source: str) -> None:
        self.source = source
        missing = {"female", "male", "none"} - set(data.genders)
        if missing:
            raise SettingsError(f"{source}: [genders] lacks {', '.join(sorted(missing))}")
        personas: dict[str, _Persona] = {}
        for key, persona in data.personas.items():
            if not _NAME.match(key):
                raise SettingsError(
                    f"{source}: persona name {key!r} must be 1-32 letters, digits, _ or -"
                )
            if key.lower() in personas:
                raise SettingsError(f"{source}: persona {key!r} defined twice (names are case-insensitive)")
            if not persona.template.strip():
                raise SettingsError(f"{source}: persona {key!r} has an empty template")
            _check_template(f"{source} [personas.{key}]", persona.template)
            personas[key.lower()] = persona
        if data.default.lower() not in personas:
            raise SettingsError(f"{source}: default persona {data.default!r} is not defined")
        self._personas = personas
        self._genders = dict(data.genders)
        self.default = data.default.lower()

    @classmethod
    def load(cls, path: str | None) -> Personas:
        """The built-in personas for None, else the TOML file at ``path``."""
        raw, source = read_data_file("PERSONAS_FILE", path, "personas.toml")
        try:
            table = tomllib.loads(raw)
            data = msgspec.convert(table, _PersonasFile)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise SettingsError(f"PERSONAS_FILE {source}: {exc}") from exc
        return cls(data, source)

    @property
    def names(self) -> list[str]:
        return sorted(self._personas)

    def compose(self, personality: str | None, gender: str | None) -> str:
        """The system prompt for a personality (None: the default) and gender.

        Unknown personalities are refused rather than given a generic
        template: a typo should show up as an error, not as a different voice.
        """
        key = self.default if personality is None else personality.lower()
        persona = self._personas.get(key)
        if persona is None:
            raise PromptError(
                "invalid_payload",
                "payload.personality",
                f"unknown personality {personality!r}; known: {', '.join(self.names)}",
            )
        if gender not in (None, "female", "male"):
            raise PromptError("invalid_payload", "payload.gender", "gender must be 'female' or 'male'")
        gkey: GenderKey = "none" if gender is None else gender  # type: ignore[assignment]
        who = self._genders[gkey]
        name = persona.names.get(gkey, who.name)
        return persona.template.format(name=name, noun=who.noun).strip()
