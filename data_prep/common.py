"""What every dataset builder shares: checked CLI numbers, a build lock, safe downloads, and
writing the manifest (labels, seeded split) that `rrglib.data.load_manifest` reads.

A build never half-succeeds silently: two builds into one folder cannot interleave (the
lock), an interrupted download or extraction is redone (a temporary name, renamed only when
complete), and a builder that would write an empty manifest stops instead.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rrglib.data import META_NAME, REQUIRED_COLUMNS, SPLITS
from rrglib.labeler import label_reports
from rrglib.labels import CHEXPERT_OBSERVATIONS

LOCK_NAME = ".build.lock"
CHECKSUMS_NAME = "SHA256SUMS"
EXTRACTED_MARKER = ".extracted"


# -- CLI numbers -------------------------------------------------------------------------


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low (argparse names the flag in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def fraction(text: str) -> float:
    """argparse type: a number within [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number within [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


# -- locking -----------------------------------------------------------------------------


class BuildLockedError(RuntimeError):
    """Another process is building into the same folder."""


@contextmanager
def build_lock(out: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on out/ for the duration of a build; fails at once if taken.

    flock is released by the kernel when the process ends in any way (even kill -9), so a
    lock file left behind is never stale: only a live process can hold it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise BuildLockedError(
                f"{out} is being built by another process (pid {holder}, lock {path}); "
                "wait for it to finish or build into another --out folder."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield path
    finally:
        fh.close()  # closing releases the lock


# -- downloads and archives --------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUMS_NAME
    if not path.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {name.strip(): digest for digest, name in pairs}


def _record(folder: Path, name: str, digest: str) -> None:
    sums = _recorded(folder)
    sums[name] = digest
    tmp = folder / f"{CHECKSUMS_NAME}.tmp"
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    tmp.replace(folder / CHECKSUMS_NAME)


def fetch(url: str, target: Path, sha256: str | None = None) -> Path:
    """Download url to target atomically and check it against a known or recorded sha256.

    `sha256` is the publisher's hash when one exists. Otherwise the hash of the first
    complete download is recorded in SHA256SUMS beside it, and a later run checks the file
    against that record (catching a file truncated or altered since).
    """
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    expected = sha256 or _recorded(folder).get(target.name)
    if target.is_file():
        digest = sha256_of(target)
        if expected is None or digest == expected:
            if expected is None:
                _record(folder, target.name, digest)
            return target
        raise ValueError(
            f"{target}: sha256 {digest} differs from the expected {expected} "
            f"({folder / CHECKSUMS_NAME}); delete the file and run again to re-download it."
        )
    part = target.with_name(target.name + ".part")  # ours: a leftover is simply redone
    print(f"downloading {url}")
    try:
        urllib.request.urlretrieve(url, part)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise OSError(f"could not download {url}: {err}; get it by hand and pass its path") from err
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise ValueError(f"{url}: sha256 {digest} differs from the published {sha256}; try again")
    part.replace(target)
    _record(folder, target.name, digest)
    return target


def extract(archive: Path, dest: Path) -> Path:
    """Unpack a tar archive into dest atomically: a temporary folder, renamed when complete.

    A dest holding our completion marker is reused; an interrupted extraction left only the
    temporary folder, which is ours and is redone.
    """
    if (dest / EXTRACTED_MARKER).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(
            f"{dest} exists but is not a complete extraction of {archive.name} (no "
            f"{EXTRACTED_MARKER} marker); delete {dest} and run again to extract it afresh."
        )
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(tmp, filter="data")
    (tmp / EXTRACTED_MARKER).write_text(f"{archive.name}\n")
    tmp.rename(dest)
    return dest


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """In a builder's main(): a known failure exits with one line (rc 1), not a traceback."""
    try:
        yield
    except (OSError, ValueError, BuildLockedError) as err:
        raise SystemExit(f"{prog}: error: {err}") from None


def require_rows(n: int, what: str, fix: str) -> None:
    """Stop a build that would write an empty manifest."""
    if n == 0:
        raise ValueError(f"{what}: 0 studies to write; {fix}")


# -- the manifest a builder writes (rrglib.data reads and checks it) ----------------------


def write_manifest(df: pd.DataFrame, out_dir: str | Path,
                   meta: dict[str, Any] | None = None) -> Path:
    """Write `manifest.csv` (+ `manifest.meta.json`) into out_dir; returns the CSV path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    front = [c for c in REQUIRED_COLUMNS if c in df.columns]
    labels = [c for c in CHEXPERT_OBSERVATIONS if c in df.columns]
    df = df[front + [c for c in df.columns if c not in front and c not in labels] + labels].copy()
    for col in labels:  # 1/0/-1/blank, not 1.0/0.0
        df[col] = df[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    path = out_dir / "manifest.csv"
    df.to_csv(path, index=False)
    if meta is not None:
        meta = dict(meta)
        counts = meta.setdefault("counts", {})
        counts.setdefault("studies", int(len(df)))
        counts.setdefault("split", split_counts(df))
        (out_dir / META_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def attach_labels(df: pd.DataFrame, text_columns: Sequence[str] = ("findings", "impression"),
                  overwrite: bool = False) -> pd.DataFrame:
    """Add the 14 label columns from our rule-based labeler run on the given text columns."""
    if not overwrite and all(c in df.columns for c in CHEXPERT_OBSERVATIONS):
        return df
    texts = df[list(text_columns)].fillna("").astype(str).agg(" ".join, axis=1).str.strip()
    labels = label_reports(list(texts))
    return df.assign(**{c: labels[c].to_numpy(dtype=float) for c in CHEXPERT_OBSERVATIONS})


def split_counts(df: pd.DataFrame) -> dict[str, int]:
    """Number of studies per split (all three keys present)."""
    return {s: int((df["split"] == s).sum()) for s in SPLITS}


def seeded_split(keys: Sequence[str], seed: int,
                 fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> list[str]:
    """Assign each key to train/validate/test by a seeded shuffle (stable for a given seed)."""
    order = np.random.default_rng(seed).permutation(len(keys))
    n_train, n_val = (math.floor(f * len(keys) + 0.5) for f in fractions[:2])
    out = [""] * len(keys)
    for rank, i in enumerate(order):
        out[i] = "train" if rank < n_train else "validate" if rank < n_train + n_val else "test"
    return out
