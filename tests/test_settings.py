"""Settings refuse what they do not know, and the README documents every one of them as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from loraq.core.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("typo", ["prod", "Production", "staging", ""])
def test_an_unknown_environment_refuses_to_start(typo: str) -> None:
    # "prod" used to be taken as not-production, silently skipping the production guard.
    with pytest.raises(ValidationError, match="environment"):
        Settings(environment=typo)  # type: ignore[arg-type]


def test_production_refuses_the_embedded_defaults() -> None:
    with pytest.raises(ValidationError, match="production needs"):
        Settings(environment="production")
    Settings(environment="production", database_url="postgresql://db/loraq", broker_url="redis://broker/0")


def test_the_readme_documents_every_setting() -> None:
    documented = set(re.findall(r"`(LORAQ_[A-Z0-9_]+)`", README))
    assert documented == {f"LORAQ_{name.upper()}" for name in Settings.model_fields}


def test_the_readme_stands_alone() -> None:
    # Nothing outside the repository: no relative link up, no reference to files that are not in it.
    assert not re.search(r"\]\(\.\./|shared/|DESIGN\.md|STYLE\.md", README)
    for path in re.findall(r"`((?:loraq|api|worker|tests|docs|scripts|bench)/[\w/.-]+\.(?:py|md))`", README):
        assert (Path(__file__).resolve().parent.parent / path).exists(), path
    assert "Celery beat" not in README  # the reconciler is a thread in each worker


def test_api_workers_auto_is_one_process_per_usable_core_up_to_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAQ_API_WORKERS", raising=False)
    for cores, processes in ((1, 1), (2, 2), (64, 2)):  # tests/test_cores.py counts them
        monkeypatch.setattr("loraq.core.settings.usable_cores", lambda cores=cores: cores)
        assert Settings().api_processes == processes  # the default is auto
    assert Settings(api_workers=3).api_processes == 3  # named, it is taken as it is
    monkeypatch.setenv("LORAQ_API_WORKERS", "1")
    assert Settings().api_processes == 1


@pytest.mark.parametrize("count", ["0", "-1", "two", "Auto"])
def test_api_workers_is_a_count_or_auto(count: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAQ_API_WORKERS", count)
    with pytest.raises(ValidationError, match="api_workers"):
        Settings()
