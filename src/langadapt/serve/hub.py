"""``langadapt export --push-to-hub``: the exported folder uploaded to the Hugging Face Hub.

The token comes from ``HF_TOKEN`` or a ``hf auth login`` (``huggingface-cli login``) session, as
every Hugging Face tool reads it. It is checked before the export starts, so a missing token costs
seconds, not a merge; an unreachable hub or a refused token is one line, never a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from langadapt.errors import LangadaptError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
LOGIN_HELP = "set HF_TOKEN or log in with `hf auth login` (older: `huggingface-cli login`)"


def check_push(repo_id: str) -> str:
    """The token to upload to ``repo_id`` with, or a one-line error saying what is missing."""
    if not _REPO_ID.match(repo_id) or repo_id.endswith((".", "-")) or ".." in repo_id:
        raise LangadaptError(f"--push-to-hub takes USER/NAME (a Hugging Face user or organisation and a repository "
                             f"name of letters, digits, '-', '_', '.'); got {repo_id!r}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise LangadaptError("--push-to-hub needs the network but HF_HUB_OFFLINE is set; unset it to upload")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise LangadaptError(f"--push-to-hub needs a Hugging Face token with write access: {LOGIN_HELP}")
    return token


def push_folder(folder: str | os.PathLike, repo_id: str, *, token: str, private: bool = False, log=print,
                skip: tuple[str, ...] = ()) -> str:
    """Create ``repo_id`` (a model repository; kept if it exists) and upload ``folder`` into it, but for the
    top-level files named in ``skip``; return its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and
                   p.relative_to(folder).as_posix() not in skip)
    size = sum((folder / f).stat().st_size for f in files)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        log(f"uploading {len(files)} files ({size / 2**20:,.1f} MiB) to {url} …")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=f"langadapt export of {folder.name}", ignore_patterns=list(skip) or None)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise LangadaptError(f"the Hugging Face hub refused the token for {repo_id} (HTTP {status}): it needs write "
                                 f"access to that user or organisation; {LOGIN_HELP}") from None
        raise LangadaptError(f"upload to {repo_id} failed: {_first_line(e)}") from None
    except (OSError, *_transport_errors()) as e:
        raise LangadaptError(f"cannot reach the Hugging Face hub to upload {repo_id} ({type(e).__name__}: "
                             f"{_first_line(e)}); check the network and try again") from None
    return str(url)


def _transport_errors() -> tuple[type, ...]:
    """Connection and timeout errors of whichever HTTP client this huggingface_hub uses (not OSErrors)."""
    import importlib

    found = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
