"""Default training recipes: per model type, the `train` values a spec gets for every key it
leaves out. Explicit values always win, and the stored spec shows the effective values.

Only likelihood models have one; autoencoder and dcgan keep TrainSpec's defaults (DCGAN's Adam
betas come from the model). Each recipe was chosen by measurement (genfleet issue 13): digits,
default widths, batch 64, seed 0, one CPU thread, val bits/dim (the VAE's: its IWAE bound) after
264 steps (12 epochs of 22 batches), plain being constant-rate Adam 1e-3 (the common reference
implementations' recipe); every other candidate warms up for 50 steps (20 where marked), then
decays by cosine to 0:

| candidate | pixelcnn | gated_pixelcnn | pixelcnn_pp | vae | pixelrnn_row | pixelrnn_diag |
|---|---:|---:|---:|---:|---:|---:|
| plain | 2.010 | 1.947 | 1.839 | 2.364 | 2.030 | 2.059 |
| 2e-3, EMA 0.999 | 2.028 | 1.961 | 1.840 | 2.386 | | |
| 3e-3, EMA 0.999 | 1.987 | 1.880 | 1.795 | 2.290 | | |
| 3e-3 | 1.985 | 1.877 | 1.794 | 2.286 | | |
| 5e-3 (EMA 0.999 but for the RNNs) | 1.928 | 1.810 | 1.776 | 2.188 | 1.925 | 1.900 |
| 5e-3, warm-up 20 | 1.936 | 1.819 | 1.766 | 2.189 | | |
| 8e-3 | 1.887 | 1.771 | 1.767 | 2.110 | 1.876 | 1.846 |
| 1.2e-2 | 1.876 | 1.764 | 1.764 | 2.060 | | |

- The gain grows with the rate; the recipes stop at 8e-3. 1.2e-2 gains 0.2-0.6% more here
  (VAE 2.4%; 2-4% after 88 steps), but 8x8 images for a few hundred steps cannot show whether
  so high a rate stays stable for the larger models and longer runs of MNIST and CIFAR-10.
- 50 warm-up steps beat 20 for three of the four models (not PixelCNN++).
- EMA 0.999 costs 0.04-0.17%: this short, WeightEMA's own warm-up keeps the decay at 0.97 at
  most, and a cosine that ends at 0 already settles the weights. Only PixelCNN++ keeps it, as
  its paper (section 3) evaluates with it, so its default behaviour stays.

`bench/recipe_bench.py` (`--models pixelrnn_row pixelrnn_diag` for the last four rows) then
checked the chosen recipes at two budgets against plain; the goal is ratio <= 0.98 everywhere:

| model | steps | val recipe | val plain | ratio | test recipe | test plain | ratio |
|---|---:|---:|---:|---:|---:|---:|---:|
| pixelcnn | 100 | 2.0849 | 2.2026 | 0.947 | 2.0633 | 2.1818 | 0.946 |
| pixelcnn | 300 | 1.8754 | 2.0115 | 0.932 | 1.8483 | 1.9819 | 0.933 |
| gated_pixelcnn | 100 | 1.9915 | 2.2276 | 0.894 | 1.9582 | 2.2076 | 0.887 |
| gated_pixelcnn | 300 | 1.7612 | 1.9116 | 0.921 | 1.7189 | 1.8833 | 0.913 |
| pixelcnn_pp | 100 | 1.9093 | 2.0313 | 0.940 | 1.8810 | 2.0100 | 0.936 |
| pixelcnn_pp | 300 | 1.7568 | 1.8202 | 0.965 | 1.7275 | 1.7920 | 0.964 |
| vae | 100 | 2.3509 | 2.6360 | 0.892 | 2.3352 | 2.6169 | 0.892 |
| vae | 300 | 2.0907 | 2.3267 | 0.899 | 2.0671 | 2.3081 | 0.896 |
| pixelrnn_row | 100 | 2.0763 | 2.2810 | 0.910 | 2.0531 | 2.2506 | 0.912 |
| pixelrnn_row | 300 | 1.8523 | 2.0108 | 0.921 | 1.8128 | 1.9863 | 0.913 |
| pixelrnn_diag | 100 | 2.0804 | 2.2860 | 0.910 | 2.0599 | 2.2667 | 0.909 |
| pixelrnn_diag | 300 | 1.8281 | 2.0330 | 0.899 | 1.7921 | 2.0081 | 0.892 |
"""

from __future__ import annotations

from typing import Any

WARMUP_COSINE: dict[str, Any] = {"lr": 0.008, "lr_schedule": "cosine", "warmup_steps": 50}

RECIPES: dict[str, dict[str, Any]] = {
    "pixelcnn": WARMUP_COSINE,
    "gated_pixelcnn": WARMUP_COSINE,
    "pixelcnn_pp": {**WARMUP_COSINE, "ema_decay": 0.999},
    "pixelrnn_row": WARMUP_COSINE,
    "pixelrnn_diag": WARMUP_COSINE,
    "vae": WARMUP_COSINE,
}


def with_recipe_defaults(spec: Any) -> Any:
    """A raw spec mapping with its model's recipe under every `train` key it does not set.

    Anything else (not a mapping, an unknown model type, a `train` that is not a mapping) comes
    back as it is, for validation to report.
    """
    if not isinstance(spec, dict):
        return spec
    model, train = spec.get("model"), spec.get("train", {})
    model_type = model.get("type") if isinstance(model, dict) else None
    recipe = RECIPES.get(model_type) if isinstance(model_type, str) else None
    if recipe is None or not isinstance(train, dict):
        return spec
    return {**spec, "train": {**recipe, **train}}
