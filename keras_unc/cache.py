"""Command line of the feature cache (`keras_unc.feature_cache`):

    python -m keras_unc.cache --gin_file=X.gin --workdir=CACHE_DIR [--gin_param=...] [--overwrite]

builds (or resumes) the cache of the config's frozen backbone over `cache_features.epochs`
augmented passes of `train.dataset`; then train with `train.dataset='cached:CACHE_DIR'`.
A cache built with another configuration is refused (exit code 2) and left untouched.
"""

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), applied in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'cache_features.epochs=10'.")
flags.DEFINE_string("workdir", None, "The cache folder (manifest.json + shards).")
flags.DEFINE_bool("overwrite", False, "Delete a cache built with another config and rebuild.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # Imported here so --help is instant and configurables register before parsing.
  from keras_unc import config, feature_cache  # pylint: disable=import-outside-toplevel
  config.parse_or_exit(FLAGS.gin_file, FLAGS.gin_param)
  try:
    result = feature_cache.cache_features(FLAGS.workdir, FLAGS.overwrite)
  except feature_cache.StaleCacheError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(2)
  m = result["manifest"]
  print(f"Feature cache {result['path']}: {m['key']['epochs']} epoch(s) x "
        f"{m['key']['num_examples']} examples, {m['embedding_dim']}-d embeddings; "
        f"{result['written']} shard(s) written, {result['skipped']} already there, "
        f"{result['seconds']:.1f}s.\nTrain on it: --gin_param=\"train.dataset="
        f"'cached:{result['path']}'\"", flush=True)


if __name__ == "__main__":
  app.run(main)
