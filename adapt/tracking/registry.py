"""The MLflow model registry: versions with their eval metrics, and the promotion gate.

Every registered version carries its held-out metrics (``test/<metric>``) and the dataset
fingerprint as tags. ``gate`` moves the alias ``champion`` to a new version only if it beats the
current champion on the same held-out data (same ``dataset_fingerprint``, compared on one metric);
otherwise the new version gets ``challenger`` and the decision says why. ``promote`` is the
deliberate human override. Both write why a version is (or is no longer) champion into its
description and the champion into the registered model's ``champion`` tag, for the MLflow UI. Both hold a registry lock while they read the champion and move an alias, so two runs
racing for ``champion`` leave it on the better one: a file lock beside the database for the
embedded sqlite store, and for a tracking server a short-lived lock entry in the registry itself
(creating a registered model is atomic on the server).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from adapt.errors import AdaptError
from adapt.tracking import ui
from adapt.tracking.store import (
    TrackingError,
    environ,
    first_line,
    mlflow_client,
    resolve_tracking_uri,
    sqlite_path,
)

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
DEFAULT_PROMOTE_METRIC = ui.HEADLINE_METRIC
GATE_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc", "accuracy_on_accepted", "needs_review_rate")
LOWER_IS_BETTER = frozenset({"needs_review_rate"})
LOCK_SUFFIX = ".adapt-gate-lock"  # registered-model name of the server-side lock
LOCK_TTL_S = 60.0  # a server-side lock older than this is stale (its holder died)
LOCK_TIMEOUT_S = 60.0
_ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
_BAD_NAME = re.compile(r"[/@:]")


def validate_model_name(name: str) -> str:
    if not name or not name.strip() or _BAD_NAME.search(name) or name.endswith(LOCK_SUFFIX):
        raise AdaptError(f"invalid registered model name {name!r}: use letters, digits, '-', '_' or '.' (no '/', '@', ':')")
    return name


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", ""))


# ---------------------------------------------------------------- locking


@contextlib.contextmanager
def registry_lock(client, tracking_uri: str, name: str, timeout_s: float = LOCK_TIMEOUT_S):
    """Serialise alias moves of registered model ``name`` across processes and hosts."""
    db = sqlite_path(tracking_uri)
    if db is not None:  # an embedded store: a lock file beside it (all its users share the file system)
        from filelock import FileLock, Timeout

        path = db.expanduser().resolve().with_name(db.name + ".adapt-gate.lock")
        try:
            with FileLock(str(path), timeout=timeout_s):
                yield
        except Timeout:
            raise TrackingError(f"registry lock {path} still held after {timeout_s:.0f}s; is another adapt command stuck?") from None
    else:
        with _registry_mutex(client, name, timeout_s):
            yield


@contextlib.contextmanager
def _registry_mutex(client, name: str, timeout_s: float):
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        expires = f"{time.time() + LOCK_TTL_S:.3f}"
        try:
            client.create_registered_model(
                lock,
                tags={"adapt.lock.owner": owner, "adapt.lock.expires": expires},
                description=f"temporary lock held by adapt while it moves aliases of '{name}'; safe to delete if older than a minute",
            )
            break
        except MlflowException as exc:
            if _error_code(exc) not in _ALREADY_EXISTS:
                raise
        try:
            held = client.get_registered_model(lock)
        except MlflowException:
            continue  # released in between
        held_by, held_until = held.tags.get("adapt.lock.owner", "?"), float(held.tags.get("adapt.lock.expires", 0) or 0)
        if held_until < time.time():
            logger.warning("breaking stale registry lock %s held by %s", lock, held_by)
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise TrackingError(f"registry lock '{lock}' is held by {held_by}; try again (delete that registered model if no adapt command is running)")
        time.sleep(0.1 + random.random() * 0.2)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if client.get_registered_model(lock).tags.get("adapt.lock.owner") == owner:
                client.delete_registered_model(lock)


# ---------------------------------------------------------------- versions and the gate


def register_version(client, name: str, model_id: str, run_id: str, tags: dict[str, str]) -> str:
    """Create a version of ``name`` (and the registered model if new) from a logged model; returns the version."""
    from mlflow.exceptions import MlflowException

    validate_model_name(name)
    try:
        try:
            client.create_registered_model(name, description=model_description(name))
        except MlflowException as exc:
            if _error_code(exc) not in _ALREADY_EXISTS:
                raise
        # The logged model's own storage location as the source, not ``models:/<model_id>``: with a
        # local store MLflow would resolve that through the process-global tracking URI.
        source = client.get_logged_model(model_id).artifact_location
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id)
    except Exception as exc:
        raise TrackingError(f"cannot register model '{name}': {first_line(exc)}") from exc
    with contextlib.suppress(Exception):  # shows the version on the logged model's page
        client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps([{"name": name, "version": str(mv.version)}])})
    return str(mv.version)


@dataclass
class GateDecision:
    name: str
    version: str
    metric: str
    alias: str  # the alias the new version got: champion or challenger
    reason: str
    value: float | None = None
    previous: str | None = None  # champion before the decision
    previous_value: float | None = None

    @property
    def moved(self) -> bool:
        return self.alias == CHAMPION

    def summary(self) -> str:
        head = f"registered {self.name} version {self.version}; champion: "
        if self.moved:
            source = f"from version {self.previous} " if self.previous else ""
            return head + f"moved {source}to version {self.version} because {self.reason}"
        return head + f"kept version {self.previous} because {self.reason}; version {self.version} is {CHALLENGER}"


def _aliases(client, name: str) -> dict[str, str]:
    aliases = client.get_registered_model(name).aliases or {}
    if isinstance(aliases, dict):
        return {k: str(v) for k, v in aliases.items()}
    return {a.alias: str(a.version) for a in aliases}


def model_description(name: str) -> str:
    return (f"Few-shot classifier registered by `adapt retrain --register {name}`. The alias **@champion** is the "
            f"version the inspection service serves (`models:/{name}@champion`); `adapt retrain --register` moves it "
            f"only to a version that beats it on the same held-out data, else the new version is **@challenger**. "
            f"Each version's description says why; the tag `champion` names the current one.")


def _describe(client, name: str, version: str, status: str) -> None:
    """A version's description: ``status`` (why it is, or is not, champion) and what the model is."""
    tags = dict(client.get_model_version(name, version).tags or {})
    client.update_model_version(name, str(version), description=f"{status}\n\n{ui.model_summary(tags)}.")


def _mark_champion(client, name: str, version: str, status: str, previous: str | None, replaced: str) -> None:
    """Descriptions of the new champion and of the one it replaced, and the registered model's ``champion`` tag."""
    _describe(client, name, version, status)
    if previous and previous != str(version):
        _describe(client, name, previous, f"**Former champion**: {replaced}")
    tags = dict(client.get_model_version(name, version).tags or {})
    score = ui.metric_value(tags, DEFAULT_PROMOTE_METRIC)
    client.set_registered_model_tag(name, CHAMPION, f"version {version}" + (f", {ui.percent(score)} bal. acc." if score is not None else ""))


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


def decide(name: str, new, champion, metric: str) -> tuple[bool, str, float | None, float | None]:
    """(promote?, reason, new value, champion value) for version ``new`` against ``champion`` (or None).

    Reads the tag ``test/<metric>`` (``<metric>`` on versions registered before the names were grouped)."""
    value = ui.metric_value(new.tags, metric)
    if value is None:
        return False, f"version {new.version} has no {metric} tag to compare", None, None
    if champion is None:
        return True, f"there was no champion ({metric} {value:.4f})", value, None
    old = ui.metric_value(champion.tags, metric)
    fp_new, fp_old = new.tags.get("dataset_fingerprint", ""), champion.tags.get("dataset_fingerprint", "")
    override = f"promote deliberately with: adapt models promote {name} {new.version}"
    if not fp_new or fp_new != fp_old:
        return False, (f"it was evaluated on different held-out data (dataset fingerprint {fp_new or '?'} vs "
                       f"{fp_old or '?'}), so {metric} is not comparable; {override}"), value, old
    if old is None:
        return False, f"champion version {champion.version} has no {metric} tag to compare against; {override}", value, None
    better = value < old if metric in LOWER_IS_BETTER else value > old
    if better:
        return True, f"{metric} {value:.4f} beats {old:.4f} on the same held-out data", value, old
    return False, f"{metric} {value:.4f} does not beat {old:.4f} on the same held-out data", value, old


def gate(client, tracking_uri: str, name: str, version: str, metric: str = DEFAULT_PROMOTE_METRIC) -> GateDecision:
    """Give ``version`` the alias ``champion`` if it beats the current champion, else ``challenger``.

    The champion is re-read and the alias moved under the registry lock, then read back; the
    decision and the compared values are kept as tags on the version (``adapt.gate.*``).
    """
    try:
        with registry_lock(client, tracking_uri, name):
            new = client.get_model_version(name, version)
            current = _aliases(client, name).get(CHAMPION)
            champion = client.get_model_version(name, current) if current else None
            promote, reason, value, old = decide(name, new, champion, metric)
            alias = CHAMPION if promote else CHALLENGER
            client.set_registered_model_alias(name, alias, str(version))
            now = _aliases(client, name).get(alias)
            if now != str(version):
                raise TrackingError(f"alias {alias} of '{name}' points to version {now} right after setting it to {version}")
            for key, tag in (("decision", alias), ("reason", reason), ("metric", metric), ("compared_to", current or ""),
                             ("compared_value", "" if old is None else f"{old:.4f}")):
                if tag:  # no empty rows in the UI's tag table (the first version is compared to nothing)
                    client.set_model_version_tag(name, str(version), f"adapt.gate.{key}", tag)
            if promote:
                _mark_champion(client, name, str(version), f"**Champion** since {_stamp()} because {reason}.", current,
                               f"version {version} replaced it on {_stamp()} because {reason}.")
            else:
                held = f"version {current} stays champion" if current else "no champion"
                _describe(client, name, str(version), f"**Challenger, not champion**: {held} because {reason}.")
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"promotion gate for '{name}' version {version} failed: {first_line(exc)}") from exc
    logger.info("%s version %s -> %s (%s)", name, version, alias, reason)
    return GateDecision(name, str(version), metric, alias, reason, value, current, old)


def promote(client, tracking_uri: str, name: str, version: str, alias: str = CHAMPION, reason: str = "") -> str | None:
    """Deliberately point ``alias`` at ``version``; returns the version it pointed to before.

    Who, when and why are kept in the version's tag ``adapt.promoted.<alias>``. Promoting the
    challenger to champion removes its challenger alias.
    """
    try:
        with registry_lock(client, tracking_uri, name):
            client.get_model_version(name, version)  # fails clearly when it does not exist
            aliases = _aliases(client, name)
            client.set_registered_model_alias(name, alias, str(version))
            if alias == CHAMPION and aliases.get(CHALLENGER) == str(version):
                client.delete_registered_model_alias(name, CHALLENGER)
            who = _user()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            why = f"by {who} at {stamp}: {reason or 'manual override'} (was version {aliases.get(alias) or 'none'})"
            client.set_model_version_tag(name, str(version), f"adapt.promoted.{alias}", why)
            if alias == CHAMPION:
                _mark_champion(client, name, str(version), f"**Champion**, promoted deliberately {why}.", aliases.get(CHAMPION),
                               f"version {version} was promoted over it by {who} on {_stamp()}: {reason or 'manual override'}.")
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"cannot set {alias} of '{name}' to version {version}: {first_line(exc)}") from exc
    return aliases.get(alias)


def _user() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return socket.gethostname()


@dataclass
class VersionRow:
    name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0
    run_id: str = ""


def list_versions(client, name: str | None = None) -> list[VersionRow]:
    """Registered versions (newest first per model) with their aliases and tags."""
    try:
        if name:
            names = [name]
        else:
            names, token = [], None
            while True:
                page = client.search_registered_models(max_results=100, page_token=token)
                names += [m.name for m in page if not m.name.endswith(LOCK_SUFFIX)]
                token = page.token
                if not token:
                    break
        rows = []
        for n in sorted(names):
            by_version: dict[str, list[str]] = {}
            for alias, v in _aliases(client, n).items():
                by_version.setdefault(v, []).append(alias)
            escaped = n.replace("'", "\\'")
            versions = client.search_model_versions(f"name = '{escaped}'")
            for mv in sorted(versions, key=lambda mv: -int(mv.version)):
                rows.append(VersionRow(n, str(mv.version), sorted(by_version.get(str(mv.version), [])), dict(mv.tags or {}),
                                       int(mv.creation_timestamp or 0), mv.run_id or ""))
        return rows
    except Exception as exc:
        raise TrackingError(f"cannot read the registry: {first_line(exc)}") from exc


# ---------------------------------------------------------------- registered versions -> local files


def check_registered(tracking_uri: str, name: str, alias: str, version: str, what: str) -> None:
    """``TrackingError`` (one line, starting with ``what``) unless model ``name`` has ``alias`` / ``version``."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    try:
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = [m.name for m in client.search_registered_models(max_results=20) if not m.name.endswith(LOCK_SUFFIX)]
            raise TrackingError(f"{what}: no registered model '{name}' in {tracking_uri} (registered: {', '.join(known) or 'none'})") from None
        if alias and alias not in _aliases(client, name):
            raise TrackingError(f"{what}: model '{name}' has no alias '{alias}' (see `adapt models list {name}`)")
        if version:
            try:
                client.get_model_version(name, version)
            except MlflowException as exc:
                if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                raise TrackingError(f"{what}: model '{name}' has no version {version} (see `adapt models list {name}`)") from None
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"{what}: cannot read the registry at {tracking_uri} ({first_line(exc)})") from exc


def _cache_root() -> Path:
    from adapt.defaults import cache_dir

    return cache_dir() / "registry"


def fetch_registered(uri: str, tracking_uri: str | None = None):
    """Local ``model.onnx`` + ``classifier.pt`` of the registered version ``uri`` (``models:/NAME@ALIAS``
    or ``models:/NAME/VERSION``), as ``adapt.contract.model_uri.LocalModel``.

    Downloads (``adapt.contract.model_uri.download_version``) are cached per (store, name, version,
    source): a version never changes.
    """
    from adapt.contract import model_uri

    ref = model_uri.parse_model_uri(uri)
    name, alias, version = ref.name, ref.alias, ref.version
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as exc:
        raise TrackingError(f"{uri}: not found in the registry at {tracking_uri} ({first_line(exc)})") from exc
    key = hashlib.sha256(f"{tracking_uri}\x1f{name}\x1f{mv.version}\x1f{mv.source}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^\w.-]+", "_", name)
    dest = _cache_root() / f"{slug}-v{mv.version}-{key}"
    if not (dest / ".complete").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
        progress = "true" if sys.stderr.isatty() else "false"  # no progress bars in logs
        try:
            with environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=progress):
                model_uri.download_version(client, name, str(mv.version), tmp, tracking_uri)
            (tmp / ".complete").write_text(uri)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.replace(dest)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (dest / ".complete").is_file():  # else a concurrent download finished first
                raise TrackingError(f"{uri}: cannot download version {mv.version} ({first_line(exc)})") from exc
    onnx_files = model_uri.onnx_files(dest)
    torch_files = sorted(dest.rglob(model_uri.TORCH_FILE), key=lambda p: len(p.parts))
    if not onnx_files and not torch_files:
        raise TrackingError(f"{uri}: version {mv.version} has no {model_uri.ONNX_FILE} or {model_uri.TORCH_FILE} in its artifacts")
    return model_uri.LocalModel(onnx_files[0] if onnx_files else None, torch_files[0] if torch_files else None,
                                name=name, version=str(mv.version), uri=uri)
