"""The manifest in the output directory: what each asset's file was made from, for resume.

``asset-generator-manifest.json`` records per asset (keyed by its path relative to the output
directory) the id, group, prompt, seed, parameters, file, sha256 and status. A rerun skips an
asset whose file still has the recorded hash and whose prompt, seed and parameters are the same.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from asset_generator.pipeline.plan import MANIFEST_NAME, PlannedAsset

VERSION = 2
# Manifests written before the server seam kept each asset's SwarmUI request body.
VERSION_SWARM_BODIES = 1
SKIP, GENERATE, BLOCKED = "skip", "generate", "blocked"
# Why an asset is made (again) or blocked; a rerun says which, with counts.
NEW, MISSING, ALTERED, FOREIGN = "new", "missing", "altered", "foreign"
UNFINISHED, PROMPT, SEED, PARAMS, POSTPROCESS, FORCE = (
    "unfinished", "prompt", "seed", "params", "postprocess", "force"
)  # fmt: skip
REASONS = {
    NEW: "new in the spec (not in the manifest)",
    MISSING: "file missing",
    ALTERED: "file altered since it was made",
    FOREIGN: "a file the manifest does not know is in the way",
    UNFINISHED: "did not succeed last time",
    PROMPT: "prompt changed",
    SEED: "seed changed",
    PARAMS: "parameters changed",
    POSTPROCESS: "post-processing changed",
    FORCE: "--force",
}


class Decision(NamedTuple):
    """What a run does with one asset (SKIP, GENERATE, BLOCKED), why, and the reasons by key."""

    verdict: str
    why: str
    reasons: tuple[str, ...] = ()
    # With PARAMS: the names of the parameters whose value changed.
    changed: tuple[str, ...] = ()


# Those bodies' SwarmUI ids for the options whose config names differ.
_SWARM_IDS = {"cfgscale": "cfg_scale", "negativeprompt": "negative_prompt"}


@dataclass
class Entry:
    """One asset's line in the manifest."""

    id: str
    group: str
    prompt: str
    seed: int
    params: dict[str, Any]
    file: str
    sha256: str | None
    status: str
    generation_id: str | None = None
    error: str | None = None
    finished: float | None = None
    # The post-processing the file went through (None: the image as the server made it).
    postprocess: dict[str, Any] | None = None


@dataclass
class Manifest:
    """The manifest of one output directory, loaded (empty when there is none)."""

    path: Path
    base_seed: int | None = None
    pipeline_id: str | None = None
    spec: str | None = None
    entries: dict[str, Entry] = field(default_factory=dict)
    # Why a manifest that was there could not be used (shown as a warning), if it could not.
    problem: str | None = None
    # This run's post-processing, as recorded and compared per asset (not saved at the top).
    postprocess: dict[str, Any] | None = None
    # Each entry's JSON text, made once when it changes: the manifest is rewritten after
    # every asset, and encoding every entry each time made a run quadratic in its size.
    _encoded: dict[str, str] = field(default_factory=dict, repr=False)

    def set_postprocess(self, steps: Any) -> None:
        """Note this run's post-processing (an ``images.PostProcess`` or None)."""
        from dataclasses import asdict

        self.postprocess = _plain(asdict(steps)) if steps is not None and steps.active else None

    @classmethod
    def load(cls, output_dir: Path) -> Manifest:
        path = output_dir / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            return cls(path, problem=f"cannot read {path}: {exc.strerror}")
        try:
            data = json.loads(raw)
            version = data.get("version") if isinstance(data, dict) else None
            if version not in (VERSION, VERSION_SWARM_BODIES):
                raise ValueError("not a manifest of this version")
            entries = {}
            for key, value in data.get("assets", {}).items():
                entry = Entry(**value)
                if not isinstance(entry.seed, int) or not isinstance(entry.params, dict):
                    raise ValueError("an entry has the wrong shape")
                if version == VERSION_SWARM_BODIES:
                    entry.params = _from_swarm_body(entry.params)
                entries[str(key)] = entry
            base = data.get("base_seed")
            return cls(
                path,
                base_seed=base if isinstance(base, int) and not isinstance(base, bool) else None,
                pipeline_id=data.get("pipeline_id"),
                spec=data.get("spec"),
                entries=entries,
            )
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            # Nothing it lists can be trusted: every file in the way is then a foreign file.
            return cls(path, problem=f"{path} is not a usable manifest ({exc}); ignoring it")

    def decide(self, asset: PlannedAsset, *, force: bool, overwrite: bool) -> Decision:
        """SKIP (done and intact), GENERATE, or BLOCKED (a foreign file in the way), with why."""
        entry = self.entries.get(asset.relative_path)
        exists = asset.path.is_file() or asset.path.is_symlink()
        if not exists:
            if asset.path.exists():
                return Decision(BLOCKED, f"{asset.path} exists and is not a file")
            if entry is None:
                return Decision(GENERATE, "not made yet", (NEW,))
            if entry.status not in ("succeeded", "skipped"):
                return Decision(GENERATE, "regenerating: " + REASONS[UNFINISHED], (UNFINISHED,))
            return Decision(GENERATE, "regenerating: " + REASONS[MISSING], (MISSING,))
        digest = file_sha256(asset.path)
        ours = entry is not None and entry.sha256 is not None and entry.sha256 == digest
        if not ours:
            reason = ALTERED if entry is not None and entry.sha256 is not None else FOREIGN
            if overwrite:
                return Decision(GENERATE, "overwriting (--overwrite)", (reason,))
            what = (
                "was changed since this pipeline made it"
                if reason == ALTERED
                else "exists and the manifest does not know it"
            )
            return Decision(
                BLOCKED, f"{asset.path} {what}; pass --overwrite to replace it", (reason,)
            )
        assert entry is not None
        changed = _changed_params(entry.params, _plain(asset.params))
        reasons = tuple(
            reason
            for reason, differs in (
                (UNFINISHED, entry.status not in ("succeeded", "skipped")),
                (PROMPT, entry.prompt != asset.prompt),
                (SEED, entry.seed != asset.seed),
                (PARAMS, bool(changed)),
                (POSTPROCESS, entry.postprocess != self.postprocess),
            )
            if differs
        )
        if not reasons and not force:
            return Decision(SKIP, "done with the same prompt, seed and parameters")
        reasons = reasons or (FORCE,)
        why = "regenerating: " + ", ".join(REASONS[r] for r in reasons)
        return Decision(GENERATE, why, reasons, changed)

    def record(
        self,
        asset: PlannedAsset,
        status: str,
        *,
        generation_id: str | None = None,
        error: str | None = None,
        kept_file: bool = False,
    ) -> Entry:
        """Note how an asset ended (its file's hash when it has one).

        ``kept_file``: this run wrote the file although the asset failed (post-processing
        failed and the full-size image stays), so a rerun knows the file as its own.
        """
        previous = self.entries.get(asset.relative_path)
        digest: str | None = None
        if (status in ("succeeded", "skipped") or kept_file) and asset.path.is_file():
            digest = file_sha256(asset.path)
        elif previous is not None and asset.path.is_file():
            # The earlier file is still there, untouched: keep knowing it as ours.
            current = file_sha256(asset.path)
            digest = current if current == previous.sha256 else None
        failed_before = status not in ("succeeded", "skipped") and not kept_file
        if failed_before and previous is not None and digest:
            # What is on disk is still the earlier result; the manifest stays true about it.
            previous.error = error
            self._encoded.pop(asset.relative_path, None)
            return previous
        entry = Entry(
            id=asset.id,
            group=asset.group,
            prompt=asset.prompt,
            seed=asset.seed,
            params=_plain(asset.params),
            file=asset.relative_path,
            sha256=digest,
            status=status,
            generation_id=generation_id,
            error=error,
            finished=time.time(),
            postprocess=self.postprocess if digest is not None else None,
        )
        self.entries[asset.relative_path] = entry
        self._encoded.pop(asset.relative_path, None)
        return entry

    def save(self) -> None:
        """Write the manifest atomically (it holds no secret: mode 0644 less the umask)."""
        from asset_generator.registry import write_atomic

        header = {
            "version": VERSION,
            "pipeline_id": self.pipeline_id,
            "spec": self.spec,
            "base_seed": self.base_seed,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        lines = [
            f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in header.items()
        ]
        assets = [
            f"  {json.dumps(key, ensure_ascii=False)}: {self._entry_text(key, entry)}"
            for key, entry in sorted(self.entries.items())
        ]
        lines.append(' "assets": {\n' + ",\n".join(assets) + "\n }" if assets else ' "assets": {}')
        payload = ("{\n" + ",\n".join(lines) + "\n}").encode()
        write_atomic(self.path, payload, what="the pipeline manifest", mode=0o644 & ~_umask())

    def _entry_text(self, key: str, entry: Entry) -> str:
        text = self._encoded.get(key)
        if text is None:
            text = json.dumps(asdict(entry), ensure_ascii=False, separators=(", ", ": "))
            self._encoded[key] = text
        return text


def _from_swarm_body(body: dict[str, Any]) -> dict[str, Any]:
    """An entry of a version-1 manifest in the user's words, so a rerun after the upgrade
    still knows its assets as done (``server.types.Request.describe``)."""
    params: dict[str, Any] = {}
    weights = body.get("loraweights")
    for key, value in body.items():
        if key in ("images", "loraweights"):
            continue
        if key == "loras" and isinstance(value, list):
            given = weights if isinstance(weights, list) and len(weights) == len(value) else []
            params["loras"] = [f"{name}:{given[i] if given else 1}" for i, name in enumerate(value)]
            continue
        params[_SWARM_IDS.get(key, key)] = value
    return params


def _changed_params(before: dict[str, Any], now: dict[str, Any]) -> tuple[str, ...]:
    """The parameter names whose value differs (set, unset or changed), in a stable order."""
    names = [*before, *(k for k in now if k not in before)]
    return tuple(name for name in names if before.get(name) != now.get(name))


def file_sha256(path: Path) -> str | None:
    """The file's sha256 in hex; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(params))


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
