"""`export.push_to_hub: user/name`: upload a finished export folder with huggingface_hub.

The token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`); it is never
read, printed or logged here. Only complete folders are pushed (after the atomic rename).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import SmoothQuantError

log = logging.getLogger(__name__)


def push_folder(folder: Path, repo_id: str, private: bool = True, message: str = "smooth-then-quant export") -> str:
    """Create `repo_id` if needed and upload `folder`; returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=message)
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        hint = (" Log in with `hf auth login` or set HF_TOKEN to a token with write access."
                if status in (401, 403) else "")
        raise SmoothQuantError(f"pushing {folder} to the Hub repo {repo_id} failed ({status}).{hint} The local "
                               f"export is complete.") from None
    except Exception as e:  # offline (HF_HUB_OFFLINE), DNS, proxy: httpx and OSError subclasses
        raise SmoothQuantError(f"pushing {folder} to the Hub repo {repo_id} failed: {type(e).__name__}. Check the "
                               "network (HF_HUB_OFFLINE must be unset); the local export is complete.") from None
    log.info("pushed %s to %s", folder, url)
    return str(url)
