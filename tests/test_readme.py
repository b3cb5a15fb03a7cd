"""The README's command and configuration references stay complete and true: every option of
every ``crmkit`` command, and every configuration key with its default, as the code has them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    end = text.find("\n## ", start + 1)
    nxt = text.find("\n### ", start + 1)
    ends = [e for e in (end, nxt) if e != -1]
    return text[start : min(ends)] if ends else text[start:]


def _commands() -> dict:
    import typer

    from crmkit.cli import app

    return typer.main.get_command(app).commands


def _readme_command_rows() -> dict[str, str]:
    rows = {}
    for line in _section("Commands").splitlines():
        m = re.match(r"\| `crmkit ([a-z]+)(.*?)` \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_command_and_option_is_in_the_readme_command_table():
    rows = _readme_command_rows()
    commands = _commands()
    assert set(rows) == set(commands)
    for name, cmd in commands.items():
        options = {o for p in cmd.params for o in p.opts if o.startswith("--") and o != "--help"}
        listed = set(re.findall(r"--[a-z][a-z-]*", rows[name]))
        assert listed == options, f"crmkit {name}: README lists {sorted(listed)}"
        required = {p.opts[0] for p in cmd.params if p.required and p.opts[0].startswith("--")}
        for opt in required:  # required options are not shown in [brackets]
            assert re.search(rf"(^|\s){opt}\b", re.sub(r"\[[^\]]*\]", "", rows[name])), opt


def _fields(model: type[BaseModel], prefix: str = ""):
    for key, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", field.default


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, dict):
        return str(value) if value else "{}"
    return str(value)


def _readme_config_tables() -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in _section("Configuration reference").splitlines():
        head = re.match(r"\*\*`([a-z_]+):`\*\*", line)
        if head:
            current = tables.setdefault(head.group(1), {})
            continue
        row = re.match(r"\| `([a-z_.]+)` \| `(.*?)` \| (.+) \|$", line)
        if row and current is not None:
            current[row.group(1)] = row.group(2).replace("\\|", "|")
    return tables


def test_every_config_key_and_its_default_is_in_the_readme():
    from crmkit.pipelines.config import PipelineConfig, ScoreFileConfig

    tables = _readme_config_tables()
    assert list(tables) == list(PipelineConfig.model_fields)
    for section, field in PipelineConfig.model_fields.items():
        expected = {key: _shown(default) for key, default in _fields(field.annotation)}
        assert tables[section] == expected, section
    assert set(ScoreFileConfig.model_fields) <= set(tables)


@pytest.mark.parametrize("name", ["train.yaml", "score.yaml"])
def test_readme_names_the_pipeline_files_that_exist(name):
    assert (README.parent / "pipelines" / name).is_file()
    assert f"pipelines/{name}" in README.read_text(encoding="utf-8")
