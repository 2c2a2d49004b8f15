"""Pushing an export to the Hugging Face Hub: checked before anything is written or trained, uploaded in one commit."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from amused_lightning.errors import SettingError, UserError


class HubError(UserError):
    """The Hub cannot take the push: offline, no token, unreachable, a refused token, or a failed upload."""

    # Every process of a multi-process fit stops with the same check: the first one says it.
    said_by_every_process = True


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now: huggingface_hub reads it once, at import."""
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((v or "").upper() in constants.ENV_VARS_TRUE_VALUES for v in values)


def check_repo_id(repo_id: str, setting: str) -> None:
    """Refuse a repo id the Hub would refuse."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise SettingError(f"{setting}={repo_id!r} is not a Hub repo id (`owner/name` or `name`): {error}") from error


def check_push(repo_id: str, token: str | None, setting: str) -> str:
    """The token to push `repo_id` with, after checking the id, offline mode, the token and that the Hub takes it;
    each problem is one clear error, before anything is written or uploaded."""
    check_repo_id(repo_id, setting)
    if hub_offline():
        raise HubError(f"{setting}={repo_id!r}: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or export "
                       "without pushing and upload the folder later with `hf upload`")
    token = token or get_token()
    if not token:
        raise HubError(f"{setting}={repo_id!r}: no Hugging Face token; pass --hub-token, set HF_TOKEN, or log in "
                       "with `hf auth login`")
    role = token_role(token, setting, repo_id)
    if role == "read":
        raise HubError(f"{setting}={repo_id!r}: the Hugging Face token is read-only; use a token with write access")
    return token


def token_role(token: str, setting: str, repo_id: str) -> str | None:
    """The token's role as the Hub reports it ("read", "write", "fineGrained"); the Hub must answer."""
    try:
        info = HfApi(token=token).whoami()
    # The HTTP library under huggingface_hub differs between its versions (requests, httpx): any failure of this
    # one call means the Hub cannot be asked.
    except Exception as error:
        raise HubError(f"{setting}={repo_id!r}: the Hugging Face Hub did not accept the token or could not be "
                       f"reached ({type(error).__name__}: {error}); nothing was pushed") from error
    return ((info.get("auth") or {}).get("accessToken") or {}).get("role")


def export_patterns(names: list[str]) -> list[str]:
    """Upload/delete patterns for an export's files and folders: the export only, never other files beside it."""
    return [pattern for name in names for pattern in (name, f"{name}/*")]


def push_export(folder: Path, names: list[str], repo_id: str, private: bool, token: str) -> str:
    """Create `repo_id` (private or public; an existing repo keeps its visibility) and upload the export in one
    commit that also removes the repo's stale export files; returns the repo's address. The local folder is only
    read: a failed push leaves it as it is."""
    api, patterns = HfApi(token=token), export_patterns(names)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=patterns, delete_patterns=patterns,
                          commit_message="Upload an amused_lightning export")
    # As in token_role: whatever the HTTP library raises, the push failed and the export stays complete.
    except Exception as error:
        raise HubError(f"pushing {folder} to {repo_id} failed ({type(error).__name__}: {error}); the export in "
                       f"{folder} is complete: upload it with `hf upload {repo_id} {folder}`") from error
    return str(url)
