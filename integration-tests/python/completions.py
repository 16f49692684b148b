"""/v1/completions with a string prompt and with a list of prompts."""

from common import MODEL, check, check_usage, client

c = client()
resp = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
print(f"text: {resp.choices[0].text!r}")
check(resp.object == "text_completion", "object is text_completion")
check(len(resp.choices) == 1, "one choice")
check(resp.choices[0].text.strip() != "", "non-empty text")
check(resp.choices[0].finish_reason in ("stop", "length"), "finish_reason set")
check_usage(resp.usage, "completion")

batch = c.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=4, temperature=0)
check(sorted(ch.index for ch in batch.choices) == [0, 1], "a list of two prompts gives choices 0 and 1")
check(all(ch.text != "" for ch in batch.choices), "both prompts got text")
check_usage(batch.usage, "batch")
