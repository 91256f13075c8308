"""A small Dockerfile reader for the tests that check the images without a Docker engine (CI has none).

It knows what those tests need: instructions with line continuations and comments removed, stages by name,
the instructions a `--target` build runs (through `FROM <earlier stage>`), exec-form arguments, COPY sources
and destination, ENV pairs and the shell commands inside a RUN.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

FLAG = re.compile(r"^--[a-z-]+(=\S*)?$")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # the rest, continuation lines joined by a space
    line: int  # where it starts in the file (1-based)

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """`--from=x --chown=1:1 a b` → ({"from": "x", "chown": "1:1"}, "a b")."""
        flags, rest = {}, self.arguments
        while True:
            head, _, tail = rest.partition(" ")
            if not FLAG.match(head):
                return flags, rest
            name, _, value = head[2:].partition("=")
            flags[name] = value
            rest = tail.lstrip()

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/RUN (or HEALTHCHECK's CMD), else None."""
        text = self.flags_and_rest()[1]
        if self.keyword == "HEALTHCHECK":
            text = text.removeprefix("CMD").strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(part, str) for part in value) else None

    def copy_paths(self) -> tuple[list[str], str]:
        """COPY/ADD: (sources, destination)."""
        rest = self.flags_and_rest()[1]
        paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        return paths[:-1], paths[-1]

    def env_pairs(self) -> dict[str, str]:
        """ENV A=1 B="two words" → {"A": "1", "B": "two words"}; also the old `ENV A value` form."""
        words = shlex.split(self.arguments)
        if words and "=" not in words[0]:
            return {words[0]: " ".join(words[1:])}
        return dict(word.split("=", 1) for word in words)

    def shell_commands(self) -> list[list[str]]:
        """A shell-form RUN split at `&&`, `||` and `;` into words per command."""
        words = shlex.split(self.arguments, posix=True)
        commands, current = [], []
        for word in words:
            if word in ("&&", "||", ";"):
                commands.append(current)
                current = []
            else:
                current.append(word)
        return [command for command in [*commands, current] if command]


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)


def read_instructions(text: str) -> list[Instruction]:
    """Instructions in order; comment lines (also inside a continuation) and blank lines dropped."""
    instructions, parts, start = [], [], 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, arguments = " ".join(parts).partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
            parts = []
    if parts:
        raise ValueError(f"line {start}: the instruction ends in a line continuation")
    return instructions


def read_stages(path: Path) -> dict[str, Stage]:
    """Stages by name (an unnamed stage by its index), in file order."""
    stages: dict[str, Stage] = {}
    for instruction in read_instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = instruction.flags_and_rest()[1].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages[name or str(len(stages))] = Stage(name, words[0])
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {instruction.line}: {instruction.keyword} before the first FROM")
        else:
            list(stages.values())[-1].instructions.append(instruction)
    return stages


def target_instructions(stages: dict[str, Stage], target: str) -> list[Instruction]:
    """What `docker build --target TARGET` runs for that image: its ancestors' instructions, then its own."""
    stage = stages[target]
    inherited = target_instructions(stages, stage.base) if stage.base in stages else []
    return inherited + stage.instructions


def base_image(stages: dict[str, Stage], target: str) -> str:
    """The external image a target finally builds on."""
    stage = stages[target]
    return base_image(stages, stage.base) if stage.base in stages else stage.base
