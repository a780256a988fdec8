"""Hugging Face hub look-ups for the loader: one brief probe, and the local cache.

The probe asks for a model's metadata only and the snapshot look-ups read the local cache
(``local_files_only``); only ``fetch_snapshot`` (the cache key of a hub model's content)
downloads, and only the files the loader reads.
"""

from __future__ import annotations

from pathlib import Path

from slimbench.errors import ModelLoadError

HUB_PROBE_TIMEOUT_S = 5.0


def hub_failed(hub_id: str, why: str) -> ModelLoadError:
    """The one error for a spec that is neither a local directory nor a loadable hub id."""
    return ModelLoadError(f"no local directory {hub_id!r}, and loading it as a Hugging Face "
                          f"hub id failed: {why}")


def first_line(e: Exception) -> str:
    """An exception's first line (its type when it has no message): enough for one line."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def probe_hub(hub_id: str, revision: str | None) -> str | None:
    """Ask the hub once, briefly, about ``hub_id``: None when it has it, the reason when it
    cannot be reached; raises when it answers that there is no such model or revision.

    transformers' own downloads retry an unreachable hub for ~25 s per file with a warning
    per try; one request without retries tells the same thing at once.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(hub_id, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except RevisionNotFoundError:
        raise hub_failed(hub_id, f"the hub has no revision {revision!r} of it") from None
    except RepositoryNotFoundError:  # the hub answers 401 for private repos too
        raise hub_failed(hub_id, "the hub has no model of that name (if it is private, log "
                                 "in with `hf auth login`)") from None
    except Exception as e:  # connection refused, DNS, timeout, proxy, 5xx: unreachable
        return f"the hub could not be reached ({first_line(e)})"
    return None


def _local_snapshot(hub_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of ``hub_id``, or None when the cache does not hold it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and kin: not in the cache
        return None


def cached_snapshot(hub_id: str, revision: str | None) -> Path | None:
    """The cached snapshot when it holds a loadable model (a config), else None."""
    snap = _local_snapshot(hub_id, revision)
    return snap if snap is not None and (snap / "config.json").is_file() else None


def hub_weight_files(hub_id: str, revision: str | None) -> list[Path]:
    """The cached safetensors files of ``hub_id`` (sizes and digests are best-effort)."""
    snap = _local_snapshot(hub_id, revision)
    return sorted(snap.glob("*.safetensors")) if snap is not None else []


# what the loader reads from a hub repository (not its .bin/.onnx/.h5 copies of the weights)
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def fetch_snapshot(hub_id: str) -> Path:
    """The hub model's files on this machine (fetched when the machine can; from the local
    cache when offline), for hashing its content."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=HUB_FILES))
    except Exception as e:  # huggingface_hub raises many types; one line is enough here
        raise ModelLoadError(f"cannot fetch hub model {hub_id!r}: {first_line(e)}") from None
