"""Seeders for tests against a real Label Studio project (``tests.fixtures.labelstudio.ls_project``).

Masks are synthetic (blobs and noise), so pixel comparisons are exact; no model output is involved.
"""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage

from labeling.push import ImageUrlResolver, push_predictions
from storage import repo
from storage.maskcodec import encode_mask
from storage.records import ImageRecord, ItemRecord, PredictionRecord
from tests.fixtures.storage import add_image, add_item, add_prediction

MV = "geoseg-test-v1"


def blob(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def seed(p, n: int, h: int = 48, w: int = 64, *, noisy: bool = False, tag: str = "") -> list[int]:
    """n images (PNG under the imagery root) + items + predictions with mask blobs; returns item ids."""
    rng = np.random.default_rng(n + h)
    s = p.session
    item_ids = []
    for i in range(n):
        path = p.ls.imagery_root / f"img_{tag}{h}x{w}_{i}.png"
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        PILImage.fromarray(rgb).save(path)
        sha = f"{abs(hash((str(path), i))):064x}"[-64:]
        image_id = add_image(s, ImageRecord(sha256=sha, uri=str(path), width=w, height=h))
        item_id = add_item(s, ItemRecord(image_id=image_id, query=f"the building number {i}", level="L1"))
        mask = rng.random((h, w)) < 0.5 if noisy else blob(h, w, h / 2, w / 2 + i % 5, min(h, w) / 4)
        msha = p.blobs.put(encode_mask(mask))
        add_prediction(
            s,
            PredictionRecord(
                item_id=item_id, model_version=MV, mask_sha256=msha, mask_area=int(mask.sum()), score=0.5, route="text"
            ),
        )
        item_ids.append(item_id)
    s.commit()
    return item_ids


def resolver(p) -> ImageUrlResolver:
    return ImageUrlResolver.for_server(p.ls.server)


def verdict(choice: str) -> dict:
    return {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}


def pushed(p, n=4, **kw):  # noqa: ANN001, ANN201 - a tests.fixtures.labelstudio.LSProject
    """``seed`` n items, push them; returns (item ids, {item id: LabelTask})."""
    ids = seed(p, n, **kw)
    push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=resolver(p))
    lts = {lt.item_id: lt for lt in repo.label_tasks(p.session, p.handle.label_project_id)}
    return ids, lts
