"""Model files on disk: one immutable folder per version, `<root>/<name>/v<N>/`.

A version folder holds what the run or export produced (adapter/, merged/, *.gguf, run.json, ...)
plus `manifest.json` with the sha256 of every file. The folder is built in a temp folder next to
its final place and renamed into place (readers never see half a version), its files are made
read-only, and `verify()` re-hashes every file before a deploy uses it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.digest import sha256_file
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUN_JSON = "run.json"
# From a run folder only the trained result travels; checkpoints (optimizer state) stay behind.
_RUN_KEEP = ("adapter", RUN_JSON, "metrics.jsonl", "loss.png", "conventions.json")
_SKIP_NAMES = {MANIFEST, "checkpoints"}


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Parse `<folder>/manifest.json`; GtExtError naming the file when missing or corrupt."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise GtExtError(f"{path}: manifest missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GtExtError(f"{path}: corrupt manifest ({e.__class__.__name__} at {getattr(e, 'pos', '?')})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise GtExtError(f"{path}: corrupt manifest (no \"files\" map of relpath -> sha256)")
    for rel in files:
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise GtExtError(f"{path}: corrupt manifest (file path {rel!r} leaves the folder)")
    return data


def verify(folder: str | os.PathLike) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; return the manifest.

    Raises GtExtError naming the first missing or mismatching file.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for rel, want in sorted(manifest["files"].items()):
        f = folder / rel
        if not f.is_file():
            raise GtExtError(f"{f}: listed in {folder / MANIFEST} but missing")
        got = sha256_file(f)
        if got != want:
            raise GtExtError(f"{f}: checksum mismatch (manifest {want[:12]}..., file {got[:12]}...)")
    return manifest


def source_kind(src: Path) -> str:
    """'export' (manifest.json present) or 'run' (adapter/ + run.json); GtExtError otherwise."""
    if not src.is_dir():
        raise GtExtError(f"{src}: not a folder (expected a run or export folder)")
    if (src / MANIFEST).exists():
        return "export"
    if (src / "adapter").is_dir() and (src / RUN_JSON).is_file():
        return "run"
    raise GtExtError(f"{src}: neither an export folder (manifest.json) nor a run folder (adapter/ + run.json)")


def read_run_json(src: Path) -> dict[str, Any]:
    """Parse `<src>/run.json` (GtExtError naming it when missing or corrupt)."""
    from gt_ext.train import runfolder

    data = runfolder.read_run_json(src)
    if data is None:
        raise GtExtError(f"{src / RUN_JSON}: missing (the registry needs the run's role and base model)")
    return data


def is_eval_file(path: Path) -> bool:
    """An eval result (`eval-*.json`): metadata about a model, not part of it (the registry records
    it separately, after checking it against the version's files)."""
    return path.name.startswith("eval-") and path.suffix == ".json"


def _files_to_copy(src: Path, kind: str) -> list[Path]:
    """Relative paths of the files that make up the version (eval results are not among them).
    A symbolic link anywhere in them is refused: the registry copies only what is in the folder."""
    tops = [src / n for n in _RUN_KEEP] if kind == "run" else [
        p for p in src.iterdir() if p.name not in _SKIP_NAMES and not is_eval_file(p)]
    out: list[Path] = []
    for top in tops:
        if top.is_symlink():
            raise GtExtError(f"{top}: a symbolic link; the registry copies only regular files inside the folder")
        if top.is_file():
            out.append(top.relative_to(src))
        elif top.is_dir():
            for dirpath, dirnames, filenames in os.walk(top):  # never follows links
                for n in sorted(dirnames + filenames):
                    f = Path(dirpath) / n
                    if f.is_symlink():
                        raise GtExtError(f"{f}: a symbolic link; the registry copies only regular files inside the folder")
                    if n in filenames and f.is_file():
                        out.append(f.relative_to(src))
    return sorted(set(out))


def _make_read_only(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            f.chmod(f.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class ArtifactStore:
    """The folder tree `<root>/<name>/v<N>/` of registered model versions."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def version_dir(self, name: str, version: int) -> Path:
        """Where version `version` of `name` lives."""
        return self.root / name / f"v{version}"

    def versions_on_disk(self, name: str) -> list[int]:
        """Version numbers that have a folder (including ones whose record is gone)."""
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in d.iterdir() if p.is_dir() and p.name[:1] == "v" and p.name[1:].isdigit())

    def install(self, src: str | os.PathLike, name: str, version: int, extra: dict[str, Any] | None = None,
                progress: Callable[[int, int], None] | None = None) -> Path:
        """Copy a run/export folder into `<root>/<name>/v<version>/` and write its manifest.

        An export's own manifest is verified first, so a corrupted export is refused naming the
        file. Raises GtExtError if the version folder already exists (versions are immutable).
        `progress(bytes_done, bytes_total)` is called after each file (the CLI draws a bar).
        """
        src = Path(src)
        kind = source_kind(src)
        rels = _files_to_copy(src, kind)  # refuses symbolic links before anything is read through one
        src_manifest: dict[str, Any] = verify(src) if kind == "export" else {}
        target = self.version_dir(name, version)
        if target.exists():
            raise GtExtError(f"{target}: version folder already exists (registered versions are immutable)")
        if not rels:
            raise GtExtError(f"{src}: no model files to register")
        total = sum((src / r).stat().st_size for r in rels)
        done = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", suffix=".tmp", dir=target.parent))
        try:
            files: dict[str, str] = {}
            for rel in rels:
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, dst, follow_symlinks=False)
                files[rel.as_posix()] = sha256_file(dst)
                done += dst.stat().st_size
                if progress:
                    progress(done, total)
            manifest = {k: v for k, v in src_manifest.items() if k != "files"}
            manifest.update(extra or {})
            manifest.update({"name": name, "version": version, "source_kind": kind, "files": files})
            atomic_write_json(tmp / MANIFEST, manifest)
            _make_read_only(tmp)
            os.rename(tmp, target)  # fails if target appeared meanwhile: never overwrite a version
        except BaseException:
            self._rmtree(tmp)
            raise
        log.info("registered files of %s:%d at %s (%d files)", name, version, target, len(files))
        return target

    def leftovers(self) -> list[Path]:
        """Temp folders of installs and trash of removals that a killed command left behind
        (`<name>/.v<N>.*.tmp`, `<name>/.trash-*`). Only safe to delete under the exclusive lock."""
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out += [p for p in sorted(d.iterdir()) if p.is_dir() and not p.is_symlink()
                    and ((p.name.startswith(".v") and p.name.endswith(".tmp")) or p.name.startswith(".trash-"))]
        return out

    def remove(self, folder: str | os.PathLike) -> None:
        """Delete a version folder: rename it aside first (atomic), then remove the files."""
        folder = Path(folder)
        if not folder.exists():
            return
        trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
        os.rename(folder, trash)
        self._rmtree(trash)
        parent = folder.parent
        try:
            if parent != self.root and not any(parent.iterdir()):
                parent.rmdir()
        except OSError:
            pass

    @staticmethod
    def _rmtree(path: Path) -> None:
        # Files are read-only but their folders are not, so unlinking them needs no chmod.
        if path.exists():
            shutil.rmtree(path)
