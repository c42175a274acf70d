"""Which heads an intervention switches off, and how: a value with no torch in it, so the app can
validate a request and key its cache without loading model code (:mod:`models.interventions` runs
it)."""

from __future__ import annotations

from dataclasses import dataclass

ABLATION_MODES = ("zero", "mean")
PATCH_MAX_TOKENS = 64  # keeps patching a 30 x 9 model (SmolLM2) under a minute on 2 CPU cores


@dataclass(frozen=True)
class Ablation:
    """Which heads to switch off, and how. ``heads`` are flat indices, layer * heads_per_layer +
    head, as the model grid numbers them."""

    heads: tuple[int, ...]
    mode: str
    heads_per_layer: int

    @classmethod
    def of(cls, heads: list[int], mode: str, layers: int, heads_per_layer: int) -> Ablation:
        """Validated and in canonical order (sorted, unique), so equal ablations share a cache key."""
        if mode not in ABLATION_MODES:
            raise ValueError(f"ablation mode must be one of {', '.join(ABLATION_MODES)}")
        if not heads:
            raise ValueError("choose at least one head to switch off")
        most = layers * heads_per_layer
        outside = [head for head in heads if not 0 <= head < most]
        if outside:
            raise ValueError(f"head {outside[0]} does not exist: this model has {most} heads (0 to {most - 1})")
        return cls(tuple(sorted(set(heads))), mode, heads_per_layer)

    def by_layer(self) -> dict[int, list[int]]:
        layers: dict[int, list[int]] = {}
        for flat in self.heads:
            layers.setdefault(flat // self.heads_per_layer, []).append(flat % self.heads_per_layer)
        return layers

    def option(self) -> dict:
        """Its part of a cache key."""
        return {"ablate": list(self.heads), "ablate_mode": self.mode}
