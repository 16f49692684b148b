"""Same seed, temperature 1: the same text twice."""

from common import MODEL, check, client

c = client()


def sample(seed):
    resp = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=24,
        temperature=1.0,
        seed=seed,
    )
    return resp.choices[0].message.content


first, second = sample(1234), sample(1234)
print(f"seed 1234: {first!r}\nseed 1234: {second!r}")
check(first.strip() != "", "sampled text is non-empty")
check(first == second, "same seed gives the same text")
others = {sample(s) for s in (1, 2, 3)}
print(f"seeds 1, 2, 3: {others!r}")
# Three other seeds all matching seed 1234 would mean the seed is ignored and sampling is greedy.
check(others != {first}, "different seeds sample different text")
