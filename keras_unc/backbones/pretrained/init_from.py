"""`import_weights`: initialise a freshly built network from a public checkpoint (gin).

`train.train` calls `import_weights(network)` right after building the network; with the
default `path=None` it does nothing. A run that resumes from its own checkpoint restores
over the imported weights, and `train.warm_start` (our own checkpoint folders) is applied
after it, so set only one of the two.

Example gin:

```
import_weights.path = '/data/ckpts/S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz'
import_weights.format = 'vit_npz'   # or 'big_vision', 'plex', 'keras_hub', 'auto'
import_weights.keep_head = False    # fresh head for the new classes
```
"""

import logging
import os

import gin

from keras_unc.backbones.pretrained import keras_hub_import, npz_import, torch_import

log = logging.getLogger(__name__)

FORMATS = ("auto", "keras_hub") + npz_import.FORMATS + torch_import.FORMATS
TORCH_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".tar")


def _is_preset(path):
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


@gin.configurable
def import_weights(
  network, path=None, format="auto", keep_head=False, resize_posemb=True, ignore=(), adapt=False
):
  """Loads a public checkpoint into `network` (a backbone or a `build_network` network).

  Args:
    network: the model to initialise.
    path: a ViT `.npz` (big_vision, vision_transformer, Plex), a keras-hub preset folder, or
      a PyTorch checkpoint (`.safetensors`, `.pth`, `.pth.tar`, `.bin`: timm ViT, URL,
      torchvision / timm / SwAV ResNet); None does nothing.
    format: "auto" (a folder with `config.json` is a keras-hub preset, a PyTorch file
      suffix selects the PyTorch reader, otherwise `.npz`; the naming is then detected) or
      one of `FORMATS`.
    keep_head: load the checkpoint's linear head (`.npz` only; same number of classes)
      instead of the network's freshly initialised head.
    resize_posemb: resample a ViT position embedding made for another image size.
    ignore: fnmatch patterns of checkpoint keys to skip.
    adapt: load a deterministic checkpoint into BatchEnsemble layers (shared weights
      copied, fast weights fresh).

  Returns:
    The import report (dict), or None when `path` is None.
  """
  if path is None:
    return None
  if format not in FORMATS:
    raise ValueError(
      f"Unknown import_weights.format {format!r}: choose one of {', '.join(FORMATS)}."
    )
  if not os.path.exists(path):
    raise FileNotFoundError(f"import_weights.path {path!r} does not exist.")
  if format == "keras_hub" or (format == "auto" and _is_preset(path)):
    if keep_head:
      raise ValueError(
        "keras-hub backbone presets have no head: set import_weights.keep_head=False."
      )
    report = keras_hub_import.import_keras_hub(
      network, path, adapt=adapt, resize_posemb=resize_posemb
    )
  else:
    torch_file = format in torch_import.FORMATS or (
      format == "auto" and path.endswith(TORCH_SUFFIXES)
    )
    importer = torch_import.import_torch if torch_file else npz_import.import_npz
    report = importer(
      network,
      path,
      format,
      keep_head=keep_head,
      resize_posemb=resize_posemb,
      ignore=ignore,
      adapt=adapt,
    )
  log.info("Initialised %s from %s: %d weights loaded.", network.name, path, report["loaded"])
  log.debug("Import report: %s", report)
  return report
