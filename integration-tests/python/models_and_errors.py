"""/v1/models lists the served name; the SDK sees auth and unknown-model errors as such."""

import openai

from common import MODEL, check, client

models = client().models.list()
ids = [m.id for m in models.data]
print(f"models: {ids}")
check(MODEL in ids, f"/v1/models lists {MODEL}")

try:
    client(api_key="wrong-key").models.list()
    check(False, "a wrong key is rejected")
except openai.AuthenticationError as err:
    check(err.status_code == 401, "a wrong key gives AuthenticationError (401)")

try:
    client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    check(False, "an unknown model is rejected")
except openai.NotFoundError as err:
    check(err.status_code == 404, "an unknown model gives NotFoundError (404)")
    check(err.code == "model_not_found", f"error code is model_not_found (got {err.code!r})")

try:
    client().chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    check(False, "empty messages are rejected")
except openai.BadRequestError as err:
    check(err.status_code == 400, "empty messages give BadRequestError (400)")
