"""The README documents every setting."""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`LEADCYCLE_{n.upper()}`" not in readme]
    assert missing == []


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    assert "./run demo" in head
    assert "./run test" in head
