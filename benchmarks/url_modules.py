"""URL uncertainty modules compared on one frozen backbone and one feature cache.

Pretrained Visual Uncertainties (Kirchhof et al. 2024) claims that a loss-prediction
module (pred-net, trained with the ranking loss `losspred_order`) gives a better R-AUROC
on unseen downstream data than the classic uncertainties of the same network. One run:

  1. the MNIST demo ResNet (`demo/url_mnist_backbone.gin`) is trained once, with the one
     trainer, on MNIST `train[:50000]`;
  2. the feature cache (`python -m keras_unc cache` = `feature_cache.cache_features`) of its
     frozen backbone is built once on the *held-out* `train[50000:]`, which the backbone never
     fitted (the pred-net's target, the classifier's cross-entropy, is ~0 on fitted images);
  3. each uncertainty module is fitted on that cache through the trainer
     (`train.dataset = 'cached:DIR'`, `demo/url_mnist.gin`) and evaluated zero-shot by the
     URL evaluator (`RetrievalEvaluator`) on Fashion-MNIST test (classes never trained on),
     with MNIST test as the upstream half of the mixed R-AUROC:

     * `pred_net`: MLP on the embedding, `losspred_order`, classifier frozen;
     * `class_entropy`: entropy of the classifier, fine-tuned on the cache by
       cross-entropy (the trainer needs trainable weights; the pretrained classifier is
       where it starts);
     * `embed_norm`: 1 / ||embedding|| (the frozen embedding: the classifier's fine-tuning,
       as for `class_entropy`, does not change it);
     * `jsd`: MC dropout (`mc_dropout_head`, the classifier fine-tuned with dropout on the
       cache by cross-entropy), Jensen-Shannon divergence of the dropout samples.

  With `--control`, a pred-net is also fitted on a cache of images the backbone *did* fit
  (`train[:N]`, N = the held-out size): the setting of the first URL demo.

The backbone is frozen, so R@1 is the same for every module; R-AUROC and the mixed R-AUROC
are what the modules change. Nothing is tuned per module. Also reported: the OOD AUROC
(uncertainty tells Fashion-MNIST from MNIST) and, in distribution, the AUROC of the
uncertainty for the classifier's errors on MNIST test (`ClassificationEvaluator`'s
`calibration_auroc`): whether a module learned what it is trained for.

  .venv/bin/python benchmarks/url_modules.py [--backbone_steps 400 --module_steps 400]

Needs MNIST and Fashion-MNIST offline (`launch/fetch_data.sh`). Last line: one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.training import feature_cache
from keras_unc.training import trainer as train_lib

QUIET = [
  "train.verbose = 0",
  "train.log_every = 1000000",
  "train.export_at_end = False",
]

# name -> gin bindings of `URL` (on top of demo/url_mnist.gin) and whether it trains weights.
MODULES = {
  "pred_net": ["URL.module = 'pred_net'", "URL.loss = 'losspred_order'"],
  "class_entropy": [
    "URL.module = 'class_entropy'",
    "URL.loss = 'cross_entropy'",
    "URL.freeze_classifier = False",
  ],
  "embed_norm": [
    "URL.module = 'embed_norm'",
    "URL.loss = 'cross_entropy'",
    "URL.freeze_classifier = False",
  ],
  "jsd": [
    "URL.module = 'jsd'",
    "URL.loss = 'cross_entropy'",
    "URL.head = @mc_dropout_head()",
    "mc_dropout_head.rate = 0.1",
    "mc_dropout_head.num_samples = 10",
    "URL.freeze_classifier = False",
  ],
}


def train_backbone(args, workdir):
  """The backbone + classifier, trained with the one trainer on the backbone split."""
  gin.clear_config()
  config.parse(
    ["demo/url_mnist_backbone.gin"],
    [
      f"train.split = '{args.backbone_split}'",
      f"train.total_steps = {args.backbone_steps}",
      f"train.checkpoint_every = {args.backbone_steps}",
      "train.evaluators = []",
      *QUIET,
    ],
  )
  train_lib.train(workdir, "train")
  return feature_cache.resolve_checkpoint(workdir)


def build_cache(args, ckpt, split, folder):
  gin.clear_config()
  config.parse(
    ["demo/url_mnist.gin"],
    [
      f"train.warm_start = '{ckpt}'",
      f"train.split = '{split}'",
      f"cache_features.epochs = {args.cache_epochs}",
      "cache_features.verbose = 0",
    ],
  )
  return feature_cache.cache_features(folder)["path"]


def fit_module(args, ckpt, cache, split, bindings, steps, workdir):
  """Fits one module on the cache with the trainer; returns the URL evaluator's metrics."""
  gin.clear_config()
  config.parse(
    ["demo/url_mnist.gin"],
    [
      f"train.dataset = 'cached:{cache}'",
      f"train.split = '{split}'",  # The split the cache was built from: all of it.
      f"train.warm_start = '{ckpt}'",
      f"train.total_steps = {steps}",
      f"train.eval_every = {steps}",
      f"train.checkpoint_every = {steps}",
      f"train.steps_per_execution = {min(steps, 50)}",
      "RetrievalEvaluator.datasets = "
      f"{{'fashion_mnist': ('fashion_mnist', 'test[:{args.down_n}]')}}",
      f"RetrievalEvaluator.upstream = ('mnist', 'test[:{args.up_n}]')",
      "train.evaluators = [@ClassificationEvaluator(), @RetrievalEvaluator()]",
      "ClassificationEvaluator.dataset = 'mnist'",
      f"ClassificationEvaluator.split = 'test[:{args.up_n}]'",
      "RetrievalEvaluator.crop = False",
      *QUIET,
      *bindings,
    ],
  )
  found = train_lib.train(workdir, "train_and_eval")["metrics"]
  return {
    "r_at_1": found["retrieval/fashion_mnist_r1"],
    "r_auroc": found["retrieval/fashion_mnist_auroc_correct"],
    "mixed_r_auroc": found["retrieval/fashion_mnist_auroc_correct_mixed"],
    "auroc_ood": found["retrieval/fashion_mnist_auroc_ood"],
    "id_error_auroc": found["test/calibration_auroc"],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--backbone_split", default="train[:50000]")
  parser.add_argument("--heldout_split", default="train[50000:]")
  parser.add_argument("--backbone_steps", type=int, default=400, help="batch 128")
  parser.add_argument("--module_steps", type=int, default=400, help="each module, batch 128")
  parser.add_argument("--cache_epochs", type=int, default=1)
  parser.add_argument("--down_n", type=int, default=5000, help="Fashion-MNIST test images")
  parser.add_argument("--up_n", type=int, default=5000, help="MNIST test images (mixed)")
  parser.add_argument("--control", action="store_true", help="also a pred-net on fitted images")
  parser.add_argument("--workdir", default=None, help="default: a fresh temporary folder")
  args = parser.parse_args()
  tmp = args.workdir or tempfile.mkdtemp(prefix="url_modules_")
  times = {}

  t0 = time.perf_counter()
  ckpt = train_backbone(args, os.path.join(tmp, "backbone"))
  times["backbone_s"] = time.perf_counter() - t0
  print(f"backbone: {args.backbone_steps} steps in {times['backbone_s']:.0f} s", flush=True)
  t0 = time.perf_counter()
  cache = build_cache(args, ckpt, args.heldout_split, os.path.join(tmp, "cache"))
  times["cache_s"] = time.perf_counter() - t0
  print(f"cache of {args.heldout_split}: {times['cache_s']:.0f} s", flush=True)

  results = {}
  for name, bindings in MODULES.items():
    t0 = time.perf_counter()
    results[name] = fit_module(
      args, ckpt, cache, args.heldout_split, bindings, args.module_steps, os.path.join(tmp, name)
    )
    times[f"{name}_s"] = time.perf_counter() - t0
    print(f"{name}: {times[f'{name}_s']:.0f} s {results[name]}", flush=True)

  control = None
  if args.control:
    n = get_source("mnist").num_examples(args.heldout_split)
    t0 = time.perf_counter()
    split = f"train[:{n}]"
    fitted = build_cache(args, ckpt, split, os.path.join(tmp, "cache_fitted"))
    control = fit_module(
      args,
      ckpt,
      fitted,
      split,
      MODULES["pred_net"],
      args.module_steps,
      os.path.join(tmp, "control"),
    )
    times["control_s"] = time.perf_counter() - t0

  best = max(results, key=lambda k: results[k]["r_auroc"])
  print(
    f"\nMNIST ResNet-18/2 trained on {args.backbone_split} ({args.backbone_steps} steps), "
    f"modules fitted on the cache of {args.heldout_split} ({args.cache_epochs} epoch(s));\n"
    f"zero-shot on Fashion-MNIST test[:{args.down_n}], mixed with MNIST test[:{args.up_n}]."
  )
  header = (
    f"{'module':<28}{'R@1':>8}{'R-AUROC':>10}{'mixed R-AUROC':>15}{'OOD AUROC':>11}"
    f"{'MNIST error AUROC':>19}"
  )
  print(header + "\n" + "-" * len(header))
  rows = list(results.items())
  if control:
    rows.append(("pred_net on fitted images", control))
  for name, m in rows:
    print(
      f"{name:<28}{m['r_at_1']:>8.4f}{m['r_auroc']:>10.4f}{m['mixed_r_auroc']:>15.4f}"
      f"{m['auroc_ood']:>11.4f}{m['id_error_auroc']:>19.4f}"
    )
  print("-" * len(header))
  print(f"best R-AUROC: {best} (paper's claim: pred_net)")
  settings = {k: v for k, v in vars(args).items() if k != "workdir"}
  out = {
    "modules": results,
    "best_r_auroc": best,
    "pred_net_best": best == "pred_net",
    "settings": settings,
    "seconds": {k: round(v, 1) for k, v in times.items()},
    "cpu_seconds": round(time.process_time(), 1),  # All threads of this process.
    "load_average": [round(x, 2) for x in os.getloadavg()],
  }
  if control:
    out["pred_net_on_fitted_images"] = control
  print(json.dumps(out))


if __name__ == "__main__":
  main()
