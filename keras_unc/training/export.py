"""SavedModel export: `serving_default` takes raw dataset images, returns the output dict."""

import keras
import tensorflow as tf

from keras_unc.layers import gaussian_process
from keras_unc.runtime import files


def export_saved_model(network, path, input_shape, input_dtype=tf.uint8, posthoc=()):
  """Writes `network` as a SavedModel at `path` (atomically replacing an old export).

  The `serving_default` signature takes `images: input_dtype [B, *input_shape]` exactly
  as stored in the dataset (resizing and normalisation are inside the network) and
  returns `logits [B, M, C]`, `probs [B, C]`, `uncertainty [B]`, `embedding [B, D]`, and
  the outputs of the post-hoc components (`keras_unc.posthoc`), applied in order, each one's
  Keras layer updating the dict: e.g. calibrated `probs` and `uncalibrated_probs`,
  `prediction_set [B, C]` and `set_size [B]`, `ood_score [B]` and `is_ood [B]`.
  GP heads serve from their covariance cache, refreshed here (`serve_from_cache`): one matmul
  per call for the predictive variance, no Cholesky solve in the serving graph.

  Args:
    network: the functional network (raw images -> output dict).
    path: the SavedModel folder.
    input_shape: shape of one raw image.
    input_dtype: dtype of the raw images.
    posthoc: fitted post-hoc components in application order (`posthoc.state.ordered`).
  """
  with gaussian_process.serve_from_cache(network) as caches:
    return _export(network, path, input_shape, input_dtype, posthoc, caches)


def serving_function(network, layers=()):
  """The function `serving_default` runs: raw images -> the network's output dict, updated
  by each post-hoc component's Keras layer in order. Trace it inside `serve_from_cache` (as
  the export does) to get the served graph (`tests/scale/test_tpu_lint.py` compiles it with
  XLA for every method).
  """

  def serve(images):
    outputs = dict(network(tf.cast(images, tf.float32), training=False))
    for layer in layers:
      outputs.update(layer(outputs))
    return outputs

  return serve


def _export(network, path, input_shape, input_dtype, posthoc, caches):
  archive = keras.export.ExportArchive()
  archive.track(network)
  if caches:  # Not layer weights: tracked here so that the SavedModel holds them.
    archive.add_variable_collection("gp_covariance_caches", caches)
  layers = [c.layer() for c in posthoc]
  serve = serving_function(network, layers)
  if layers:  # Built (their weights created) by one call, then tracked with the network.
    serve(tf.zeros([1, *input_shape], input_dtype))
    for layer in layers:
      archive.track(layer)

  archive.add_endpoint(
    "serving_default",
    serve,
    input_signature=[tf.TensorSpec([None, *input_shape], input_dtype, name="images")],
  )
  files.remove_leftovers(path)  # Of a run killed while exporting.
  tmp = files.tmp_path(path)
  archive.write_out(tmp, verbose=False)
  return files.replace_dir(tmp, path)
