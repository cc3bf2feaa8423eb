"""SavedModel export: `serving_default` takes raw dataset images, returns the output dict."""

import keras
import tensorflow as tf

from keras_unc.runtime import files


def export_saved_model(network, path, input_shape, input_dtype=tf.uint8):
  """Writes `network` as a SavedModel at `path` (atomically replacing an old export).

  The `serving_default` signature takes `images: input_dtype [B, *input_shape]` exactly
  as stored in the dataset (resizing and normalisation are inside the network) and
  returns `logits [B, M, C]`, `probs [B, C]`, `uncertainty [B]`, `embedding [B, D]`.
  """
  archive = keras.export.ExportArchive()
  archive.track(network)

  def serve(images):
    return network(tf.cast(images, tf.float32), training=False)

  archive.add_endpoint(
    "serving_default",
    serve,
    input_signature=[tf.TensorSpec([None, *input_shape], input_dtype, name="images")],
  )
  files.remove_leftovers(path)  # Of a run killed while exporting.
  tmp = files.tmp_path(path)
  archive.write_out(tmp, verbose=False)
  return files.replace_dir(tmp, path)
