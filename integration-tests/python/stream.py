"""Streaming chat with stream_options.include_usage."""

from common import MODEL, check, check_usage, client

stream = client().chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Name three colors."}],
    max_tokens=24,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
print(f"{len(chunks)} chunks")
check(len(chunks) >= 3, "several chunks arrived")
check(all(c.object == "chat.completion.chunk" for c in chunks), "every chunk is a chat.completion.chunk")
check(len({c.id for c in chunks}) == 1, "all chunks share one id")
content_chunks = [c for c in chunks if c.choices]
text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
print(f"text: {text!r}")
check(text.strip() != "", "concatenated content is non-empty")
finishes = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
check(finishes in (["stop"], ["length"]), f"exactly one finish_reason: {finishes}")
last = chunks[-1]
check(last.choices == [], "the last chunk carries no choices")
check_usage(last.usage, "stream")
check(all(c.usage is None for c in chunks[:-1]), "only the last chunk has usage")
