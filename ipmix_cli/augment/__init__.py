"""The IPMix engine: image-level ops, pixel-level mixing rules, patch mixing and the recipe."""
