"""Result bundles and checkpoints as .tar.gz: packed reproducibly, unpacked safely."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path


def pack_dir(src_dir: Path, dest_tar_gz: Path) -> Path:
    """Pack src_dir's files at the archive root, byte-for-byte reproducibly: sorted, no times or owners."""
    files = sorted((path for path in src_dir.rglob("*") if path.is_file()), key=lambda p: p.as_posix())
    # mtime=0 and an empty name keep the gzip header free of the time and the local file name.
    with (
        dest_tar_gz.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            info = tarfile.TarInfo(path.relative_to(src_dir).as_posix())
            info.size, info.mode = path.stat().st_size, 0o644
            with path.open("rb") as file:
                tar.addfile(info, file)
    return dest_tar_gz


def unpack(archive: Path, dest_dir: Path) -> Path:
    """Extract an archive into dest_dir; the "data" filter refuses links, devices and paths outside it."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest_dir, filter="data")
    return dest_dir
