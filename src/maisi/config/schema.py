"""The one typed configuration schema of maisi.

Every run (training, encoding, generation, evaluation) is described by a :class:`Config`. Field names follow the
official MAISI network definitions (``num_channels``, ``num_res_blocks``, ...) so official JSON files map onto it
key by key. Presets live in :mod:`maisi.config.presets`; loading, overlays and strict validation in
:mod:`maisi.config.loading`.

Spatial order is (X, Y, Z) in RAS everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]


@dataclass
class VAEConfig:
    """Image (or mask) VAE: MONAI ``AutoencoderKlMaisi`` hyper-parameters plus the latent scale factor.

    ``scale_factor`` is the latent normalisation of the codec (latent fed to diffusion = z * scale_factor); it
    belongs here and nowhere else. ``norm_float16``, ``num_splits`` and ``dim_split`` are memory knobs of the
    official implementation; they change no weights and are applied only where they work (see
    :mod:`maisi.networks.builders`).
    """

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 1
    latent_channels: int = 4
    num_channels: tuple[int, ...] = (64, 128, 256)
    num_res_blocks: tuple[int, ...] = (2, 2, 2)
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    attention_levels: tuple[bool, ...] = (False, False, False)
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False
    include_fc: bool = False
    use_flash_attention: bool = False
    use_checkpointing: bool = False
    use_convtranspose: bool = False
    norm_float16: bool = True
    num_splits: int = 4
    dim_split: int = 1
    scale_factor: float = 1.0

    @property
    def downsample(self) -> int:
        """Image / latent size ratio per axis: every level after the first halves the resolution."""
        return 2 ** (len(self.num_channels) - 1)


@dataclass
class UNetConfig:
    """Latent diffusion UNet: MONAI ``DiffusionModelUNetMaisi`` (``variant='maisi'``), MONAI ``DiffusionModelUNet``
    (``variant='monai'``, the DDPM mask-generation model) or the MAISI UNet with adaptive group norm on a condition
    vector (``variant='adagn'``, the 2026 rectified-flow mask generator; ``adagn_*`` apply to it only)."""

    variant: Literal["maisi", "monai", "adagn"] = "maisi"
    spatial_dims: int = 3
    in_channels: int = 4
    out_channels: int = 4
    num_channels: tuple[int, ...] = (64, 128, 256, 512)
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    num_head_channels: tuple[int, ...] = (0, 0, 32, 32)
    num_res_blocks: int = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    resblock_updown: bool = True
    include_fc: bool = True
    use_flash_attention: bool = True
    include_top_region_index_input: bool = False
    include_bottom_region_index_input: bool = False
    include_spacing_input: bool = True
    num_class_embeds: int | None = 128
    with_conditioning: bool = False
    cross_attention_dim: int | None = None
    upcast_attention: bool = False
    transformer_num_layers: int = 1
    #: adagn: length of the condition vector (anatomy sizes and demographics) and width of its embedding
    adagn_condition_dim: int | None = None
    adagn_context_embed_dim: int | None = None


@dataclass
class ControlNetConfig:
    """ControlNet on the label map (MONAI ``ControlNetMaisi``)."""

    spatial_dims: int = 3
    in_channels: int = 4
    num_channels: tuple[int, ...] = (64, 128, 256, 512)
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    num_head_channels: tuple[int, ...] = (0, 0, 32, 32)
    num_res_blocks: int = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    resblock_updown: bool = True
    include_fc: bool = True
    use_flash_attention: bool = True
    use_checkpointing: bool = True
    conditioning_embedding_in_channels: int = 8
    conditioning_embedding_num_channels: tuple[int, ...] = (8, 32, 64)
    num_class_embeds: int | None = 128


@dataclass
class DiscriminatorConfig:
    """Patch discriminator for VAE adversarial training (MONAI ``PatchDiscriminator``)."""

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 1
    channels: int = 32
    num_layers_d: int = 3
    norm: str = "INSTANCE"


def _default_segmenter_network() -> dict[str, Any]:
    return {
        "spatial_dims": 3,
        "in_channels": 1,
        "channels": [8, 16, 32, 64],
        "strides": [2, 2, 2],
        "num_res_units": 1,
    }


@dataclass
class SegmenterConfig:
    """A 3D segmentation network for mask-image consistency: a class of ``monai.networks.nets`` (by name, from that
    namespace only) with its keyword arguments, and what its output channels mean.

    ``labels`` are the MAISI ids of output channels 1, 2, ... (channel 0 is background); with ``groups`` channel k
    learns the union of group k's ids and outputs its first id (``labels`` are then those first ids). Empty
    ``labels`` and no ``groups``: every id found in the training data except the body envelope.
    """

    network: str = "UNet"
    network_kwargs: dict[str, Any] = field(default_factory=_default_segmenter_network)
    labels: tuple[int, ...] = ()
    groups: dict[str, tuple[int, ...]] | None = None
    #: voxel size (mm) the network expects (None: any)
    spacing: Triple | None = None
    #: training crop and inference window (multiples of the network's downsampling)
    roi_size: IntTriple = (64, 64, 64)
    #: input scaling: ct ([-1000, 1000] HU -> [0, 1]), mri (percentiles) or unit
    intensity: Literal["ct", "mri", "unit"] = "ct"


@dataclass
class SchedulerConfig:
    """Noise scheduler. ``kind`` selects rectified flow or DDPM; fields of the other kind are ignored."""

    kind: Literal["rflow", "ddpm"] = "rflow"
    num_train_timesteps: int = 1000
    # rectified flow
    use_discrete_timesteps: bool = False
    use_timestep_transform: bool = True
    sample_method: Literal["uniform", "logit-normal"] = "uniform"
    loc: float = 0.0
    scale: float = 1.4
    transform_scale: float = 1.0
    base_img_size_numel: int = 32 * 32 * 32
    # ddpm
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = "scaled_linear_beta"
    clip_sample: bool = False
    prediction: Literal["epsilon", "v_prediction", "sample"] = "epsilon"


@dataclass
class ModelConfig:
    """Every network of a MAISI model set, and the schedulers that go with them."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    controlnet: ControlNetConfig = field(default_factory=ControlNetConfig)
    mask_vae: VAEConfig = field(
        default_factory=lambda: VAEConfig(
            in_channels=8,
            out_channels=125,
            num_channels=(32, 64, 128),
            num_res_blocks=(1, 2, 2),
            use_checkpointing=True,
            use_convtranspose=True,
            num_splits=8,
            scale_factor=1.0055984258651733,
        )
    )
    mask_unet: UNetConfig = field(
        default_factory=lambda: UNetConfig(
            variant="monai",
            resblock_updown=False,
            include_fc=True,
            include_spacing_input=False,
            num_class_embeds=None,
            with_conditioning=True,
            cross_attention_dim=10,
            upcast_attention=True,
        )
    )
    #: the 2026 mask generator (rflow-mask): the MAISI UNet with AdaGN on 14 anatomy sizes + 5 demographics
    mask_unet_v2: UNetConfig = field(
        default_factory=lambda: UNetConfig(
            variant="adagn",
            resblock_updown=False,
            include_spacing_input=True,
            num_class_embeds=None,
            with_conditioning=True,
            cross_attention_dim=19,
            upcast_attention=True,
            adagn_condition_dim=19,
            adagn_context_embed_dim=256,
        )
    )
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    mask_scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(kind="ddpm"))
    mask_scheduler_v2: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(scale=1.0))
    mask_latent_shape: tuple[int, ...] = (4, 64, 64, 64)
    #: true for models conditioned on top/bottom body region (ddpm-ct)
    include_body_region: bool = False


@dataclass
class DataConfig:
    """Data preparation and latent encoding."""

    modality: str = "ct"
    spacing: Triple | None = None
    divisor: int = 128
    #: vocabulary of user label maps: auto (decided from evidence), a built-in name or a names/mapping file
    label_set: str = "auto"
    #: ids with no single MAISI id: error (refuse), background (drop) or body (envelope 200)
    unknown_labels: Literal["error", "background", "body"] = "error"
    #: read 4-D one-hot stacks (channel k -> id k)
    one_hot: bool = False
    folds: int = 5
    encode_window: IntTriple = (64, 64, 64)
    encode_overlap: float = 0.25


@dataclass
class TrainConfig:
    """The generic training loop and the per-task options."""

    task: Literal["vae", "diffusion", "controlnet", "mask-vae", "mask-diffusion", "segmenter"] = "diffusion"
    data: str = ""
    run_dir: str = "runs/maisi"
    max_steps: int = 1000
    seed: int = 0
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    amp: Literal["none", "bf16", "fp16"] = "none"
    #: recompute activations in the backward pass instead of storing them: None keeps each network's own switch
    #: (the official ControlNet checkpoints its conditioning embedding), True checkpoints every trained network
    #: (VAE and ControlNet switches on, UNet blocks wrapped), False turns the networks' own switches off
    grad_checkpointing: bool | None = None
    grad_accum: int = 1
    ckpt_every: int = 500
    keep_last: int = 3
    val_every: int = 100
    log_every: int = 10
    num_workers: int = 0
    patch_size: IntTriple = (64, 64, 64)
    #: image tasks (vae, mask-vae): validate and preview on the central crop of this size (None: whole volumes)
    val_patch: IntTriple | None = None
    #: diffusion / controlnet: train on random crops of this size of the cached latents (label maps cropped to
    #: match), validate on the central crop (None: whole latents); training times are shifted for the whole
    #: latent's size (``use_timestep_transform``), as at generation
    latent_patch: IntTriple | None = None
    # vae
    recon_loss: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-7
    perceptual_weight: float = 0.3
    perceptual_weights_path: str | None = None
    adv_weight: float = 0.1
    adv_warmup_steps: int = 100
    #: vae: train only the decoder side (``post_quant_conv`` + ``decoder``); the encoder and its posterior heads
    #: stay as loaded, so latents encoded before (and the diffusion networks trained on them) stay valid
    freeze_encoder: bool = False
    # diffusion / controlnet
    modality_dropout: float = 0.1
    weighted_loss_labels: tuple[int, ...] = (23,)
    weighted_loss: float = 100.0
    use_region_contrastive_loss: bool = False
    region_contrastive_loss_delta: float = 2.0
    region_contrastive_loss_weight: float = 0.01
    init_from: str | None = None


@dataclass
class ExportConfig:
    """Generated samples also written in a training-set format (``maisi.export``), besides the NIfTI run folder."""

    format: Literal["nifti", "nnunet", "monai", "dicom"] = "nifti"
    #: where the format goes (default: $nnUNet_raw or RUN/nnUNet_raw, the run folder, RUN/dicom)
    output: str | None = None
    #: nnU-Net: DatasetNNN_Name
    dataset_id: int | None = None
    dataset_name: str | None = None


@dataclass
class GenerateConfig:
    """A generation request (the keys of the official ``config_infer.json`` map onto these)."""

    num_samples: int = 1
    output_size: IntTriple = (256, 256, 256)
    spacing: Triple = (1.5, 1.5, 2.0)
    body_region: tuple[str, ...] = ("chest",)
    anatomy: tuple[str, ...] = ()
    organ_sizes: dict[str, float] = field(default_factory=dict)
    #: patient demographics for the v2 mask generator: age (years), sex (M/F), weight (kg), bmi, height (cm)
    demographics: dict[str, float | str] = field(default_factory=dict)
    mask: str | None = None
    #: fit a user mask to ``output_size`` / ``spacing`` (else it keeps its field of view, on the nearest valid grid)
    fit_mask: bool = False
    #: where the label map comes from; ``none`` generates the image alone (no ControlNet, no label map)
    mask_source: Literal["auto", "file", "database", "model", "phantom", "none"] = "auto"
    mask_database: str | None = None
    keep_only: tuple[str, ...] = ()
    steps: int = 30
    #: mask-generator steps; None: the generator's own (v1 DDPM 1000, v2 rectified flow 100)
    mask_steps: int | None = None
    #: classifier-free guidance scale of the v2 mask generator (official 2.0; 0 = off)
    mask_guidance: float = 2.0
    guidance: float = 0.0
    #: multiplies the ControlNet's residuals (diffusers' ``controlnet_conditioning_scale``): > 1 holds the image
    #: closer to the label map, at the cost of exaggerated organ contrast when too large; 1 = as trained (official)
    controlnet_scale: float = 1.0
    modality: str = "ct"
    seed: int = 0
    #: samples sampled together (equal to single runs up to float rounding)
    batch_size: int = 1
    #: ``auto``: this process's GPU where CUDA is available, else the CPU (``maisi.memory.default_device``)
    device: str = "auto"
    #: ``auto``: the official half precision (float16) on a CUDA GPU with tensor cores, float32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: memory the run may use on its device (``16GB``, ``512MB``; binary units); None: the free device memory
    #: (CUDA) or the available RAM (CPU). The memory plan (``maisi.memory``) fits the decode into it.
    max_memory: str | None = None
    weights: str = "demo"
    output_dir: str = "output"
    image_ext: str = ".nii.gz"
    label_ext: str = ".nii.gz"
    #: decode window in latent voxels; None: the memory plan's (the whole latent in one pass where it fits,
    #: else the fewest, largest windows). The official setting is 48^3 at overlap 0.6666.
    decode_window: IntTriple | None = None
    #: overlap of decode windows; None: the plan's (0.4)
    decode_overlap: float | None = None
    #: slabs the VAE decoder runs in along X (``maisi.memory.slabs``); None: the fewest that fit the budget
    decode_splits: int | None = None
    qc: bool = True
    qc_retries: int = 2
    initial_noise: str | None = None
    preview: bool = True
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass
class FIDConfig:
    """FID 2.5D: the 2D feature extractor and how volumes are prepared and sliced
    (:class:`maisi.evaluation.fid.FIDOptions`)."""

    #: random (weights-free, not comparable to published FIDs), resnet50 (ImageNet) or radimagenet weights
    extractor: Literal["random", "resnet50", "radimagenet"] = "random"
    extractor_weights: str | None = None
    spacing: Triple | None = None
    shape: IntTriple | None = None
    pad: bool = True
    crop: bool = True
    center_slice_ratio: float = 1.0
    slice_step: int = 1
    intensity: Literal["ct", "ct-minmax", "mri", "unit"] = "ct"
    batch_size: int = 64
    seed: int = 0
    cache_dir: str | None = None


@dataclass
class EvaluateConfig:
    """One ``maisi evaluate`` run: which evaluation (``what``), on which data, with which options."""

    what: Literal["recon", "fid", "consistency", "qc", "size", "memorization", "report"] = "report"
    #: real (training or held-out) volumes or pairs; generated pairs; the training set (memorisation)
    real: str | None = None
    synthetic: str | None = None
    training: str | None = None
    #: recon: a model set holding a VAE, and the volumes to reconstruct
    weights: str | None = None
    data: str | None = None
    #: consistency: a segmenter folder or run, or ``totalsegmentator``
    segmenter: str | None = None
    #: report: the folder results are read from and written to
    dir: str | None = None
    #: write the full result as JSON to this file
    out: str | None = None
    overwrite: bool = False
    device: str = "cpu"
    #: vocabulary of label maps not written by maisi (a generated sample's sidecar says its are MAISI ids)
    label_set: str = "auto"
    max_cases: int | None = None
    intensity: Literal["ct", "mri"] = "ct"
    #: consistency: MAISI ids to score (empty: every id the segmenter knows)
    labels: tuple[int, ...] = ()
    grid: IntTriple = (32, 32, 32)
    threshold: float = 0.98
    examples: int = 3
    #: report: compute missing results (false: only render what the folder holds)
    compute: bool = True
    fid: FIDConfig = field(default_factory=FIDConfig)


@dataclass
class Config:
    """Everything one run needs. ``preset`` records which preset the values started from."""

    preset: str = "rflow-ct"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
