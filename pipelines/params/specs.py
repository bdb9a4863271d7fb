"""One definition per generation parameter: type, default, hard limits, recommended bands, description.

The UI, request validation (Pydantic models built here), the REST API and the generated
docs/parameters.md all read `PARAMS`. The bands are the field facts of RECOMMENDATIONS.md.
This module is pure Python (no torch), so the UI may import it.
"""

from __future__ import annotations

import random
import re
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

from pipelines.networks import tags
from pipelines.params import samplers
from pipelines.params.control import ControlUnit
from pipelines.params.spec import Band, Bands, HintContext, JudgeFn, ParamSpec, pydantic_field
from pipelines.settings import RNG_SOURCES, canonical_rng

SEED_MAX = 2**32 - 1


def resolve_seed(seed: int | None) -> int:
    """-1 (or None): a random seed, drawn once per job (before its batches are split over workers or replicas)."""
    return random.randint(0, SEED_MAX) if seed is None or seed < 0 else int(seed)


# ----------------------------------------------------------------------------------------------
# Bands (RECOMMENDATIONS.md). Functions where the advice depends on the selected model.


def _steps_bands(ctx: HintContext) -> Bands:
    if ctx.distilled:
        return (
            Band("best", "distilled (turbo/LCM/lightning) models are made for 1-8 steps", 1, 8),
            Band("caution", "more steps than a distilled model needs: slower, often worse", 9, 150),
        )
    return (
        Band("avoid", "not enough noise removed: deformed, unusable images", 1, 10),
        Band("ok", "drafts: blurry details, some artifacts, but fast for judging prompt and composition", 11, 19),
        Band("best", "best quality per second; ~25 is a good default", 20, 35),
        Band("caution", "slower, barely better; may add unprompted detail", 36, 150),
    )


def _cfg_bands(ctx: HintContext) -> Bands:
    if ctx.distilled:
        return (
            Band("best", "distilled models want CFG around 1-2", 1, 2),
            Band("caution", "too strong for a distilled model: contrast and artifacts rise", 2.5, 4),
            Band("avoid", "burns distilled models: heavy artifacts", 4.5, 30),
        )
    return (
        Band("caution", "creative but weak prompt adherence; pale colours, anatomy errors", 1, 6.5),
        Band("best", "balance of adherence and variety; 7 is the classic default", 7, 10),
        Band("caution", "only for very detailed prompts; contrast and distortion rise", 10.5, 15),
        Band("avoid", "artifacts and distortion, very sensitive to prompt quality", 15.5, 20),
        Band("avoid", "almost never usable: heavy artifacts", 20.5, 30),
    )


def _size_bands(ctx: HintContext) -> Bands:
    n = ctx.native
    return (
        Band("avoid", f"far below the model's native {n}px: little detail, broken shapes", 64, n * 0.5 - 8),
        Band("caution", f"below the native {n}px: less detail", n * 0.5, n * 0.75 - 8),
        Band("best", f"near the native {n}px the model was trained at", n * 0.75, n * 1.5),
        Band("caution", f"well above native {n}px: duplicated subjects; generate at native and upscale", n * 1.5 + 8, n * 2),
        Band("avoid", f"far above native {n}px: duplicated subjects, broken anatomy; upscale instead", n * 2 + 8, 2048),
    )


def _size_judge(which: str) -> JudgeFn:
    other_name = "height" if which == "width" else "width"

    def judge(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
        n = ctx.native
        v = int(value) if value not in (None, "") else n
        other = others.get(other_name)
        o = int(other) if other not in (None, "") else n
        own = next((b for b in _size_bands(ctx) if b.contains(v)), _size_bands(ctx)[-1])
        if v <= n * 0.5 and o <= n * 0.5:
            return Band("avoid", f"both sides at half the native {n}px or less: the model was not trained for it",
                        own.lo, own.hi)
        if v > n * 1.5 and o > n * 1.5:
            return Band("avoid", f"both sides far above native {n}px: duplicated subjects; generate at {n} and upscale",
                        own.lo, own.hi)
        return own

    return judge


def _sampler_bands(ctx: HintContext) -> Bands:
    bands = [
        Band("best", "good starting choices: Euler for speed and photos, DPM++ for illustrations and low step counts",
             values=("Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE")),
        Band("ok", "sound samplers, less common", values=("LMS", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 3M SDE",
                                                         "UniPC", "DEIS")),
        Band("ok", "good quality but ~2x slower per step than Euler", values=("Heun",)),
        Band("caution", "early samplers, no longer recommended", values=("DDIM", "PLMS")),
    ]
    if ctx.distilled:
        bands.insert(0, Band("best", "made for LCM / distilled models", values=("LCM",)))
    else:
        bands.append(Band("avoid", "only for LCM-distilled models: poor images with regular checkpoints", values=("LCM",)))
    return tuple(bands)


_SCHEDULE_BANDS: Bands = (
    Band("best", "the sampler's usual schedule (Karras for DPM++ samplers)", values=("Automatic",)),
    Band("best", "denser steps at low noise: good images in fewer steps", values=("Karras",)),
    Band("ok", "alternative sigma spacing", values=("Exponential", "Uniform", "Beta")),
    Band("ok", "trailing spacing, used by turbo/lightning models", values=("SGM Uniform",)),
)


_TOKEN_RE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def plain_prompt(text: str) -> str:
    """A prompt as the text encoder sees its words: extra-network tags (<lora:...>), emphasis syntax ((word:1.2),
    [word]) and BREAK removed."""
    text = re.sub(r":\s*-?[\d.]+\s*\)", ")", tags.strip(text))
    text = re.sub(r"\bBREAK\b", " ", text)
    return re.sub(r"(?<!\\)[()\[\]]", " ", text)


def approx_tokens(text: str) -> int:
    """Rough CLIP token count without a tokenizer (words and punctuation; weights syntax excluded)."""
    return sum(max(1, len(w) // 6) if w.isalpha() else 1 for w in _TOKEN_RE.findall(plain_prompt(text)))


_PROMPT_BANDS: Bands = (
    Band("avoid", "empty prompt: the model draws anything", 0, 0),
    Band("best", "one chunk: order subject, details, style, quality, lighting", 1, 75),
    Band("ok", "split into 75-token chunks; later chunks weigh less", 76, None),
)

_NEGATIVE_BANDS: Bands = (
    Band("ok", "empty: fine for landscapes; for people add anatomy guards (deformed, extra limbs...)", 0, 0),
    Band("best", "written for the subject; must not contradict the prompt", 1, None),
)


def _seed_bands(what: str) -> Bands:
    return (
        Band("ok", f"random {what}: explore variations of a prompt", -1, -1),
        Band("best", f"fixed {what}: reproducible; change prompt and settings step by step", 0, SEED_MAX),
    )


# ----------------------------------------------------------------------------------------------
# The parameters.

_IMG = frozenset({"img2img", "inpaint"})
_INP = frozenset({"inpaint"})
_OUT = frozenset({"outpaint"})  # outpainting (pipelines/outpaint.py): its own settings, besides inpaint's
_T2I = frozenset({"txt2img"})
_ALL = frozenset({"txt2img", "img2img", "inpaint", "sd_upscale"})
_EXTRAS = frozenset({"extras"})  # the Upscale tab's plain upscalers
_SDUP = frozenset({"sd_upscale"})  # its tiled SD upscale
_UPS = _EXTRAS | _SDUP
_ZOOM = frozenset({"zoom"})  # the infinite zoom
ZOOM_DIRECTIONS = ("zoom out", "zoom in")
ZOOM_FORMATS = ("mp4", "webm")
LATENT_UPSCALERS = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                    "Latent (nearest)", "Latent (nearest-exact)")
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest")  # plus every model in models/ESRGAN
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")  # A1111 0..3
MASK_MODES = ("Inpaint masked", "Inpaint not masked")  # A1111 inpainting_mask_invert 0/1
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # A1111 inpainting_fill 0..3
INPAINT_AREAS = ("Whole picture", "Only masked")  # A1111 inpaint_full_res false/true
OUTPAINT_FILLS = ("fill", "original", "latent noise", "latent nothing", "matched noise")  # pipelines/outpaint.py


_RNG_BANDS: Bands = (
    Band("best", "the same picture for a seed on any hardware (diffusers, ComfyUI)", values=("CPU",)),
    Band("best", "A1111's default noise on NVIDIA cards, on any hardware: reproduces images shared from A1111",
         values=("NV",)),
    Band("caution", "this device's own generator: not reproducible across NVIDIA, AMD, Apple and CPU",
         values=("GPU",)),
)


def _rng_band(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    v = str(value or "").strip().upper()  # empty (or not a source, which validation refuses): the option
    return next((b for b in _RNG_BANDS if v in b.values), Band("best", "the randn_source option (--rng; CPU unless "
                                                                       "changed)"))


def _ensd_band(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    if value in (None, ""):
        return Band("best", "the eta_noise_seed_delta option (0 unless changed)")
    bands = PARAMS["eta_noise_seed_delta"].bands_for(ctx)
    return next((b for b in bands if b.contains(value)), Band("avoid", f"not an ENSD: 0 to {SEED_MAX}"))


def _eta_bands(ctx: HintContext) -> Bands:
    return (
        Band("best", "1: the ancestral / SDE sampler as published (A1111's eta_ancestral default)", 1.0, 1.0),
        Band("ok", "less step noise: a little less variation between seeds", 0.5, 1.0),
        Band("caution", "little step noise: less variation, can look flat (DDIM: 0 is its usual setting)", 0.0, 0.5),
    )


def _eta_band(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    if value in (None, ""):
        return Band("best", "the eta option for the sampler's kind: eta_ancestral (1) or eta_ddim (0) unless changed")
    sampler = str(others.get("sampler_name") or "")
    if samplers.eta_option(sampler) == "eta_ddim" and samplers.takes_eta(sampler):
        return Band("best", "DDIM: 0 is deterministic (A1111's default); more adds step noise", 0.0, 1.0)
    if sampler and not samplers.takes_eta(sampler):
        return Band("ok", f"{sampler} takes no eta: ignored", 0.0, 1.0)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return Band("avoid", "not an eta: 0 to 1")
    return next((b for b in _eta_bands(ctx) if b.contains(v)), Band("avoid", "not an eta: 0 to 1"))


def _sgm_bands(ctx: HintContext) -> Bands:
    return (Band("best", "off: A1111's default, what SD 1.x / 2.x checkpoints expect", values=("False",)),
            Band("ok", "on: SGM's own scaling; only to reproduce SDXL images made with it (their infotext says SGM "
                       "noise multiplier: True)", values=("True",)))


def _sgm_band(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    if value in (None, ""):
        return Band("best", "the sgm_noise_multiplier option (off unless changed)")
    return _sgm_bands(ctx)[1 if value else 0]


def _discard_bands(ctx: HintContext) -> Bands:
    return (Band("best", "off: each sampler as A1111 runs it by default", values=("False",)),
            Band("ok", "on: the last step goes straight to zero noise; to reproduce images made with it",
                 values=("True",)))


def _discard_band(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    if value in (None, ""):
        return Band("best", "the always_discard_next_to_last_sigma option (off unless changed)")
    if not value:
        return _discard_bands(ctx)[0]
    steps = others.get("steps")
    if isinstance(steps, (int, float)) and not isinstance(steps, bool) and steps < 10:
        return Band("caution", "with few steps the dropped sigma is a large jump: a rougher last step")
    return _discard_bands(ctx)[1]


# A1111's sampler options that are request fields too (eta: the eta_ancestral / eta_ddim options)
SAMPLER_OPTIONS = ("eta", "sgm_noise_multiplier", "always_discard_next_to_last_sigma")
MODEL_UPSCALER = "a model in models/ESRGAN"  # how the bands name "any upscaler model"
VAE_CHOICES = ("Automatic", "None")  # plus every listed VAE file (pipelines/networks/vaes.py)
VAE_FILE = "a VAE from models/VAE"  # how the bands name "any VAE file"
_VAE_BANDS: Bands = (
    Band("best", "the checkpoint's own VAE, or the NAME.vae.safetensors saved beside it", values=("Automatic",)),
    Band("best", "a VAE made for the model's family (SD 1.x/2.x or SDXL): e.g. fixes washed-out colours",
         values=(VAE_FILE,)),
    Band("ok", "the checkpoint's own VAE, even when a VAE file is saved beside it", values=("None",)),
)


def _vae_band(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    v = str(value or "Automatic")
    return next((b for b in _VAE_BANDS if v in b.values), _VAE_BANDS[1])


def _upscaler_band(value: Any, hires: bool = True) -> Band:
    v = str(value or "")
    then = " with denoising 0.2-0.4" if hires else ""
    if v in LATENT_UPSCALERS:
        return Band("ok", "fast, but blurry unless denoising is 0.5 or more", values=LATENT_UPSCALERS)
    if v in ("Lanczos", "Nearest"):
        return Band("ok", "plain resampling: soft" + ("; use denoising 0.3-0.5" if hires else " at 2x and beyond"),
                    values=("Lanczos", "Nearest"))
    if v == "None":
        return Band("avoid", "no upscale" + (": the second pass runs at the first pass's size" if hires else ""),
                    values=("None",))
    return Band("best", f"a neural upscaler: sharp detail{then}", values=(MODEL_UPSCALER,))


def _hires_target_band(scale: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    """Judge the final size the factor gives for this model (~2x native a side is the limit)."""
    w = int(others.get("width") or ctx.native)
    h = int(others.get("height") or ctx.native)
    s = float(scale or 1)
    side = max(w, h) * s
    if s <= 1.05:
        return Band("caution", "no real upscale", 1, 1.05)
    if side <= ctx.native * 2 + 8:
        return Band("best", f"final {round(w * s)}x{round(h * s)}: within ~{ctx.native * 2}px a side for this "
                            "model", 1.1, 2)
    return Band("caution", f"final {round(w * s)}x{round(h * s)}: beyond ~{ctx.native * 2}px a side this model "
                           "duplicates subjects; use tiled upscale for more", 2.05, 4)


def _denoise_bands(ctx: HintContext) -> Bands:
    if ctx.mode == "txt2img":  # the hires fix second pass
        return (
            Band("caution", "the second pass barely changes the upscaled image: blur stays", 0, 0.14),
            Band("best", "adds detail at the new size and keeps the composition", 0.15, 0.45),
            Band("ok", "needed after latent upscalers; more change from the first pass", 0.46, 0.65),
            Band("avoid", "redraws too much at a size the model was not trained for: duplicated subjects",
                 0.66, 1),
        )
    if ctx.mode == "inpaint":
        return (
            Band("caution", "no effect: the masked area comes back unchanged", 0, 0.09),
            Band("best", "touch-ups: keeps the masked area's shapes and colours", 0.1, 0.49),
            Band("best", "replaces the masked content while matching its surroundings", 0.5, 0.75),
            Band("ok", "new content: pair with 'latent noise' or 'fill' masked content", 0.76, 1),
        )
    return (
        Band("caution", "no effect: the input comes back unchanged", 0, 0),
        Band("caution", "almost identical to the input; cannot fix defects or add detail", 0.01, 0.19),
        Band("best", "keeps structure and composition, improves quality and detail", 0.2, 0.49),
        Band("ok", "variations: same palette and rough layout, clear structural changes", 0.5, 0.75),
        Band("avoid", "little left of the input: use txt2img instead", 0.76, 1),
    )


PARAMS: dict[str, ParamSpec] = {
    p.name: p
    for p in [
        ParamSpec(
            "prompt", "Prompt", "text", "",
            "What to draw. Subject first, then details, style/medium, quality words, lighting. "
            "(word:1.2) weights a word, [word] de-emphasises it; long prompts are split into 75-token chunks.",
            _PROMPT_BANDS, measure=approx_tokens, unit="tokens", group="prompt",
        ),
        ParamSpec(
            "negative_prompt", "Negative prompt", "text", "",
            "What to steer away from, written for the subject (anatomy guards for people). "
            "Same emphasis syntax; must not contradict the prompt.",
            _NEGATIVE_BANDS, measure=approx_tokens, unit="tokens", group="prompt", infotext_key="Negative prompt",
        ),
        ParamSpec(
            "sampler_name", "Sampler", "choice", "DPM++ 2M",
            "Sampling method. Euler family: fast, photoreal. DPM++: good at low step counts, illustrations. "
            "Ancestral ('a') and SDE samplers add noise each step and do not converge with more steps.",
            _sampler_bands, choices=samplers.sampler_names, infotext_key="Sampler", group="sampling",
        ),
        ParamSpec(
            "scheduler", "Schedule type", "choice", "Automatic",
            "How noise levels are spaced over the steps. Automatic picks the sampler's usual schedule.",
            _SCHEDULE_BANDS, choices=samplers.schedule_names, infotext_key="Schedule type", group="sampling",
        ),
        ParamSpec(
            "steps", "Sampling steps", "int", 25,
            "Denoising steps. 20-35 gives the best quality per second; 11-19 for drafts.",
            _steps_bands, minimum=1, maximum=150, step=1, infotext_key="Steps", group="sampling",
        ),
        ParamSpec(
            "cfg_scale", "CFG scale", "float", 7.0,
            "How strongly the image follows the prompt. 7-10 balances adherence and variety.",
            _cfg_bands, minimum=1, maximum=30, step=0.5, infotext_key="CFG scale", group="sampling",
        ),
        ParamSpec(
            "width", "Width", "int", None,
            "Image width in pixels, a multiple of 8. Default: the model family's native size. Keep at least "
            "one side at native size; upscale for bigger images. Any size change gives a different image.",
            _size_bands, minimum=64, maximum=2048, step=8, multiple_of=8, judge=_size_judge("width"),
            nullable=True, group="size",
        ),
        ParamSpec(
            "height", "Height", "int", None,
            "Image height in pixels, a multiple of 8. Default: the model family's native size.",
            _size_bands, minimum=64, maximum=2048, step=8, multiple_of=8, judge=_size_judge("height"),
            nullable=True, group="size",
        ),
        ParamSpec(
            "seed", "Seed", "int", -1,
            "-1 picks a random seed. The same seed, parameters and device give the same image; "
            "images of a batch use seed, seed+1, ...",
            _seed_bands("seed"), minimum=-1, maximum=SEED_MAX, step=1, infotext_key="Seed", group="seed",
        ),
        ParamSpec(
            "subseed", "Variation seed", "int", -1,
            "Seed of the noise blended in by the variation strength; -1 picks a random one.",
            _seed_bands("variation seed"), minimum=-1, maximum=SEED_MAX, step=1, infotext_key="Variation seed",
            group="seed", modes=frozenset({"txt2img"}),
        ),
        ParamSpec(
            "subseed_strength", "Variation strength", "float", 0.0,
            "How much of the variation seed's noise is blended in: 0 = off, small values give close variations "
            "of the same composition.",
            (
                Band("best", "off: the seed alone decides the image", 0, 0),
                Band("best", "small variations that keep the composition", 0.01, 0.3),
                Band("ok", "clear variations", 0.31, 0.7),
                Band("caution", "almost a different seed: use another seed instead", 0.71, 1),
            ),
            minimum=0, maximum=1, step=0.01, infotext_key="Variation seed strength", group="seed",
            modes=frozenset({"txt2img"}),
        ),
        ParamSpec(
            "batch_size", "Batch size", "int", 1,
            "Images generated at once in one pass. Memory grows with it.",
            (
                Band("best", "several images per pass: good for exploring", 1, 4),
                Band("caution", "memory grows with batch size: out-of-memory risk on small GPUs", 5, 8),
            ),
            minimum=1, maximum=8, step=1, group="batch",
        ),
        ParamSpec(
            "n_iter", "Batch count", "int", 1,
            "How many batches to run one after another.",
            (
                Band("best", "a handful of batches: explore, then refine the one you like", 1, 16),
                Band("caution", "long queue: explore with drafts (11-19 steps) first", 17, 100),
            ),
            minimum=1, maximum=100, step=1, group="batch",
        ),
        ParamSpec(
            "clip_skip", "Clip skip", "int", 1,
            "Stop the text encoder this many layers before its end. 1 = normal; 2 for anime/NovelAI-derived "
            "SD 1.x models.",
            (
                Band("best", "the text encoder's full output: right for most models", 1, 1),
                Band("ok", "for anime/NovelAI-derived SD 1.x models", 2, 2),
                Band("caution", "drops more of the text encoder: weaker prompt adherence", 3, 12),
            ),
            minimum=1, maximum=12, step=1, infotext_key="Clip skip", group="advanced",
        ),
        ParamSpec(
            "sd_vae", "SD VAE", "choice", None,
            "The VAE that turns latents into pixels (and an input image into latents). Automatic: a "
            "NAME.vae.safetensors beside the checkpoint, else the checkpoint's own; None: the checkpoint's own; or a "
            "file from models/VAE (GET /sdapi/v1/sd-vae), e.g. vae-ft-mse-840000-ema-pruned for SD 1.x checkpoints "
            "with washed-out colours, sdxl-vae-fp16-fix for SDXL in fp16. Empty: the sd_vae option (the VAE "
            "dropdown; A1111's setting, also settable per request in override_settings).",
            _VAE_BANDS, choices=lambda: list(VAE_CHOICES), infotext_key="VAE", group="model", judge=_vae_band,
            nullable=True, modes=_ALL, extra={"open": True},
        ),
        ParamSpec(
            "randn_source", "Random number generator source", "choice", None,
            "Where the noise of a seed comes from (A1111's randn_source option; infotext RNG). CPU: the same picture "
            "on any hardware, what diffusers and ComfyUI use. NV: A1111's emulation of NVIDIA's CUDA noise, on any "
            "hardware: the same picture as A1111's default GPU setting on NVIDIA cards, so use NV to reproduce "
            "images shared from A1111 (an infotext without RNG was made that way). GPU: this device's own "
            "generator: pictures differ between NVIDIA, AMD, Apple and CPU. Empty: the randn_source option "
            "(--rng; also settable per request in override_settings).",
            _RNG_BANDS, choices=lambda: list(RNG_SOURCES), infotext_key="RNG", group="advanced", nullable=True,
            modes=_ALL, judge=_rng_band, extra={"by_index": False},
        ),
        ParamSpec(
            "eta_noise_seed_delta", "Eta noise seed delta", "int", None,
            "A1111's ENSD: reseeds the step noise of ancestral samplers (Euler a, DPM2 a, DPM++ 2S a) with seed + "
            "this. 31337 is common in shared NovelAI-style infotexts; 0 = off. Empty: the eta_noise_seed_delta "
            "option (default 0; also settable per request in override_settings).",
            (Band("best", "off: the step noise follows the seed, as in diffusers and A1111's default", 0, 0),
             Band("ok", "only to reproduce an infotext that names this ENSD (31337 in NovelAI-style ones)", 1,
                  SEED_MAX)),
            minimum=0, maximum=SEED_MAX, step=1, infotext_key="ENSD", group="advanced", nullable=True, modes=_ALL,
            judge=_ensd_band,
        ),
        ParamSpec(
            "eta", "Eta (noise multiplier)", "float", None,
            "How much fresh noise the samplers that take an eta add each step (A1111's eta; infotext Eta for Euler a, "
            "DPM2 a, DPM++ 2S a and the DPM++ SDE family, Eta DDIM for DDIM). 1 = the sampler as published; 0 = no "
            "step noise (an ancestral sampler then behaves like its plain version). Samplers without eta ignore "
            "it. Empty: the option for the sampler's kind, eta_ancestral (default 1) or eta_ddim (default 0; also "
            "settable per request in override_settings).",
            _eta_bands, minimum=0, maximum=1, step=0.01, infotext_key="Eta", group="advanced", nullable=True, modes=_ALL,
            judge=_eta_band,
        ),
        ParamSpec(
            "sgm_noise_multiplier", "SGM noise multiplier", "bool", None,
            "A1111's sgm_noise_multiplier (infotext SGM noise multiplier): txt2img's first noise is scaled by "
            "sqrt(1 + sigma_max^2) instead of sigma_max, as SGM's reference code does for SDXL. Only k-diffusion "
            "samplers in txt2img; img2img, DDIM and PLMS ignore it. Empty: the sgm_noise_multiplier option "
            "(default off; also settable per request in override_settings).",
            _sgm_bands, infotext_key="SGM noise multiplier", group="advanced", nullable=True, modes=_ALL, judge=_sgm_band,
        ),
        ParamSpec(
            "always_discard_next_to_last_sigma", "Always discard next-to-last sigma", "bool", None,
            "A1111's always_discard_next_to_last_sigma (infotext Discard penultimate sigma): every sampler runs "
            "steps + 1 sigmas (timesteps for DDIM / PLMS) with the next-to-last one dropped, as DPM2, DPM2 a and "
            "DPM++ 3M SDE always do: the last step goes straight to zero noise. Empty: the "
            "always_discard_next_to_last_sigma option (default off; also settable per request in override_settings).",
            _discard_bands, infotext_key="Discard penultimate sigma", group="advanced", nullable=True, modes=_ALL, judge=_discard_band,
        ),
        ParamSpec(
            "enable_hr", "Hires. fix", "bool", False,
            "Upscale each image and run a second img2img pass at the bigger size: detail beyond the model's native "
            "size without duplicated subjects. Costs a second pass per image.",
            (Band("best", "explore at native size; use hires fix once you like a seed", values=("False",)),
             Band("ok", "finalizing: a second pass per image at the bigger size", values=("True",))),
            group="hires", modes=_T2I,
        ),
        ParamSpec(
            "hr_upscaler", "Upscaler", "choice", "Latent",
            "How the first pass is enlarged: latent modes are fast but need denoising of 0.5 or more; Lanczos and "
            "ESRGAN-family models (models/ESRGAN) keep detail at 0.2-0.4.",
            (Band("ok", "fast, but blurry unless denoising is 0.5 or more", values=LATENT_UPSCALERS),
             Band("ok", "plain resampling: soft; use denoising 0.3-0.5", values=("Lanczos", "Nearest")),
             Band("best", "a neural upscaler: sharp detail with denoising 0.2-0.4", values=(MODEL_UPSCALER,))),
            choices=lambda: [*LATENT_UPSCALERS, *PIXEL_UPSCALERS[1:]], infotext_key="Hires upscaler", group="hires",
            modes=_T2I, judge=lambda v, ctx, o: _upscaler_band(v), extra={"open": True},
        ),
        ParamSpec(
            "hr_scale", "Upscale by", "float", 2.0,
            "Factor from the first pass to the final size (ignored when 'Resize width/height to' is set).",
            (Band("caution", "no real upscale", 1, 1.05),
             Band("best", "up to about twice the native size", 1.1, 2),
             Band("caution", "beyond twice the native size: duplication risk; use tiled upscale", 2.05, 4)),
            minimum=1, maximum=4, step=0.05, infotext_key="Hires upscale", group="hires", modes=_T2I,
            judge=lambda v, ctx, o: _hires_target_band(v, ctx, o),
        ),
        ParamSpec(
            "hr_second_pass_steps", "Hires steps", "int", 0,
            "Steps of the second pass; 0 = the same as the first pass.",
            (Band("best", "the same as the first pass", 0, 0),
             Band("caution", "too few to add detail at the new size", 1, 9),
             Band("best", "enough for the second pass", 10, 35),
             Band("caution", "slower, barely better", 36, 150)),
            minimum=0, maximum=150, step=1, infotext_key="Hires steps", group="hires", modes=_T2I,
        ),
        ParamSpec(
            "hr_resize_x", "Resize width to", "int", 0,
            "Final width in pixels instead of 'Upscale by' (0 = from the factor, or from the height's ratio).",
            (Band("best", "use 'Upscale by'", 0, 0), Band("ok", "an exact final width", 64, 4096)),
            minimum=0, maximum=4096, step=8, group="hires", modes=_T2I,
        ),
        ParamSpec(
            "hr_resize_y", "Resize height to", "int", 0,
            "Final height in pixels instead of 'Upscale by' (0 = from the factor, or from the width's ratio).",
            (Band("best", "use 'Upscale by'", 0, 0), Band("ok", "an exact final height", 64, 4096)),
            minimum=0, maximum=4096, step=8, group="hires", modes=_T2I,
        ),
        ParamSpec(
            "hr_sampler_name", "Hires sampler", "choice", "",
            "Sampler of the second pass; empty = the same as the first pass.",
            (Band("best", "the same as the first pass", values=("",)),
             Band("ok", "a different sampler for the second pass", values=tuple(samplers.sampler_names()))),
            choices=lambda: ["", *samplers.sampler_names()], infotext_key="Hires sampler", group="hires",
            modes=_T2I,
        ),
        ParamSpec(
            "hr_prompt", "Hires prompt", "text", "",
            "Prompt of the second pass; empty = the same prompt.",
            (Band("best", "the same prompt", 0, 0), Band("ok", "a prompt of its own for the second pass", 1, None)),
            measure=approx_tokens, unit="tokens", infotext_key="Hires prompt", group="hires", modes=_T2I,
        ),
        ParamSpec(
            "hr_negative_prompt", "Hires negative prompt", "text", "",
            "Negative prompt of the second pass; empty = the same negative prompt.",
            (Band("best", "the same negative prompt", 0, 0), Band("ok", "its own negative prompt", 1, None)),
            measure=approx_tokens, unit="tokens", infotext_key="Hires negative prompt", group="hires", modes=_T2I,
        ),
        ParamSpec(
            "hr_keep_first_pass", "Keep the first pass", "bool", False,
            "Also save each image as it was before the hires fix (…-before-highres-fix.png).",
            (Band("best", "only the final images are saved", values=("False",)),
             Band("ok", "both passes are saved: compare what the second pass changed", values=("True",))),
            group="hires", modes=_T2I,
        ),
        ParamSpec(
            "denoising_strength", "Denoising strength", "float", 0.4,
            "How much of the input image is replaced: low keeps structure, high keeps little of it. "
            "Sampling runs steps x strength steps.",
            _denoise_bands, minimum=0, maximum=1, step=0.01, infotext_key="Denoising strength", group="img2img",
            modes=_ALL,
        ),
        ParamSpec(
            "resize_mode", "Resize mode", "choice", RESIZE_MODES[0],
            "How the input image is fitted to width x height when its aspect ratio differs.",
            (
                Band("best", "exact when the size follows the input's aspect ratio (the default size does)",
                     values=RESIZE_MODES[:1]),
                Band("best", "keeps the aspect ratio, crops what sticks out", values=RESIZE_MODES[1:2]),
                Band("ok", "keeps everything, extends the edges into the empty bands", values=RESIZE_MODES[2:3]),
                Band("caution", "resizes the latents: blurry unless denoising is 0.5 or more",
                     values=RESIZE_MODES[3:]),
            ),
            choices=lambda: list(RESIZE_MODES), group="img2img", modes=_IMG,
        ),
        ParamSpec(
            "scale_by", "Resize by", "float", None,
            "Scale the input image by this factor instead of giving width and height (empty: use width/height).",
            (
                Band("caution", "much smaller than the input: detail is lost", 0.05, 0.49),
                Band("best", "around the input's size", 0.5, 1.5),
                Band("caution", "above the input's size: prefer an upscaler or hires fix for big images", 1.55, 2),
                Band("avoid", "far above native size: duplicated subjects; upscale instead", 2.05, 4),
            ),
            minimum=0.05, maximum=4, step=0.05, nullable=True, group="img2img", modes=_IMG,
        ),
        ParamSpec(
            "mask_blur", "Mask blur", "int", 4,
            "Softens the mask's edge (px) so the repainted area blends into the untouched pixels.",
            (
                Band("caution", "hard edge: visible seams", 0, 0),
                Band("best", "a soft transition without bleeding into the surroundings", 1, 12),
                Band("caution", "wide blend: the change bleeds well outside the painted area", 13, 64),
            ),
            minimum=0, maximum=64, step=1, infotext_key="Mask blur", group="inpaint", modes=_INP,
        ),
        ParamSpec(
            "inpainting_mask_invert", "Mask mode", "choice", MASK_MODES[0],
            "Repaint what is painted, or everything except it.",
            (Band("best", "repaint the painted area", values=MASK_MODES[:1]),
             Band("best", "keep the painted area, repaint the rest", values=MASK_MODES[1:])),
            choices=lambda: list(MASK_MODES), infotext_key="Mask mode", group="inpaint", modes=_INP,
        ),
        ParamSpec(
            "inpainting_fill", "Masked content", "choice", MASKED_CONTENT[1],
            "What the masked area starts from: fill (surrounding colours), original, latent noise or latent "
            "nothing.",
            (
                Band("best", "starts from what is there: touch-ups and small changes", values=("original",)),
                Band("ok", "starts from the surrounding colours: removing objects", values=("fill",)),
                Band("ok", "starts from noise: new content, needs denoising of 0.75 or more",
                     values=("latent noise",)),
                Band("caution", "starts from an empty latent: flat results unless denoising is high",
                     values=("latent nothing",)),
            ),
            choices=lambda: list(MASKED_CONTENT), infotext_key="Masked content", group="inpaint", modes=_INP,
        ),
        ParamSpec(
            "inpaint_full_res", "Inpaint area", "choice", INPAINT_AREAS[0],
            "Whole picture: the whole image is regenerated at width x height. Only masked: the masked region plus "
            "padding is cut out, generated at width x height and pasted back (more detail for small areas).",
            (Band("best", "keeps the whole composition in view", values=INPAINT_AREAS[:1]),
             Band("best", "small areas get the model's full resolution", values=INPAINT_AREAS[1:])),
            choices=lambda: list(INPAINT_AREAS), infotext_key="Inpaint area", group="inpaint", modes=_INP,
        ),
        ParamSpec(
            "inpaint_full_res_padding", "Only masked padding", "int", 32,
            "Pixels of context around the masked region when the inpaint area is 'Only masked'.",
            (
                Band("caution", "little context: the patch may not match its surroundings", 0, 7),
                Band("best", "enough context for a seamless patch", 8, 64),
                Band("ok", "much context: less detail for the masked area", 65, 256),
            ),
            minimum=0, maximum=256, step=4, infotext_key="Masked area padding", group="inpaint", modes=_INP,
        ),
        *[ParamSpec(
            f"outpaint_{side}", f"Extend {side}", "int", 0,
            f"Pixels added on the {side} of the image by outpainting (0: this side stays as it is).",
            # the 32-192 band first: a thin strip's one-click fix widens it (a tie with "0" would undo it)
            (Band("best", "up to a quarter of the native size per step: new content that matches", 32, 192),
             Band("best", "this side stays", 0, 0),
             Band("caution", "a thin strip: little room for new content, the seam is most of it", 8, 31),
             Band("ok", "a wide band: split it into steps (Step size) so each pass sees enough of the image", 200,
                  512),
             Band("caution", "very wide: the new area dwarfs the original; the result drifts from it", 520, 2048)),
            minimum=0, maximum=2048, step=8, infotext_key=f"Outpaint {side}", group="outpaint", modes=_OUT,
        ) for side in ("left", "right", "up", "down")],
        ParamSpec(
            "outpaint_fill", "Outpaint fill", "choice", "fill",
            "What the new area starts from: fill (the edge colours blended), original (the edge pixels stretched "
            "outwards), latent noise, latent nothing, or matched noise (Outpainting mk2: noise with the image's "
            "colour statistics).",
            (Band("best", "new content that continues the edge colours", values=("fill", "matched noise")),
             Band("ok", "stretched edge pixels: streaks unless the denoising strength is high", values=("original",)),
             Band("ok", "pure noise: most new content, needs denoising 0.9-1", values=("latent noise",)),
             Band("caution", "an empty latent: flat, grey new areas below denoising 1", values=("latent nothing",))),
            choices=lambda: list(OUTPAINT_FILLS), infotext_key="Outpaint fill", group="outpaint", modes=_OUT,
        ),
        ParamSpec(
            "outpaint_overlap", "Outpaint overlap", "int", 16,
            "Pixels of the old image, along each extended edge, that each step repaints with the new area so the "
            "new content grows out of it (the input's own pixels are restored in the final image).",
            (Band("caution", "no overlap: the new area is drawn next to a fixed edge, seams show more", 0, 3),
             Band("best", "a band the new content can blend into", 4, 64),
             Band("caution", "a wide band: the old image's edge is redrawn a lot between steps", 65, 256)),
            minimum=0, maximum=256, step=1, infotext_key="Outpaint overlap", group="outpaint", modes=_OUT,
        ),
        ParamSpec(
            "outpaint_step", "Step size", "int", 0,
            "Extend at most this many pixels per side and pass, in several passes (0: everything in one pass).",
            (Band("best", "one pass: fastest", 0, 0),
             Band("caution", "tiny steps: many passes, each adds little", 8, 31),
             Band("best", "a few passes, each seeing most of the image: the mk2 way for big extensions", 32, 256),
             Band("ok", "large steps", 264, 2048)),
            minimum=0, maximum=2048, step=8, infotext_key="Outpaint step", group="outpaint", modes=_OUT,
        ),
        ParamSpec(
            "outpaint_noise_q", "Fall-off exponent", "float", 1.0,
            "Matched noise only: how fast the noise's detail falls off (lower = finer detail), as in mk2.",
            (Band("ok", "fine, busy noise", 0, 0.49), Band("best", "mk2's range", 0.5, 2),
             Band("caution", "very smooth blobs: flat new areas", 2.01, 4)),
            minimum=0, maximum=4, step=0.01, infotext_key="Outpaint fall-off", group="outpaint", modes=_OUT,
        ),
        ParamSpec(
            "outpaint_color_variation", "Color variation", "float", 0.05,
            "Matched noise only: how colourful the noise is before its colours are matched to the image.",
            (Band("best", "mostly grey noise, matched to the image's colours", 0, 0.2),
             Band("ok", "colourful noise", 0.21, 0.6), Band("caution", "very colourful speckles", 0.61, 1)),
            minimum=0, maximum=1, step=0.01, infotext_key="Outpaint color variation", group="outpaint", modes=_OUT,
        ),
        ParamSpec(
            "upscaler_1", "Upscaler", "choice", "Lanczos",
            "The upscaler: ESRGAN-family models from models/ESRGAN keep and invent detail; Lanczos/Nearest only "
            "resample.",
            (Band("ok", "plain resampling: soft at 2x and beyond", values=("Lanczos", "Nearest")),
             Band("avoid", "no upscale", values=("None",)),
             Band("best", "a neural upscaler: sharp detail", values=(MODEL_UPSCALER,))),
            choices=lambda: list(PIXEL_UPSCALERS), judge=lambda v, ctx, o: _upscaler_band(v, hires=False),
            group="upscale",
            modes=_UPS, extra={"open": True},
        ),
        ParamSpec(
            "upscaling_resize", "Scale by", "float", 2.0,
            "Factor from the input's size to the result (the tiled SD upscale typically uses 2).",
            (Band("caution", "no real upscale", 1, 1.05), Band("best", "typical: twice the size", 1.1, 2),
             Band("ok", "big jumps: run 2x twice for the best detail", 2.05, 4),
             Band("caution", "very large: memory and time grow with the area", 4.05, 8)),
            minimum=1, maximum=8, step=0.05, infotext_key="Postprocess upscale by", group="upscale", modes=_UPS,
        ),
        ParamSpec(
            "upscaling_resize_w", "Resize width to", "int", 0,
            "Exact result width instead of 'Scale by' (0 = use the factor).",
            (Band("best", "use 'Scale by'", 0, 0), Band("ok", "an exact width", 64, 8192)),
            minimum=0, maximum=8192, step=8, group="upscale", modes=_UPS,
        ),
        ParamSpec(
            "upscaling_resize_h", "Resize height to", "int", 0,
            "Exact result height instead of 'Scale by' (0 = use the factor).",
            (Band("best", "use 'Scale by'", 0, 0), Band("ok", "an exact height", 64, 8192)),
            minimum=0, maximum=8192, step=8, group="upscale", modes=_UPS,
        ),
        ParamSpec(
            "upscaler_2", "Second upscaler", "choice", "None",
            "A second upscaler blended over the first by its visibility (e.g. a sharp model with a soft one).",
            (Band("best", "one upscaler", values=("None",)),
             Band("ok", "a blend of two upscalers", values=("any other upscaler",))),
            choices=lambda: list(PIXEL_UPSCALERS), judge=lambda v, ctx, o: (
                Band("best", "one upscaler", values=("None",)) if v in (None, "", "None")
                else Band("ok", "a blend of two upscalers", values=(str(v),))),
            infotext_key="Postprocess upscaler 2", group="upscale", modes=_EXTRAS, extra={"open": True},
        ),
        ParamSpec(
            "extras_upscaler_2_visibility", "Second upscaler visibility", "float", 0.0,
            "How much of the second upscaler's result shows (0 = none, 1 = only the second).",
            (Band("best", "off", 0, 0), Band("ok", "a blend", 0.01, 0.99), Band("caution", "only the second", 1, 1)),
            minimum=0, maximum=1, step=0.05, group="upscale", modes=_EXTRAS,
        ),
        ParamSpec(
            "tile_width", "Tile width", "int", 512,
            "Width of each redrawn tile in pixels: the model's native size is best.",
            (Band("caution", "small tiles: little context, more tiles, visible repetition", 64, 383),
             Band("best", "near the native size of SD 1.x models (use 1024 for SDXL)", 384, 768),
             Band("caution", "big tiles: duplication inside a tile on SD 1.x, more memory", 776, 2048)),
            minimum=64, maximum=2048, step=8, infotext_key="Tile width", group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "tile_height", "Tile height", "int", 512,
            "Height of each redrawn tile in pixels.",
            (Band("caution", "small tiles: little context, more tiles, visible repetition", 64, 383),
             Band("best", "near the native size of SD 1.x models (use 1024 for SDXL)", 384, 768),
             Band("caution", "big tiles: duplication inside a tile on SD 1.x, more memory", 776, 2048)),
            minimum=64, maximum=2048, step=8, infotext_key="Tile height", group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "tile_padding", "Tile padding", "int", 32,
            "Pixels of context around each tile that the redraw sees but does not keep.",
            (Band("caution", "little context: tiles may not match", 0, 15), Band("best", "enough context", 16, 64),
             Band("ok", "much context: slower tiles", 65, 256)),
            minimum=0, maximum=256, step=4, infotext_key="Tile padding", group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "tile_mask_blur", "Tile mask blur", "int", 8,
            "Soft edge (px) where a redrawn tile meets its neighbours.",
            (Band("caution", "hard tile edges: visible seams", 0, 1), Band("best", "soft tile edges", 2, 16),
             Band("caution", "wide blending: tiles wash into each other", 17, 64)),
            minimum=0, maximum=64, step=1, infotext_key="Tile mask blur", group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "redraw_order", "Redraw order", "choice", "linear",
            "Order of the tiles: linear (row by row) or chess (every other tile first).",
            (Band("best", "row by row", values=("linear",)),
             Band("best", "every other tile first: fewer directional artifacts", values=("chess",))),
            choices=lambda: ["linear", "chess"], infotext_key="Redraw order", group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "seams_fix", "Seams fix", "choice", "none",
            "A second pass over the borders between tiles: bands along the seams, or half-tile offsets "
            "(+ their intersections). Costs more redraws.",
            (Band("best", "no extra pass: enough when tile mask blur hides the seams", values=("none",)),
             Band("ok", "redraws a band along every seam", values=("band pass",)),
             Band("ok", "redraws half-tile offsets over the seams (more redraws)",
                  values=("half tile", "half tile + intersections"))),
            choices=lambda: ["none", "band pass", "half tile", "half tile + intersections"],
            infotext_key="Seams fix", group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "seams_fix_denoise", "Seams fix denoising", "float", 0.35,
            "Denoising strength of the seams-fix pass.",
            (Band("caution", "too weak to blend the seams", 0, 0.14), Band("best", "blends the seams", 0.15, 0.45),
             Band("caution", "redraws the seams visibly", 0.46, 1)),
            minimum=0, maximum=1, step=0.01, infotext_key="Seams fix denoise", group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "seams_fix_width", "Seams fix width", "int", 64,
            "Width of the band redrawn along each seam (band pass).",
            (Band("caution", "too narrow to hide a seam", 8, 31), Band("best", "covers a seam", 32, 128),
             Band("ok", "wide bands: slower", 129, 512)),
            minimum=8, maximum=512, step=8, group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "seams_fix_padding", "Seams fix padding", "int", 16,
            "Context around each seam band.",
            (Band("caution", "little context", 0, 7), Band("best", "enough context", 8, 64),
             Band("ok", "much context: slower", 65, 256)),
            minimum=0, maximum=256, step=4, group="tiled", modes=_SDUP,
        ),
        ParamSpec(
            "seams_fix_mask_blur", "Seams fix mask blur", "int", 4,
            "Soft edge of the seam bands.",
            (Band("caution", "hard edges", 0, 0), Band("best", "soft edges", 1, 16),
             Band("caution", "very wide blending", 17, 64)),
            minimum=0, maximum=64, step=1, group="tiled", modes=_SDUP,
        ),
        # -- infinite zoom (the Inpaint tab's "Infinite zoom"; pipelines/zoom.py, pipelines/engine/zoom.py) --------
        ParamSpec(
            "zoom_factor", "Zoom factor", "float", 0.7,
            "Each keyframe is the previous one shrunk by this factor into the centre, with the new border inpainted. "
            "0.7: the border is about half the frame; lower factors zoom faster but invent more per keyframe.",
            (Band("avoid", "more than three quarters of every keyframe is new: repeats and mush show", 0.25, 0.45),
             Band("caution", "more than half of the frame is inpainted each step: repeats start to show", 0.46, 0.59),
             Band("best", "a border of a third to a half of the frame: coherent and still fast", 0.6, 0.8),
             Band("ok", "slow zoom: many keyframes for a long way", 0.81, 0.9)),
            minimum=0.25, maximum=0.9, step=0.05, infotext_key="Zoom factor", group="zoom", modes=_ZOOM,
        ),
        ParamSpec(
            "zoom_keyframes", "Keyframes", "int", 6,
            "How many keyframes to make, the first included (the input image, or a txt2img result when there is "
            "none). Each later one costs an inpaint pass.",
            (Band("best", "a short zoom to try settings", 2, 8), Band("ok", "a long zoom", 9, 32),
             Band("caution", "very long: small errors add up over many inpaint passes", 33, 100)),
            minimum=2, maximum=100, step=1, infotext_key="Zoom keyframes", group="zoom", modes=_ZOOM,
        ),
        ParamSpec(
            "zoom_overlap", "Overlap", "int", 8,
            "Pixels of the shrunk image's edge that are repainted too, so the new border blends into it.",
            (Band("caution", "no overlap: a visible frame around every keyframe", 0, 1),
             Band("best", "blends the seam", 2, 32), Band("caution", "repaints much of the previous keyframe", 33, 128)),
            minimum=0, maximum=128, step=1, infotext_key="Zoom overlap", group="zoom", modes=_ZOOM,
        ),
        ParamSpec(
            "zoom_mask_blur", "Zoom mask blur", "int", 4,
            "Soft edge (px) of the border mask, where the inpainted border meets the overlap.",
            (Band("caution", "hard edge: visible seams", 0, 0), Band("best", "a soft seam", 1, 16),
             Band("caution", "wide blend: the seam smears", 17, 64)),
            minimum=0, maximum=64, step=1, infotext_key="Zoom mask blur", group="zoom", modes=_ZOOM,
        ),
        ParamSpec(
            "zoom_fill", "Border starts from", "choice", "fill",
            "What the new border starts from before it is inpainted (A1111's masked content): fill (the colours "
            "around it), original (black), latent noise or latent nothing.",
            (Band("best", "the surrounding colours: the border continues the picture", values=("fill",)),
             Band("ok", "noise: more invention, needs border denoising near 1", values=("latent noise",)),
             Band("caution", "black or empty borders: dark frames unless denoising is 1",
                  values=("original", "latent nothing"))),
            choices=lambda: list(MASKED_CONTENT), infotext_key="Zoom fill", group="zoom", modes=_ZOOM,
            extra={"by_index": False},
        ),
        ParamSpec(
            "zoom_denoising", "Border denoising", "float", 1.0,
            "Denoising strength of the border's inpaint pass: 1 paints it from scratch (the border is empty).",
            (Band("avoid", "the empty border stays visible", 0.05, 0.59),
             Band("caution", "traces of the filled border remain", 0.6, 0.84), Band("best", "a new border", 0.85, 1)),
            minimum=0.05, maximum=1, step=0.05, infotext_key="Zoom denoising", group="zoom", modes=_ZOOM,
        ),
        ParamSpec(
            "zoom_frames_per_keyframe", "Frames per keyframe", "int", 24,
            "Video frames between two keyframes (crop-and-scale interpolation at a constant zoom speed): with "
            "the fps, the video's length.",
            (Band("caution", "jumps from keyframe to keyframe", 1, 5), Band("ok", "a fast zoom", 6, 15),
             Band("best", "a smooth zoom", 16, 60), Band("caution", "very slow: the upscaled crops look soft", 61, 240)),
            minimum=1, maximum=240, step=1, group="zoom", modes=_ZOOM,
        ),
        ParamSpec(
            "zoom_fps", "FPS", "int", 24,
            "Frames per second of the video and the GIF (GIFs store 1/100 s per frame: 24 fps plays at ~25).",
            (Band("caution", "choppy", 1, 11), Band("best", "smooth", 12, 30), Band("ok", "very smooth, big files", 31, 60)),
            minimum=1, maximum=60, step=1, group="zoom", modes=_ZOOM,
        ),
        ParamSpec(
            "zoom_direction", "Direction", "choice", ZOOM_DIRECTIONS[0],
            "Zoom out plays the keyframes in the order they were made (the picture widens); zoom in plays the same "
            "frames backwards.",
            (Band("best", "the picture widens", values=ZOOM_DIRECTIONS[:1]),
             Band("best", "dives into the first keyframe", values=ZOOM_DIRECTIONS[1:])),
            choices=lambda: list(ZOOM_DIRECTIONS), group="zoom", modes=_ZOOM, extra={"by_index": False},
        ),
        ParamSpec(
            "zoom_format", "Video format", "choice", ZOOM_FORMATS[0],
            "The video file: MP4 (H.264, plays everywhere) or WebM (VP9, smaller). An animated GIF is written too.",
            (Band("best", "plays everywhere", values=ZOOM_FORMATS[:1]),
             Band("ok", "smaller files; not every player has VP9", values=ZOOM_FORMATS[1:])),
            choices=lambda: list(ZOOM_FORMATS), group="zoom", modes=_ZOOM, extra={"by_index": False},
        ),
    ]
}

TXT2IMG_FIELDS = [n for n, p in PARAMS.items() if "txt2img" in p.modes]
IMG2IMG_FIELDS = [n for n, p in PARAMS.items() if "img2img" in p.modes]
INPAINT_FIELDS = [n for n, p in PARAMS.items() if "inpaint" in p.modes]
EXTRAS_FIELDS = [n for n, p in PARAMS.items() if "extras" in p.modes]
# outpainting: the inpaint fields (mask settings set by outpainting itself) plus its own
OUTPAINT_FIELDS = [*INPAINT_FIELDS, *[n for n, p in PARAMS.items() if "outpaint" in p.modes]]
# the tiled SD upscale: an img2img pass per tile, so the img2img basics plus its own settings
SD_UPSCALE_FIELDS = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "seed", "clip_skip",
                     "denoising_strength", *[n for n, p in PARAMS.items() if "sd_upscale" in p.modes
                                             and n != "denoising_strength"]]
# the infinite zoom: txt2img basics (the prompt may be a schedule "0: forest, 4: castle") plus its own settings
ZOOM_FIELDS = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "seed", "clip_skip",
               "width", "height", "sd_vae", "randn_source", "eta_noise_seed_delta", *SAMPLER_OPTIONS,
               *[n for n, p in PARAMS.items() if "zoom" in p.modes]]


# ----------------------------------------------------------------------------------------------
# Pydantic request models, built from the specs so limits are declared once.


def schedule_rules(schema: dict[str, Any]) -> None:
    """JSON-schema rules for what `samplers.check` refuses: a sampler that takes only some schedule types limits
    `scheduler` (by name or index). `sampler_index` (A1111's old name) counts where `sampler_name` is absent."""
    props = schema.get("properties", {})
    if "sampler_name" not in props or "scheduler" not in props:
        return
    names, schedules = samplers.sampler_names(), samplers.schedule_names()
    rules = []
    for group, allowed in samplers.schedule_limits():
        then = {"properties": {"scheduler": {"enum": [*allowed, *(schedules.index(a) for a in allowed)]}}}
        for field in ("sampler_name", "sampler_index"):
            if field not in props:
                continue
            when: dict[str, Any] = {"properties": {field: {"enum": [*group, *(names.index(g) for g in group)]}},
                                    "required": [field]}
            if field == "sampler_index":
                when["not"] = {"required": ["sampler_name"]}
            rules.append({"if": when, "then": then})
    schema.setdefault("allOf", []).extend(rules)


class _ParamsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=schedule_rules)

    @model_validator(mode="before")
    @classmethod
    def _canonical_sampler(cls, data: Any) -> Any:
        """Accept combined A1111 names ("DPM++ 2M Karras") and aliases; reject unknown ones listing the choices."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, value in data.items():
            spec = PARAMS.get(name)
            if spec is not None and spec.kind == "choice" and not isinstance(value, (str, int, float, type(None))):
                raise ValueError(f"{name}: expected a name, got {type(value).__name__}")  # before any .strip()
            if spec is not None and spec.kind == "choice" and isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON's 5.0 is the integer 5 (an index, as the schema allows)
            if name == "randn_source" and isinstance(value, str):  # A1111 clients send "GPU"; "cpu" is CPU too
                try:
                    value = data[name] = canonical_rng(value) if value.strip() else None
                except ValueError as e:
                    raise ValueError(f"randn_source: {e}") from None
            if spec is not None and spec.kind == "choice" and isinstance(value, (bool, int)) and spec.choices:
                options = spec.choices()
                if not 0 <= int(value) < len(options):
                    raise ValueError(f"{name}: {value} is not one of 0..{len(options) - 1} ({', '.join(options)})")
                data[name] = options[int(value)]
            elif spec is not None and spec.kind == "choice" and spec.choices and not spec.extra.get("open") \
                    and name not in ("sampler_name", "scheduler", "hr_sampler_name") and value is not None \
                    and value not in spec.choices():
                raise ValueError(f"{name}: {value!r} is not one of: {', '.join(spec.choices())}")
        sampler, schedule = samplers.split_name(str(data.get("sampler_name") or PARAMS["sampler_name"].default))
        if data.get("scheduler") in (None, "", "Automatic") and schedule:
            data["scheduler"] = schedule
        data["sampler_name"], data["scheduler"] = samplers.check(sampler, data.get("scheduler") or "Automatic")
        if data.get("hr_sampler_name") == "Use same sampler":  # A1111's value for "the first pass's"
            data["hr_sampler_name"] = ""
        if data.get("hr_sampler_name"):
            data["hr_sampler_name"] = samplers.check(samplers.split_name(str(data["hr_sampler_name"]))[0])[0]
        return data


# Filled from the request's alwayson_scripts.controlnet.args (the API schema documents those), so not published.
_UNITS = (SkipJsonSchema[list[ControlUnit]],
          Field(default_factory=list, description="ControlNet units (multi-ControlNet stacks them)"))

Txt2ImgParams: type[BaseModel] = create_model(
    "Txt2ImgParams",
    __base__=_ParamsBase,
    __doc__="Everything a txt2img job needs besides the model. Field names follow the A1111 API.",
    controlnet=_UNITS,
    **{name: pydantic_field(PARAMS[name]) for name in TXT2IMG_FIELDS},
)


Img2ImgParams: type[BaseModel] = create_model(
    "Img2ImgParams",
    __base__=_ParamsBase,
    __doc__="An img2img or inpaint job besides the model and images (inpaint fields apply when a mask is given).",
    controlnet=_UNITS,
    **{name: pydantic_field(PARAMS[name]) for name in INPAINT_FIELDS},
)


OutpaintParams: type[BaseModel] = create_model(
    "OutpaintParams",
    __base__=_ParamsBase,
    __doc__="Outpainting: extend an image by left/right/up/down px through inpaint passes (mask settings other "
            "than mask blur are set by outpainting).",
    controlnet=_UNITS,
    **{name: pydantic_field(PARAMS[name]) for name in OUTPAINT_FIELDS},
)


ExtrasParams: type[BaseModel] = create_model(
    "ExtrasParams", __base__=BaseModel, __doc__="The Upscale tab's plain upscale (A1111 'extras').",
    **{name: pydantic_field(PARAMS[name]) for name in EXTRAS_FIELDS},
)

SdUpscaleParams: type[BaseModel] = create_model(
    "SdUpscaleParams", __base__=_ParamsBase, __doc__="The Upscale tab's tiled SD upscale.",
    **{name: pydantic_field(PARAMS[name]) for name in SD_UPSCALE_FIELDS},
)

ZoomParams: type[BaseModel] = create_model(
    "ZoomParams", __base__=_ParamsBase, __doc__="The infinite zoom: keyframes by outpainting, played as a video.",
    **{name: pydantic_field(PARAMS[name]) for name in ZOOM_FIELDS},
)


def defaults(mode: str = "txt2img") -> dict[str, Any]:
    return {n: p.default for n, p in PARAMS.items() if mode in p.modes}
