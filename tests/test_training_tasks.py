"""Each of the five training tasks lowers its validation loss on built-in phantoms (tiny preset, CPU, seed 0).

Data: five 32^3 phantoms at 6 mm (four train, one validation). Diffusion and ControlNet train on latents that
``encode_dataset`` writes with an untrained tiny VAE; their log-variance is then set to -9, the sharp posterior of
a trained VAE (an untrained one has sigma ~ 1, which would bury the signal in sampling noise). The ControlNet's
frozen UNet and the mask diffusion's frozen mask VAE are untrained too; the UNet's zero-initialised layers are
redrawn (a zero output layer passes no gradient back to the ControlNet).

Stated results (val_loss after N steps <= ratio x val_loss of the initial weights, EMA weights):
vae 30 steps <= 0.6; mask-vae 30 <= 0.8; diffusion 30 <= 0.9; controlnet 30 <= 0.97; mask-diffusion 30 <= 0.85.
"""

from __future__ import annotations

import json

import pytest
import torch

from maisi.config import load_config, preset
from maisi.networks import build
from maisi.networks.checkpoint import Component
from maisi.networks.model_set import ModelSet, load_model_set, save_model_set

STEPS = 30


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for these tiny networks: with two, runs slowed down several-fold whenever other
    processes competed for the 2 cores (measured: ~60 s vs ~500 s of CPU for the task tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model_set(path, names, *, redraw_zeros=False):
    cfg = preset("tiny")
    torch.manual_seed(0)
    comps = {}
    for name in names:
        net = build(name, cfg.model)
        if redraw_zeros:
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in net.parameters():
                    if p.ndim > 1 and not p.any():
                        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        comps[name] = Component(name=name, model=net, config=getattr(cfg.model, name), path=path / name)
    save_model_set(path, ModelSet(config=cfg.model, components=comps, layout="maisi", root=path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    from maisi.data.encode import encode_dataset
    from maisi.data.phantom import write_phantoms
    from maisi.latents import LatentCodec

    root = tmp_path_factory.mktemp("training")
    phantoms = root / "phantoms"
    write_phantoms(num=5, output_dir=phantoms, size=(32, 32, 32), spacing=(6.0, 6.0, 6.0), seed=0)
    vae_set = _model_set(root / "vae_set", ["vae"])
    codec = LatentCodec(vae=load_model_set(vae_set)["vae"], scale_factor=1.0, encode_window=(32, 32, 32))
    latents = root / "latents"
    for f in encode_dataset(
        datalist=phantoms / "datalist.json", codec=codec, output_dir=latents, progress=False
    ):
        t = load_file(str(f))
        save_file({"mean": t["mean"], "logvar": torch.full_like(t["logvar"], -9.0)}, str(f))
    return {
        "root": root,
        "phantoms": phantoms,
        "latents": latents,
        "vae_set": vae_set,
        "unet_set": _model_set(root / "unet_set", ["vae", "unet"], redraw_zeros=True),
        "mask_vae_set": _model_set(root / "mask_vae_set", ["mask_vae"]),
    }


def _train(data, task, *overrides):
    from maisi.training import train

    run = data["root"] / f"run_{task}"
    cfg = load_config(
        preset="tiny",
        overrides=[
            f"train.task={task}",
            f"train.run_dir={run}",
            f"train.max_steps={STEPS}",
            "train.seed=0",
            "train.val_every=1000",
            "train.ckpt_every=0",
            "train.log_every=10",
            *overrides,
        ],
    )
    return train(cfg, device="cpu", progress=False)


CASES = {
    "vae": (
        0.6,
        lambda d: [f"train.data={d['phantoms']}", "train.patch_size=[16,16,16]", "train.adv_warmup_steps=10"],
    ),
    "mask-vae": (0.8, lambda d: [f"train.data={d['phantoms']}", "train.patch_size=[16,16,16]"]),
    # the UNet trains from scratch; the model set brings the VAE (shipped with the UNet in model/)
    "diffusion": (0.9, lambda d: [f"train.data={d['latents']}", f"train.init_from={d['vae_set']}"]),
    "controlnet": (0.97, lambda d: [f"train.data={d['latents']}", f"train.init_from={d['unet_set']}"]),
    "mask-diffusion": (
        0.85,
        lambda d: [
            f"train.data={d['phantoms']}",
            f"train.init_from={d['mask_vae_set']}",
            "model.mask_latent_shape=[4,8,8,8]",
        ],
    ),
}
COMPONENTS = {
    "vae": ["vae"],
    "mask-vae": ["mask_vae"],
    "diffusion": ["vae", "unet"],
    "controlnet": ["vae", "unet", "controlnet"],
    "mask-diffusion": ["mask_vae", "mask_unet"],
}


@pytest.mark.parametrize("task", list(CASES))
def test_task_lowers_validation_loss(data, task, capsys):
    ratio, options = CASES[task]
    result = _train(data, task, *options(data))
    assert result.step == STEPS
    assert result.initial_val_loss is not None and result.initial_val_loss > 0
    assert result.val_loss <= ratio * result.initial_val_loss, (result.initial_val_loss, result.val_loss)
    line = f"final: step={STEPS} val_loss={result.val_loss:.6g}"
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    assert (result.run_dir / "final.txt").read_text().strip() == line
    ms = load_model_set(result.model_dir)
    assert sorted(ms.components) == sorted(COMPONENTS[task])
    if task == "vae":  # the discriminator joined after its warm-up
        assert (
            "discriminator/discriminator" in result.history[-1]
            and "discriminator/discriminator" not in result.history[0]
        )
    if task == "diffusion":  # 1 / std over the posterior samples of the training latents, kept with the codec
        means = [
            _mean(f) for f in sorted(data["latents"].glob("*_latent.safetensors"))[:4]
        ]  # the training cases
        expected = 1.0 / float(torch.cat([m.flatten() for m in means]).std())
        assert ms.config.vae.scale_factor == pytest.approx(expected, rel=0.02)
        # one home: the codec's config; the UNet alone, loaded from the set, gets it from there
        assert "scale_factor" not in ms.components["unet"].extra
        # the modality ids it was trained on (the CT cases: 1), which generation holds MR requests to
        assert ms.components["unet"].extra["modalities"] == [1]
        assert (
            load_model_set(result.model_dir, components=["unet"]).config.vae.scale_factor
            == ms.config.vae.scale_factor
        )
    if task == "controlnet":  # the UNet stayed frozen
        frozen = load_model_set(data["unet_set"])["unet"].state_dict()
        assert all(torch.equal(v, frozen[k]) for k, v in ms["unet"].state_dict().items())
    if task == "mask-diffusion":
        assert ms.config.mask_vae.scale_factor != 1.0 and ms.config.mask_latent_shape == (4, 8, 8, 8)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["train"]["task"] == task


def _mean(path):
    from safetensors.torch import load_file

    return load_file(str(path))["mean"]


def test_controlnet_batch_and_region_contrastive_terms(data):
    from maisi.conditioning import tumor_mask
    from maisi.training import make_task
    from maisi.training.datasets import sample_generator

    cfg = load_config(
        preset="tiny",
        overrides=[
            "train.task=controlnet",
            f"train.data={data['latents']}",
            f"train.init_from={data['unet_set']}",
            "train.use_region_contrastive_loss=true",
            "train.region_contrastive_loss_delta=2.0",
        ],
    )
    task = make_task(cfg, device=torch.device("cpu"))
    task.setup()
    batch = task.make_batch(task.train_cases[:2], [sample_generator(0, 0, 0, i) for i in range(2)])
    assert batch["x0"].shape == (2, 4, 8, 8, 8) and batch["label"].shape == (2, 1, 32, 32, 32)
    assert batch["modality"].tolist() == [1, 1] and batch["spacing"][0].tolist() == [600.0] * 3
    assert not tumor_mask(batch["label_free"]).any()  # tumours relabelled as their host organs
    with torch.no_grad():
        loss, parts = task.objective(task.models, batch)
    assert -2.0 <= float(parts["contrastive_roi"]) <= 0.0 and float(parts["contrastive_bg"]) > 0
    expected = parts["weighted_l1"] + 0.01 * (parts["contrastive_roi"] + parts["contrastive_bg"])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def _ready_task(*overrides):
    """A tiny-preset task, set up (networks built, cases found), from ``key=value`` overrides."""
    from maisi.training import make_task

    task = make_task(load_config(preset="tiny", overrides=list(overrides)), device=torch.device("cpu"))
    task.setup()
    return task


def test_latent_patch_crops_latent_and_label_together(data):
    """``train.latent_patch``: a random latent crop in training, the central one in validation, and the label map
    cut at 4x the same place."""
    from safetensors.torch import load_file

    from maisi.data.nifti import load_nifti
    from maisi.training.datasets import sample_generator

    task = _ready_task(
        "train.task=controlnet",
        f"train.data={data['latents']}",
        f"train.init_from={data['unet_set']}",
        "train.latent_patch=[4,4,4]",
    )
    case = task.train_cases[0]
    mean = load_file(case.latent)["mean"].float()
    label = torch.from_numpy(load_nifti(case.label, kind="label").array.astype("int64"))
    starts = set()
    for i in range(6):
        item = task.make_item(case, sample_generator(0, 0, 0, i), train=True)
        a = item["crop_start"].tolist()
        starts.add(tuple(a))
        assert item["x0"].shape == (4, 4, 4, 4)
        window = mean[:, a[0] : a[0] + 4, a[1] : a[1] + 4, a[2] : a[2] + 4]
        # x0 = scale * posterior sample; logvar -9 makes the sample the mean within 0.011 * scale
        assert torch.allclose(item["x0"], window * task.scale_factor, atol=0.05 * task.scale_factor)
        cut = label[4 * a[0] : 4 * a[0] + 16, 4 * a[1] : 4 * a[1] + 16, 4 * a[2] : 4 * a[2] + 16]
        assert torch.equal(item["label"][0].long(), cut)
    assert len(starts) > 1  # the position is drawn
    val = task.make_item(case, sample_generator(0, 1, 0), train=False)
    assert val["crop_start"].tolist() == [2, 2, 2]  # central crop of 8^3
    assert task.bucket_key(case) == (4, 4, 4)


def test_latent_patch_times_are_shifted_for_the_whole_latent(data):
    """A crop trains at the noise levels of the size it is generated at: the rectified-flow time shift gets the whole
    latent's size (8^3), not the crop's (4^3, which would move times towards low noise)."""
    from maisi.training.datasets import sample_generator

    task = _ready_task(
        "train.task=diffusion",
        f"train.data={data['latents']}",
        f"train.init_from={data['vae_set']}",
        "train.latent_patch=[4,4,4]",
        "model.scheduler.kind=rflow",
        "model.scheduler.use_timestep_transform=true",
        "model.scheduler.base_img_size_numel=512",
    )
    seen = []
    draw = task.scheduler.sample_times

    def spy(*args, **kwargs):
        seen.append(kwargs["spatial_numel"])
        return draw(*args, **kwargs)

    task.scheduler.sample_times = spy
    times = [
        float(task.make_item(task.train_cases[0], sample_generator(0, 0, 0, i), train=True)["t"])
        for i in range(200)
    ]
    assert set(seen) == {8 * 8 * 8}
    # base = whole size: no shift, so times are uniform on [0, 1000): about 10% above 900 (a 4^3 size would give 5%)
    share = sum(t >= 900 for t in times) / len(times)
    assert 0.06 < share < 0.15


def test_latent_patch_larger_than_latent_is_an_error(data):
    from maisi.errors import DataError
    from maisi.training.datasets import sample_generator

    task = _ready_task(
        "train.task=diffusion",
        f"train.data={data['latents']}",
        f"train.init_from={data['vae_set']}",
        "train.latent_patch=[16,4,4]",
    )
    with pytest.raises(
        DataError, match=r"latent_patch \(16, 4, 4\) is larger than a cached latent \(8, 8, 8\)"
    ):
        task.make_item(task.train_cases[0], sample_generator(0, 0, 0), train=True)


def test_val_patch_validates_on_the_central_crop(data):
    from maisi.training.tasks.base import center_patch

    x = torch.arange(6 * 8 * 10).reshape(1, 1, 6, 8, 10)
    c = center_patch(x, (4, 4, 12))
    assert c.shape == (1, 1, 4, 4, 10) and torch.equal(c, x[..., 1:5, 2:6, :])
    assert center_patch(x, None) is x

    def task_with(*extra):
        return _ready_task("train.task=mask-vae", f"train.data={data['phantoms']}", "train.seed=0", *extra)

    cropped = task_with("train.val_patch=[16,16,16]")
    whole = task_with()
    case = cropped.val_cases[0]
    full = whole.store.label(case)
    whole.store.label = lambda c: full[8:24, 8:24, 8:24]  # what val_patch should validate on
    with torch.no_grad():
        a = cropped.validate_case(whole.models, case, 0)
        b = whole.validate_case(whole.models, case, 0)
        c = task_with().validate_case(whole.models, case, 0)
    assert a == pytest.approx(b, rel=1e-6)
    assert a["val_loss"] != pytest.approx(c["val_loss"], rel=1e-3)


def test_vae_freeze_encoder_trains_the_decoder_side_only(data):
    """``train.freeze_encoder``: the encoder and its posterior heads come out bit-identical to the loaded VAE (so
    latents encoded before stay valid); ``post_quant_conv`` and the decoder change."""
    from maisi.training.tasks.vae import ENCODER_PARTS

    result = _train(
        data,
        "vae",
        f"train.data={data['phantoms']}",
        f"train.init_from={data['vae_set']}",
        "train.freeze_encoder=true",
        "train.patch_size=[16,16,16]",
        "train.adv_weight=0",
        "train.max_steps=5",
        f"train.run_dir={data['root'] / 'run_vae_frozen'}",
    )
    before = load_model_set(data["vae_set"])["vae"].state_dict()
    after = load_model_set(result.model_dir)["vae"].state_dict()
    encoder = [k for k in before if k.split(".")[0] in ENCODER_PARTS]
    decoder = [k for k in before if k.split(".")[0] in ("post_quant_conv", "decoder")]
    assert len(encoder) > 10 and len(decoder) > 10 and len(encoder) + len(decoder) == len(before)
    assert all(torch.equal(after[k], before[k]) for k in encoder)
    changed = [k for k in decoder if not torch.equal(after[k], before[k])]
    assert len(changed) == len(decoder), sorted(set(decoder) - set(changed))


def test_vae_freeze_encoder_needs_a_vae_to_keep(data):
    with pytest.raises(ValueError, match="train.freeze_encoder needs a trained VAE"):
        _ready_task("train.task=vae", f"train.data={data['phantoms']}", "train.freeze_encoder=true")
