"""Chat completion: a real answer with usage."""

from common import MODEL, check, check_usage, client

QUESTION = "What is the capital of South Korea?"

resp = client().chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": QUESTION}],
    max_tokens=32,
    temperature=0,
)
print(f"answer: {resp.choices[0].message.content!r}")
check(resp.object == "chat.completion", "object is chat.completion")
check(resp.model == MODEL, f"model echoed as {MODEL}")
check(len(resp.choices) == 1, "one choice")
choice = resp.choices[0]
text = choice.message.content or ""
check(text.strip() != "", "non-empty answer")
check(choice.message.role == "assistant", "role is assistant")
check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason!r}")
# A working model (greedy) knows this one; garbage from a broken forward pass does not.
check("seoul" in text.lower(), "the answer mentions Seoul")
check_usage(resp.usage, "chat")
if choice.finish_reason == "length":
    check(resp.usage.completion_tokens == 32, "length finish used all 32 tokens")
