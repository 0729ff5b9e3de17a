"""Which of a technique's config fields change what: one place for the image store's fingerprint and the leaderboard's
key (light to import: the leaderboard reads it without loading any model code)."""

from __future__ import annotations

# Fields that never change a result: where the technique runs, where its weights are written or read from (weights
# read from a file are keyed by their digest instead) and whether the weight cache is used.
NO_RESULT_FIELDS = ("device", "save_path", "load_path", "use_cache")
# Fields left out of a technique's fingerprint: those above, and the steps and guidance that every generation request
# carries itself.
NON_IMAGE_FIELDS = (*NO_RESULT_FIELDS, "num_inference_steps", "guidance_scale")
# Technique config keys renamed for what they mean, old name -> new. A config given with the old name still works (with
# a deprecation warning); the weight cache and the image store key the field by its old name, so weights and images
# cached before the rename are found for the same values, and the leaderboard reads old reports under the new name.
RENAMED_FIELDS = {"batch_size": "train_batch_size"}  # the training batch, not the run's batch_size
KEY_NAMES = {new: old for old, new in RENAMED_FIELDS.items()}  # the name a cache key records a field under
