"""Loading and unloading a model on every Triton replica, through each server's repository API.

Triton's explicit model control is per server: a load request sent through a load-balancing Service reaches
one pod (triton-inference-server/server #3001). Deploy and promotion therefore resolve every replica
(`replica_urls`: a headless Service's A records, or a list of HOST:PORT) and talk to each one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from visionnode.components.common.errors import ServiceError, one_line
from visionnode.components.common.serving.triton import replica_urls, triton_http_client


@dataclass
class Replica:
    url: str
    client: object     # tritonclient.http.InferenceServerClient, probed live


def connect_replicas(spec: str, timeout_s: float) -> list[Replica]:
    return [Replica(url, triton_http_client(url, timeout_s)) for url in replica_urls(spec)]


def load_and_wait(client, name: str, version: int, timeout_s: float) -> float:
    """Load (or reload) `name` through the repository API and wait until `version` is ready; seconds taken.

    A model already loaded keeps serving its version until the new one is ready, then Triton unloads the old
    one (`version_policy: latest 1`): requests in flight and arriving meanwhile are answered."""
    from tritonclient.utils import InferenceServerException

    began = time.monotonic()
    try:
        client.load_model(name)
    except InferenceServerException as exc:
        raise ServiceError(f"Triton could not load model '{name}': {triton_message(exc)}",
                           "see the Triton log (`visionnode stack status`)") from None
    except Exception as exc:  # the load call timed out or the connection dropped
        raise ServiceError(f"Triton did not finish loading '{name}' ({one_line(exc)})",
                           "see the Triton log; raise --load-timeout for a slow first compile") from None
    while not client.is_model_ready(name, str(version)):
        if time.monotonic() - began > timeout_s:
            raise ServiceError(f"model '{name}' version {version} is not ready after {timeout_s:.0f} s",
                               "see the Triton log (`visionnode stack status`)")
        time.sleep(0.2)
    return time.monotonic() - began


def load_everywhere(replicas: list[Replica], names: list[str], version: int, timeout_s: float) -> float:
    """Load `names` (in order: a front end after the model it calls) on every replica; seconds taken."""
    began = time.monotonic()
    for replica in replicas:
        for name in names:
            try:
                load_and_wait(replica.client, name, version, timeout_s)
            except ServiceError as exc:
                raise ServiceError(f"{replica.url}: {exc.problem}", exc.hint) from None
    return time.monotonic() - began


def unload_everywhere(replicas: list[Replica], names: list[str], timeout_s: float = 60.0) -> None:
    """Unload `names` (in order: a front end before the model it calls) on every replica that has them, and
    wait until none of them is ready anywhere."""
    from tritonclient.utils import InferenceServerException

    for replica in replicas:
        for name in names:
            try:
                replica.client.unload_model(name)
            except InferenceServerException as exc:
                raise ServiceError(f"{replica.url}: Triton could not unload '{name}': {triton_message(exc)}",
                                   "see the Triton log") from None
    deadline = time.monotonic() + timeout_s
    for replica in replicas:
        for name in names:
            while replica.client.is_model_ready(name):
                if time.monotonic() > deadline:
                    raise ServiceError(f"{replica.url}: '{name}' is still loaded {timeout_s:.0f} s after the "
                                       "unload request", "see the Triton log")
                time.sleep(0.2)


def triton_message(exc: Exception) -> str:
    """Triton's own load error in one line (its python tracebacks follow an 'At:' line)."""
    text = getattr(exc, "message", lambda: str(exc))() or str(exc)
    text = text.split("\n\nAt:")[0]
    return " ".join(text.split())[:400]
