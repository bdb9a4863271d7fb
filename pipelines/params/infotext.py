"""The A1111 "parameters" text (infotext): build it for saved images and parse any A1111-style text.

Format (one line per part, the negative line only when non-empty)::

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, ...

Keys of generation parameters come from `PARAMS[...].infotext_key`, so the names live in one place.
Values holding a comma, colon, quote or newline are written JSON-quoted, as A1111 does.
Pure Python, no torch.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from pipelines.params import samplers
from pipelines.params.specs import PARAMS, RNG_SOURCES

VERSION = "studio-0.1"
NEGATIVE_PREFIX = f"{PARAMS['negative_prompt'].infotext_key}:"

# "Key: value" pairs of the last line; a value is either JSON-quoted or runs up to the next comma (A1111's regex).
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")

# Parameters written in this order (before Size/Model go their own keys); the rest follow.
_HEAD = ("steps", "sampler_name", "scheduler", "cfg_scale")
# written above only under their own conditions (or not as Key: value at all)
_CONDITIONAL = frozenset({"prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "clip_skip",
                          "sd_vae",  # the VAE: written by the engine as "VAE hash" / "VAE" when not the model's own
                          "randn_source", "eta_noise_seed_delta",  # as A1111: RNG unless GPU, ENSD where it counts
                          # A1111's sampler options: Eta / Eta DDIM off their defaults, SGM / discard where applied
                          "eta", "sgm_noise_multiplier", "always_discard_next_to_last_sigma"})
ETA_DDIM_KEY = samplers.ETA_DDIM[1]
# What an A1111 infotext without "RNG" was made with: A1111's default GPU noise, almost always on an NVIDIA card,
# which NV reproduces on any hardware. Our own images write RNG unless made with GPU noise (as A1111 does).
ABSENT_RNG = "NV"


def uses_ensd(sampler: Any, eta: Any = None) -> bool:
    """Whether A1111 reseeds this sampler's step noise with ENSD ("uses_ensd": Euler a, DPM2 a, DPM++ 2S a) at this
    eta (None: the sampler's default): not at eta 0, which draws no step noise (is_sampler_using_eta_noise_seed_delta)."""
    name = samplers.split_name(str(sampler or ""))[0]
    return samplers.uses_ensd(name) and effective_eta(name, eta) != 0


def effective_eta(sampler: Any, eta: Any = None) -> float:
    """The eta a sampler runs with: the given one, else A1111's default for its kind (1 k-diffusion, 0 DDIM)."""
    name = samplers.split_name(str(sampler or ""))[0]
    return float(eta) if eta not in (None, "") else samplers.eta_kind(name)[2]


def sampler_infotext(values: Mapping[str, Any]) -> dict[str, Any]:
    """The infotext fields of A1111's sampler options, where A1111 writes them: `Eta` (k-diffusion samplers whose
    function takes eta, when not 1) / `Eta DDIM` (DDIM, when not 0), `SGM noise multiplier: True` (on, for a
    k-diffusion sampler), `Discard penultimate sigma: True` (the option forced it on a sampler that does not discard
    by itself)."""
    out: dict[str, Any] = {}
    name = samplers.split_name(str(values.get("sampler_name") or ""))[0]
    try:
        spec = samplers.spec(name)
    except ValueError:
        return out
    _, key, default = samplers.eta_kind(name)
    eta = values.get("eta")
    if spec.takes_eta and eta not in (None, "") and float(eta) != default:
        out[key] = float(eta)
    k_diffusion = spec.a1111 is not None and samplers.eta_kind(name) == samplers.ETA_ANCESTRAL
    if values.get("sgm_noise_multiplier") and k_diffusion:
        out[PARAMS["sgm_noise_multiplier"].infotext_key or ""] = True
    if values.get("always_discard_next_to_last_sigma") and spec.a1111 is not None and not spec.discard_penultimate:
        out[PARAMS["always_discard_next_to_last_sigma"].infotext_key or ""] = True
    return out


_AFTER_MODEL = ("VAE hash", "VAE")  # extras A1111 writes right after "Model"


def _fmt(value: Any) -> str:
    """Numbers without a trailing .0 (7, 7.5); everything else as str."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quote(value: Any) -> str:
    """A1111 quoting: JSON-quote a value that would otherwise break the `Key: value, ...` line."""
    text = _fmt(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return str(json.loads(text))
        except ValueError:
            return text
    return text


def build_infotext(
    values: Mapping[str, Any],
    *,
    seed: int,
    subseed: int | None = None,
    model_name: str | None,
    model_hash: str | None,
    extra: Mapping[str, Any] | None = None,
    version: str | None = VERSION,
) -> str:
    """The A1111 parameters text of one image. `values` uses our (A1111 API) field names."""
    key = {name: spec.infotext_key for name, spec in PARAMS.items()}
    fields: dict[str, Any] = {}
    for name in _HEAD:
        if values.get(name) not in (None, ""):
            fields[key[name]] = values[name]
    fields[key["seed"]] = seed
    if values.get("width") and values.get("height"):
        fields["Size"] = f"{int(values['width'])}x{int(values['height'])}"
    if model_hash:
        fields["Model hash"] = model_hash
    if model_name:
        fields["Model"] = model_name
    for k in _AFTER_MODEL:
        if (extra or {}).get(k) is not None:
            fields[k] = extra[k]
    strength = float(values.get("subseed_strength") or 0)
    if strength > 0 and subseed is not None:
        fields[key["subseed"]] = subseed
        fields[key["subseed_strength"]] = strength
    if int(values.get("clip_skip") or 1) > 1:
        fields[key["clip_skip"]] = int(values["clip_skip"])
    if values.get("denoising_strength") is not None:
        fields[key["denoising_strength"]] = values["denoising_strength"]
    ensd = values.get("eta_noise_seed_delta")
    if ensd not in (None, "") and int(ensd) != 0 and uses_ensd(values.get("sampler_name"), values.get("eta")):
        fields[key["eta_noise_seed_delta"]] = int(ensd)
    fields.update(sampler_infotext(values))
    source = str(values.get("randn_source") or "").upper()
    if source and source != "GPU":  # A1111 writes RNG only when it is not its default GPU
        fields[key["randn_source"]] = source
    for name, spec in PARAMS.items():  # every other keyed parameter the job has (inpaint settings...)
        if spec.infotext_key and name not in _CONDITIONAL and spec.infotext_key not in fields \
                and values.get(name) not in (None, ""):
            fields[spec.infotext_key] = values[name]
    fields.update({k: v for k, v in (extra or {}).items() if v is not None})
    if version:
        fields.setdefault("Version", version)

    text = str(values.get("prompt") or "")
    negative = str(values.get("negative_prompt") or "")
    if negative:
        text += f"\n{NEGATIVE_PREFIX} {negative}"
    return text + "\n" + ", ".join(f"{k}: {quote(v)}" for k, v in fields.items())


def _convert(kind: str, raw: str) -> Any:
    if kind == "int":
        number = float(raw)
        if not number.is_integer():
            raise ValueError(raw)
        return int(number)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        if raw.strip().lower() not in ("true", "false"):
            raise ValueError(raw)
        return raw.strip().lower() == "true"
    return raw


def _split_params(line: str) -> list[tuple[str, str]]:
    return [(k, unquote(v.strip())) for k, v in _PARAM_RE.findall(line)]


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse A1111-style parameters text into our field names; unknown keys go under "extra".

    Never raises: text that is not infotext comes back as {"prompt": text}.
    """
    if not isinstance(text, str):
        return {"prompt": "" if text is None else str(text)}
    try:
        return _parse(text)
    except Exception:  # robustness: infotext comes from arbitrary files
        return {"prompt": text}


def _parse(text: str) -> dict[str, Any]:
    lines = text.replace("\r\n", "\n").rstrip().split("\n")
    last = lines[-1]
    pairs = _split_params(last)
    if len(pairs) >= 3 or (pairs and last.lstrip().startswith(f"{PARAMS['steps'].infotext_key}:")):
        lines = lines[:-1]
    else:
        pairs = []

    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        if negative is None and line.startswith(NEGATIVE_PREFIX):
            rest = line[len(NEGATIVE_PREFIX):]
            negative = [rest[1:] if rest.startswith(" ") else rest]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    if not pairs and negative is None:
        return {"prompt": text}

    res: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative or [])}
    by_key = {spec.infotext_key: name for name, spec in PARAMS.items() if spec.infotext_key}
    extra: dict[str, str] = {}
    for k, v in pairs:
        name = by_key.get(k)
        size = _SIZE_RE.match(v) if k in ("Size", "Hires resize") else None
        if size and k == "Size":
            res["width"], res["height"] = int(size.group(1)), int(size.group(2))
        elif size:
            res["hr_resize_x"], res["hr_resize_y"] = int(size.group(1)), int(size.group(2))
        elif name and name != "negative_prompt":
            try:
                res[name] = _convert(PARAMS[name].kind, v)
            except ValueError:
                extra[k] = v
        else:
            extra[k] = v
    if "Model" in extra:
        res["model_name"] = extra["Model"]
    if "Model hash" in extra:
        res["model_hash"] = extra["Model hash"]

    if "randn_source" in res:
        source = str(res["randn_source"]).strip().upper()
        if source in RNG_SOURCES:
            res["randn_source"] = source
        else:
            extra[PARAMS["randn_source"].infotext_key or "RNG"] = res.pop("randn_source")
    if pairs and "randn_source" not in res and "RNG" not in extra \
            and not str(extra.get("Version", "")).startswith("studio-"):
        # A1111 writes no RNG for its default GPU noise (on NVIDIA, almost always): NV reproduces it anywhere.
        # Ours without RNG: GPU noise, or made before RNG was written (CPU): the randn_source option decides.
        res["randn_source"] = ABSENT_RNG
    if pairs and "eta_noise_seed_delta" not in res:
        res["eta_noise_seed_delta"] = 0  # not written: 0, or a sampler it does not touch
    if ETA_DDIM_KEY in extra and "eta" not in res:
        try:
            res["eta"] = float(extra[ETA_DDIM_KEY])
            del extra[ETA_DDIM_KEY]
        except ValueError:
            pass
    sampler = samplers.split_name(str(res.get("sampler_name") or ""))[0]
    if pairs and "eta" not in res and samplers.takes_eta(sampler):
        res["eta"] = samplers.eta_kind(sampler)[2]  # A1111 writes Eta / Eta DDIM only off its default (1 / 0)
    for name in ("sgm_noise_multiplier", "always_discard_next_to_last_sigma"):
        if pairs and name not in res:
            res[name] = False  # A1111 writes them only when on

    if any(k.startswith("Hires ") for k, _ in pairs):
        res["enable_hr"] = True
    if "sampler_name" in res:
        sampler, schedule = samplers.split_name(res["sampler_name"])
        res["sampler_name"] = sampler
        if res.get("scheduler") in (None, "", "Automatic") and schedule:
            res["scheduler"] = schedule
        res.setdefault("scheduler", "Automatic")
    res["extra"] = extra
    return res
