"""Browser-displayable renditions of the project's images, and the URLs Label Studio shows them by.

Browsers cannot show GeoTIFF, multi-band or 16-bit imagery, so Label Studio gets the RGB rendition of
``geoseg.imagery.read_image`` (PNG; PNG/JPEG sources are used unchanged). With a local blob store the renditions are
files ``<data_dir>/display/<image sha256>.<ext>`` served by Label Studio's local-files serving below the imagery root it
serves (``imagery_roots[0]``, else the data dir: what ``labeling.server`` starts it with), so the data dir must lie
below that root; with an S3 blob store they are blobs that tasks name by ``s3://`` URI, presigned at view time by the
project's S3 source storage (``labeling.storages``). Masks refer to the
rendition's pixel grid, which is the image's own.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

DISPLAY_DIR = "display"
BROWSER_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}


def imagery_root(settings: Any) -> Path:
    """The directory the project's Label Studio serves local files from (``LabelStudioServer.from_settings``)."""
    roots = settings.imagery_roots
    return Path(roots[0] if roots else settings.data_dir).resolve()


class DisplayImages:
    """Image URI -> a URL Label Studio can show, producing browser-displayable renditions on demand.

    ``settings`` are the project's ``storage.settings.Settings``, ``blobs`` its blob store.
    """

    def __init__(self, settings: Any, blobs: Any) -> None:
        from labeling.push import ImageUrlResolver
        from labeling.server import document_root_for

        self.settings = settings  # storage.settings.Settings
        self.blobs = blobs  # storage.blobs.BlobStore
        self.s3 = str(settings.blob_url).startswith("s3://")
        self.root = imagery_root(settings)
        self.dir = Path(settings.data_dir).resolve() / DISPLAY_DIR
        self.resolver = ImageUrlResolver([self.dir, self.root], document_root=document_root_for(settings))
        self._by_uri: dict[str, str] = {}

    def _rendition(self, sha: str, uri: str, fmt: str | None) -> tuple[bytes, str]:
        from geoseg.imagery import read_image
        from storage.scenes import source_name

        data = self._image_bytes(sha, uri)
        loaded = read_image(data, name=source_name(uri))
        if fmt in BROWSER_FORMATS and loaded.bands in (1, 3) and loaded.dtype == "uint8":
            return data, BROWSER_FORMATS[fmt]
        from PIL import Image as PILImage

        buf = io.BytesIO()
        PILImage.fromarray(loaded.rgb).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), ".png"

    def _image_bytes(self, sha: str, uri: str) -> bytes:
        from storage.ingest import image_bytes

        return image_bytes(self.blobs, sha, uri, settings=self.settings)

    def prepare(self, images: list[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
        """Make renditions for (sha256, uri, format) triples; returns (uri, error) for the ones that failed."""
        failures: list[tuple[str, str]] = []
        for sha, uri, fmt in images:
            if uri in self._by_uri:
                continue
            try:
                if self.s3:
                    from labeling.storages import s3_blob_uri  # s3:// URIs: the project's S3 storage presigns on view

                    if fmt in BROWSER_FORMATS and self.blobs.exists(sha):
                        self._by_uri[uri] = self.resolver(s3_blob_uri(self.blobs, sha))
                        continue
                    data, _ext = self._rendition(sha, uri, fmt)
                    self._by_uri[uri] = self.resolver(s3_blob_uri(self.blobs, self.blobs.put(data)))
                    continue
                existing = [self.dir / f"{sha}{ext}" for ext in (".png", ".jpg")]
                path = next((p for p in existing if p.is_file()), None)
                if path is None:
                    data, ext = self._rendition(sha, uri, fmt)
                    self.dir.mkdir(parents=True, exist_ok=True)
                    path = self.dir / f"{sha}{ext}"
                    tmp = path.with_suffix(path.suffix + ".tmp")
                    tmp.write_bytes(data)
                    tmp.replace(path)  # atomic: a killed run leaves no half-written rendition
                self._by_uri[uri] = self.resolver(str(path))
            except Exception as exc:  # noqa: BLE001 - recorded; push_predictions then fails these items one by one
                failures.append((uri, f"{type(exc).__name__}: {exc}"))
        return failures

    def connect(self, client: Any, project_id: int, s3: Any = None) -> None:
        """Give the project the storages its prepared images need (idempotent), then check that Label Studio serves
        one local image: a Label Studio whose LOCAL_FILES_DOCUMENT_ROOT is not the one the URLs were made for would
        otherwise show broken images. ``s3``: a ``labeling.storages.S3Connection`` for S3 imagery."""
        from labeling.storages import StorageError

        self.resolver.needs.ensure(client, project_id, s3)
        local = next((u for u in self._by_uri.values() if u.startswith("/data/local-files/")), None)
        if local is not None and not client.served(local):
            raise StorageError(
                f"Label Studio at {client.url} does not serve {local}: the URLs are relative to "
                f"{self.resolver.document_root}, which must be that server's LOCAL_FILES_DOCUMENT_ROOT (a server "
                "started by `geolabel labelstudio start` records its own in <data_dir>/labelstudio/document_root; "
                "use that server's data dir, or start the server with this one)"
            )

    def __call__(self, uri: str) -> str:
        try:
            return self._by_uri[uri]
        except KeyError:
            raise ValueError(f"{uri}: no displayable rendition was prepared") from None
