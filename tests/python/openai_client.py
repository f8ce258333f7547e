"""The real `openai` client against a running DUCKS API (run by tests/tests/it/api.rs).

Environment: DUCKS_API_BASE (`http://127.0.0.1:PORT/v1`), DUCKS_API_KEY, DUCKS_MODEL.
Prints one line per check and exits non-zero at the first that fails.
"""

import base64
import io
import os
import struct
import sys
import urllib.request

import openai
from openai import OpenAI

BASE = os.environ["DUCKS_API_BASE"]
KEY = os.environ["DUCKS_API_KEY"]
MODEL = os.environ["DUCKS_MODEL"]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}")
        sys.exit(1)
    print(f"ok {name}")


client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)

models = [model.id for model in client.models.list()]
check("models.list names the catalogue's model", MODEL in models, models)

result = client.images.generate(model=MODEL, prompt="a rubber duck", n=2, size="64x64")
check("images.generate answers two images", len(result.data) == 2, result)
for image in result.data:
    with urllib.request.urlopen(image.url, timeout=30) as response:
        size = png_size(response.read())
    check("each URL downloads a 64x64 PNG", size == (64, 64), size)

encoded = client.images.generate(
    model=MODEL, prompt="a rubber duck", size="64x64", response_format="b64_json"
)
size = png_size(base64.b64decode(encoded.data[0].b64_json))
check("b64_json decodes to a 64x64 PNG", size == (64, 64), size)

try:
    client.images.generate(model=MODEL, prompt="a rubber duck", size="1024x1024")
    check("a bad size is refused", False, "no error")
except openai.BadRequestError as error:
    message = error.body.get("message", "") if isinstance(error.body, dict) else str(error)
    check("a bad size raises BadRequestError naming the allowed sizes", "64x64" in message, message)
    check("its param is `size`", error.body.get("param") == "size", error.body)

wrong = OpenAI(base_url=BASE, api_key="ducks_not-a-key", max_retries=0)
try:
    wrong.models.list()
    check("a wrong key is refused", False, "no error")
except openai.AuthenticationError as error:
    check("a wrong key raises AuthenticationError", error.status_code == 401, error)

print("all openai client checks passed")
