"""``geolabel doctor``: check the environment, one line per check, each failure with what to do about it.

Checks: the app venv (Python 3.11) and Label Studio's venv (``.venv-ls``); the Label Studio the commands use
(reachable, its version, the token); the database revision against the code's head; the blob store writable; the GPU
(visible or not: informational unless the profile needs one); the model weights of the chosen profile present locally
(tiny models built; hub ids in the local Hugging Face cache or local directories). Nothing here downloads anything.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""  # what to do, for warn/fail

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def check_venvs() -> list[Check]:
    from labeling.server import default_venv

    py = ".".join(map(str, sys.version_info[:2]))
    app = Check("app venv", OK if sys.version_info[:2] == (3, 11) else WARN, f"{sys.prefix} (Python {py})",
                "" if sys.version_info[:2] == (3, 11) else "run `bash scripts/setup.sh` (the project pins Python 3.11)")
    exe = default_venv() / "bin" / "label-studio"
    ls = Check("Label Studio venv", OK if exe.exists() else FAIL, str(default_venv()),
               "" if exe.exists() else "run `bash scripts/setup.sh` (or `bash scripts/labelstudio_venv.sh`)")
    return [app, ls]


def check_label_studio(settings: Any) -> Check:
    from labeling.server import probe_label_studio

    p = probe_label_studio(settings)
    if not p["reachable"]:
        return Check("Label Studio", FAIL, f"{p['url']} not reachable ({p.get('detail', 'unhealthy')})",
                     "start it: `geolabel labelstudio start` (or set GEOLABEL_LABEL_STUDIO_URL to yours)")
    if not p["token_ok"]:
        why = "token rejected" if p["token_ok"] is False else p.get("detail", "no token")
        return Check("Label Studio", FAIL, f"{p['url']} (version {p['version'] or '?'}): {why}",
                     f"set {p['token_env']} to a valid API token, or use the data dir's own server")
    return Check("Label Studio", OK, f"{p['url']}: version {p['version'] or '?'}, token works")


def check_database(settings: Any) -> Check:
    from storage import db

    url = settings.database_url
    try:
        rev, head = db.current(url), db.head_revision()
    except Exception as exc:  # noqa: BLE001 - reported as the check's result
        return Check("database", FAIL, f"{db.safe_url(url)}: {type(exc).__name__}: {exc}",
                     "check GEOLABEL_DATABASE_URL and that the server is up")
    if rev == head:
        return Check("database", OK, f"{db.safe_url(url)}: revision {rev} (head)")
    return Check("database", WARN if rev is None else FAIL, f"{db.safe_url(url)}: revision {rev or '(none)'}, "
                 f"head {head}", "run `geolabel init` or `geolabel db upgrade`")


def check_blobs(settings: Any) -> Check:
    """Writes one fixed tiny blob (content-addressed, so re-running adds nothing)."""
    from storage.blobs import open_blob_store

    kw = {"endpoint_url": settings.s3_endpoint_url} if str(settings.blob_url).startswith("s3://") else {}
    try:
        blobs = open_blob_store(settings.blob_url, **{k: v for k, v in kw.items() if v})
        sha = blobs.put(b"geolabel doctor: blob store write check\n")
        ok = blobs.exists(sha)
    except Exception as exc:  # noqa: BLE001 - reported as the check's result
        return Check("blob store", FAIL, f"{settings.blob_url}: {type(exc).__name__}: {exc}",
                     "make it writable, or point GEOLABEL_BLOB_URL elsewhere")
    return Check("blob store", OK if ok else FAIL, f"{settings.blob_url} writable" if ok else "written blob not found",
                 "" if ok else "check the blob store's permissions")


def check_gpu(needs_gpu: bool) -> Check:
    try:
        import torch

        if torch.cuda.is_available():
            return Check("GPU", OK, f"{torch.cuda.device_count()} visible: {torch.cuda.get_device_name(0)}")
    except Exception as exc:  # noqa: BLE001 - a broken torch install is a finding
        return Check("GPU", FAIL, f"torch: {type(exc).__name__}: {exc}", "run `bash scripts/setup.sh`")
    if needs_gpu:
        return Check("GPU", FAIL, "none visible; the profile requires one",
                     "run on a machine with a CUDA GPU, or use --profile tiny (meaningless masks)")
    return Check("GPU", WARN, "none visible (fine for the tiny profile; the paper profile needs one)",
                 "for real masks run the paper profile on a CUDA GPU")


def _weights_present(model: str) -> tuple[bool, str]:
    """A local directory, or a hub id found in the local Hugging Face cache (no network)."""
    p = Path(model.removeprefix("local-dir:")).expanduser()
    if p.is_dir():
        return True, f"{p} (local)"
    if "/" not in model:
        return False, f"{model}: not a local directory nor a hub id"
    try:
        from huggingface_hub import snapshot_download

        return True, f"{model} in the Hugging Face cache ({snapshot_download(model, local_files_only=True)})"
    except Exception:  # noqa: BLE001 - not cached (or no hub library): the finding is "missing"
        return False, f"{model}: not in the local Hugging Face cache"


def _open_clip_hub_id(model: str, tag: str) -> str | None:
    """The Hugging Face repo open_clip loads ``model``/``tag`` from (its pretrained registry), if it names one."""
    try:
        import open_clip

        hub = (open_clip.pretrained.get_pretrained_cfg(model, tag) or {}).get("hf_hub")
    except Exception:  # noqa: BLE001 - unknown to open_clip: checked as given
        return None
    return str(hub).strip("/") or None if hub else None


def check_weights(profile: str) -> tuple[list[Check], bool]:
    """One check per model role of ``profile``; also returns whether the profile requires a GPU."""
    from geoseg.profiles import load_profile
    from geoseg.tiny import model_cache_dir

    try:
        config = load_profile(profile)
    except Exception as exc:  # noqa: BLE001 - a bad profile is a finding
        fix = "pass --profile tiny, paper or a valid profile file"
        return [Check("profile", FAIL, f"{profile}: {exc}", fix)], False
    out: list[Check] = []
    needs_gpu = False
    for role in ("grounder", "matcher", "segmenter"):
        spec = getattr(config, role)
        needs_gpu = needs_gpu or bool(spec.options.get("require_gpu"))
        if spec.kind == "tiny":
            root = model_cache_dir()
            built = root.is_dir() and any(root.iterdir())
            out.append(Check(f"{role} weights", OK if built else WARN, f"tiny models in {root}" if built else
                             f"tiny models not built yet in {root}", "" if built else "run `geolabel init`"))
        elif spec.kind == "openai":
            out.append(Check(f"{role} weights", OK, f"served model {spec.model} at {spec.options.get('base_url')} "
                             "(not probed)"))
        else:
            model = spec.model
            if spec.kind == "open_clip" and spec.options.get("pretrained"):
                model = _open_clip_hub_id(spec.model, str(spec.options["pretrained"])) or model
            ok, detail = _weights_present(model)
            out.append(Check(f"{role} weights", OK if ok else FAIL, f"{spec.kind}: {detail}",
                             "" if ok else f"download {model} into the Hugging Face cache on a machine with hub "
                             "access, or point the profile at a local directory"))
    return out, needs_gpu


def run_checks(settings: Any, profile: str = "tiny") -> list[Check]:
    weights, needs_gpu = check_weights(profile)
    return [*check_venvs(), check_label_studio(settings), check_database(settings), check_blobs(settings),
            check_gpu(needs_gpu), *weights]
