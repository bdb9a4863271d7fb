"""The one object the UI and the REST API talk to: models, options, validation, job submission.

It never touches the device itself: generation runs in jobs on the runner's worker thread, through the
`Engine` that app.py built. Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from pipelines import discovery, first_run, imageops, outputs
from pipelines.advisor import rules as advisor
from pipelines.advisor.prompt_builder import StyleStore
from pipelines.advisor.prompt_rules import clip_token_counter
from pipelines.control_service import ControlError, ControlNets
from pipelines.discovery import CheckpointInfo
from pipelines.errors import BadRequest
from pipelines.hub import HubSizes
from pipelines.jobs import Job, JobRunner
from pipelines.networks import listing, tags
from pipelines.networks.embeddings import Embeddings
from pipelines.networks.loras import LoraInfo, LoraLibrary, incompatibility
from pipelines.networks.vaes import VaeFile, VaeLibrary
from pipelines.params import reproduce, samplers
from pipelines.params.specs import (
    LATENT_UPSCALERS,
    PARAMS,
    SAMPLER_OPTIONS,
    ExtrasParams,
    HintContext,
    Img2ImgParams,
    OutpaintParams,
    SdUpscaleParams,
    Txt2ImgParams,
    ZoomParams,
    resolve_seed,
)
from pipelines.settings import Settings, canonical_rng

# A1111's sampler options and their defaults (GET/POST /sdapi/v1/options; the request fields eta,
# sgm_noise_multiplier and always_discard_next_to_last_sigma take them when empty)
SAMPLER_OPTION_DEFAULTS: dict[str, Any] = {"eta_ancestral": 1.0, "eta_ddim": 0.0, "sgm_noise_multiplier": False,
                                           "always_discard_next_to_last_sigma": False}

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine

log = logging.getLogger("studio")


MAX_INPUT_PIXELS = 4096 * 4096  # uploads beyond this are refused with a message, not processed
MAX_ZOOM_PIXELS = 2**30  # frames x width x height of an infinite zoom's video (about 3 GB of RGB frames)


def describe_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class _Sized:
    """What `_check_size` reads of a request without a batch (the zoom: one image at a time)."""

    width: int | None
    height: int | None
    batch_size: int = 1


class Studio:
    def __init__(self, settings: Settings, runner: JobRunner, engine: "Engine | Sequence[Engine]", *,
                 hardware: str = "", loras: LoraLibrary | None = None, embeddings: Embeddings | None = None,
                 vaes: VaeLibrary | None = None, machine: first_run.Machine | None = None):
        self.settings = settings
        # the hardware facts (app.py): the hub model that suits it is offered, and chosen while nothing is local
        self.machine = machine
        self.hub_sizes = HubSizes(settings.hub_endpoint)  # download sizes of hub ids, asked once each
        # the VAE files sd_vae may name (app.py gives the engine the same listing)
        self.vaes = vaes if vaes is not None else VaeLibrary(settings.folders, settings.cache_dir / "hashes.json")
        # textual-inversion embeddings: the listing the engine reads vectors from (app.py gives the same one to both)
        self.textual_inversion = embeddings if embeddings is not None else Embeddings(
            settings.folders.embeddings, settings.cache_dir / "hashes.json")
        # the LoRA / LyCORIS listing the engine applies from (app.py builds one and gives it to both)
        self.loras = loras if loras is not None else LoraLibrary(settings.folders.lora, settings.cache_dir / "hashes.json")
        self.runner = runner
        # one engine per device worker (runner.workers[i] runs its jobs on engines[i]); the first answers questions
        # about "the" device (precision, memory mode) outside jobs
        self.engines: list["Engine"] = list(engine) if isinstance(engine, (list, tuple)) else [engine]
        self.engine = self.engines[0]
        self.hardware = hardware
        self.controlnet = ControlNets(settings.models_dir, settings.controlnet_hub, runner, self.on,
                                      root=settings.controlnet_dir,
                                      hub_endpoint=settings.hub_endpoint)
        self.styles = StyleStore(settings.styles_file)  # saved prompt styles (styles.csv)
        self._lock = threading.RLock()
        self._models: list[CheckpointInfo] = []
        self._current: str | None = None
        self._chosen = False  # the current model was asked for (--ckpt, a switch), not picked by refresh_models
        self._count_tokens: Callable[[str], int] | None = None  # the advisor's CLIP token counter, on first use
        self._context_widths: dict[tuple[Any, ...], int | None] = {}  # per checkpoint file: a .ckpt is slow to read
        self._options: dict[str, Any] = {"CLIP_stop_at_last_layers": 1, "samples_format": "png",
                                          "outdir_samples": str(settings.outputs_dir), "sd_vae": "Automatic",
                                          # A1111's noise options: the source of jobs that name none (--rng), ENSD
                                          "randn_source": canonical_rng(settings.rng), "eta_noise_seed_delta": 0,
                                          # A1111's sampler options (eta of k-diffusion / DDIM samplers, SGM, discard)
                                          **SAMPLER_OPTION_DEFAULTS}
        self.refresh_models()
        if settings.ckpt:
            self._current, self._chosen = self.find_model(settings.ckpt).name, True

    # -- models ----------------------------------------------------------------------------------
    def hub_ids(self) -> tuple[str, ...]:
        """The hub ids listed: --hub-model's (or the defaults), plus the one that suits this machine."""
        recommended = (self.machine.recommended,) if self.machine is not None else ()
        return tuple(dict.fromkeys((*self.settings.hub_models, *recommended)))

    def refresh_models(self) -> list[CheckpointInfo]:
        found = discovery.scan(self.settings.models_dir, self.hub_ids(), root=self.settings.checkpoints_dir)
        with self._lock:
            self._models = found
            current = next((m for m in found if m.name == self._current), None)
            # a hub model picked on the first run gives way to a checkpoint put into the folder since
            first_run_pick = current is not None and current.source == "hub" and current.path is None and not self._chosen
            if current is None or first_run_pick:
                # a local checkpoint; else a hub model already downloaded; else the one that suits this machine
                local = [m for m in found if m.source != "hub" and not m.error]
                cached = [m for m in found if m.source == "hub" and m.path is not None and not m.error]
                recommended = [m for m in found if self.machine is not None and m.name == self.machine.recommended]
                pool = local or cached or recommended or found
                self._current = pool[0].name if pool else None
        log.info("%d checkpoints (%d local)", len(found), sum(m.source != "hub" for m in found))
        self.loras.refresh()  # the refresh button re-scans the other model folders too
        self.vaes.refresh()
        return found

    def models(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._models)

    def find_model(self, name: str) -> CheckpointInfo:
        """Accept a listed name, an A1111 title "name [hash]", a file stem or a short hash."""
        name = (name or "").strip()
        bare = name.split(" [")[0]
        for m in self.models():
            if name in (m.name, m.title) or bare in (m.name, m.model_name) or (m.short_hash and bare == m.short_hash):
                return m
        listed = ", ".join(m.name for m in self.models()) or "none"
        raise BadRequest(f"Unknown model '{name}'. Available: {listed}. Put checkpoints into "
                         f"{self.settings.checkpoints_dir} and refresh.")

    def current_model(self) -> CheckpointInfo:
        with self._lock:
            current = self._current
        if current is None:
            raise BadRequest(f"No checkpoint found. Put a .safetensors/.ckpt file or a diffusers folder into "
                             f"{self.settings.checkpoints_dir} and press refresh.")
        return self.find_model(current)

    def on(self, ctx: Any) -> "Engine":
        """The engine of the device worker running the job of `ctx`."""
        return self.engines[getattr(ctx, "worker", 0)]

    def holds(self, worker: int, info: Any) -> bool:
        """The job queue's affinity test: worker `worker`'s cache already holds checkpoint `info`."""
        return isinstance(info, CheckpointInfo) and self.engines[worker].holds(info)

    def select_model(self, name: str, owner: str | None = None) -> Job:
        """Load `name` in the background; it becomes the current model once loaded (a failed load keeps the
        previous one, as A1111 does). The returned job ends when the switch is done."""
        info = self.find_model(name)
        if info.error:
            raise BadRequest(f"{info.name} cannot be used: {info.error}")

        def switch(ctx: Any) -> str:
            self.on(ctx).warm(ctx, info)
            with self._lock:
                self._current, self._chosen = info.name, True
            return info.name

        return self.runner.submit(switch, kind="load-model", owner=owner)

    def usable_model(self, name: str | None = None) -> CheckpointInfo:
        """The named model (default: the current one); BadRequest when it is unknown or cannot be loaded."""
        info = self.find_model(name) if name else self.current_model()
        if info.error:
            raise BadRequest(f"{info.name} cannot be used: {info.error}")
        if info.source == "hub" and self.settings.hub_endpoint is None and not self.downloaded(info):
            raise BadRequest(first_run.offline_text(info.name, self.checkpoints_folder()))
        return info

    # -- first run: a hub model not downloaded yet ---------------------------------------------------
    def checkpoints_folder(self) -> str:
        """Where checkpoints go (models/Stable-diffusion, or --ckpt-dir), as an absolute path to show."""
        return str(Path(self.settings.checkpoints_dir).absolute())

    @staticmethod
    def downloaded(info: CheckpointInfo) -> bool:
        """A local file or folder, or a hub id whose snapshot is in the Hugging Face cache (one fetched since the
        list was made included)."""
        if info.source != "hub" or info.path is not None:
            return True
        return discovery.hub_cached_folder(info.hub_id or info.name) is not None

    def first_run(self, name: str | None = None) -> dict[str, Any]:
        """What a first Generate with `name` (default: the current model) involves: for a hub id not downloaded
        yet, how much will be downloaded (the files the loader selects, sizes from the Hub, asked once), or,
        offline, where to put a checkpoint instead. `notice` is the sentence the UI shows ("" when there is
        nothing to say). `GET /studio/v1/first-run` answers this."""
        folder = self.checkpoints_folder()
        models = self.models()
        answer: dict[str, Any] = {
            "model": None, "source": None, "downloaded": None, "offline": self.settings.hub_endpoint is None,
            "checkpoints_dir": folder, "accepted": [".safetensors", ".ckpt", "diffusers folder (with model_index.json)"],
            "local_checkpoints": sum(m.source != "hub" for m in models),
            "recommended": self.machine.recommended if self.machine is not None else None,
            "machine": dataclasses.asdict(self.machine) if self.machine is not None else None,
            "download": None, "notice": "",
        }
        if name:
            info = self.find_model(name)
        else:
            try:
                info = self.current_model()
            except BadRequest:  # nothing listed at all (no local checkpoint, no hub id)
                answer["notice"] = first_run.no_model_text(folder)
                return answer
        answer.update(model=info.name, source=info.source, downloaded=self.downloaded(info))
        if answer["downloaded"] or info.error:
            return answer
        if answer["offline"]:
            answer["notice"] = first_run.offline_text(info.name, folder)
            return answer
        size = self.hub_sizes.size(info.hub_id or info.name, fp16=self.machine.fp16 if self.machine else False)
        answer["download"] = size.to_dict()
        answer["notice"] = first_run.download_text(info.name, size.text, size.error)
        return answer

    def hint_context(self, info: CheckpointInfo | None = None) -> HintContext:
        try:
            info = info or self.current_model()
        except BadRequest:
            return HintContext()
        family = info.family if info.family != "unknown" else "sd15"
        half = str(getattr(getattr(self.engine, "hw", None), "dtype", "")) == "torch.float16"
        return HintContext(family=family, native=info.native or 512, distilled=info.distilled, half=half,
                           vaes=tuple(v.name for v in self.vaes.list()), workers=len(self.engines))

    # -- VAEs (A1111's sd_vae) ------------------------------------------------------------------------
    def vae_list(self, refresh: bool = False) -> list[VaeFile]:
        return self.vaes.refresh() if refresh else self.vaes.list()

    def vae_names(self) -> list[str]:
        """What sd_vae may be: Automatic, None and every listed VAE."""
        return self.vaes.names()

    def check_vae(self, name: Any) -> str:
        """A sd_vae value's canonical spelling; BadRequest naming the available VAEs for one not listed."""
        try:
            return self.vaes.check(name)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def vae_option(self) -> str:
        """The sd_vae option: the VAE of jobs that name none (the UI's VAE dropdown sets it)."""
        with self._lock:
            return str(self._options.get("sd_vae") or "Automatic")

    def job_vae(self, params: BaseModel) -> BaseModel:
        """The request with its VAE settled before it is queued: none given is the sd_vae option (as it is now),
        a name is checked against the list (BadRequest naming the available ones). The engine picks the file."""
        if "sd_vae" not in type(params).model_fields:
            return params
        given = params.sd_vae
        name = self.check_vae(given if given not in (None, "") else self.vae_option())
        return params if name == given else params.model_copy(update={"sd_vae": name})

    # -- the noise (A1111's randn_source and eta_noise_seed_delta) -------------------------------------------
    @staticmethod
    def check_noise_options(values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` with randn_source in its canonical spelling (CPU, GPU, NV; case-insensitive) and
        eta_noise_seed_delta an int in 0..2**32-1, where present (null: left out, the option unchanged); BadRequest
        naming the choices or the limits."""
        out = {k: v for k, v in values.items()
               if not (k in ("randn_source", "eta_noise_seed_delta", *SAMPLER_OPTION_DEFAULTS)
                       and v in (None, ""))}  # null: unchanged
        if "randn_source" in out:
            try:
                out["randn_source"] = canonical_rng(str(out["randn_source"]))
            except ValueError as e:
                raise BadRequest(f"randn_source: {e}") from None
        if "eta_noise_seed_delta" in out:
            v = out["eta_noise_seed_delta"]
            spec = PARAMS["eta_noise_seed_delta"]
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, str) and v.strip().isdigit():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int) or not spec.minimum <= v <= spec.maximum:
                raise BadRequest(f"eta_noise_seed_delta: expected an integer from {int(spec.minimum)} to "
                                 f"{int(spec.maximum)}, got {v!r}")
            out["eta_noise_seed_delta"] = v
        for name in ("eta_ancestral", "eta_ddim"):  # floats 0..1 (the eta parameter's limits)
            if name in out:
                v, spec = out[name], PARAMS["eta"]
                if isinstance(v, str):
                    try:
                        v = float(v)
                    except ValueError:
                        pass
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not spec.minimum <= v <= spec.maximum:
                    raise BadRequest(f"{name}: expected a number from {spec.minimum:g} to {spec.maximum:g}, got {v!r}")
                out[name] = float(v)
        for name in ("sgm_noise_multiplier", "always_discard_next_to_last_sigma"):
            if name in out:
                v = out[name]
                if isinstance(v, str) and v.strip().lower() in ("true", "false"):
                    v = v.strip().lower() == "true"
                if not isinstance(v, bool):
                    raise BadRequest(f"{name}: expected true or false, got {v!r}")
                out[name] = v
        return out

    def noise_options(self) -> tuple[str, int]:
        """The randn_source and eta_noise_seed_delta options: what jobs that name none get."""
        with self._lock:
            return (str(self._options.get("randn_source") or canonical_rng(self.settings.rng)),
                    int(self._options.get("eta_noise_seed_delta") or 0))

    def job_noise(self, params: BaseModel) -> BaseModel:
        """The request with its noise settled before it is queued: randn_source / eta_noise_seed_delta not given
        are the options' values (as they are now), so the engine always sees "CPU"/"GPU"/"NV" and an int."""
        fields = type(params).model_fields
        source, ensd = self.noise_options()
        update = {}
        if "randn_source" in fields and params.randn_source in (None, ""):
            update["randn_source"] = source
        if "eta_noise_seed_delta" in fields and params.eta_noise_seed_delta is None:
            update["eta_noise_seed_delta"] = ensd
        update.update(self.sampler_option_values(params.model_dump(include=set(SAMPLER_OPTIONS) | {"sampler_name"})))
        return params.model_copy(update=update) if update else params

    def sampler_option_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A1111's sampler options for the fields `values` leaves empty: eta from eta_ancestral or eta_ddim (by the
        sampler's kind), sgm_noise_multiplier and always_discard_next_to_last_sigma from their options."""
        with self._lock:
            opts = {k: self._options.get(k, v) for k, v in SAMPLER_OPTION_DEFAULTS.items()}
        out: dict[str, Any] = {}
        if "eta" in values and values["eta"] in (None, ""):
            out["eta"] = float(opts[samplers.eta_option(str(values.get("sampler_name") or ""))])
        for name in ("sgm_noise_multiplier", "always_discard_next_to_last_sigma"):
            if name in values and values[name] in (None, ""):
                out[name] = bool(opts[name])
        return out

    def job_options(self, params: BaseModel) -> BaseModel:
        """The request's VAE and noise settled from the options before it is queued (`job_vae`, `job_noise`)."""
        return self.job_noise(self.job_vae(params))

    # -- textual-inversion embeddings -----------------------------------------------------------------
    def embeddings(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's `GET /sdapi/v1/embeddings` for the current checkpoint: "loaded" (usable with its text encoders)
        and "skipped" (each with the reason). Without a checkpoint every readable one counts as loaded."""
        try:
            dims = self.textual_inversion.te_dims(self.current_model())
        except BadRequest:
            dims = None
        return self.textual_inversion.split(dims)

    def refresh_embeddings(self) -> None:
        self.textual_inversion.refresh()

    # -- LoRA / LyCORIS ---------------------------------------------------------------------------
    def lora_list(self, refresh: bool = False) -> list[LoraInfo]:
        return self.loras.refresh() if refresh else self.loras.list()

    def check_loras(self, params: BaseModel, info: CheckpointInfo) -> None:
        """Every `<lora:...>` tag of the request's prompts names a listed file made for this checkpoint's family;
        BadRequest naming the tag otherwise (checked before the job is queued)."""
        prompts = [getattr(params, "prompt", "")]
        if getattr(params, "enable_hr", False):
            prompts.append(getattr(params, "hr_prompt", ""))
        context = None
        for prompt in prompts:
            for tag in tags.parse(prompt or "").loras:
                lora = self.loras.find(tag.name)
                if lora is None:
                    listed = ", ".join(i.name for i in self.loras.list()[:20]) or "none"
                    raise BadRequest(f"Unknown LoRA '{tag.name}' in {tag.text}. Listed: {listed}. Put LoRA files "
                                     f"into {self.settings.folders.lora[0]} and refresh.")
                if lora.error:
                    raise BadRequest(f"LoRA '{tag.name}' cannot be used: {lora.error}")
                context = context if context is not None else self.context_width(info)
                if why := incompatibility(lora, info.family, context):
                    raise BadRequest(f"LoRA '{tag.name}' does not fit {info.name}: {why}.")

    def context_width(self, info: CheckpointInfo) -> int | None:
        """`discovery.context_width`, remembered per checkpoint file (size and mtime)."""
        key: tuple[Any, ...] = (info.name, info.family, str(info.path))
        try:
            if info.path is not None:
                st = info.path.stat()
                key += (st.st_size, st.st_mtime_ns)
        except OSError:
            pass
        with self._lock:
            if key in self._context_widths:
                return self._context_widths[key]
        width = discovery.context_width(info)
        with self._lock:
            self._context_widths[key] = width
        return width

    # -- the Networks panel and the advisor: everything listed, judged against a checkpoint --------------------
    def networks(self, model: str | None = None, *, checkpoints: bool = True) -> listing.Networks:
        """The LoRAs, embeddings and checkpoints listed (`checkpoints=False`: not those, which the advisor does not
        need), each with why it does not fit `model` (default: the current checkpoint; an unknown name or no
        checkpoint at all: nothing is judged)."""
        try:
            info: CheckpointInfo | None = self.find_model(model) if model else self.current_model()
        except BadRequest:
            info = None
        context = self.context_width(info) if info is not None else None
        te_dims = self.textual_inversion.te_dims(info) if info is not None else None
        return listing.describe(info, self.loras.list(), context, self.textual_inversion.list(), te_dims,
                                self.models() if checkpoints else [], self.settings.folders.lora[0])

    # -- advice ----------------------------------------------------------------------------------
    def advise(self, values: Mapping[str, Any], mode: str = "txt2img", model: str | None = None) -> tuple[
            HintContext, list[advisor.Finding]]:
        """The advisor's findings for these settings on `model` (default: the current one): what the UI lists
        beside the fields and `POST /advisor/check` answers."""
        if mode not in advisor.MODES:
            raise BadRequest(f"mode: {mode!r} is not one of {', '.join(advisor.MODES)}")
        info = self.find_model(model) if model else None
        ctx = dataclasses.replace(self.hint_context(info), mode=mode,
                                  networks=self.networks(model, checkpoints=False))
        if values.get("sd_vae") in (None, ""):  # the VAE the job would get: the sd_vae option
            values = {**values, "sd_vae": self.vae_option()}
        source, ensd = self.noise_options()
        if values.get("randn_source") in (None, ""):  # the noise the job would get: the options
            values = {**values, "randn_source": source}
        if values.get("eta_noise_seed_delta") in (None, ""):
            values = {**values, "eta_noise_seed_delta": ensd}
        values = {**values, **self.sampler_option_values({n: values.get(n) for n in (*SAMPLER_OPTIONS, "sampler_name")})}
        return ctx, advisor.check(values, ctx, self.count_tokens)

    def count_tokens(self, text: str) -> int:
        """CLIP tokens of a prompt without its emphasis syntax (the shipped tokenizer, loaded on first use)."""
        with self._lock:
            if self._count_tokens is None:
                self._count_tokens = clip_token_counter()
            count = self._count_tokens
        return count(text)

    # -- generation ------------------------------------------------------------------------------
    @staticmethod
    def validate(model: type[BaseModel], data: Mapping[str, Any]) -> BaseModel:
        """Validate `data` against a parameter model; BadRequest with a readable reason naming the field."""
        try:
            return model.model_validate(dict(data))
        except ValidationError as e:
            raise BadRequest(describe_validation(e)) from None
        except ValueError as e:  # sampler / schedule checks
            raise BadRequest(str(e)) from None

    @staticmethod
    def parse_txt2img(data: Mapping[str, Any]) -> BaseModel:
        return Studio.validate(Txt2ImgParams, data)

    @staticmethod
    def parse_img2img(data: Mapping[str, Any]) -> BaseModel:
        return Studio.validate(Img2ImgParams, data)

    @staticmethod
    def parse_extras(data: Mapping[str, Any]) -> BaseModel:
        return Studio.validate(ExtrasParams, data)

    @staticmethod
    def parse_sd_upscale(data: Mapping[str, Any]) -> BaseModel:
        return Studio.validate(SdUpscaleParams, data)

    def submit_txt2img(self, params: BaseModel | Mapping[str, Any], *, model: str | None = None,
                       owner: str | None = None) -> Job:
        if not isinstance(params, BaseModel):
            params = self.parse_txt2img(params)
        info = self.usable_model(model)
        self._check_size(params, info)
        self.check_loras(params, info)
        params = self.job_options(params)
        if params.enable_hr and params.hr_upscaler not in LATENT_UPSCALERS:
            self._check_upscaler(params.hr_upscaler)
        controls = self._controls(params, info, has_input=False)
        if len(self.engines) > 1 and params.n_iter > 1:
            return self.runner.submit(self._spread_batches(params, info, controls), kind="txt2img", owner=owner,
                                      affinity=info)
        return self.runner.submit(lambda ctx: self.on(ctx).txt2img(ctx, params, info, controls), kind="txt2img",
                                  owner=owner, affinity=info)

    def _spread_batches(self, params: BaseModel, info: CheckpointInfo, controls: Any) -> Callable[[Any], Any]:
        """A job whose batches (batch count) run on every idle device worker at once: one txt2img per batch with
        that batch's seeds, merged in order. Each image is the one a single worker makes for its seed (its noise
        comes from its own seed alone)."""
        seed, subseed = resolve_seed(params.seed), resolve_seed(params.subseed)
        size = params.batch_size
        parts = [params.model_copy(update={"n_iter": 1, "seed": seed + i * size, "subseed": subseed + i * size})
                 for i in range(params.n_iter)]

        def run(ctx: Any) -> Any:
            results = ctx.spread([lambda c, p=p: self.on(c).txt2img(c, p, info, controls) for p in parts])
            merged = type(results[0]).merge(results)
            merged.parameters["n_iter"] = params.n_iter  # the job's, not its first batch's
            return merged

        return run

    # -- sweeps: the X/Y/Z plot (pipelines/sweep/plan.py plans, pipelines/sweep/run.py runs) -------------------------
    def sweep_lists(self) -> dict[str, Any]:
        """The choice lists a sweep axis may need beyond the specs' own (read only when that axis is used)."""
        return {"checkpoint": lambda: [m.name for m in self.models() if not m.error],
                "hr_upscaler": lambda: [*LATENT_UPSCALERS, *self.upscaler_names()[1:]], "vae": self.vae_names}

    def sweep_choices(self, axis: str) -> list[str]:
        """Every value of a choice axis (sampler, checkpoint...); [] for other axes."""
        from pipelines.sweep import plan as sweep

        try:
            return sweep.choices_of(sweep.axis_type(axis), self.sweep_lists())
        except ValueError:
            return []

    def plan_sweep(self, params: BaseModel | Mapping[str, Any], axes: Any, *, model: str | None = None,
                   options: Any = None, fix_seeds: bool = False) -> Any:
        """The SweepPlan (cells and cost) of txt2img `params` swept along `axes` ((type, values) pairs or
        {"type", "values"} dicts, X first), every cell checked; BadRequest naming the axis, value or cell."""

        from pipelines.sweep import plan as sweep

        if not isinstance(params, BaseModel):
            params = self.parse_txt2img(params)
        info = self.find_model(model) if model else self.current_model()
        base = {**params.model_dump(exclude={"controlnet"}), "controlnet": list(params.controlnet)}
        try:
            plan = sweep.build_plan(base, axes, checkpoint=info.name, lists=self.sweep_lists(), options=options,
                                    rng=random.Random() if fix_seeds else None)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        for cell in plan.cells:
            self._sweep_cell(plan, cell)
        return plan

    def _sweep_cell(self, plan: Any, cell: Any) -> tuple[BaseModel, CheckpointInfo]:
        try:
            params = self.parse_txt2img(cell.params)
            info = self.usable_model(cell.checkpoint)
            self._check_size(params, info)
            self.check_loras(params, info)
            params = self.job_options(params)
        except BadRequest as e:
            raise BadRequest(f"{plan.describe(cell)}: {e}") from None
        return params, info

    def submit_sweep(self, params: BaseModel | Mapping[str, Any], axes: Any, *, model: str | None = None,
                     owner: str | None = None, options: Any = None) -> Job:
        """One job running every cell of the sweep and drawing its grid(s); the job's result is a SweepResult.
        Everything (axes, values, each cell's parameters, models, ControlNet units) is checked before queueing."""
        plan = self.plan_sweep(params, axes, model=model, options=options, fix_seeds=True)
        jobs, checked = [], set()
        for cell in plan.cells:
            p, info = self._sweep_cell(plan, cell)
            if p.enable_hr and p.hr_upscaler not in LATENT_UPSCALERS and p.hr_upscaler not in checked:
                self._check_upscaler(p.hr_upscaler)
                checked.add(p.hr_upscaler)
            try:
                controls = self._controls(p, info, has_input=False)
            except BadRequest as e:
                raise BadRequest(f"{plan.describe(cell)}: {e}") from None
            jobs.append((p, info, controls))
        from pipelines.sweep.run import run_sweep

        return self.runner.submit(lambda ctx: run_sweep(self.on, ctx, plan, jobs), kind="sweep", owner=owner)

    def submit_hires_fix(self, params: BaseModel | Mapping[str, Any], image: Any, *, model: str | None = None,
                         owner: str | None = None) -> Job:
        """Finalize a chosen image: Hires. fix's second pass over `image`, made by txt2img with `params` (its own
        parameters, hires settings added). The first pass is not run again."""
        if not isinstance(params, BaseModel):
            params = self.parse_txt2img(params)
        self._check_image(image)
        info = self.usable_model(model)
        if params.hr_upscaler in LATENT_UPSCALERS:
            raise BadRequest("Finalizing a saved image needs a pixel upscaler (Lanczos or an ESRGAN model): latent "
                             "upscalers work on the first pass's latents, which were not kept.")
        self._check_upscaler(params.hr_upscaler)
        params = params.model_copy(update={"enable_hr": True, "batch_size": 1, "n_iter": 1, "width": image.width,
                                           "height": image.height, "controlnet": []})
        self._check_size(params, info)
        self.check_loras(params, info)
        params = self.job_options(params)
        return self.runner.submit(lambda ctx: self.on(ctx).hires_fix(ctx, params, info, image), kind="hires-fix",
                                  owner=owner, affinity=info)

    def submit_img2img(self, params: BaseModel | Mapping[str, Any], image: Any, mask: Any = None, *,
                       model: str | None = None, owner: str | None = None) -> Job:
        """img2img, or inpaint when a mask is given (white = repaint). Checks the inputs before queueing."""
        if not isinstance(params, BaseModel):
            params = self.parse_img2img(params)
        self._check_image(image)
        info = self.usable_model(model)
        if mask is not None:
            invert = params.inpainting_mask_invert == "Inpaint not masked"
            binary, _ = imageops.prepare_mask(mask, image.size, invert=invert, blur=0)
            if imageops.mask_is_empty(binary):
                raise BadRequest("The mask is empty: paint over the part of the image to repaint."
                                 if not invert else "The mask covers the whole image, so 'Inpaint not masked' "
                                 "leaves nothing to repaint.")
        w, h = imageops.output_size(image.size, params.width, params.height, params.scale_by, info.native)
        self._check_size(params.model_copy(update={"width": w, "height": h}), info)
        self.check_loras(params, info)
        params = self.job_options(params)
        controls = self._controls(params, info, has_input=True)
        kind = "inpaint" if mask is not None else "img2img"
        return self.runner.submit(lambda ctx: self.on(ctx).img2img(ctx, params, info, image, mask, controls),
                                  kind=kind, owner=owner, affinity=info)

    @staticmethod
    def parse_outpaint(data: Mapping[str, Any]) -> BaseModel:
        return Studio.validate(OutpaintParams, data)

    def submit_outpaint(self, params: BaseModel | Mapping[str, Any], image: Any, *, model: str | None = None,
                        owner: str | None = None) -> Job:
        """Outpainting (pipelines/engine/outpaint.py): `image` extended by outpaint_left/right/up/down px, one inpaint
        pass per step. A batch runs as batches of one (same seeds). BadRequest naming the field before queueing."""
        from pipelines import outpaint

        if not isinstance(params, BaseModel):
            params = self.parse_outpaint(params)
        self._check_image(image)
        info = self.usable_model(model)
        try:
            w, h = outpaint.check_amounts(image.size, params.outpaint_left, params.outpaint_right, params.outpaint_up,
                                          params.outpaint_down)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        params = params.model_copy(update={"n_iter": params.n_iter * params.batch_size, "batch_size": 1})
        self._check_size(params.model_copy(update={"width": w, "height": h}), info)
        self.check_loras(params, info)
        params = self.job_options(params)
        controls = self._controls(params, info, has_input=True)
        return self.runner.submit(lambda ctx: self.on(ctx).outpaint(ctx, params, info, image, controls),
                                  kind="outpaint", owner=owner, affinity=info)

    def _controls(self, params: BaseModel, info: CheckpointInfo, *, has_input: bool) -> list[Any]:
        for unit in params.controlnet:
            if unit.enabled and unit.image is not None:
                self._check_image(unit.image)
        try:
            return self.controlnet.requests(params.controlnet, info, has_input=has_input)
        except ControlError as e:
            raise BadRequest(str(e)) from None

    def submit_detect(self, module: str, images: list[Any], *, owner: str | None = None, **settings: Any) -> Job:
        """Run a ControlNet preprocessor on images (the UI's preview, the API's /controlnet/detect)."""
        for image in images:
            self._check_image(image)
        try:
            return self.controlnet.submit_detect(module, images, owner=owner, **settings)
        except ValidationError as e:
            raise BadRequest(describe_validation(e)) from None
        except ControlError as e:
            raise BadRequest(str(e)) from None

    # -- upscaling -------------------------------------------------------------------------------
    def upscaler_names(self) -> list[str]:
        from extensions import upscalers  # loads torch: only when asked

        return [u.name for u in upscalers.all_upscalers(self.settings.models_dir, self.settings.esrgan_models_path)]

    def _check_upscaler(self, name: str) -> None:
        from extensions import upscalers

        try:
            upscalers.get_upscaler(name, self.settings.models_dir, self.settings.esrgan_models_path)
        except ValueError as e:
            where = self.settings.esrgan_models_path or self.settings.models_dir / "ESRGAN"
            raise BadRequest(f"{e}. Put ESRGAN-family models into {where}.") from None

    def _upscale_target(self, params: BaseModel, image: Any) -> tuple[int, int]:
        from pipelines.engine.upscale import check_target

        try:
            return check_target(image.size, params.model_dump())
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def submit_extras(self, params: BaseModel | Mapping[str, Any], images: list[tuple[str, Any]], *,
                      owner: str | None = None) -> Job:
        """Plain upscaling of one or several images (A1111 extras)."""
        if not isinstance(params, BaseModel):
            params = self.parse_extras(params)
        if not images:
            raise BadRequest("No image to upscale: upload one or more first.")
        for _, image in images:
            self._check_image(image)
            self._upscale_target(params, image)
        used = {params.upscaler_1}  # "" too is checked (refused): only "None" means no upscaler
        if params.extras_upscaler_2_visibility > 0 and params.upscaler_2:  # the job skips an empty upscaler 2
            used.add(params.upscaler_2)
        for name in used - {"None"}:
            self._check_upscaler(name)
        return self.runner.submit(lambda ctx: self.on(ctx).extras(ctx, images, params), kind="extras", owner=owner)

    def submit_sd_upscale(self, params: BaseModel | Mapping[str, Any], image: Any, *, model: str | None = None,
                          owner: str | None = None) -> Job:
        """Tiled SD upscale: enlarge, then redraw tile by tile with the checkpoint."""
        if not isinstance(params, BaseModel):
            params = self.parse_sd_upscale(params)
        self._check_image(image)
        info = self.usable_model(model)
        self.check_loras(params, info)
        params = self.job_options(params)
        self._check_upscaler(params.upscaler_1)
        w, h = self._upscale_target(params, image)
        if params.tile_width > w or params.tile_height > h:
            raise BadRequest(f"A {params.tile_width}x{params.tile_height} tile is larger than the {w}x{h} result: "
                             "use smaller tiles, a bigger scale, or plain img2img.")
        return self.runner.submit(lambda ctx: self.on(ctx).sd_upscale(ctx, params, info, image), kind="sd-upscale",
                                  owner=owner, affinity=info)

    # -- infinite zoom ----------------------------------------------------------------------------
    def parse_zoom(self, data: Mapping[str, Any] | BaseModel) -> BaseModel:
        """ZoomParams, the prompt schedule read too: BadRequest naming the field ("prompt: keyframe 9 is beyond...")."""
        from pipelines import zoom

        params = data if isinstance(data, BaseModel) else self.validate(ZoomParams, data)
        try:
            zoom.parse_schedule(params.prompt, params.zoom_keyframes)
        except zoom.ScheduleError as e:
            raise BadRequest(f"prompt: {e}") from None
        return params

    def zoom_cost(self, data: Mapping[str, Any] | BaseModel, has_image: bool) -> dict[str, Any]:
        """What a zoom would cost (keyframes, denoising steps, frames, seconds); nothing runs."""
        from pipelines.params import cost

        params = self.parse_zoom(data)
        answer = cost.zoom_cost(params.model_dump(), has_image)
        return {**answer, "text": cost.zoom_cost_text(answer)}

    def submit_zoom(self, params: BaseModel | Mapping[str, Any], image: Any = None, *, model: str | None = None,
                    owner: str | None = None) -> Job:
        """The infinite zoom: keyframes by outpainting from `image` (None: a txt2img keyframe 0), then the video.
        The job's result is a ZoomResult; an interrupted job keeps its keyframes and video in details["zoom"]."""
        params = self.parse_zoom(params)
        if image is not None:
            self._check_image(image)
        info = self.usable_model(model)
        self._check_size(_Sized(params.width, params.height), info)
        frames = (params.zoom_keyframes - 1) * params.zoom_frames_per_keyframe + 1
        w, h = params.width or info.native, params.height or info.native
        if frames * w * h > MAX_ZOOM_PIXELS:  # the frames are held in memory while the video and the GIF are written
            raise BadRequest(f"zoom_frames_per_keyframe: {frames} frames of {w}x{h} are too many to hold; keep frames x "
                             f"width x height under {MAX_ZOOM_PIXELS / 1e9:.2f} G pixels (fewer keyframes, frames per "
                             "keyframe or a smaller size)")
        self.check_loras(params, info)
        params = self.job_options(params)
        from pipelines import zoom

        try:
            zoom.encoder(params.zoom_format)
        except (ValueError, ImportError) as e:
            raise BadRequest(str(e)) from None

        def run(ctx: Any) -> Any:
            from pipelines.engine.zoom import finish_zoom  # the video is written where the keyframes are saved

            return finish_zoom(ctx, self.on(ctx).zoom_keyframes(ctx, params, info, image), params)

        return self.runner.submit(run, kind="zoom", owner=owner, affinity=info)

    @staticmethod
    def _check_image(image: Any) -> None:
        if image is None:
            raise BadRequest("No input image: upload or paste one first.")
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise BadRequest(f"The input image is {image.width}x{image.height}; the limit is "
                             f"{MAX_INPUT_PIXELS / 1e6:.1f} megapixels. Downscale it first.")

    @staticmethod
    def _check_size(params: BaseModel, info: CheckpointInfo) -> None:
        w, h = params.width or info.native, params.height or info.native
        if w * h * params.batch_size > 2048 * 2048 * 2:
            raise BadRequest(f"{w}x{h} with batch size {params.batch_size} is too large: keep width x height x "
                             "batch size under 8.4 megapixels, and upscale afterwards")

    def interrupt(self, owner: str | None = None) -> bool:
        return self.runner.interrupt(owner=owner)

    def skip(self, owner: str | None = None) -> bool:
        return self.runner.skip(owner=owner)

    # -- options, progress, png info -------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        with self._lock:
            opts = dict(self._options)
        try:
            cur = self.current_model()
            opts.update(sd_model_checkpoint=cur.title, sd_checkpoint_hash=cur.sha256)
        except BadRequest:
            opts.update(sd_model_checkpoint=None, sd_checkpoint_hash=None)
        return opts

    def set_options(self, values: Mapping[str, Any]) -> Job | None:
        if "sd_vae" in values:  # checked before anything changes: BadRequest naming the available VAEs
            values = {**values, "sd_vae": self.check_vae(values["sd_vae"])}
        values = self.check_noise_options(values)  # randn_source CPU/GPU/NV, eta_noise_seed_delta an int
        job = None
        if values.get("sd_model_checkpoint"):
            job = self.select_model(str(values["sd_model_checkpoint"]))
        with self._lock:
            for k, v in values.items():
                if k not in ("sd_model_checkpoint", "sd_checkpoint_hash"):
                    self._options[k] = v
        return job

    def progress(self, owner: str | None = None) -> dict[str, Any]:
        """A1111's progress answer, about `owner`'s job: its running one, else the first it has queued (progress 0,
        textinfo "Queued: N job(s) ahead"). A caller with no job sees the running job (A1111 clients poll from
        another connection than the one generating), but a job's preview image goes to its owner only (and to
        callers that give no owner: in-process ones). `queue_position`: the jobs ahead of the described job (0 =
        running), None when it is not the caller's own. `state.job_count`: the jobs running or queued, all clients'."""
        queue = self.runner.queue()
        mine = [(job, pos) for job, pos in queue if owner is None or job.owner == owner]
        running = [(job, pos) for job, pos in queue if job.status == "running"]
        job, position = (mine or running or [(None, None)])[0]
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": len(queue),
                 "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        answer = {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None,
                  "queue_position": position if mine else None}
        if job is None:
            return answer
        state.update(job=f"job {job.id}", interrupted=job.cancel_requested(), skipped=job.skip_requested())
        if job.status != "running":  # queued: nothing to show yet
            answer["textinfo"] = f"Queued: {position} job(s) ahead" if position else "Queued: next in line"
            return answer
        ev = job.last_progress
        step, total = (ev.step or 0, ev.total or 1) if ev else (0, 1)
        state.update(sampling_step=step, sampling_steps=total)
        return {**answer, "progress": step / total if total else 0.0, "eta_relative": (ev.eta_s or 0.0) if ev else 0.0,
                "current_image": job.last_preview if mine else None, "textinfo": ev.label if ev else None}

    def queue_of(self, owner: str | None) -> dict[str, Any]:
        """`owner`'s jobs still running or queued (id, kind, status, position = jobs ahead, 0 = running) and the
        length of the whole queue; nothing about other clients' jobs."""
        queue = self.runner.queue()
        return {"queue_length": len(queue),
                "jobs": [{"id": job.id, "kind": job.kind, "status": job.status, "position": pos,
                          "queued_at": job.created, "started_at": job.started}
                         for job, pos in queue if job.owner == owner]}

    def cancel(self, job_id: int, owner: str | None) -> bool:
        """Cancel `owner`'s job `job_id` (queued or running); False when it has no such job still running or queued."""
        for job, _ in self.runner.queue():
            if job.id == job_id and job.owner == owner:
                return self.runner.interrupt(job, owner=owner)
        return False

    @staticmethod
    def png_info(image: Any) -> dict[str, Any]:
        return outputs.read_png_info(image)

    def reproduce(self, parsed: Mapping[str, Any]) -> list[reproduce.Check]:
        """Which fields of a parsed infotext this studio reproduces exactly and which not (PNG Info shows it),
        judged against the checkpoints, LoRAs and upscalers listed here."""
        loras: dict[str, str | None] = {}
        for lora in self.loras.list():
            loras[lora.name] = lora.sha256
            if lora.alias:
                loras.setdefault(lora.alias, lora.sha256)
        hires = parsed.get("hr_upscaler")  # the upscaler list loads torch: only for a model's name
        upscalers = tuple(self.upscaler_names()) if hires and hires not in reproduce.BUILT_IN_UPSCALERS else ()
        local = reproduce.Local(checkpoints={m.name: m.sha256 for m in self.models()}, loras=loras,
                                upscalers=upscalers)
        return reproduce.report(parsed, local)

    def memory(self) -> dict[str, Any]:
        """A1111's /sdapi/v1/memory ({"ram": ..., "cuda": ...}) plus the memory mode ("mode": the running or last
        job's, "mode_configured", "mode_setting" as given on the command line) and the model cache ("models")."""
        from pipelines.engine import memory  # torch: lazily

        eng = self.engine
        if getattr(eng, "remote", False):  # Ray replicas (pipelines/cluster.py): this process's RAM and each slot
            import torch

            workers = self.runner.workers
            return {**memory.usage(torch.device("cpu")), "mode": self.memory_mode(),
                    "mode_configured": eng.memory_mode, "mode_setting": self.settings.memory, "models": {},
                    "devices": [{"device": e.name, "mode": self.memory_mode(i), "models": {},
                                 "job": workers[i].current.id if i < len(workers) and workers[i].current else None}
                                for i, e in enumerate(self.engines)]}
        out = {**memory.usage(eng.hw.device), "mode": self.memory_mode(), "mode_configured": eng.memory_mode,
               "mode_setting": self.settings.memory, "models": eng.manager.usage()}
        if len(self.engines) > 1:  # one entry per device worker, the first as above
            workers = self.runner.workers
            out["devices"] = [{"device": str(e.hw.device), "name": e.hw.name, **memory.usage(e.hw.device),
                               "mode": self.memory_mode(i), "mode_configured": e.memory_mode,
                               "models": e.manager.usage(),
                               "job": workers[i].current.id if i < len(workers) and workers[i].current else None}
                              for i, e in enumerate(self.engines)]
        return out

    def memory_mode(self, worker: int = 0) -> str:
        """The memory mode in force: the running job's (an out-of-memory retry lowers it for the rest of that job);
        between jobs, the lowered mode the last job ended in, until the next job starts (in the configured mode),
        else the configured one. Jobs report their mode (JobContext.report), so nothing here reads the engine's
        per-job state from another thread."""
        w = self.runner.workers[worker] if worker < len(self.runner.workers) else None
        current, last = (w.current, w.last) if w is not None else (None, None)
        if current is not None and "memory_mode" in current.details:
            return current.details["memory_mode"]
        if last is not None and last.details.get("memory_mode_lowered"):
            return last.details["memory_mode"]
        return self.engines[worker].memory_mode

    @property
    def outputs_dir(self) -> Path:
        return self.settings.outputs_dir
