"""Settings, read once from the environment (prefix ``SARTOR_``) through :func:`get_settings`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sartor.profiles.folds import ProfileConfig

DEV_SECRET = "sartor-dev-secret-change-me"

# view < add < purchase; ratings come from the event itself.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "Product Viewed": 1.0,
    "Product Clicked": 1.0,
    "Product Added to Wishlist": 2.0,
    "Product Added": 3.0,
    "Checkout Started": 3.0,
    "Order Completed": 5.0,
    "Product Reviewed": 1.0,
}


class Settings(BaseSettings):
    """Every knob of the engine. Each field maps to ``SARTOR_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SARTOR_", env_file=None, extra="ignore")

    env: Literal["dev", "test", "production"] = Field(
        "dev", description="Outside `dev`/`test`, the default secret key is refused."
    )
    home: Path = Field(Path(".sartor"), description="Folder for the embedded database and models.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default `sqlite:///$SARTOR_HOME/sartor.db`."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL. When set, profile updates go through Redis Streams to "
        "`sartor worker` processes and hot state lives in Redis.",
    )
    redis_namespace: str = Field(
        "sartor", description="Prefix of every Redis key, stream and channel Sartor uses."
    )
    secret_key: str = Field(
        DEV_SECRET, description="Key for HMAC hashing of PII traits and erased ids."
    )
    host: str = Field("127.0.0.1", description="`sartor serve` bind address.")
    port: int = Field(8000, description="`sartor serve` port.")
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(True, description="Structured JSON logs on stderr.")
    access_log: bool = Field(False, description="One JSON log line per HTTP request.")
    rate_limit_events_per_second: float = Field(
        50_000.0,
        description="Default per-workspace ingestion rate (events/s); 0 disables. "
        "A workspace setting overrides it.",
    )
    rate_limit_burst_seconds: float = Field(
        2.0, description="Bucket size of the rate limiter, in seconds of the rate."
    )
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL"] = Field(
        "FULL",
        description="SQLite `synchronous` pragma. FULL survives power loss; NORMAL (WAL) "
        "survives a process crash only.",
    )
    group_commit_max_events: int = Field(
        5_000, description="Most events the writer commits in one transaction."
    )
    key_cache_seconds: float = Field(5.0, description="How long a resolved API key is cached.")
    session_gap_minutes: float = Field(30.0, gt=0, description="Inactivity that ends a session.")
    affinity_half_life_days: float = Field(
        30.0, gt=0, description="Half-life of category and brand affinities."
    )
    recent_items: int = Field(50, ge=1, le=1000, description="Recent items kept per profile.")
    abandoned_cart_hours: float = Field(
        24.0, gt=0, description="A cart add with no order for this long is abandoned."
    )
    hot_user_interactions: int = Field(
        10, ge=1, description="Interactions within the hot window that trigger a refresh."
    )
    hot_user_window_minutes: float = Field(15.0, gt=0, description="The hot-user window.")
    segment_schedule_minutes: float = Field(
        60.0, gt=0, description="How often every rule segment is re-evaluated (lapsing users)."
    )
    rfm_schedule_hours: float = Field(
        24.0, gt=0, description="How often RFM groups are recomputed."
    )
    cluster_schedule_days: float = Field(
        7.0, gt=0, description="How often behavioural clusters are recomputed."
    )
    fold_process: bool = Field(
        True,
        description="Without Redis, `sartor serve` folds profiles in a child process (on "
        "another core than ingestion); false: on a thread of the server process.",
    )
    reconcile_seconds: float = Field(
        5.0, gt=0, description="How often the updater replays the log past its checkpoint."
    )
    rec_event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Interaction weight of each event name for training (JSON object). "
        "`Product Reviewed` uses its `rating` instead.",
    )
    rec_half_life_days: float = Field(
        90.0, gt=0, description="Half-life of an interaction's weight in training."
    )
    rec_retrain_hours: float = Field(
        24.0, ge=0, description="How often the server retrains the models; 0 never."
    )
    rec_ann_threshold: int = Field(
        50_000, ge=0, description="Catalog size from which candidates come from FAISS, not numpy."
    )
    rec_cache_seconds: float = Field(
        300.0, ge=0, description="How long a served list is cached (until the profile changes)."
    )
    import_default_region: str | None = Field(
        "GB",
        description="Region (ISO 3166 alpha-2) of phone numbers written without a country "
        "code in CRM imports; empty: such numbers are rejected.",
    )
    import_max_upload_bytes: int = Field(
        1024**3, gt=0, description="Largest file accepted by POST /v1/imports (413 above)."
    )
    import_retention_days: float = Field(
        7.0,
        description="Days an import job's rejects file (refused rows, which may hold personal "
        "data) is kept before the scheduler deletes it; the upload itself goes when the job "
        "ends.",
    )

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if not self.import_retention_days > 0:  # also refuses NaN
            raise ValueError(
                "SARTOR_IMPORT_RETENTION_DAYS must be a positive number of days, "
                f"got {self.import_retention_days!r}"
            )
        if self.env == "production" and self.secret_key == DEV_SECRET:
            raise ValueError(
                "SARTOR_SECRET_KEY must be set to a private value when SARTOR_ENV=production"
            )
        if self.env == "production" and len(self.secret_key) < 16:
            raise ValueError("SARTOR_SECRET_KEY must be at least 16 characters in production")
        return self

    @property
    def profile_config(self) -> ProfileConfig:
        return ProfileConfig(
            session_gap_ms=int(self.session_gap_minutes * 60_000),
            half_life_days=self.affinity_half_life_days,
            recent_items=self.recent_items,
            abandoned_cart_ms=int(self.abandoned_cart_hours * 3_600_000),
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'sartor.db').as_posix()}"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
