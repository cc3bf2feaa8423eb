"""The URL recipes (`gin_configs/experiments/url/*.gin`) carry the published calls of the
mkirchhof/url README: loss, module, inv_temp, lr-base (scaled by sqrt(batch / 256) as timm
does for lamb), lambda, HIB constant, start value; their pieces construct."""

import math
import os

import gin
import pytest

from keras_unc import config
from keras_unc.data.ops import parse_ops
from keras_unc.methods.url.method import URL
from keras_unc.training import optim

GIN_DIR = config.GIN_DIR

# recipe -> (loss, module, published flags: lr_base, inv_temp, ...). Source: mkirchhof/url
# README "Examples" (seeds/001 in the project's shared references).
URL_BENCHMARK = {
  "resnet50_nivmf": (
    "nivmf",
    "pred_net",
    dict(lr_base=0.00014942909398367403, inv_temp=10.896111351193488, start=0.001),
  ),
  "vitm16_nivmf": (
    "nivmf",
    "pred_net",
    dict(lr_base=0.0027583475549166764, inv_temp=31.353232263344143, start=0.001),
  ),
  "resnet50_mcinfonce": (
    "mcinfonce",
    "pred_net",
    dict(
      lr_base=2.384205225724591e-05,
      inv_temp=52.43117045513681,
      start=0.001,
      batch=96 * 21,
      warmup_lr=3.487706876306753e-05,
    ),
  ),
  "vitm16_mcinfonce": (
    "mcinfonce",
    "pred_net",
    dict(lr_base=0.0031866603949435874, inv_temp=50.27568453131382, start=0.001, batch=96 * 21),
  ),
  "resnet50_elk": (
    "elk",
    "pred_net",
    dict(lr_base=0.008324452068209802, inv_temp=27.685357549319253, start=0.0),
  ),
  "vitm16_elk": (
    "elk",
    "pred_net",
    dict(lr_base=0.009041687325778511, inv_temp=56.77356863558765, start=0.0),
  ),
  "resnet50_hetxl": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.00030257136041070065, start=0.0, factors=1),
  ),
  "vitm16_hetxl": (
    "cross_entropy",
    "hetxl_det",
    dict(lr_base=0.00012722151293115814, start=0.0, factors=1),
  ),
  "resnet50_riskpred": (
    "riskpred",
    "pred_net",
    dict(lr_base=0.00907673293373138, lambda_value=0.04137484664752506, start=0.0),
  ),
  "vitm16_riskpred": (
    "riskpred",
    "pred_net",
    dict(lr_base=0.0026590263551453507, lambda_value=0.011424752423322174, start=0.001),
  ),
  "resnet50_sngp": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.003935036929170965, start=0.0, bound=3.0034958778109893, momentum=-1.0),
  ),
  "vitm16_sngp": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.0002973866135608272, start=0.0, momentum=0.999),
  ),
  "resnet50_hib": (
    "hib",
    "pred_net",
    dict(
      lr_base=5.606607236666466e-05,
      inv_temp=26.850376086478832,
      start=0.0,
      hib=2.043464396656407,
      batch=96 * 21,
      warmup_lr=2.2864937540918197e-06,
    ),
  ),
  "vitm16_hib": (
    "hib",
    "pred_net",
    dict(
      lr_base=0.0005920448270870512,
      inv_temp=13.955844954616405,
      start=0.0,
      hib=-5.360730528719454,
      batch=48 * 43,
    ),
  ),
  "resnet50_mc_dropout": (
    "cross_entropy",
    "jsd",
    dict(lr_base=0.00016199535513680024, start=0.0, drop=0.08702220252645132),
  ),
  "vitm16_mc_dropout": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.0027583475549166764, start=0.0, drop=0.1334044009405148),
  ),
  "resnet50_ensemble": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.004405890102835956, start=0.0, heads=10),
  ),
  "vitm16_ensemble": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.004944771531139904, start=0.0, heads=10),
  ),
  "resnet50_cross_entropy": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.0027583475549166764, start=0.0),
  ),
  "vitm16_cross_entropy": (
    "cross_entropy",
    "class_entropy",
    dict(lr_base=0.004954014361368407, start=0.0),
  ),
  "resnet50_infonce": (
    "infonce",
    "embed_norm",
    dict(lr_base=0.0004452562693472003, inv_temp=15.182859908025058, start=0.0, batch=96 * 21),
  ),
  "vitm16_infonce": (
    "infonce",
    "embed_norm",
    dict(lr_base=0.006246538808281836, inv_temp=20.82011649785067, start=0.0, batch=96 * 21),
  ),
}
PVU = {"ti": "Ti/16", "s": "S/16", "b": "B/16", "l": "L/16"}
ALL = [f"{n}.gin" for n in URL_BENCHMARK] + [f"vit_{k}16_losspred_order.gin" for k in PVU]


def _parse(name):
  gin.clear_config()
  config.parse([os.path.join(GIN_DIR, "experiments", "url", name)], [], finalize=True)


def _q(name):
  return config.value(name)  # The binding, else the Python default.


def test_every_url_recipe_is_checked():
  found = {p for p in os.listdir(os.path.join(GIN_DIR, "experiments", "url")) if p.endswith(".gin")}
  assert set(ALL) <= found
  assert found - set(ALL) <= {"imagenet.gin", "imagenet21k.gin"}


@pytest.mark.parametrize("name", sorted(URL_BENCHMARK))
def test_url_benchmark_recipe(name):
  loss, module, flags = URL_BENCHMARK[name]
  _parse(f"{name}.gin")
  method = _q("train.method").scoped_configurable_fn()
  assert isinstance(method, URL)
  assert (method.url_loss, method.module) == (loss, module)
  assert method.unc_start_value == flags["start"]
  batch = flags.get("batch", 128 * 16)
  # train.py's --batch-size per forward pass x --accumulation_steps = `batch` per update.
  forward = {96 * 21: 96, 48 * 43: 48, 128 * 16: 128}[batch]
  accumulation = batch // forward
  assert _q("train.batch_size") == forward
  assert _q("make_optimizer.gradient_accumulation_steps") == accumulation
  assert _q("train.recipe_global_batch") == batch and _q("train.recipe_lr_scaling") == "sqrt"
  updates_per_epoch = 1281167 // batch
  assert _q("train.total_steps") == 32 * updates_per_epoch * accumulation  # forward passes
  assert _q("train.eval_every") == updates_per_epoch * accumulation
  assert _q("make_optimizer.warmup_steps") == 5 * updates_per_epoch  # updates
  assert _q("make_optimizer.warmup_start_lr") == flags.get("warmup_lr", 1e-4)
  assert _q("make_optimizer.learning_rate") == pytest.approx(
    flags["lr_base"] * math.sqrt(batch / 256), rel=1e-12
  )
  assert _q("make_optimizer.name") == "lamb"
  assert _q("make_optimizer.weight_decay") == 2e-5
  assert _q("train.dataset") == "tfds:imagenet2012"
  if "inv_temp" in flags:
    assert method.inv_temp == flags["inv_temp"]
  if "lambda_value" in flags:
    assert method.lambda_value == flags["lambda_value"]
  if "hib" in flags:
    assert method.hib_add_const == flags["hib"] and not method.ssl and method.supervised
  if loss in ("infonce", "mcinfonce"):
    assert method.ssl and "flatten_views" in _q("train.preprocess")
  if "factors" in flags:
    assert _q("het_head.num_factors") == 1 and _q("het_head.xl") is True
  if "bound" in flags:
    assert _q("spectral_norm.norm_bound") == flags["bound"]
  if "momentum" in flags:
    assert _q("gp_head.gp_cov_momentum") == flags["momentum"]
  if "drop" in flags:
    assert method.head.rate == flags["drop"]
  if "heads" in flags:
    assert method.head.num_heads == flags["heads"]
  image_size = 224 if name.startswith("resnet50") else 256
  assert _q("build_network.image_size") == image_size
  _pieces_construct(method)


@pytest.mark.parametrize("key", sorted(PVU))
def test_pretrained_visual_uncertainties_recipe(key):
  _parse(f"vit_{key}16_losspred_order.gin")
  method = _q("train.method").scoped_configurable_fn()
  assert (method.url_loss, method.module, method.batch_multiple) == (
    "losspred_order",
    "pred_net",
    2,
  )
  assert _q("vit.variant") == PVU[key] and _q("build_network.image_size") == 224
  assert _q("train.dataset") == "tfds:imagenet21k"
  assert _q("make_optimizer.learning_rate") == pytest.approx(0.001 * math.sqrt(2048 / 256))
  # 32 "epochs" of 200000 images = 97 updates of 128 x 16 accumulated images.
  assert _q("train.batch_size") == 128
  assert _q("make_optimizer.gradient_accumulation_steps") == 16
  assert _q("train.total_steps") == 32 * (200000 // 2048) * 16
  assert _q("make_optimizer.warmup_start_lr") == 1e-4
  _pieces_construct(method)


def _pieces_construct(method):
  assert _q("train.batch_size") % method.batch_multiple == 0
  parse_ops(_q("train.preprocess"))
  assert optim.make_optimizer(_q("train.total_steps")) is not None
  assert _q("train.eval_metric") == "avg_downstream_auroc_correct"
  for ref in _q("train.evaluators"):
    assert ref.scoped_configurable_fn() is not None
