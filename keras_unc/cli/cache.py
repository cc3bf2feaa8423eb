"""Verb `cache`: the frozen backbone's features, for head training on `cached:DIR`.

    python -m keras_unc cache --gin_file=X.gin --workdir=CACHE_DIR [--gin_param=...] [--overwrite]

builds (or resumes) the cache of the config's frozen backbone over `cache_features.epochs`
augmented passes of `train.dataset`; then train with `train.dataset='cached:CACHE_DIR'`
(streamed from disk; `cached_source.in_memory=True` loads it whole). Every replica of the
strategy (gin `get_strategy.name`, e.g. 'mirrored' on several GPUs) embeds and writes its own shards;
`cache_features.dtype='float16'` halves the cache. A cache built with another
configuration is refused (exit code 2) and left untouched.
"""

from absl import flags

from keras_unc.cli import flags as common

FLAGS = flags.FLAGS


def define_flags():
  common.define_gin_flags("cache_features.epochs=10")
  common.define_workdir("The cache folder (manifest.json + shards).")
  flags.DEFINE_bool("overwrite", False, "Delete a cache built with another config and rebuild.")


def main(argv):
  common.start(argv)
  from keras_unc.training import feature_cache

  try:
    result = feature_cache.cache_features(FLAGS.workdir, FLAGS.overwrite)
  except feature_cache.StaleCacheError as e:
    common.fail(str(e))
  m = result["manifest"]
  print(
    f"Feature cache {result['path']}: {m['key']['epochs']} epoch(s) x "
    f"{m['key']['num_examples']} examples, {m['embedding_dim']}-d {m['key']['dtype']} "
    "embeddings; "
    f"{result['written']} shard(s) written, {result['skipped']} already there, "
    f'{result["seconds"]:.1f}s.\nTrain on it: --gin_param="train.dataset='
    f"'cached:{result['path']}'\"",
    flush=True,
  )
