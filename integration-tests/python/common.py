"""Shared set-up for the integration scripts: the client, the model name, and `check`.

The Rust test that runs a script passes the server through the environment:
PAGEDSERVE_BASE_URL (ending in /v1), PAGEDSERVE_API_KEY, PAGEDSERVE_MODEL.
"""

import os
import sys

from openai import AsyncOpenAI, OpenAI

BASE_URL = os.environ["PAGEDSERVE_BASE_URL"]
API_KEY = os.environ["PAGEDSERVE_API_KEY"]
MODEL = os.environ["PAGEDSERVE_MODEL"]


def client(api_key=API_KEY):
    return OpenAI(base_url=BASE_URL, api_key=api_key, max_retries=0, timeout=300)


def async_client():
    return AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=300)


def check(condition, what):
    """Print what is checked; exit non-zero when it does not hold."""
    if not condition:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def check_usage(usage, label):
    check(usage is not None, f"{label}: usage present")
    check(usage.prompt_tokens > 0, f"{label}: prompt_tokens {usage.prompt_tokens} > 0")
    check(usage.completion_tokens > 0, f"{label}: completion_tokens {usage.completion_tokens} > 0")
    check(
        usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
        f"{label}: total_tokens {usage.total_tokens} = prompt + completion",
    )
