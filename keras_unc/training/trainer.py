"""The one trainer: every method and backbone trains, resumes, evaluates and exports here.

`train(workdir, mode)` builds the strategy, then inside its scope the method, network,
optimizer and checkpoint state, feeds `distribute_datasets_from_function` input to
`keras.Model.fit`, runs the evaluators every `eval_every` steps and exports a SavedModel.
Rerunning the same command resumes from the newest valid checkpoint.
"""

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from keras_unc import config
from keras_unc.backbones.pretrained import init_from
from keras_unc.data import errors as data_errors
from keras_unc.data import get_source, make_dataset, outliers
from keras_unc.evaluators import Evaluator, Predictor
from keras_unc.evaluators.runner import run_round
from keras_unc.layers import gaussian_process
from keras_unc.methods import Method, resolve_method
from keras_unc.runtime import (
  best_checkpoint,
  checkpoints,
  distribute,
  preemption,
  workdir_lock,
  xla,
)
from keras_unc.training import averaging, export, feature_cache, optim, posttrain
from keras_unc.training import callbacks as cbs
from keras_unc.training.network import build_network
from keras_unc.training.train_model import COUPLED_L2_PATTERN, TrainModel, describe_nonfinite

log = logging.getLogger(__name__)

MODES = ("train", "eval", "train_and_eval", "export")


def _as_float(x, y):
  return tf.cast(x, tf.float32), y


def check_trainable(model: keras.Model, mode: str) -> None:
  """Refuses a training mode when the model has no trainable weights (the optimizer would
  fail later with an unpack error that names nothing).
  """
  if "train" in mode and not model.trainable_variables:
    raise ValueError(
      "The network has no trainable weights (everything is frozen, or the method has no "
      "weights of its own), so there is nothing to train: unfreeze a part "
      "(build_network.freeze_backbone = False) or run the eval mode instead."
    )


@gin.configurable(denylist=["workdir", "mode"])
def train(
  workdir: str,
  mode: str = "train_and_eval",
  *,
  dataset: str = gin.REQUIRED,
  split: str = "train",
  preprocess: str = "",
  batch_size: int = 128,
  total_steps: int = gin.REQUIRED,
  eval_every: int | None = None,
  checkpoint_every: int | None = None,
  log_every: int = 50,
  keep_checkpoints: int = 3,
  method: Method | str | None = None,
  network: dict[str, Any] | None = None,
  optimizer: dict[str, Any] | None = None,
  evaluators: Sequence[Evaluator] = (),
  eval_batch_size: int = 512,
  seed: int = 0,
  steps_per_execution: int = 1,
  jit_compile: bool = False,
  deterministic_ops: bool = False,
  warm_start: str | None = None,
  adapt_checkpoint: bool = False,
  export_at_end: bool = True,
  verbose: int = 1,
  callbacks: Sequence[keras.callbacks.Callback] = (),
  nan_policy: str = "stop",
  eval_metric: str | None = None,
  eval_metric_mode: str = "max",
  coupled_l2: float = 0.0,
  coupled_l2_pattern: str = COUPLED_L2_PATTERN,
  recipe_global_batch: int | None = None,
  recipe_lr_scaling: str = "linear",
  allow_recipe_change: bool = False,
  calibrate_at_end: bool = False,
) -> dict[str, Any]:
  """Trains and/or evaluates and/or exports one model in `workdir`.

  Args:
    workdir: output folder (checkpoints/, TensorBoard events, metrics.jsonl, export/).
    mode: one of `MODES`.
    dataset, split, preprocess: the training source name, split and op string. A feature
      cache `cached:DIR` (`python -m keras_unc cache`) trains the head alone on cached embeddings;
      evaluators and the export then use the full network (backbone from the cache's
      checkpoint + the trained head).
    batch_size: global batch size (split over replicas).
    total_steps: training steps.
    eval_every, checkpoint_every: intervals in steps (default: `total_steps`).
    log_every: TensorBoard scalar interval.
    keep_checkpoints: newest checkpoints kept.
    method: a `keras_unc.methods.Method` or a registered method name (default
      deterministic).
    network: keyword arguments of `build_network` (e.g. `backbone`, `image_size`) that win
      over its gin bindings: the Python way to choose the backbone without gin.
    optimizer: keyword arguments of `make_optimizer` (e.g. `name`, `learning_rate`) that win
      over its gin bindings.
    evaluators: evaluators run every `eval_every` steps and in `mode=eval`.
    eval_batch_size: batch size of evaluation.
    seed: seeds initialisation, data order and augmentation.
    steps_per_execution, jit_compile: passed to `compile`; `jit_compile` also XLA-compiles
      evaluation (`Predictor`). A `jit_compile = True` that Keras would drop is an error.
    deterministic_ops: enable TF op determinism (bit-identical resume tests); refused
      together with `jit_compile` (op determinism disables XLA).
    warm_start: checkpoint folder whose model weights initialise a fresh run.
    adapt_checkpoint: allow `warm_start` from another method or architecture: variables
      are matched by layer and weight name, shared weights copied (broadcast over
      ensemble members), the rest keep their fresh initialisation and are listed.
    export_at_end: write the SavedModel when training finishes.
    verbose: Keras progress bar (1) or none (0).
    callbacks: extra Keras callbacks (e.g. a profiler or a timer).
    nan_policy: a non-finite loss, gradient or parameter (checked inside the train step,
      so also under `jit_compile=True`): "stop" (stop, naming the step; the last good
      checkpoint stays newest) or "skip_batch" (that batch changes nothing; skipped
      batches are counted and logged).
    eval_metric: keep the checkpoint of the best evaluation round by this metric (e.g.
      `avg_downstream_auroc_correct`) in `workdir/best/`, its step and metrics in
      `workdir/best.json`, and report `best_*` values every round (`best_checkpoint`).
    eval_metric_mode: "max" or "min": whether a larger `eval_metric` is better.
    coupled_l2: L2 penalty `coupled_l2 * sum ||w||^2` added to the loss over the trainable
      variables whose path matches `coupled_l2_pattern` (`re.search`; default: kernels and
      biases, as uncertainty-baselines' `l2` flag). 0 = off; independent of
      `make_optimizer.weight_decay` (decoupled).
    coupled_l2_pattern: see `coupled_l2`.
    recipe_global_batch: the examples per optimizer update a published recipe used
      (`batch_size x make_optimizer.gradient_accumulation_steps` must equal it unless
      `allow_recipe_change`); None = no check. `batch_size` is global whatever the
      replica count (each replica gets `batch_size / replicas`).
    recipe_lr_scaling: how the recipe's learning rate depends on the global batch:
      "linear" (`base_lr * batch / 256`: uncertainty-baselines, timm SGD), "sqrt"
      (timm/URL for LAMB and Adam) or "none". Applied to `make_optimizer.learning_rate`
      only when `allow_recipe_change` lets the batch differ from `recipe_global_batch`.
    allow_recipe_change: train a recipe at another global batch (learning rate rescaled
      by `recipe_lr_scaling`, logged).
    calibrate_at_end: after training (modes train and train_and_eval), run the post-hoc
      stage (`keras_unc.training.calibrate.calibrate`, configured by its gin bindings) on
      the final network, which also re-exports it with the fitted components.

  Returns:
    dict with `step`, the last evaluation `metrics`, the `export` path and the `network`.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}: choose one of {', '.join(MODES)}.")
  os.makedirs(workdir, exist_ok=True)
  keras.utils.set_random_seed(seed)
  xla.set_op_determinism(deterministic_ops, jit_compile)  # Refused together (no XLA).
  distribute.set_precision()
  strategy = distribute.get_strategy()
  # Only the chief writes workdir; other workers of a multi-worker job write a scratch folder.
  workdir = distribute.worker_dir(workdir, strategy)
  # Two runs never write one workdir (released by the kernel if this process dies).
  lock = workdir_lock.acquire(workdir, strategy) if mode in ("train", "train_and_eval") else None
  replicas = strategy.num_replicas_in_sync
  method = resolve_method(method)
  plan = optim.batch_plan(
    batch_size,
    replicas,
    batch_multiple=method.batch_multiple,
    method_name=method.name,
    accumulation_steps=_accumulation_steps(optimizer),
    recipe_global_batch=recipe_global_batch,
    recipe_lr_scaling=recipe_lr_scaling,
    allow_recipe_change=allow_recipe_change,
    distributed=strategy is not tf.distribute.get_strategy(),
  )
  # steps_per_execution = N > 1: N train steps per host call on every strategy, replicas
  # included (a device loop on the distributed iterator: TrainModel.make_train_function),
  # bit-identical to N single steps. Executions are cut at epoch ends, so checkpoints,
  # evaluations and the end of training keep their exact steps; callbacks see one batch
  # per execution (the step counter is `optimizer.iterations`).
  if int(steps_per_execution) < 1:
    raise ValueError(
      f"train.steps_per_execution={steps_per_execution} must be >= 1 (the train steps run "
      "per host call; 1 = one step per call)."
    )
  eval_every = eval_every or total_steps
  checkpoint_every = checkpoint_every or eval_every
  # Keras "epochs" are the largest interval that divides every event's period.
  interval = math.gcd(math.gcd(eval_every, checkpoint_every), total_steps)

  source = get_source(dataset)
  cached = getattr(source, "manifest", None) is not None  # `cached:DIR`: train the head alone.
  if cached:
    preprocess, warm_start = feature_cache.cached_training_args(source, preprocess, warm_start)
  if cached and network:
    raise ValueError(
      f"train(network=...) builds a new backbone, but {dataset} holds the cached features of "
      "the backbone in its manifest: leave `network` unset when training on a feature cache."
    )
  with strategy.scope():
    if cached:  # Backbone skipped in training; evaluation and export use the full network.
      full_network = feature_cache.build_cached_network(method, source)
      network = full_network.head_network
    else:
      network = full_network = build_network(
        method, source.num_classes, source.image_shape, **(network or {})
      )
    imported = init_from.import_weights(network)  # Public checkpoint (gin: import_weights.path).
    model = TrainModel(
      network,
      method,
      nan_policy=nan_policy,
      coupled_l2=coupled_l2,
      coupled_l2_pattern=coupled_l2_pattern,
      total_steps=total_steps,
      name="train_model",
    )
    optimizer = optim.make_optimizer(
      total_steps, **{"lr_scale": plan["lr_scale"], **(optimizer or {})}
    )
    _log_batch_plan(plan, replicas, optimizer, recipe_global_batch, recipe_lr_scaling)
    model.compile(
      optimizer=optimizer, steps_per_execution=steps_per_execution, jit_compile=jit_compile
    )
    xla.check_jit_compile(model, jit_compile, "train.jit_compile")  # Never silently off.
    check_trainable(model, mode)
    averaging.schedule(full_network, total_steps, cached)  # SWA/EMA/SWAG (weight averaging).
    optimizer.build(model.trainable_variables)

  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), keep_checkpoints)
  step = _restore(
    ckpt, network, optimizer, warm_start, mode, method.name, adapt_checkpoint, imported is not None
  )
  # Multi-worker: the chief restored; everyone continues from its state and step.
  step = distribute.sync_from_chief(strategy, network.variables + optimizer.variables, step)
  writer = tf.summary.create_file_writer(os.path.join(workdir, "train"))
  eval_writer = tf.summary.create_file_writer(os.path.join(workdir, "eval"))
  config.save_operative_config(workdir, writer)

  predictor = Predictor(full_network, eval_batch_size, jit_compile=jit_compile)
  averaged_data = dict(source=source, split=split, preprocess=preprocess, batch_size=batch_size)
  last = {}
  best = (
    best_checkpoint.BestCheckpoint(workdir, eval_metric, eval_metric_mode) if eval_metric else None
  )

  def run_eval(at_step):
    gaussian_process.refresh_covariance_caches(full_network)  # GP heads: no solve per batch.
    extra = best and (lambda found: best.update(at_step, found, network, optimizer, ckpt))
    served = averaging.serving_network(full_network, averaged_data)  # Averaged/SWAG samples.
    gaussian_process.refresh_covariance_caches(served)
    use = predictor if served is full_network else predictor.on(served)
    found = run_round(evaluators, use, workdir, eval_writer, at_step, extra=extra)
    if found:
      last.clear()
      last.update(found)

  if mode in ("train", "train_and_eval") and step < total_steps:

    def data_from(start):
      def input_fn(ctx):
        ds = make_dataset(
          source,
          split,
          preprocess,
          batch_size,
          train=True,
          seed=seed,
          start_step=start,
          input_context=ctx,
        )
        if method.loss_name == "outlier_exposure":  # Auxiliary outliers in every batch.
          ds = outliers.mix_outliers(ds, batch_size, seed=seed, start_step=start, input_context=ctx)
        return ds.map(_as_float)

      return strategy.distribute_datasets_from_function(input_fn)

    guard = cbs.NanGuard()
    saver = cbs.Checkpointing(ckpt, checkpoint_every, total_steps, guard, network)
    preempt = preemption.install(strategy, ckpt, network, guard)
    fit_callbacks = [guard, saver, *preempt, cbs.ScalarLogger(writer, log_every, batch_size)]
    if mode == "train_and_eval":
      final = not posttrain.wants_fit(method)  # (Else evaluated after the fit below.)
      fit_callbacks.append(cbs.Evaluation(run_eval, eval_every, total_steps, final))
    fit_args = dict(
      callbacks=fit_callbacks + method.callbacks() + list(callbacks), verbose=verbose, shuffle=False
    )  # The pipeline shuffles deterministically.
    with data_errors.explained(dataset, split, ckpt):  # Corrupt/truncated data: clear error.
      if step % interval:  # Resumed from a preemption save between two "epochs": catch up.
        model.fit(data_from(step), epochs=1, steps_per_epoch=interval - step % interval, **fit_args)
        step = int(optimizer.iterations.numpy())
      if step < total_steps and guard.bad_step is None and not model.stop_training:
        model.fit(
          data_from(step),
          epochs=total_steps // interval + (total_steps % interval > 0),
          steps_per_epoch=interval,
          initial_epoch=step // interval,
          **fit_args,
        )
    if guard.bad_step is not None:
      good = ckpt.steps()
      raise cbs.NonFiniteLossError(
        f"Non-finite training {describe_nonfinite(guard.bad_what)} at step {guard.bad_step}"
        "; training stopped. The last good "
        f"checkpoint ({ckpt.path(good[0]) if good else 'none'}) is intact. Lower the learning "
        "rate, enable make_optimizer.global_clipnorm, or check the input data."
      )
    for callback in preempt:
      callback.check()  # Raises TrainingPreempted after a SIGTERM save.
    step = int(optimizer.iterations.numpy())
  elif mode == "eval":
    run_eval(step)
  if mode in ("train", "train_and_eval") and step >= total_steps:  # Post-training fit (Laplace).
    fit_args = dict(dataset=dataset, split=split, preprocess=preprocess, batch_size=eval_batch_size)
    if posttrain.fit(method, full_network, **fit_args):
      ckpt.save(step, network, optimizer)  # The fitted state joins the final checkpoint.
      if mode == "train_and_eval":
        run_eval(step)

  full_network = averaging.serving_network(full_network, averaged_data)  # SWA/EMA/SWAG.
  export_path = None
  at_end = mode != "eval" and export_at_end and step >= total_steps
  if mode == "export" or (at_end and not calibrate_at_end):  # (`calibrate` exports.)
    export_path = export.export_saved_model(
      full_network,
      os.path.join(workdir, "export"),
      tuple(full_network.inputs[0].shape[1:]),
      posthoc=_posthoc_for_export(workdir, ckpt, refuse_stale=mode == "export"),
    )
  if calibrate_at_end and mode in ("train", "train_and_eval") and step >= total_steps:
    from keras_unc.training import calibrate

    result = calibrate.calibrate(
      workdir,
      network=full_network,
      method=method,
      checkpoint=feature_cache.checkpoint_info(ckpt.path(ckpt.steps()[0])),
    )
    last.update(result["metrics"])
    export_path = result["export"] or export_path
  writer.flush()
  eval_writer.flush()
  if lock is not None:
    lock.release()
  return {"step": step, "metrics": last, "export": export_path, "network": full_network}


def _posthoc_for_export(workdir, ckpt, refuse_stale):
  """The fresh post-hoc components of `workdir` for the export (none without a state). A
  stale state (fitted on an older checkpoint) is refused by the `export` mode and left out,
  with a warning, of the export at the end of training.
  """
  from keras_unc.posthoc.state import StalePosthocError
  from keras_unc.training import calibrate

  steps = ckpt.steps()
  if not steps or not os.path.isdir(os.path.join(workdir, calibrate.POSTHOC_DIR)):
    return []  # (No hash of the checkpoint when there is nothing to check.)
  try:
    return calibrate.load_fresh(workdir, feature_cache.checkpoint_info(ckpt.path(steps[0])))
  except StalePosthocError as e:
    if refuse_stale:
      raise
    log.warning("Exporting without the post-hoc state: %s", e)
    return []


def _accumulation_steps(overrides):
  """`make_optimizer.gradient_accumulation_steps` as this run will use it."""
  if overrides and "gradient_accumulation_steps" in overrides:
    return int(overrides["gradient_accumulation_steps"])
  return int(config.value("make_optimizer.gradient_accumulation_steps"))


def _log_batch_plan(plan, replicas, optimizer, recipe_global_batch, rule):
  lr = optim.peak_learning_rate(optimizer)
  log.info(
    "Batch: %d per replica x %d replicas x %d accumulated = %d examples per update; "
    "peak learning rate %.6g.",
    plan["per_replica"],
    replicas,
    optim.unwrap(optimizer).gradient_accumulation_steps or 1,
    plan["global_batch"],
    lr,
  )
  if plan["lr_scale"] != 1.0:
    log.warning(
      "train.allow_recipe_change: %d examples per update instead of the recipe's %d; "
      "learning rate scaled x%.4g (%s rule) to %.6g.",
      plan["global_batch"],
      recipe_global_batch,
      plan["lr_scale"],
      rule,
      lr,
    )


def _restore(ckpt, network, optimizer, warm_start, mode, method_name, adapt, imported=False):
  """Restores the newest checkpoint (returning its step) or warm-starts; 0 when fresh."""
  found = ckpt.load_latest()
  if found:
    step, arrays, meta = found
    checkpoints.check_method(meta, method_name, ckpt.path(step), adapt_allowed=False)
    checkpoints.assign(network.variables, arrays, "model", ckpt.path(step))
    _restore_optimizer(optimizer, arrays, ckpt.path(step))
    log.info("Resumed from %s", ckpt.path(step))
    return step
  if warm_start:
    arrays, meta = checkpoints.read(warm_start)
    if adapt:
      report = checkpoints.adapt(network.variables, arrays, meta)
      log.warning("Warm start from %s (adapted): %s", warm_start, report)
    else:
      checkpoints.check_method(meta, method_name, warm_start, adapt_allowed=True)
      checkpoints.assign(network.variables, arrays, "model", warm_start)
      log.info("Warm start from %s", warm_start)
  elif mode in ("eval", "export") and not imported:  # only_eval of an imported checkpoint.
    raise FileNotFoundError(
      f"--mode={mode} needs a trained checkpoint, but {ckpt.directory} "
      "has none: train first (--mode=train), or set train.warm_start "
      "or import_weights.path."
    )
  return 0


def _restore_optimizer(optimizer, arrays, source):
  """Restores the optimizer state, the loss-scale state of `mixed_float16` included.

  A run resumed under another `set_precision.policy` than it was checkpointed with (e.g. a
  float16 GPU run moved to a bfloat16 TPU) gains or loses the loss-scale state (scalars
  stored first): the inner optimizer's state is restored and the loss scale starts afresh
  (or is dropped), with a warning.
  """
  stored = sorted(k for k in arrays if k.startswith("optimizer/"))
  inner = optim.unwrap(optimizer).variables
  extra = len(stored) - len(inner)  # Loss-scale scalars in the checkpoint (Keras' has 4).
  scaled_now = optimizer is not optim.unwrap(optimizer)
  changed = (scaled_now and extra == 0) or (
    not scaled_now and 0 < extra <= 4 and all(arrays[k].shape == () for k in stored[:extra])
  )
  if not changed:  # The same policy (or a mismatch, which `assign` explains).
    checkpoints.assign(optimizer.variables, arrays, "optimizer", source)
    return
  tail = {f"optimizer/{i:05d}": arrays[k] for i, k in enumerate(stored[extra:])}
  checkpoints.assign(inner, tail, "optimizer", source)
  log.warning(
    "Checkpoint %s was written %s dynamic loss scaling (another set_precision.policy than "
    "this run's %r): the optimizer state is restored, the loss scale %s.",
    source,
    "with" if extra > 0 else "without",
    keras.config.dtype_policy().name,
    "is dropped" if extra > 0 else "starts afresh",
  )
