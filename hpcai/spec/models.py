"""Model folders as users have them: a Hugging Face cache entry (`org/name`) or a `save_pretrained`
folder, resolved on this machine (laptops and login nodes reach the hub; compute nodes do not), checked
for what the workloads load, and handed to staging.

The cache layout (huggingface_hub's): `<hub>/models--ORG--NAME/refs/<revision>` holds a commit hash,
`snapshots/<hash>/` the files, as links into `blobs/`. Read by hand: the CLI does not import
huggingface_hub (nor need it installed) to find a folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hpcai.errors import HpcaiError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    source: str  # what the user typed
    revision: str | None  # the cache's commit hash, when it came from the cache
    model_type: str | None
    has_tokenizer: bool
    has_processor: bool

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path), "source": self.source, "revision": self.revision, "model_type": self.model_type,
            "tokenizer": self.has_tokenizer, "processor": self.has_processor,
        }  # fmt: skip


def hub_cache() -> Path:
    """huggingface_hub's cache folder, by its own rules: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def resolve(name: str, revision: str = "main") -> ModelFolder:
    """A folder for `name`: an existing folder as it is, or `org/name` from the local Hugging Face cache."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _checked(folder.absolute(), name, None)
    if not REPO_ID.match(name):
        raise HpcaiError(f"models stage: '{name}' is neither a folder nor a Hugging Face model id (org/name).")
    cache = hub_cache()
    entry = cache / f"models--{name.replace('/', '--')}"
    if not entry.is_dir():
        raise HpcaiError(
            f"models stage: '{name}' is not in your Hugging Face cache ({cache}). Download it on this machine first "
            f"(hf download {name}, or huggingface-cli download {name}), then run the same command again."
        )
    ref = entry / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = entry / "snapshots" / commit
    if not snapshot.is_dir():
        known = sorted(p.name for p in (entry / "refs").iterdir()) if (entry / "refs").is_dir() else []
        raise HpcaiError(
            f"models stage: revision '{revision}' of '{name}' is not in the cache ({entry}); cached refs: "
            f"{', '.join(known) or 'none'}. Download it (hf download {name} --revision {revision}) or pass --revision."
        )
    return _checked(snapshot, name, commit)


def _checked(folder: Path, source: str, revision: str | None) -> ModelFolder:
    config = folder / "config.json"
    if not config.is_file():
        raise HpcaiError(f"models stage: {folder} has no config.json; it is not a save_pretrained model folder.")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise HpcaiError(f"models stage: {config} is not valid JSON ({exc}); download the model again.") from None
    present = {p.name for p in folder.iterdir()}
    if not present & set(WEIGHTS):
        raise HpcaiError(
            f"models stage: {folder} has no weights ({' or '.join(WEIGHTS[:2])}); the download may have been "
            "partial: download it again."
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).exists())
        if missing:
            raise HpcaiError(f"models stage: {folder} lacks weight shards {missing[:3]}; download the model again.")
    tokenizer = bool(present & {"tokenizer.json", "tokenizer.model", "vocab.json"})
    processor = bool(present & {"preprocessor_config.json", "processor_config.json"})
    return ModelFolder(folder, source, revision, model_type, tokenizer, processor)
