"""The panel's static assets: content-hashed URLs, long caching, compressed once.

Pages link every asset as ``static/<name>?v=<hash of its content>`` (relative, so the panel works
under any root path). An answer to such a URL may be cached for a year (``immutable``): a new
version of the file gets a new URL. Without ``v`` (or with an old one) the answer says
``no-cache``, so browsers revalidate with the ``ETag`` and get ``304 Not Modified``. Text assets
are gzip-compressed once, in memory, and sent compressed to clients that accept gzip: Plotly.js,
4.8 MB as installed, travels as about 1.4 MB, and only on the first visit.

Plotly.js comes from the installed ``plotly`` package (never copied into the repository).
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

PANEL_DIR: Final = Path(str(resources.files("apex_metrics.panel")))
STATIC: Final = PANEL_DIR / "static"
VENDOR: Final = {
    "vendor/plotly.min.js": lambda: Path(
        str(resources.files("plotly").joinpath("package_data", "plotly.min.js"))
    ),
}
MEDIA_TYPES: Final = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
COMPRESS: Final = frozenset({".css", ".js", ".svg"})
IMMUTABLE: Final = "public, max-age=31536000, immutable"
REVALIDATE: Final = "no-cache"
PLACEHOLDER: Final = re.compile(r"\{\{asset:([A-Za-z0-9_./-]+)\}\}")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    version: str  # first 16 hex digits of the content's SHA-256
    media_type: str

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


_cache: dict[str, tuple[tuple[int, int], Asset]] = {}


def _path(name: str) -> Path | None:
    if name in VENDOR:
        return VENDOR[name]()
    if ".." in name.split("/") or name.startswith("/") or "\\" in name:
        return None
    path = STATIC / name
    return path if path.is_file() else None


def load(name: str) -> Asset | None:
    """The asset called ``name`` (re-read when the file changes), or None."""
    path = _path(name)
    if path is None or path.suffix not in MEDIA_TYPES:
        return None
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    hit = _cache.get(name)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    body = path.read_bytes()
    asset = Asset(
        body=body,
        gzipped=gzip.compress(body, compresslevel=6, mtime=0) if path.suffix in COMPRESS else None,
        version=hashlib.sha256(body).hexdigest()[:16],
        media_type=MEDIA_TYPES[path.suffix],
    )
    _cache[name] = (stamp, asset)
    return asset


def url(name: str) -> str:
    """The page-relative, content-hashed URL of an asset."""
    asset = load(name)
    if asset is None:
        raise LookupError(f"no panel asset {name}")
    return f"static/{name}?v={asset.version}"


def render(template: Path) -> str:
    """A template with every ``{{asset:NAME}}`` replaced by the asset's hashed URL."""
    return PLACEHOLDER.sub(lambda m: url(m.group(1)), template.read_text(encoding="utf-8"))


def respond(request: Request, name: str) -> Response:
    """Serve an asset: 404, 304 on a matching ETag, else the (compressed) body."""
    asset = load(name)
    if asset is None:
        return Response("not found", status_code=404, media_type="text/plain")
    current = request.query_params.get("v") == asset.version
    headers = {
        "ETag": asset.etag,
        "Cache-Control": IMMUTABLE if current else REVALIDATE,
        "Vary": "Accept-Encoding",
    }
    tags = request.headers.get("if-none-match", "")
    if asset.etag in (t.strip().removeprefix("W/") for t in tags.split(",")):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding", "")):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
