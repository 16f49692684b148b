"""Stop strings: generation ends before the stop string, which never appears in the text."""

from common import MODEL, check, client

c = client()
PROMPT = "Count from 1 to 30, separated by commas:"


def complete(**extra):
    resp = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, **extra)
    return resp.choices[0]


full = complete().text
print(f"without stop: {full!r}")
# Pick a stop string the greedy continuation really contains, past its start.
words = [w for w in (x.strip(",.;:") for x in full.split()) if w]
stop = words[2] if len(words) > 2 else None
check(stop is not None, f"found a stop string in the output: {stop!r}")

for stream in (False, True):
    label = "stream" if stream else "plain"
    if stream:
        chunks = list(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop], stream=True))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        finish = finish[-1] if finish else None
    else:
        choice = complete(stop=[stop])
        text, finish = choice.text, choice.finish_reason
    print(f"{label} with stop {stop!r}: {text!r}")
    check(stop not in text, f"{label}: text never contains the stop string")
    check(finish == "stop", f"{label}: finish_reason is stop (got {finish!r})")
    check(full.startswith(text), f"{label}: text is the greedy output cut before the stop string")
    check(len(text) < len(full), f"{label}: generation really stopped early")
