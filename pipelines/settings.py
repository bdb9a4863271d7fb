"""Command-line settings in the A1111 spirit. Parsed once by app.py and passed to whoever needs them."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipelines.folders import ModelFolders

DEFAULT_HUB_MODELS = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-xl-base-1.0",
)


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("models")
    outputs_dir: Path = Path("outputs")
    port: int = 7860
    listen: bool = False
    auth: tuple[str, str] | None = None
    api: bool = False
    nowebui: bool = False
    device: str = "auto"
    precision: str = "auto"
    attention: str = "auto"
    rng: str = "CPU"  # CPU | GPU | NV: the default noise source (A1111's randn_source option), canonical spelling
    round_pixels: bool = False  # 8-bit output: round like diffusers (True) or truncate like A1111 (False)
    vram_budget_gb: float | None = None
    ram_budget_gb: float | None = None
    hub_models: tuple[str, ...] = DEFAULT_HUB_MODELS
    ckpt: str | None = None
    preview_every: int = 5
    max_queued_per_client: int = 16
    controlnet_hub: tuple[str, ...] = ()  # ControlNet hub ids offered besides models/ControlNet
    hub_endpoint: str | None = "https://huggingface.co"  # annotator downloads; None = offline
    styles_file: Path = Path("styles.csv")  # saved prompt styles, A1111's format (its file sits in the webui root)
    memory: str = "auto"  # auto | high | normal | low | minimal (pipelines/engine/memory.py)
    oom_retry: bool = True  # after an out-of-memory error, retry once in the next lower memory mode
    channels_last: bool | None = None  # None = auto (on for CUDA)
    compile: bool = False  # torch.compile the UNet (opt-in; the first job pays the warm-up)
    preview_decoder: str = "auto"  # auto | taesd | latent: how live previews are decoded
    api_auth: tuple[str, str] | None = None  # login for the REST API only (default: --auth protects both)
    max_upload_mb: int = 50  # largest request body / uploaded file
    # A1111's folder flags: a kind of model kept outside models/ (None: A1111's place under models/)
    ckpt_dir: Path | None = None
    lora_dir: Path | None = None
    lyco_dir: Path | None = None
    vae_dir: Path | None = None
    embeddings_dir: Path | None = None
    controlnet_models_dir: Path | None = None
    esrgan_models_path: Path | None = None
    # the Ray Serve cluster backend (pipelines/cluster.py, docs/deployment.md): None = in-process device workers
    ray: str | None = None  # "auto": a local Ray started by the app; else an address (ray://head:10001, head:6379)
    ray_replicas: int | None = None  # a fixed number of replicas; None = autoscaling (1 to one per GPU)

    @property
    def folders(self) -> ModelFolders:
        return ModelFolders.under(self.models_dir, checkpoints=self.ckpt_dir, lora=self.lora_dir, lyco=self.lyco_dir,
                                  embeddings=self.embeddings_dir, vae=self.vae_dir,
                                  controlnet=self.controlnet_models_dir, esrgan=self.esrgan_models_path)

    @property
    def controlnet_dir(self) -> Path:
        return self.folders.controlnet

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def open_to_network(self) -> str | None:
        """A plain warning when others on the network can use this studio without a login (--listen, and the UI
        without --auth or the API without --auth / --api-auth), else None."""
        if not self.listen:
            return None
        ui_open = not self.nowebui and self.auth is None
        api_open = self.api and self.auth is None and self.api_auth is None
        if not (ui_open or api_open):
            return None
        what = " and ".join(x for x, is_open in (("the UI", ui_open), ("the API", api_open)) if is_open)
        return (f"--listen without a login for {what}: anyone who can reach this machine can generate images and "
                "see every output. Add --auth USER:PASS.")

    @property
    def checkpoints_dir(self) -> Path:
        return self.folders.checkpoints

    @property
    def cache_dir(self) -> Path:
        return self.models_dir / ".cache"


def _auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected user:password")
    return user, password


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py", description="Local Stable Diffusion studio: web UI and A1111-compatible REST API.")
    p.add_argument("--models-dir", type=Path, default=Settings.models_dir,
                   help="folder with Stable-diffusion/ (checkpoints), ESRGAN/, ControlNet/ (default: models)")
    p.add_argument("--outputs-dir", type=Path, default=Settings.outputs_dir, help="where images are saved (default: outputs)")
    p.add_argument("--port", type=int, default=Settings.port, help="port to serve on (default: 7860)")
    p.add_argument("--listen", action="store_true", help="bind 0.0.0.0 so other machines can connect (default: 127.0.0.1 only)")
    p.add_argument("--auth", type=_auth, default=None, metavar="USER:PASS", help="require this login for the UI and API")
    p.add_argument("--api", action="store_true", help="serve the A1111-compatible REST API under /sdapi/v1")
    p.add_argument("--nowebui", action="store_true", help="serve only the REST API (implies --api)")
    p.add_argument("--device", type=_device, default="auto", metavar="DEVICE[,DEVICE...]",
                   help="compute device(s), one job worker each: auto (default), cpu, cuda, cuda:N, mps, a "
                        "comma-separated list (cuda:0,cuda:1; cpu,cpu for two CPU workers) or all (every CUDA GPU)"),
    p.add_argument("--precision", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
                   help="weights dtype (auto: fp16 on CUDA/MPS, fp32 on CPU)")
    p.add_argument("--attention", choices=["auto", "sdpa", "xformers"], default="auto",
                   help="attention kernels (auto: xformers only where it loads with CUDA, else PyTorch SDPA)")
    p.add_argument("--rng", type=_rng, choices=RNG_SOURCES, default="CPU",
                   help="the default random-noise source (A1111's randn_source option; per request: randn_source): "
                        "CPU = the same image for a seed on any hardware, as diffusers/ComfyUI (default); NV = "
                        "A1111's emulation of NVIDIA's CUDA noise on any hardware (reproduces images shared from "
                        "A1111); GPU = this device's own generator. Case-insensitive; cpu/device are CPU/GPU")
    p.add_argument("--round-pixels", action="store_true",
                   help="round to 8-bit pixels like diffusers (default: truncate like A1111's (255*x).astype(uint8))")
    p.add_argument("--vram-budget-gb", type=float, default=None, help="device memory for cached models (default: 85%% of total)")
    p.add_argument("--ram-budget-gb", type=float, default=None, help="CPU RAM for models moved off the device (default: 40%% of RAM)")
    p.add_argument("--hub-model", dest="hub_models", action="append", default=None, metavar="ORG/NAME",
                   help="hub id offered in the model list, downloaded on first use (repeatable)")
    p.add_argument("--ckpt", default=None, help="checkpoint to select at start (name as listed)")
    p.add_argument("--preview-every", type=int, default=Settings.preview_every,
                   help="live preview every N steps, 0 = off (default: 5)")
    p.add_argument("--max-queued-per-client", type=int, default=Settings.max_queued_per_client,
                   help="jobs one browser session or API client may have waiting (default: 16)")
    p.add_argument("--controlnet-hub", dest="controlnet_hub", action="append", default=[], metavar="ORG/NAME",
                   help="ControlNet hub id offered besides models/ControlNet, downloaded on first use (repeatable)")
    p.add_argument("--styles-file", type=Path, default=Settings.styles_file,
                   help="saved prompt styles, A1111's styles.csv format (default: styles.csv in the working folder)")
    p.add_argument("--memory", choices=["auto", "high", "normal", "low", "minimal"], default=Settings.memory,
                   help="memory mode: high = everything resident; normal = + VAE tiling for large images; low = model "
                        "CPU offload + VAE tiling/slicing; minimal = sequential offload + attention slicing "
                        "(default auto: picked from free device memory)")
    p.add_argument("--no-oom-retry", dest="oom_retry", action="store_false",
                   help="on out-of-memory, fail with a message instead of retrying once in the next lower memory mode")
    p.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="UNet in channels-last memory format (default: on for CUDA, off elsewhere)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet: faster steps after a warm-up paid by the first job of each size")
    p.add_argument("--preview-decoder", choices=["auto", "taesd", "latent"], default=Settings.preview_decoder,
                   help="live previews: taesd = tiny VAE decoder from models/VAE-approx; latent = cheap linear "
                        "approximation (default auto: TAESD when its weights are there)")
    p.add_argument("--api-auth", type=_auth, default=None, metavar="USER:PASS",
                   help="login for the REST API (default: the --auth login, if any)")
    p.add_argument("--max-upload-mb", type=int, default=Settings.max_upload_mb,
                   help="largest request body or uploaded file in MB (default: 50)")
    p.add_argument("--offline", action="store_true",
                   help="never download (annotator weights must be in models/annotators); also set by HF_HUB_OFFLINE=1")
    cluster = p.add_argument_group("cluster (optional: pip install -r requirements-ray.txt; docs/deployment.md)")
    cluster.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                         help="generate on Ray Serve replicas (one device worker each) instead of in this process: "
                              "auto starts a local Ray; ray://HOST:10001 or HOST:6379 joins a cluster")
    cluster.add_argument("--ray-replicas", type=int, default=None, metavar="N",
                         help="a fixed number of Ray replicas (default: autoscaling, 1 to one per GPU)")
    folders = p.add_argument_group("model folders (A1111's flags: use an existing models tree as it is)")
    for flag, dest, kind in (("--ckpt-dir", "ckpt_dir", "checkpoints (default: MODELS/Stable-diffusion)"),
                             ("--lora-dir", "lora_dir", "LoRAs (default: MODELS/Lora)"),
                             ("--lyco-dir", "lyco_dir", "LyCORIS files (default: MODELS/LyCORIS)"),
                             ("--vae-dir", "vae_dir", "VAEs (default: MODELS/VAE)"),
                             ("--embeddings-dir", "embeddings_dir",
                              "textual-inversion embeddings (default: MODELS/embeddings and embeddings/ beside MODELS)"),
                             ("--controlnet-dir", "controlnet_models_dir", "ControlNet models (default: MODELS/ControlNet)"),
                             ("--esrgan-models-path", "esrgan_models_path", "ESRGAN-family upscalers (default: MODELS/ESRGAN)")):
        folders.add_argument(flag, dest=dest, type=Path, default=None, metavar="DIR", help=f"folder of {kind}")
    return p


RNG_SOURCES = ("CPU", "GPU", "NV")  # A1111's randn_source choices
_RNG_ALIASES = {"DEVICE": "GPU"}  # the flag's old spelling (and "cpu" is CPU by case)


def canonical_rng(value: str) -> str:
    """The canonical spelling of a noise source (CPU, GPU, NV; case-insensitive, the old "device" is GPU);
    ValueError naming the choices for anything else."""
    v = str(value).strip().upper()
    v = _RNG_ALIASES.get(v, v)
    if v not in RNG_SOURCES:
        raise ValueError(f"{value!r} is not one of: {', '.join(RNG_SOURCES)}")
    return v


DEVICE_WORDS = ("auto", "cpu", "cuda", "mps", "all")


def device_list(value: str) -> list[str]:
    """--device as a list of device names, one job worker each ("all" stays one word: every CUDA GPU, resolved
    where torch is); ValueError naming what is accepted for anything else."""
    names = [v.strip().lower() for v in str(value).split(",")]
    for name in names:
        base, _, index = name.partition(":")
        if base not in DEVICE_WORDS or (index and (base != "cuda" or not index.isdigit())):
            raise ValueError(f"{name!r} is not a device: use {', '.join(DEVICE_WORDS)}, cuda:N, or a comma-separated "
                             "list of them")
    if "all" in names and len(names) > 1:
        raise ValueError("'all' stands alone (it means every CUDA GPU)")
    return names


def _device(value: str) -> str:
    try:
        return ",".join(device_list(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rng(value: str) -> str:
    try:
        return canonical_rng(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def hub_endpoint(offline: bool) -> str | None:
    if offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    a = build_parser().parse_args(argv)
    return Settings(
        models_dir=a.models_dir, outputs_dir=a.outputs_dir, port=a.port, listen=a.listen, auth=a.auth,
        api=a.api or a.nowebui, nowebui=a.nowebui, device=a.device, precision=a.precision, attention=a.attention,
        rng=a.rng, round_pixels=a.round_pixels, vram_budget_gb=a.vram_budget_gb, ram_budget_gb=a.ram_budget_gb,
        hub_models=tuple(a.hub_models) if a.hub_models is not None else DEFAULT_HUB_MODELS,
        ckpt=a.ckpt, preview_every=a.preview_every, max_queued_per_client=a.max_queued_per_client,
        controlnet_hub=tuple(a.controlnet_hub), hub_endpoint=hub_endpoint(a.offline), styles_file=a.styles_file,
        memory=a.memory, oom_retry=a.oom_retry, channels_last=a.channels_last, compile=a.compile,
        preview_decoder=a.preview_decoder, api_auth=a.api_auth, max_upload_mb=a.max_upload_mb,
        ckpt_dir=a.ckpt_dir, lora_dir=a.lora_dir, lyco_dir=a.lyco_dir, vae_dir=a.vae_dir,
        embeddings_dir=a.embeddings_dir, controlnet_models_dir=a.controlnet_models_dir,
        esrgan_models_path=a.esrgan_models_path, ray=a.ray, ray_replicas=a.ray_replicas,
    )
