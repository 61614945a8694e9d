"""Optional upload of a build to a Hugging Face repo (``HF_PUSH_REPO_ID``).

``upload_plan`` computes what would be sent without touching the network, so
it is what tests check and what ``push`` sends, file for file.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from yap_engines_trt.metadata import METADATA_FILE, BuildMetadata


class UploadItem(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # relative to the build folder, as it lands in the repo
    size: int


class PushError(RuntimeError):
    """The upload could not be made (no huggingface_hub, no token, refused)."""


def upload_plan(out_dir: Path, meta: BuildMetadata) -> list[UploadItem]:
    """The build's files (as its metadata lists them) plus the metadata itself.
    Intermediate folders (the TensorRT-LLM checkpoint before trtllm-build) and
    anything else lying in the folder are not sent."""
    paths = sorted(set(meta.files) | {METADATA_FILE})
    missing = [p for p in paths if not (out_dir / p).is_file()]
    if missing:
        raise PushError(f"{out_dir}: build incomplete, missing {', '.join(missing)}")
    return [UploadItem(path=p, size=(out_dir / p).stat().st_size) for p in paths]


def push(out_dir: Path, repo_id: str, plan: list[UploadItem]) -> str:
    """Upload ``plan`` from ``out_dir`` to the model repo ``repo_id``; returns the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise PushError("HF_PUSH_REPO_ID is set but huggingface_hub is not installed") from exc
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            folder_path=str(out_dir),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=[item.path for item in plan],
            commit_message=f"yap quantize: {len(plan)} files",
        )
    except Exception as exc:  # the hub client raises many types; name the repo in one error
        raise PushError(f"upload to {repo_id} failed: {exc}") from exc
    return str(info)
