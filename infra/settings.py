"""All configuration, read from ``LEADCYCLE_*`` environment variables (see README)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.topics import DEFAULT_PREFIX, TopicNames


class Settings(BaseSettings):
    """leadcycle settings. Unset URLs mean: use the embedded services (``leadcycle services``)."""

    model_config = SettingsConfigDict(env_prefix="LEADCYCLE_", frozen=True, extra="ignore")

    kafka_url: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port[,host:port]); unset = the embedded broker",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL DSN; unset = 127.0.0.1:5432 if listening, else a private cluster",
    )
    database_name: str = Field(
        default="leadcycle",
        pattern=r"^[A-Za-z0-9_]+$",
        max_length=57,
        description="database created and used on the local server when database_url is unset; "
        "the demo and the bench use <name>_demo and <name>_bench",
    )
    state_dir: Path = Field(
        default=Path(".leadcycle"),
        description="where embedded services keep pid files, logs and the private PostgreSQL",
    )
    broker_port: int = Field(default=19092, description="port of the embedded broker")
    postgres_port: int = Field(
        default=55432, description="port of the private PostgreSQL cluster, when one is started"
    )
    topic_prefix: str = Field(default=DEFAULT_PREFIX, description="prefix of every topic name")
    partitions: int = Field(default=4, ge=1, description="partitions of topics leadcycle creates")
    app_id: str = Field(
        default="leadcycle",
        description="consumer group of the input topics (faust's own app id: <app_id>-app)",
    )
    rules_file: Path = Field(
        default=Path("rules/default.toml"), description="scoring rule set (TOML)"
    )
    batch_size: int = Field(default=2000, ge=1, description="max events per batch transaction")
    state_cache: int = Field(
        default=20_000,
        ge=0,
        description="decoded lead states a worker keeps between batches (0: none)",
    )
    batch_within: float = Field(
        default=0.25, gt=0, description="seconds a poll waits for input when none has arrived"
    )
    stall_seconds: float = Field(
        default=60.0,
        gt=0,
        description="/readyz answers 503 when a partition with lag makes no progress this long",
    )
    max_message_bytes: int = Field(
        default=64 * 1024, description="input messages larger than this are dead-lettered"
    )
    max_future_skew: float = Field(
        default=300.0,
        ge=0,
        description="seconds an event's occurred_at may be ahead of its receive time; further"
        " ahead = a skewed clock: scored at the receive time (the stated time is kept)",
    )
    bot_pattern: str | None = Field(
        default=None,
        description="regex of bot user agents to drop (unset = built-in crawlers/link scanners)",
    )
    reps: str = Field(
        default="rep-1,rep-2,rep-3",
        description="comma-separated reps taking new follow-ups round robin (owners always win)",
    )
    rep_daily_capacity: int = Field(
        default=25, ge=0, description="follow-ups a rep takes per day; the rest wait unassigned"
    )
    sweep_interval: float = Field(
        default=30.0, gt=0, description="seconds between sweeps for SLA, revisit dates, overdue"
    )
    anonymous_retention_days: int = Field(
        default=395,
        ge=0,
        description="days after its newest event an anonymous visitor that never identified "
        "is purged by the sweep (395 = 13 months, the tracker cookie's life); 0 = keep forever",
    )
    web_port: int = Field(default=6066, description="HTTP port of the worker")
    web_enabled: bool = Field(default=False, description="serve the worker's HTTP endpoints")
    log_level: str = Field(default="info", description="worker log level")

    @property
    def rep_list(self) -> tuple[str, ...]:
        return tuple(r.strip() for r in self.reps.split(",") if r.strip())

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def anonymous_retention(self) -> timedelta | None:
        """How long an anonymous-only visitor is kept after its newest event; None = forever."""
        days = self.anonymous_retention_days
        return timedelta(days=days) if days else None

    # --- HTTP edge (workers/web, docs/http.md) -------------------------------------------------
    # Secrets have no default: unset means the endpoints that need them answer 401.
    web_bind: str = Field(default="0.0.0.0", description="address the worker's HTTP server binds")
    http_write_keys: SecretStr | None = Field(
        default=None,
        description="collector write keys, one per site: site=key[,site=key]; unset = 401",
    )
    http_server_keys: SecretStr | None = Field(
        default=None,
        description="secret collector keys of sites' own servers: site=key[,site=key]",
    )
    http_cors_origins: str = Field(
        default="",
        description="comma-separated origins allowed to call the collector from a browser",
    )
    http_batch_max_events: int = Field(
        default=100, ge=1, description="most events one collector request may carry"
    )
    http_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="largest collector request body, in bytes"
    )
    http_publish_timeout: float = Field(
        default=5.0, gt=0, description="seconds to wait for the broker's ack before answering 503"
    )
    http_rate_limit: float = Field(
        default=20.0,
        ge=0,
        description="collector requests a second one client (site + IP) may sustain; 0 = off",
    )
    http_rate_burst: int = Field(
        default=40, ge=1, description="collector requests one client may send at once (bucket)"
    )
    sales_rep_tokens: SecretStr | None = Field(
        default=None,
        description="bearer tokens of reps for the sales endpoints: rep=token[,rep=token]",
    )
    sales_admin_token: SecretStr | None = Field(
        default=None, description="bearer token that sees every rep's call list"
    )
    # --- HTTP edge protections (docs/http.md, "Protections") -----------------------------------
    http_trusted_proxies: str = Field(
        default="",
        description="comma-separated addresses/CIDRs of reverse proxies whose X-Forwarded-For, "
        "Forwarded and X-Forwarded-Proto are believed; unset = the TCP peer is the client",
    )
    http_read_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds a connection may take to send a request's head (from connect or "
        "the previous answer) and, separately, its body; then it is closed",
    )
    http_max_connections_per_client: int = Field(
        default=64,
        ge=0,
        description="open connections one client address (IPv6: its /64) may hold; more are "
        "closed; 0 = no cap; trusted proxies are exempt",
    )
    sales_rate_limit: float = Field(
        default=5.0,
        ge=0,
        description="sales requests (call lists, outcomes, page, sign-in) a second one client "
        "may sustain; more = 429; 0 = no limit",
    )
    sales_rate_burst: int = Field(
        default=30, ge=1, description="sales requests one client may send at once (bucket)"
    )
    sales_auth_failures: int = Field(
        default=10,
        ge=1,
        description="bad sales tokens, cookies or sign-ins one client may send before every "
        "sales request of it gets 429; then one more a minute",
    )
    sales_cookie_secure: bool | None = Field(
        default=None,
        description="mark the page's session cookie Secure: true behind a TLS-terminating "
        "proxy, false never; unset = when the request is https",
    )
    sales_origins: str = Field(
        default="",
        description="comma-separated origins (scheme://host[:port]) the call-list page's forms "
        "may be posted from besides the server's own",
    )
