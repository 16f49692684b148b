"""n=2: two independent choices."""

from common import MODEL, check, check_usage, client

resp = client().chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Tell me a fun fact."}],
    max_tokens=16,
    temperature=1.0,
    n=2,
)
for ch in resp.choices:
    print(f"choice {ch.index}: {ch.message.content!r}")
check(len(resp.choices) == 2, "two choices")
check(sorted(ch.index for ch in resp.choices) == [0, 1], "indexes 0 and 1")
check(all((ch.message.content or "").strip() for ch in resp.choices), "both choices have text")
check_usage(resp.usage, "n=2")
check(resp.usage.completion_tokens >= 2, "completion tokens count both choices")
