"""``$MM_DATA_DIR/serve.json``: where a running explorer service listens, so the CLI can use it.

Only the standard library is imported here: ``mm-platform search`` reads this before deciding whether it
needs torch at all.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def discovery_path(data_dir: Path) -> Path:
    return data_dir / "serve.json"


def write_discovery(data_dir: Path, url: str, token: str | None) -> Path:
    path = discovery_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "pid": os.getpid(), "token": token}, fh)
    tmp.replace(path)
    return path


def remove_discovery(data_dir: Path) -> None:
    path = discovery_path(data_dir)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_service(data_dir: Path) -> dict[str, Any] | None:
    """The recorded service when its process is still alive, else None."""
    try:
        info = json.loads(discovery_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info.get("url") or not _alive(int(info.get("pid") or 0)):
        return None
    return info


class ServiceError(RuntimeError):
    """The service answered the query with an error (the message is its reason)."""


def search_via_service(info: dict[str, Any], query: dict[str, Any], timeout_s: float = 20.0) -> dict[str, Any] | None:
    """POST a text/fields query to the service. None when it cannot be reached (use the in-process path
    then); :class:`ServiceError` when it answered with an error. A dead port fails at once; the timeout only
    bounds a live service still loading its model, which is still faster than loading it here."""
    req = urllib.request.Request(info["url"].rstrip("/") + "/api/search", data=json.dumps(query).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    if info.get("token"):
        req.add_header("Authorization", f"Bearer {info['token']}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 404):
            try:
                raise ServiceError(json.loads(exc.read()).get("error") or str(exc)) from None
            except ValueError:
                raise ServiceError(str(exc)) from None
        return None
    except (OSError, ValueError):
        return None


def get_from_service(info: dict[str, Any], path: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """GET a JSON endpoint of the service; None when it cannot be had (the caller computes it itself)."""
    req = urllib.request.Request(info["url"].rstrip("/") + path)
    if info.get("token"):
        req.add_header("Authorization", f"Bearer {info['token']}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None
