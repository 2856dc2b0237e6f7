"""Settings: defaults < config file < environment (SWALLOW_*) < command line.

Every setting is a field of `Settings`; config.toml at the top of the repository lists each one
with its default, and docs/configuration.md explains them. The TOML file groups settings in tables
([server], [model], [generation], ...: `TABLES`); tables are only for reading, the names are unique
across them, so a setting under another table still works, with a warning naming its own.
"""

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

log = logging.getLogger("swallow.config")

DEFAULT_MODEL = "tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-6bit-mlx"
ENV_PREFIX = "SWALLOW_"
# Pages these origins serve may call the API by default: this machine's, on any port.
LOCAL_ORIGINS = tuple(f"{scheme}://{host}:*" for host in ("localhost", "127.0.0.1", "[::1]")
                      for scheme in ("http", "https"))
HOST_PATTERN = re.compile(r"\*|(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\]", re.IGNORECASE)
ORIGIN_PATTERN = re.compile(r"\*|[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[^/\s:\[\]]+)(:(\d+|\*))?", re.IGNORECASE)


# ---- values of settings and command-line arguments ------------------------------------------
# Keep-alive durations, as Ollama takes them: seconds (300), a duration ("5m", "1h30m", "90s"),
# 0 (unload as soon as the model is idle) or a negative value (never unload it for idleness).
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def keep_alive_seconds(value: str | float | int | None) -> float | None:
    """The idle time in seconds; None: forever. ValueError for what is neither."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"keep_alive {value!r} is not a duration")
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    text = value.strip().lower()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return None if number < 0 else number
    if text.startswith("-"):
        return None
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"keep_alive {value!r} is not a duration like 300, \"5m\", \"1h30m\", 0 or -1")
    return sum(float(n) * UNITS[u] for n, u in parts)


def describe_keep_alive(value: float | None) -> str:
    return "forever" if value is None else f"{value:g} s"


def split_alias(value: str) -> tuple[str, str]:
    """A --model value: "ALIAS=MODEL" -> (alias, model); "MODEL" (or a path holding "=") -> ("", model)."""
    if "=" in value and not Path(value).exists():
        alias, _, spec = value.partition("=")
        return alias, spec
    return "", value


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # [server]
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    ollama_port: int = Field(0, ge=0, le=65535)  # also listen here (Ollama's is 11434); 0: don't
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # [security]
    api_key: str = ""  # empty: no key; else /v1/* wants "Authorization: Bearer <key>"
    cors_origins: list[str] = Field(default_factory=lambda: list(LOCAL_ORIGINS))  # see _origins
    max_body_mb: int = Field(16, ge=1)  # larger request bodies get 413
    metrics_public: bool = True  # false: /metrics wants the api_key too
    allowed_hosts: list[str] = Field(default_factory=list)  # Host names served besides loopback; see _allowed_hosts

    # [limits]
    max_concurrency: int = Field(0, ge=0)  # requests generating at once; 0: max_batch_size
    max_queue: int = Field(64, ge=0)  # requests waiting for a slot; past both: 429
    shutdown_timeout: float = Field(30, ge=0)  # seconds requests in flight get on SIGTERM
    max_messages: int = Field(10000, ge=1)  # messages / input items a request may have; more: 400

    # [model]
    model: str = DEFAULT_MODEL
    served_model_name: str = ""  # empty: the --model value
    trust_remote_code: bool = False
    context_length: int = Field(0, ge=0)  # 0: the model's max_position_embeddings
    model_identity: str = "You are ChatGPT, a large language model trained by OpenAI."
    knowledge_cutoff: str = "2024-06"

    # [[models]] tables, at the top level: more models from one server (server/registry/)
    models: list["ModelEntry"] = Field(default_factory=list)  # see ModelEntry

    # [model_registry]: how those models are picked, loaded and unloaded
    strict_model_names: bool = False  # true: an unknown model name is a 404, not the default model
    models_memory_mb: int = Field(0, ge=0)  # weights of the loaded models; 0: what the machine has
    keep_alive: str | float = -1.0  # idle time before a model is unloaded; negative: never ("5m", 300)
    model_load_timeout: float = Field(600, gt=0)  # seconds a request waits for its model to load
    discover_cached_models: bool = True  # list (and serve) GPT-OSS models in the Hugging Face cache

    # [generation]: defaults from the GPT-OSS-Swallow model card
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(20, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    reasoning_effort: Literal["low", "medium", "high"] = "medium"
    max_tokens: int = Field(4096, ge=1)
    max_n: int = Field(8, ge=1)  # most choices (`n`) one request may ask for

    # [reasoning]: reasoning budget and loop guard (server/engine/reasoning_control.py)
    reasoning_max_tokens: int = Field(0, ge=0)  # analysis tokens before the answer is opened; 0: no limit
    loop_guard: bool = True  # end an analysis that repeats itself and open the answer
    loop_max_period: int = Field(128, ge=1, le=4096)  # longest repeating unit looked for, in tokens
    loop_min_repeats: int = Field(4, ge=2)  # back-to-back copies of the unit that make a loop
    loop_min_tokens: int = Field(128, ge=2)  # and at least this many tokens of repetition

    # [engine]
    max_batch_size: int = Field(16, ge=1)
    prefill_step_size: int = Field(256, ge=16)  # prompt tokens per step between decode steps (bench.prefill)
    prompt_cache_mb: int = Field(2048, ge=0)  # 0: no prompt cache
    prompt_cache_disk_mb: int = Field(4096, ge=0)  # snapshots of long shared prefixes on disk; 0: none
    prompt_cache_disk_min_tokens: int = Field(1024, ge=1)  # the shortest prefix worth a snapshot
    openblas: bool = True  # Linux CPU: preload Debian's OpenBLAS when installed (server/blas.py)
    kv_memory_mb: int = Field(0, ge=0)  # memory for KV caches; 0: what the machine has (engine/memory.py)

    # [distributed]: under mlx.launch only (server/distributed/)
    distributed_timeout: float = Field(20, gt=0)  # seconds a rank may wait for the others in one step

    # [tools]: tools the server runs itself (server/turn/loop.py, server/tools/; docs/tools.md)
    tool_max_rounds: int = Field(8, ge=1)  # tool calls the server runs in one reply; past it the reply ends
    tool_timeout: float = Field(60.0, gt=0)  # seconds one call may take, then it fails as timed out
    tool_max_result_kb: int = Field(32, ge=1)  # a call's result past this is cut, with a note saying so
    mcp_connect_timeout: float = Field(30.0, gt=0)  # seconds a request waits for an MCP server to start and list tools
    mcp_request_servers: bool = False  # true: requests may name MCP servers by URL (the server connects there)

    # [[mcp_servers]] tables, at the top level: MCP servers whose tools the server runs (server/tools/mcp.py)
    mcp_servers: list["MCPServerEntry"] = Field(default_factory=list)  # see MCPServerEntry

    # [responses]
    data_dir: str = ""  # stored responses (SQLite), batches; empty: under the cache dir
    responses_max_age_days: int = Field(0, ge=0)  # stored responses older than this are deleted; 0: kept
    responses_max_count: int = Field(0, ge=0)  # only the newest this many are kept; 0: all

    # [batches]: the Batch API (server/batches/, docs/batches.md)
    batch_retention_days: int = Field(30, ge=0)  # files and ended batches older than this are deleted; 0: kept
    batch_disk_mb: int = Field(10240, ge=0)  # disk the batch files and results may take; past it: 507; 0: no cap
    max_file_mb: int = Field(200, ge=1)  # largest upload (POST /v1/files) or Message Batches request body
    batch_preemption: bool = True  # a live request takes a batch row at once; false: it waits for one to end

    # [browser]: harmony's built-in browser, run by the server (server/tools/browser/; docs/builtin-tools.md)
    browser_tool: bool = False  # offer the model browser.search / open / find
    browser_default: bool = False  # on for chat completions requests that don't say (builtin_tools)
    browser_search_backend: Literal["searxng", "ddgs"] = "searxng"  # ddgs: pip install 'swallow-server[ddgs]'
    browser_searxng_url: str = ""  # a SearXNG instance with format=json on, e.g. "http://127.0.0.1:8888"
    browser_max_results: int = Field(10, ge=1, le=50)  # search results shown (the model's topn, at most this)
    browser_view_tokens: int = Field(1024, ge=64)  # tokens of a page one `open` shows
    browser_max_page_kb: int = Field(1024, ge=1)  # bytes of a page read; the rest is cut off
    browser_fetch_timeout: float = Field(15, gt=0)  # seconds for one fetch, redirects included
    browser_max_redirects: int = Field(5, ge=0)
    browser_allowed_hosts: list[str] = Field(default_factory=list)  # loopback/private hosts it may fetch

    # [python]: harmony's built-in python, one sandboxed interpreter per conversation (server/tools/python/)
    python_tool: bool = False  # offer the model python (needs bubblewrap on Linux, Seatbelt on macOS)
    python_default: bool = False  # on for chat completions requests that don't say (builtin_tools)
    python_timeout: float = Field(30, gt=0)  # seconds (wall clock and CPU) one call may run
    python_memory_mb: int = Field(1024, ge=64)  # address space of each process in the sandbox
    python_max_processes: int = Field(16, ge=2)  # processes and threads in one sandbox (Linux)
    python_max_output_kb: int = Field(16, ge=1)  # output of one call the model sees; the rest is cut
    python_max_disk_mb: int = Field(256, ge=1)  # files in a conversation's working directory
    python_idle_timeout: float = Field(600, gt=0)  # seconds idle before an interpreter and its files go
    python_max_interpreters: int = Field(8, ge=1)  # at once; past it the longest idle one is stopped
    python_work_dir: str = ""  # where the working directories live; empty: the system's temp dir
    python_executable: str = ""  # the interpreter run in the sandbox; empty: the server's own
    python_unsandboxed_i_understand_the_risk: bool = False  # run with no sandbox where there is none

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value):
        keep_alive_seconds(value)  # ValueError: not a duration
        return value

    @field_validator("ollama_port")
    @classmethod
    def _two_ports(cls, value: int, info: ValidationInfo) -> int:
        if value and value == info.data.get("port"):
            raise ValueError(f"{value} is the server's port too; give another one (Ollama's is 11434), or 0 for none")
        return value

    @field_validator("browser_allowed_hosts", mode="before")
    @classmethod
    def _browser_hosts(cls, value):
        """A list, or one comma-separated string (environment, command line)."""
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _browser_backend(self):
        if self.browser_tool and self.browser_search_backend == "searxng" and not self.browser_searxng_url:
            raise ValueError("browser_tool with browser_search_backend \"searxng\" needs browser_searxng_url "
                             "(a SearXNG instance, e.g. \"http://127.0.0.1:8888\")")
        return self

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _allowed_hosts(cls, value):
        """A list, or one comma-separated string. Each entry is a host name or address as a
        `Host` header carries it, without the port ("myhost.lan", "192.168.1.20", "[fe80::1]"),
        "*.example.lan" (the names under it), or "*" (every name: no Host check)."""
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for host in value:
                if not isinstance(host, str) or not HOST_PATTERN.fullmatch(host):
                    raise ValueError(f"{host!r} is not a host name like myhost.lan, 192.168.1.20, [fe80::1], "
                                     "*.example.lan or *")
            value = [host.lower() for host in value]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value):
        """A list, or one comma-separated string (environment, command line). Each entry is an
        origin ("https://app.example.com", "http://localhost:3000"), one with any port
        ("http://localhost:*"), or "*" (every origin)."""
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for origin in value:
                if not isinstance(origin, str) or not ORIGIN_PATTERN.fullmatch(origin):
                    raise ValueError(f"{origin!r} is not an origin like http://localhost:3000, "
                                     "http://localhost:* (any port) or *")
        return value


# config.toml's tables and the settings each one groups. `models` and `mcp_servers` are the lists of
# [[models]] and [[mcp_servers]] tables, at the top level. tests/test_docs.py checks that config.toml
# and docs/configuration.md agree.
TABLES: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "ollama_port", "log_level"),
    "security": ("api_key", "cors_origins", "max_body_mb", "metrics_public", "allowed_hosts"),
    "limits": ("max_concurrency", "max_queue", "shutdown_timeout", "max_messages"),
    "model": ("model", "served_model_name", "trust_remote_code", "context_length", "model_identity",
              "knowledge_cutoff"),
    "model_registry": ("strict_model_names", "models_memory_mb", "keep_alive", "model_load_timeout",
                       "discover_cached_models"),
    "generation": ("temperature", "top_p", "top_k", "min_p", "reasoning_effort", "max_tokens", "max_n"),
    "reasoning": ("reasoning_max_tokens", "loop_guard", "loop_max_period", "loop_min_repeats", "loop_min_tokens"),
    "engine": ("max_batch_size", "prefill_step_size", "prompt_cache_mb", "prompt_cache_disk_mb",
               "prompt_cache_disk_min_tokens", "openblas", "kv_memory_mb"),
    "distributed": ("distributed_timeout",),
    "tools": ("tool_max_rounds", "tool_timeout", "tool_max_result_kb", "mcp_connect_timeout", "mcp_request_servers"),
    "responses": ("data_dir", "responses_max_age_days", "responses_max_count"),
    "batches": ("batch_retention_days", "batch_disk_mb", "max_file_mb", "batch_preemption"),
    "browser": ("browser_tool", "browser_default", "browser_search_backend", "browser_searxng_url",
                "browser_max_results", "browser_view_tokens", "browser_max_page_kb", "browser_fetch_timeout",
                "browser_max_redirects", "browser_allowed_hosts"),
    "python": ("python_tool", "python_default", "python_timeout", "python_memory_mb", "python_max_processes",
               "python_max_output_kb", "python_max_disk_mb", "python_idle_timeout", "python_max_interpreters",
               "python_work_dir", "python_executable", "python_unsandboxed_i_understand_the_risk"),
}
TABLE_OF = {name: table for table, names in TABLES.items() for name in names}


def misplaced(document: dict, where: str) -> list[str]:
    """Warnings for settings written under a table that isn't theirs (`[server] temperature = 0`).
    They are read all the same (names are unique), but the next reader looks for them elsewhere.
    Settings at the top level, outside any table, are fine."""
    found = []

    def walk(table: dict, path: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{path}.{key}" if path else key)
            elif path and key in ("models", "mcp_servers"):
                found.append(f"{where}: [[{key}]] is under [{path}]; it belongs at the top level, as [[{key}]]")
            elif path and key in TABLE_OF and TABLE_OF[key] != path:
                found.append(f"{where}: {key} is under [{path}]; it belongs in [{TABLE_OF[key]}]")

    walk(document, "")
    return found


# Settings a [[models]] entry may set for its model alone: the rest are the server's.
PER_MODEL = {
    "trust_remote_code", "context_length", "model_identity", "knowledge_cutoff",
    "temperature", "top_p", "top_k", "min_p", "reasoning_effort", "max_tokens", "max_n",
    "reasoning_max_tokens", "loop_guard", "loop_max_period", "loop_min_repeats", "loop_min_tokens",
    "max_batch_size", "prefill_step_size", "prompt_cache_mb", "prompt_cache_disk_mb",
    "prompt_cache_disk_min_tokens", "kv_memory_mb",
}


class ModelEntry(BaseModel):
    """One [[models]] table: a model to serve, the names it answers to, and its own settings.

        [[models]]
        alias = "swallow"                       # the id clients use and see
        model = "tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-6bit-mlx"   # path, repo id or "demo"
        default = true                          # unknown names go here
        keep_alive = "30m"                      # unloaded after this long idle
        context_length = 32768                  # any PER_MODEL setting, for this model only
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str
    alias: str = ""  # empty: the model value
    aliases: list[str] = Field(default_factory=list)  # more names it answers to
    default: bool = False
    keep_alive: str | float | None = None  # None: the server's keep_alive

    @field_validator("model", "alias")
    @classmethod
    def _no_blank(cls, value: str) -> str:
        return value.strip()

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value):
        keep_alive_seconds(value)
        return value

    def overrides(self) -> dict:
        """The settings this entry sets for its model alone."""
        extra = dict(self.model_extra or {})
        unknown = sorted(set(extra) - PER_MODEL)
        if unknown:
            raise ValueError(f"[[models]] {self.name!r}: {', '.join(unknown)} can't be set per model "
                             f"(per-model settings: {', '.join(sorted(PER_MODEL))})")
        return extra

    @property
    def name(self) -> str:
        return self.alias or self.model


# Names an MCP server may not take: harmony's own namespaces and roles (its name is the namespace
# the model calls its tools by: `fs.read_file`).
RESERVED_TOOL_NAMESPACES = {"functions", "browser", "python", "container", "assistant", "user", "system",
                            "developer", "tool", "multi_tool_use"}
NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_namespace(name: str) -> str | None:
    """Why `name` can't name a tool namespace (an MCP server), or None."""
    if not NAMESPACE.fullmatch(name):
        return f"{name!r} is not a name like fs or my_tools (letters, digits and _, not starting with a digit)"
    if name in RESERVED_TOOL_NAMESPACES:
        return f"{name!r} is reserved (harmony's own names: {', '.join(sorted(RESERVED_TOOL_NAMESPACES))})"
    return None


class MCPServerEntry(BaseModel):
    """One [[mcp_servers]] table: an MCP server whose tools the server runs (docs/tools.md).

        [[mcp_servers]]
        name = "fs"                               # its label in the APIs, and the namespace the model sees
        command = "npx"                           # stdio: a command to start ...
        args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/notes"]
        env = { LOG_LEVEL = "warn" }              # ... with these variables beside HOME, PATH, USER...
        # url = "http://127.0.0.1:3001/mcp"      # or streamable HTTP, with `headers`
        allowed_tools = ["read_text_file", "list_directory"]   # only these (none given: all)
        default = true                            # on for requests that don't pick servers
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    command: str = ""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = ""
    url: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    allowed_tools: list[str] | None = None  # None: every tool it lists
    description: str = ""  # what the model is told the namespace is; empty: "Tools of the MCP server NAME"
    default: bool = False  # on for requests that pick no servers (chat completions, the chat page)

    @model_validator(mode="after")
    def _check(self):
        problem = check_namespace(self.name)
        if problem:
            raise ValueError(f"[[mcp_servers]] name: {problem}")
        if bool(self.command) == bool(self.url):
            raise ValueError(f"[[mcp_servers]] {self.name!r}: give either command (stdio) or url (streamable HTTP)")
        if self.url and not re.match(r"https?://", self.url):
            raise ValueError(f"[[mcp_servers]] {self.name!r}: url must be http:// or https://")
        return self


class ConfigError(Exception):
    pass


def _flatten(table: dict) -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _from_environment() -> dict:
    names = Settings.model_fields
    return {
        key[len(ENV_PREFIX):].lower(): value
        for key, value in os.environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in names
    }


def load_settings(config_file: str | None = None, overrides: dict | None = None) -> Settings:
    """Merge the sources; `overrides` are the command-line values that were given."""
    values: dict = {}
    path = Path(config_file) if config_file else None
    if path is None and Path("config.toml").is_file():
        path = Path("config.toml")
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        for warning in misplaced(document, str(path)):
            log.warning("%s", warning)
        values.update(_flatten(document))
        log.info("settings from %s", path)
    values.update(_from_environment())
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = Settings(**values)
        names = [entry.name for entry in settings.mcp_servers]
        if len(set(names)) != len(names):
            raise ValueError("[[mcp_servers]]: each server needs a name of its own")
        for entry in settings.models:
            for_model(settings, entry)  # each model's own settings are valid too
        return settings
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings: {problems}") from e
    except ValueError as e:
        raise ConfigError(f"invalid settings: {e}") from e


def for_model(settings: Settings, entry: ModelEntry) -> Settings:
    """The settings one model runs with: the server's, with the entry's own on top."""
    values = {**settings.model_dump(exclude={"models"}), **entry.overrides(), "model": entry.model,
              "served_model_name": entry.name}
    return Settings(**values, models=settings.models)


Settings.model_rebuild()
