"""ViT training throughput with each uncertainty head, under Keras' JAX backend, and its MFU.

For a GPU (or TPU) machine with JAX and no TensorFlow: it imports only keras, jax, numpy
and keras_unc's layers, backbones and method heads. For each head it times a jitted
training step (forward, backward and an AdamW update, big_vision style) of the ViT backbone
(`keras_unc.backbones.vit`) with that head on its embedding:

  deterministic   a linear head (`heads.Linear`), the baseline of the ratios
  batchensemble   BatchEnsemble-4: the embedding tiled 4 times, `DenseBatchEnsemble` head
  sngp            the random-feature GP head (`heads.GaussianProcess`, precision update)
  heteroscedastic `MCSoftmaxDenseFA` (`heads.Heteroscedastic`), MC samples in training
  hetxl           `HetXLDense` (`heads.Heteroscedastic(xl=True)`)

and reports images/s, the ratio to the deterministic head of the same run, FLOPs per image
and the model FLOP utilisation `MFU = FLOPs/image × images/s / peak FLOP/s`.

FLOPs: from XLA's cost analysis of the compiled training step
(`jax.jit(step).lower(...).compile().cost_analysis()["flops"]`, a multiply-add counted as 2),
divided by the batch: it includes the head, the backward pass and the optimizer update, so it
differs per head. For reference the analytic ViT count is also printed (forward, 2 FLOPs per
multiply-add, T tokens (+1 class token), width d, MLP m, depth L, patch p, C classes):
`2·(HW/p²)·3p²·d + L·(8·T·d² + 4·T²·d + 4·T·d·m) + 2·d·C`, and training = 3 × forward (the
backward pass costs twice the forward). ViT-B/16 at 224 px: 35.1 GFLOP forward, 105 GFLOP
training per image.

Peak bf16 FLOP/s (dense, no sparsity) by `jax.devices()[0].device_kind`: H100 SXM 989e12
(H100 PCIe 756e12), H200 989e12, A100 312e12, TPU v4 275e12, TPU v5e 197e12, TPU v5p 459e12.
Another device (a CPU) has no known peak: MFU is null unless `--peak_flops` gives one.

Anchor: big_vision's JAX ViT-B/16 trains at about 1,460 images/s on one H100 (batch 128,
bf16), about 15% MFU by the analytic count. A deterministic B/16 well below that points at
the Keras/JAX step, not at the heads.

  KERAS_BACKEND=jax python benchmarks/accelerator.py --model=B/16 --batch=128 \\
    --image_size=224 --steps=20                        # a GPU: bf16, all heads
  KERAS_BACKEND=jax python benchmarks/accelerator.py --model=Ti/16 --batch=4 \\
    --image_size=32 --steps=2 --depth=1 --num_classes=10 --het_factors=3 \\
    --het_samples=8 --gp_inducing=32                   # CPU smoke size (the test's)

Last line: one JSON object {"device", "device_kind", "model", "batch", "image_size",
"precision", "steps", "peak_flops", "flops_source", "vit_train_flops_per_image", "heads":
{name: {"img_s", "ratio", "flops_per_image", "mfu"}}, "anchor_img_s"}.
"""

import argparse
import json
import os
import sys
import time

if __name__ == "__main__":
  os.environ.setdefault("KERAS_BACKEND", "jax")  # Before Keras is imported; main() checks.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_unc.backbones import VIT_VARIANTS, vit  # noqa: E402
from keras_unc.layers.batch_ensemble import TileMembers  # noqa: E402
from keras_unc.methods import heads  # noqa: E402

HEADS = ("deterministic", "batchensemble", "sngp", "heteroscedastic", "hetxl")
ANCHOR_IMG_S = 1460.0  # big_vision ViT-B/16, one H100, bf16, batch 128 (training).

# Dense bf16 peak FLOP/s by a substring of `device_kind` (first match wins).
PEAK_BF16_FLOPS = (
  ("H100 PCIe", 756e12),
  ("H100", 989e12),
  ("H200", 989e12),
  ("A100", 312e12),
  ("TPU v4", 275e12),
  ("TPU v5 lite", 197e12),
  ("TPU v5e", 197e12),
  ("TPU v5p", 459e12),
)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="B/16", help="ViT variant, e.g. B/16, S/16, Ti/16.")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=20, help="Timed steps per head.")
  parser.add_argument("--warmup", type=int, default=2, help="Untimed steps after compiling.")
  parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
  parser.add_argument("--heads", default=",".join(HEADS), help="Comma list of " + str(HEADS))
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--members", type=int, default=4, help="BatchEnsemble members.")
  parser.add_argument("--gp_inducing", type=int, default=1024, help="SNGP random features.")
  parser.add_argument("--het_factors", type=int, default=15, help="Low-rank noise factors.")
  parser.add_argument("--het_samples", type=int, default=1000, help="Training MC samples.")
  parser.add_argument("--depth", type=int, default=None, help="Override the ViT depth.")
  parser.add_argument(
    "--peak_flops", type=float, default=None, help="Peak FLOP/s (default: by device kind)."
  )
  args = parser.parse_args(argv)
  unknown = sorted(set(args.heads.split(",")) - set(HEADS))
  if unknown:
    parser.error(f"unknown heads {unknown}; choose from {HEADS}.")
  for name in ("batch", "image_size", "steps", "num_classes", "members"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1.")
  return args


def vit_forward_flops(variant, image_size, num_classes, depth=None):
  """Analytic forward FLOPs per image of `vit(variant)` with a linear head (module doc)."""
  size, patch = variant.split("/")
  spec = dict(VIT_VARIANTS[size])
  if depth is not None:
    spec["depth"] = depth
  p, d, m, layers = int(patch), spec["width"], spec["mlp_dim"], spec["depth"]
  patches = (image_size // p) ** 2
  tokens = patches + 1  # The class token (pooling="token").
  embed = 2 * patches * (3 * p * p) * d
  block = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * m
  return embed + layers * block + 2 * d * num_classes


def peak_flops(device_kind, override=None):
  if override is not None:
    return float(override)
  for key, value in PEAK_BF16_FLOPS:
    if key.lower() in device_kind.lower():
      return value
  return None


def make_head(name, args):
  if name == "deterministic":
    return heads.Linear(kernel_initializer="glorot_uniform"), 1
  if name == "batchensemble":
    return heads.BatchEnsembleLinear(), args.members
  if name == "sngp":
    return heads.GaussianProcess(num_inducing=args.gp_inducing), 1
  het = dict(
    num_factors=args.het_factors,
    train_mc_samples=args.het_samples,
    test_mc_samples=args.het_samples,
  )
  if name == "heteroscedastic":
    return heads.Heteroscedastic(**het), 1
  return heads.Heteroscedastic(xl=True, **het), 1


def build_network(name, args):
  """`[B, H, W, 3] -> logits [B, M, C]`: the ViT and the head `name` on its embedding."""
  backbone = vit(args.model, image_size=args.image_size, depth=args.depth)
  images = keras.Input((args.image_size, args.image_size, 3), name="images")
  embedding = backbone(images)
  head, members = make_head(name, args)
  if members > 1:  # The head's members on the one embedding (the backbone runs once).
    embedding = TileMembers(members, name="tile")(embedding)
  logits, _ = head(embedding, args.num_classes, members)
  return keras.Model(images, logits, name=f"vit_{name}")


def make_train_step(model, optimizer):
  """A jitted step `(state, x, y) -> (loss, state)`: Keras' stateless API under `jax.jit`."""

  def loss_fn(trainable, non_trainable, x, y):
    logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
    logits = keras.ops.cast(logits, "float32")  # [B, M, C]
    labels = keras.ops.repeat(keras.ops.expand_dims(y, 1), logits.shape[1], axis=1)
    loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return keras.ops.mean(loss), non_trainable

  def step(state, x, y):
    trainable, non_trainable, optimizer_state = state
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
    trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
    return loss, (trainable, non_trainable, optimizer_state)

  return jax.jit(step, donate_argnums=0)


def xla_flops(compiled):
  """FLOPs of one call from XLA's cost analysis, or None where the backend gives none."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per computation.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def time_head(name, args, x, y, policy):
  """Images/s and XLA FLOPs per image of the training step with head `name`."""
  keras.config.set_dtype_policy(policy)  # Again: clear_session() resets it.
  keras.utils.set_random_seed(0)
  model = build_network(name, args)
  optimizer = keras.optimizers.AdamW(learning_rate=1e-4)
  optimizer.build(model.trainable_variables)
  state = (
    [v.value for v in model.trainable_variables],
    [v.value for v in model.non_trainable_variables],
    [v.value for v in optimizer.variables],
  )
  compiled = make_train_step(model, optimizer).lower(state, x, y).compile()
  flops = xla_flops(compiled)
  for _ in range(args.warmup):
    loss, state = compiled(state, x, y)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(args.steps):
    loss, state = compiled(state, x, y)
  jax.block_until_ready((loss, state))
  seconds = time.perf_counter() - start
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"head {name}: the training loss is {float(loss)}.")
  del state, compiled, model, optimizer
  keras.backend.clear_session()
  return args.steps * args.batch / seconds, None if flops is None else flops / args.batch


def main(argv=None):
  args = parse_args(argv)
  if keras.backend.backend() != "jax":
    raise SystemExit(
      f"benchmarks/accelerator.py measures Keras' JAX backend, but Keras runs on "
      f"{keras.backend.backend()!r}: run it with KERAS_BACKEND=jax."
    )
  policy = "mixed_bfloat16" if args.precision == "bf16" else "float32"
  device = jax.devices()[0]
  peak = peak_flops(device.device_kind, args.peak_flops)
  rng = np.random.default_rng(0)
  shape = (args.batch, args.image_size, args.image_size, 3)
  x = jax.device_put(rng.uniform(-1, 1, shape).astype("float32"))
  y = jax.device_put(rng.integers(0, args.num_classes, args.batch).astype("int32"))
  analytic = 3 * vit_forward_flops(args.model, args.image_size, args.num_classes, args.depth)

  results = {}
  for name in args.heads.split(","):
    img_s, flops = time_head(name, args, x, y, policy)
    results[name] = {"img_s": img_s, "flops_per_image": flops}
  base = results.get("deterministic", {}).get("img_s")
  for result in results.values():
    result["ratio"] = None if base is None else result["img_s"] / base
    flops = result["flops_per_image"]
    result["mfu"] = None if peak is None or flops is None else flops * result["img_s"] / peak

  print(
    f"{device.platform} {device.device_kind} | ViT-{args.model} depth "
    f"{args.depth or VIT_VARIANTS[args.model.split('/')[0]]['depth']} | batch {args.batch} | "
    f"{args.image_size}px | {policy} | {args.steps} steps | peak "
    f"{'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}"
  )
  print(f"analytic ViT training FLOPs per image: {analytic / 1e9:.3f} G")
  print(f"{'head':<16}{'img/s':>10}{'ratio':>8}{'GFLOP/img':>11}{'MFU':>8}")
  for name, r in results.items():
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
    gflops = "-" if r["flops_per_image"] is None else f"{r['flops_per_image'] / 1e9:.3f}"
    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    print(f"{name:<16}{r['img_s']:>10.1f}{ratio:>8}{gflops:>11}{mfu:>8}")
  summary = {
    "device": device.platform,
    "device_kind": device.device_kind,
    "model": args.model,
    "depth": args.depth,
    "batch": args.batch,
    "image_size": args.image_size,
    "precision": policy,
    "steps": args.steps,
    "peak_flops": peak,
    "flops_source": "xla_cost_analysis",
    "vit_train_flops_per_image": analytic,
    "heads": results,
    "anchor_img_s": ANCHOR_IMG_S,
  }
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main()
