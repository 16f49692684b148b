"""16 concurrent streams all complete."""

import asyncio
import time

from common import MODEL, async_client, check

STREAMS = 16
MAX_TOKENS = 16


async def one(client, i):
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Say something about the number {i}."}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    return text, finish, usage


async def main():
    client = async_client()
    started = time.monotonic()
    results = await asyncio.gather(*(one(client, i) for i in range(STREAMS)))
    elapsed = time.monotonic() - started
    tokens = sum(u.completion_tokens for _, _, u in results if u)
    print(f"{STREAMS} streams, {tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.1f} tok/s)")
    check(len(results) == STREAMS, f"{STREAMS} streams returned")
    check(all(t.strip() for t, _, _ in results), "every stream produced text")
    check(all(f in ("stop", "length") for _, f, _ in results), "every stream finished with stop or length")
    check(all(u and 0 < u.completion_tokens <= MAX_TOKENS for _, _, u in results), "every stream reported usage")


asyncio.run(main())
