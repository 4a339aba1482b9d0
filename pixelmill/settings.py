"""Server settings: one pydantic-settings class, every field a ``PIXELMILL_*`` variable.

The CLI turns every field into a ``--flag`` (see :mod:`pixelmill.cli.main`), so a setting is
documented once, here, and reachable three ways: flag > environment > default.
Nothing is created at import time; call :func:`load_settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pixelmill.core.policy import Defaults, Limits, Policy
from pixelmill.core.profiles import load_profiles
from pixelmill.registry.families import family_resolver

DEFAULT_HUB_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
"""Model served when none is configured; falls back to the demo model if it cannot load."""

DEMO_MODEL = "demo"


class Settings(BaseSettings):
    """Everything an operator can configure. Field docstrings become ``--help`` text."""

    model_config = SettingsConfigDict(
        env_prefix="PIXELMILL_", extra="ignore", use_attribute_docstrings=True
    )

    # --- network -----------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address to bind. The default (loopback) keeps a laptop server private."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on (0 = any free port)."""
    public_url: str | None = None
    """Base URL clients reach this server at, used in ``url`` responses.
    Default: derived from the request's Host header."""

    # --- security ------------------------------------------------------------------
    insecure_no_auth: bool = False
    """Serve without API keys on a non-loopback address. Anyone who can reach the port can
    generate and read every job: only for a network you fully trust."""
    cors_origins: list[str] = []
    """Browser origins allowed to call the API cross-site (CORS), e.g.
    ``https://app.example.com``. Empty (default): CORS off."""

    # --- models ------------------------------------------------------------------
    models_dir: Path = Path("models")
    """Models directory: ``checkpoints/``, ``loras/``, ``controlnets/`` inside."""
    model: str | None = None
    """Default model: a name in ``checkpoints/``, a hub id, or a path. Unset: the SDXL
    base from the Hugging Face cache, falling back to the demo model when it cannot load."""
    model_aliases: list[str] = ["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini",
                                "stability-ai/sdxl", "black-forest-labs/flux-schnell"]
    """Model names clients send (OpenAI's, hosted ``owner/name`` ones): a bare ``name`` means
    "the default model"; ``name=model`` runs ``model`` (a checkpoint name, hub id or another
    alias), e.g. ``stability-ai/sdxl=my-sdxl``."""
    refiner: str | None = None
    """Refiner checkpoint (a name in ``checkpoints/``) used for every request that does not
    name one; requests can still pass ``refiner`` themselves. Unset: no refiner pass."""
    refiner_switch_at: float = Field(0.8, gt=0, lt=1)
    """Fraction of the steps the base model runs before the refiner takes over."""
    model_cache_gb: float = Field(0.0, ge=0)
    """Memory budget (GB) for checkpoints kept loaded at once; the least recently used is
    freed when a switch would exceed it. 0 = keep only the model in use."""
    lora_cache_size: int = Field(16, ge=1)
    """LoRA adapters kept loaded in each model (least recently used is deleted first)."""
    lora_cache_mb: float = Field(2048.0, gt=0)
    """Total size (MB, file size) of the LoRA adapters kept loaded in each model."""
    lora_max_rank: int = Field(128, ge=1, le=1024)
    """Highest LoRA rank that can be hot-swapped under ``--compile``: the compiled UNet
    holds 5 fixed adapter slots of this rank, so switching LoRAs never recompiles. A LoRA
    of a higher rank is refused (400). Lower it to the ranks you use to save memory."""
    controlnet_cache_size: int = Field(3, ge=1)
    """ControlNet models kept loaded (least recently used is freed first)."""
    data_dir: Path = Path(".pixelmill")
    """Where the server keeps its state: result files, the demo model when generated."""

    # --- jobs ----------------------------------------------------------------------
    db: str | None = None
    """Job store: ``sqlite:///path``, a file path, or ``postgresql://user@host/db`` for several
    hosts. Default: ``pixelmill.db`` (SQLite) in the data dir."""
    workers: int = Field(1, ge=0, le=8)
    """Workers ``serve`` runs in its own process (each loads the model); 0 = API only."""
    worker_id: str | None = None
    """Name of this worker in job records. Default: host name and process id."""
    lease_s: float = Field(30.0, gt=0)
    """A running job's lease; a worker that stops heartbeating loses its job after this."""
    heartbeat_s: float = Field(5.0, gt=0)
    """How often a worker renews its lease and reads cancel requests (< lease_s / 2)."""
    progress_interval_s: float = Field(0.5, gt=0)
    """How often a running job's progress is written to the store (SSE and webhooks see
    it at this granularity). Shorter is smoother but costs throughput: each write is a
    committed transaction per job."""
    preview_steps: int = Field(5, ge=0)
    """Make a live preview of a running job every this many denoising steps (a small
    JPEG projected from the latents, no VAE; SSE ``preview`` events, stored about once a
    second per job). 0 = off: workers make none and event streams do not look for them."""
    poll_interval_s: float = Field(0.2, gt=0)
    """How often an idle worker (or a waiting API call) looks at the store for news. A call
    waiting on a job that runs on a worker of its own process is told of every change
    and looks only every ``heartbeat_s``, in case that worker died."""
    max_attempts: int = Field(3, ge=1)
    """Runs of a job before it fails for good (a worker that died counts as a run)."""
    max_queued: int = Field(1000, ge=1)
    """Queued jobs at most; beyond it submissions get 429 with Retry-After."""
    max_batch_size: int = Field(4, ge=1, le=64)
    """Most jobs a worker runs in one pipeline call (same model, size, steps, sampler, …)."""
    max_batch_wait_ms: float = Field(10.0, ge=0)
    """How long a worker that has started a batch waits for compatible jobs to join it."""
    result_store: Literal["auto", "local", "database"] = "auto"
    """Where result images live: local (a folder in the data dir, one host) or database
    (any API host can serve them). auto = local with SQLite, database with PostgreSQL."""
    sync_timeout_s: float = Field(600.0, gt=0)
    """How long a synchronous call (OpenAI dialect) waits for its job before a 504."""
    webhook_secret: str | None = None
    """HMAC key for webhook signatures. Default: a random key kept in the data dir."""
    webhook_allow_private: bool = False
    """Allow webhooks to loopback/private addresses (tests, trusted networks only)."""

    # --- device ------------------------------------------------------------------
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps. auto picks CUDA, then MPS, then CPU."""
    offload: Literal["none", "model", "sequential"] = "none"
    """CPU offload on CUDA: model (less VRAM, a little slower), sequential (least VRAM, slow)."""
    vae_tiling: bool = False
    """Decode the VAE in tiles: needed for large images on small GPUs."""
    vae_slicing: bool = False
    """Decode a batch one image at a time in the VAE to save memory."""
    compile: bool = False
    """torch.compile the UNet and warm it up at start (CUDA; slow start, faster steps)."""

    # --- GPU path ------------------------------------------------------------------
    precision: Literal["auto", "fp16", "bf16"] = "auto"
    """Half precision on CUDA: auto (fp16), fp16, or bf16 (Ampere and newer; refused on
    older cards). CPU always runs fp32; MPS fp16."""
    vae: str | None = None
    """VAE replacing every SDXL model's own: a folder, a name in the models directory's
    ``vae/``, or a hub id. Unset: an fp16-safe VAE in ``vae/`` (a folder named like
    ``sdxl-vae-fp16-fix``) when there is one, else each model's own VAE."""
    vae_tile_above_pixels: int = Field(1536 * 1536, ge=1)
    """Decode in tiles when one image has more pixels than this, and one image at a time
    when a batch does (2048² in fp32 runs out of memory on 24 GB cards)."""
    compile_buckets: list[str] = []
    """With ``--compile``: shapes ``BATCHxWIDTHxHEIGHT`` (e.g. ``1x1024x1024``) compiled and
    warmed at start; a batch is padded up to the smallest bucket that holds it. Unset: the
    model's native size at batch 1."""
    cuda_graphs: bool = False
    """With ``--compile`` on CUDA: replay the compiled UNet and VAE decoder as CUDA graphs
    (less launch overhead per step; one recorded graph, with its buffers, per shape: list
    the shapes you serve in ``--compile-buckets``). Not with ``--offload``."""
    png_compress_level: int = Field(1, ge=0, le=9)
    """zlib level of PNG outputs: 1 is 1.3-2x faster than 6 for about 9 % more bytes on a
    1024² photo-like image (bench/RESULTS.md); 0 stores uncompressed (1.5x the bytes)."""
    encode_threads: int = Field(2, ge=1, le=32)
    """Threads encoding the images of a batch (PNG/JPEG/WebP) in parallel."""

    # --- generation defaults -------------------------------------------------------
    default_steps: int = Field(30, ge=1)
    """Denoising steps when a request does not say (OpenAI ``quality`` auto/standard)."""
    default_guidance: float = 5.0
    """Classifier-free guidance (CFG scale) when a request does not say."""
    default_strength: float = Field(0.75, gt=0, le=1)
    """img2img/inpaint strength (how much of the input is re-noised) when a request does not say."""
    default_mask_blur: int = Field(4, ge=0, le=64)
    """Feathering of an inpaint mask's edge, in pixels, when a request does not say."""
    variation_strength: float = 0.6
    """img2img strength used by ``/v1/images/variations`` unless the request says."""
    result_retention_s: int = Field(3600, ge=1)
    """Seconds a generated file stays downloadable through ``/v1/files/{id}``."""

    # --- limits (every violation is a 4xx naming the parameter) -----------------------
    min_side: int = 64
    """Smallest width/height in pixels."""
    max_side: int = 2048
    """Largest width/height in pixels."""
    max_pixels: int = 4_200_000
    """Largest width × height of a generated image."""
    max_steps: int = 150
    """Most denoising steps per request."""
    max_n: int = 10
    """Most images per request."""
    max_guidance: float = 30.0
    """Largest guidance (CFG) value."""
    max_prompt_chars: int = 4000
    """Longest prompt and negative prompt, in characters."""
    max_json_bytes: int = 1 << 20
    """Largest JSON request body (bytes)."""
    max_multipart_bytes: int = 20 << 20
    """Largest multipart (upload) request body (bytes)."""
    max_upload_pixels: int = 16_000_000
    """Largest uploaded image (pixels); larger ones are refused before decoding."""
    max_request_pixels: int = Field(64_000_000, ge=1)
    """Most pixels decoded for one request, all its images together (uploads, masks, control
    images, every image of a batch); beyond it the request is refused (413)."""
    max_batch_images: int = Field(1000, ge=1)
    """Most images one ``/v1/batches`` request may queue (jobs × n), counted before anything
    is expanded or decoded."""

    # --- intake (what a request may cost the server before it is a job) ---------------
    max_body_bytes_in_flight: int = Field(256 << 20, ge=1)
    """Request-body bytes held at once across all requests (from arrival until the answer
    starts); a request that would exceed it gets 429 with Retry-After before its body is read."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Seconds a request body may take to arrive in full; a slower one gets 408 and its
    connection is closed."""
    intake_threads: int = Field(0, ge=0, le=64)
    """Threads that decode, check and re-encode uploaded images, shared by all requests (the
    event loop never does it). 0 = auto: half the CPU cores, 1 to 4."""
    shutdown_timeout_s: float = Field(10.0, gt=0)
    """On SIGTERM, how long open requests (e.g. synchronous calls still waiting for their job)
    may take before they are ended with 503; their jobs go on. Calls whose client hung up
    are ended at once."""

    # --- cost ------------------------------------------------------------------------
    cost_gpu_hour: float = Field(1.20, ge=0)
    """Your GPU's price per hour in dollars (G), for the build-versus-buy comparison.
    The default is an example: set what you pay."""
    cost_overhead_month: float = Field(2000.0, ge=0)
    """Fixed monthly cost of self-hosting in dollars (E): people, storage, monitoring.
    The default is an example: set yours."""
    cost_gpu_month: float | None = Field(None, gt=0)
    """Price of one dedicated GPU per month (M); set it to see the dedicated-fleet step curve."""
    cost_hours_per_month: float = Field(730.0, gt=0)
    """Hours a dedicated GPU is rented per month (730 = always on)."""
    cost_utilisation: float = Field(0.7, gt=0, le=1)
    """Share of a dedicated GPU's hours doing useful work (target utilisation, 0-1]."""
    cost_compare_to: str | None = None
    """Hosted offer (``provider/model``) verdicts and alerts compare with. Default: the cheapest."""
    cost_config: Path | None = None
    """Cost file (TOML): hosted prices and ``[self_hosted]`` values; see ``pixelmill cost --help``."""
    cost_check_interval_s: float = Field(300.0, ge=0)
    """How often the server checks whether the trailing volume crossed the crossover (0 = never)."""
    cost_alert_webhook: str | None = None
    """URL that gets a signed POST when the trailing volume crosses the crossover."""
    # --- end cost --------------------------------------------------------------------

    # --- gateway ---------------------------------------------------------------------
    backends: Path | None = None
    """Upstream backends and per-model routes (a TOML file, see docs/gateway.md): serve some
    models from hosted APIs or another pixelmill. Credentials come from environment
    variables the file names. Unset: every job runs on this fleet's own workers."""
    # --- end gateway -----------------------------------------------------------------

    # --- model families --------------------------------------------------------------
    model_profiles: Path | None = None
    """Extra model profiles (TOML, ``[[profile]]`` tables like the shipped
    ``pixelmill/core/model_profiles.toml``): per-model default steps, guidance and scheduler
    for requests that leave them unset. Read before the shipped table, so it can override it."""
    text_encoder_precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """dtype of FLUX's and SD3.5's T5 text encoder. auto: bf16 on CUDA (T5 overflows in fp16),
    the model dtype elsewhere. CPU always runs fp32."""
    text_encoder_quantization: Literal["none", "8bit", "4bit"] = "none"
    """Load FLUX's/SD3.5's T5 text encoder quantized with bitsandbytes (CUDA only; install
    ``pixelmill[quantization]``): 8bit about halves, 4bit about quarters its memory."""
    # --- end model families ----------------------------------------------------------

    # --- operations ------------------------------------------------------------------
    log_format: Literal["text", "json"] = "text"
    """Log lines as text for people, or ``json`` (one object per line, with the request id
    and job id where they exist) for a log collector."""
    metrics_public: bool = False
    """Serve ``/metrics`` without an API key (for a Prometheus server that sends none).
    Off: ``/metrics`` needs an admin key, like the other admin routes."""

    @model_validator(mode="after")
    def _check_ranges(self) -> "Settings":
        if self.min_side > self.max_side:
            raise ValueError("min_side must not exceed max_side")
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("heartbeat_s must be at most half of lease_s")
        for entry in self.model_aliases:
            name, sep, model = entry.partition("=")
            if not name.strip() or (sep and not model.strip()):
                raise ValueError(f"model_aliases: {entry!r} is not NAME or NAME=MODEL")
        return self

    @property
    def model_alias_pairs(self) -> tuple[tuple[str, str], ...]:
        """``(name, model)`` for each ``name=model`` entry of ``model_aliases``."""
        pairs = (entry.partition("=") for entry in self.model_aliases)
        return tuple((name.strip(), model.strip()) for name, sep, model in pairs if sep)

    @property
    def bare_model_aliases(self) -> set[str]:
        """The entries of ``model_aliases`` without ``=``: names of the default model."""
        return {entry.strip() for entry in self.model_aliases if "=" not in entry}

    def policy(self) -> Policy:
        """The small view of these settings that the request policy reads (limits,
        defaults, model names); see :func:`pixelmill.core.policy.resolve`."""
        return Policy(
            limits=Limits(
                min_side=self.min_side, max_side=self.max_side, max_pixels=self.max_pixels,
                max_steps=self.max_steps, max_n=self.max_n, max_guidance=self.max_guidance,
                max_prompt_chars=self.max_prompt_chars,
            ),
            defaults=Defaults(
                steps=self.default_steps, guidance=self.default_guidance, strength=self.default_strength,
                mask_blur=self.default_mask_blur, refiner=self.refiner,
                refiner_switch_at=self.refiner_switch_at,
            ),
            default_model_names=frozenset({*self.bare_model_aliases, *self.default_model_names}),
            model_aliases=self.model_alias_pairs,
            families=family_resolver((self.models_dir, self.demo_models_dir), self.model),
            profiles=load_profiles(self.model_profiles),
        )

    @property
    def default_model_names(self) -> set[str]:
        """Names a request may use for the default model (besides ``model_aliases``).

        Without a configured model the default is the SDXL base, which may have fallen
        back to the demo model, so both names mean "the default".
        """
        return {self.model} if self.model else {DEFAULT_HUB_MODEL, DEMO_MODEL}

    @property
    def db_url(self) -> str:
        """The job store URL (the SQLite default lives in the data dir)."""
        return self.db or f"sqlite:///{self.data_dir / 'pixelmill.db'}"

    @property
    def results_in_database(self) -> bool:
        """Whether result images are kept in the job database instead of a folder."""
        if self.result_store == "auto":
            return not self.db_url.startswith("sqlite")
        return self.result_store == "database"

    @property
    def results_dir(self) -> Path:
        """Folder of generated files served by ``/v1/files`` (local result store).

        Next to the SQLite job database: processes that share the database file share
        this folder too, whatever their data dirs.
        """
        url = self.db_url
        if "://" not in url:
            return Path(url).parent / "results"
        if url.startswith("sqlite"):
            return Path(url.split(":///", 1)[1]).parent / "results"
        return self.data_dir / "results"

    @property
    def demo_models_dir(self) -> Path:
        """Where the demo model is written when the server falls back to it."""
        return self.data_dir / "demo-models"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (e.g. CLI flags) on top.

    ``None`` overrides are dropped so an unset flag never hides an environment variable.
    """
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
