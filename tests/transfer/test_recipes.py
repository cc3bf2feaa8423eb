"""Every transfer / pretraining recipe runs 2 steps through the one trainer on mock TFDS
data, with `gin_configs/testing/recipe_smoke.gin` shrinking the model and the evaluation.

The recipes keep their protocol (frozen backbone, CAT members, two-stage head, distillation
teacher, imported `.npz`, adapted warm start) and their evaluators; the checkpoints their
`SET THIS` paths name are tiny stand-ins written here.
"""

import json

import gin
import keras
import pytest
import tensorflow_datasets as tfds

from keras_unc import config
from keras_unc.backbones.pretrained.npz_import import export_npz
from keras_unc.methods import Deterministic
from keras_unc.training import trainer as train_lib
from keras_unc.training.network import build_network
from tests.transfer.protocol_helpers import member_checkpoint

SMOKE = "testing/recipe_smoke.gin"
RESNET = [
  "build_network.backbone = @resnet",
  "build_network.image_size = 32",
  "build_network.num_channels = 3",
  "resnet.depth = 18",
  "resnet.width = 0.0625",
  "resnet.stem = 'cifar'",
]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
  """Tiny ResNet checkpoints (two seeds) per number of classes, repeated as members."""
  root = tmp_path_factory.mktemp("stand_ins")
  found = {}
  for classes in (10, 1000, 8142):
    found[classes] = [
      member_checkpoint(
        root / f"c{classes}_s{seed}",
        RESNET,
        seed=seed,
        num_classes=classes,
        input_shape=(32, 32, 3),
      )[0]
      for seed in (0, 1)
    ]
  return root, found


def _members(paths, n):
  return str([str(paths[i % len(paths)]) for i in range(n)])


def _vit_stand_in(root, recipe, npz, num_classes=10):
  """A tiny ViT shaped like `recipe` under the smoke overrides: `.npz` or checkpoint."""
  gin.clear_config()
  config.parse([recipe, SMOKE], [], finalize=False)
  keras.utils.set_random_seed(3)
  net = build_network(Deterministic(), num_classes, (32, 32, 3))
  gin.clear_config()
  if npz:
    path = str(root / "vit.npz")
    export_npz(net, path, head=False)
    return path
  opt = keras.optimizers.SGD()
  opt.build(net.trainable_variables)
  from keras_unc.runtime import checkpoints

  return checkpoints.Checkpointer(str(root / f"vit_{num_classes}")).save(1, net, opt)


def _params(name, root, ckpts):
  """Bindings replacing the recipe's placeholder paths by stand-ins."""
  if name.startswith("vit_finetune/"):
    path = _vit_stand_in(root, f"experiments/{name}.gin", npz=True)
    return [f"import_weights.path = '{path}'"]
  if name.startswith("plex/"):
    path = _vit_stand_in(root, f"experiments/{name}.gin", npz=False)
    return [f"train.warm_start = '{path}'"]
  inat = name.endswith("_inat18")
  upstream, downstream = ckpts[1000], ckpts[8142 if inat else 10]
  if "two_stage" in name:
    return [f"FINETUNED_MEMBERS = {_members(downstream, 2)}"]
  if "cat_" in name:
    return [f"CAT_MEMBERS = {_members(upstream, 2)}"]
  if "distill" in name:
    return [f"TEACHER_MEMBERS = {_members(upstream, 2)}"]
  if "linear_probe" in name or "finetune" in name:
    return [f"train.warm_start = '{upstream[0]}'"]
  return []


# recipe -> a metric its evaluators must report.
RECIPES = {
  "big_vision/vit_s16_i1k": "val/accuracy",
  "vit_finetune/vit_b16_cifar10": "test/accuracy",
  "vit_finetune/vit_b16_cifar100": "val/accuracy",
  "plex/vit_l32_plex_cifar10": "test/accuracy",
  "plex/vit_l32_plex_imagenet": "test/accuracy",
  "rrl/linear_probe": "test/accuracy",
  "rrl/finetune": "test/accuracy",
  "rrl/cat_linear_probe": "test/accuracy",
  "rrl/cat_finetune": "test/accuracy",
  "rrl/two_stage": "test/accuracy",
  "rrl/distill_imagenet": "validation/accuracy",
  "rrl/linear_probe_inat18": "validation/accuracy",
  "rrl/finetune_inat18": "validation/accuracy",
  "rrl/cat_linear_probe_inat18": "validation/accuracy",
  "rrl/two_stage_inat18": "validation/accuracy",
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_two_steps(name, stand_ins, tmp_path):
  root, ckpts = stand_ins
  params = _params(name, root, ckpts)
  gin.clear_config()
  with tfds.testing.mock_data(num_examples=8):
    config.parse([f"experiments/{name}.gin", SMOKE], params)
    result = train_lib.train(str(tmp_path / "run"), "train_and_eval")
  assert result["step"] == 2
  records = [
    json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  assert records[-1]["step"] == 2 and RECIPES[name] in records[-1], records[-1].keys()
  net = result["network"]
  if "cat_" in name or "two_stage" in name:  # 2 members' embeddings side by side
    assert net.get_layer("cat").output.shape[-1] == 2 * 32
  if "linear_probe" in name or "two_stage" in name:
    assert not net.get_layer("cat" if "cat_" in name or "two_stage" in name else "resnet").trainable
