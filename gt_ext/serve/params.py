"""Sampling parameters: plain data, importable without torch (the CLI and the API validate with it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gt_ext.errors import GtExtError

MAX_STOPS = 16  # stop strings per request
MAX_STOP_CHARS = 256  # characters per stop string
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
MAX_CHOICE_FIELDS, MAX_CHOICES, MAX_CHOICE_CHARS = 8, 64, 100  # choices: fields, names per field, name length


@dataclass
class SamplingParams:
    """How to pick tokens. `temperature=0` is greedy; `top_k=0` and `top_p=1` switch those filters off.
    `choices` restricts JSON string fields to listed values (gt_ext.serve.choices)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    choices: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> SamplingParams:
        """Raise `GtExtError` naming the first bad field; return self when all are in range."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise GtExtError(f"sampling: max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 100.0:
            raise GtExtError(f"sampling: temperature must be in [0, 100], got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise GtExtError(f"sampling: top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise GtExtError(f"sampling: top_k must be an integer >= 0, got {self.top_k!r}")
        if not 0.0 < float(self.repetition_penalty) <= 10.0:
            raise GtExtError(f"sampling: repetition_penalty must be in (0, 10], got {self.repetition_penalty!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise GtExtError("sampling: stop must be a list of non-empty strings")
        if len(self.stop) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise GtExtError(f"sampling: stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]):
            raise GtExtError(f"sampling: seed must be an integer in [-2**63, 2**64-1], got {self.seed!r}")
        self._validate_choices()
        return self

    def _validate_choices(self) -> None:
        c = self.choices
        if not isinstance(c, dict) or len(c) > MAX_CHOICE_FIELDS:
            raise GtExtError(f"sampling: choices must map at most {MAX_CHOICE_FIELDS} field names to lists of strings")
        for key, names in c.items():
            if not isinstance(key, str) or not key or '"' in key or "\\" in key:
                raise GtExtError(f"sampling: choices: bad field name {key!r}")
            if (not isinstance(names, list) or not names or len(names) > MAX_CHOICES
                    or not all(isinstance(n, str) and n and len(n) <= MAX_CHOICE_CHARS
                               and '"' not in n and "\\" not in n for n in names)):
                raise GtExtError(f"sampling: choices[{key!r}] must list 1-{MAX_CHOICES} names of 1-{MAX_CHOICE_CHARS} "
                                 "characters without quotes or backslashes")

    @property
    def greedy(self) -> bool:
        """True when the next token is always the arg-max."""
        return float(self.temperature) == 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return asdict(self)
