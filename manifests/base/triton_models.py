"""Keeps Triton serving what `visionnode deploy` published, across restarts (ConfigMap triton-models).

Triton runs with explicit model control, so a restarted or rescheduled server starts with no model loaded.
  python /etc/visionnode/triton_models.py load    postStart hook: once Triton answers, load every deployed
  model
  python /etc/visionnode/triton_models.py ready   readiness probe: exit 0 only when every deployed model is
  ready
"Deployed" = named in TRITON_MODELS and present in Triton's repository index. Before the first deploy nothing
is deployed and the pod is ready, so deploy reaches it through the Service and loads the model itself.
"""

import json
import os
import sys
import time
import urllib.request

URL = os.environ.get("TRITON_LOCAL_URL", "http://127.0.0.1:8000")


def call(method: str, path: str, timeout: float) -> bytes:
    body = b"{}" if method == "POST" else None
    request = urllib.request.Request(URL + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # an HTTP error status raises
        return response.read()


def deployed() -> list[str]:
    in_repository = {entry["name"] for entry in json.loads(call("POST", "/v2/repository/index", 10))}
    return [name for name in os.environ["TRITON_MODELS"].split(",") if name in in_repository]


def ready() -> int:
    try:
        for name in deployed():
            call("GET", f"/v2/models/{name}/ready", 3)
    except Exception as exc:  # URLError, HTTPError (not ready: 400), a bad answer
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    return 0


def load(wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            call("GET", "/v2/health/live", 3)
            break
        except Exception:
            if time.monotonic() > deadline:
                print(f"Triton did not answer on {URL} in {wait_s:.0f} s", file=sys.stderr)
                return 1
            time.sleep(1)
    for name in deployed():
        call("POST", f"/v2/repository/models/{name}/load",
             600)  # a failed load raises: the container restarts
        print(f"loaded {name}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["ready"]:
        sys.exit(ready())
    if sys.argv[1:] == ["load"]:
        sys.exit(load(float(os.environ.get("TRITON_START_WAIT_S", "300"))))
    sys.exit("usage: triton_models.py load|ready")
