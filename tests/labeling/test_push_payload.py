"""The task payload of a chip (a window of a tiled scene) names its scene and window; other images' payloads don't."""

from __future__ import annotations

import numpy as np

from labeling.push import PushJob, job_payload
from storage.blobs import LocalBlobStore
from storage.maskcodec import encode_mask


def _job(scene: str | None) -> PushJob:
    return PushJob(item_id=7, query="the roofs", image_uri="s3://b/scene.tif#chip=896,0,64,48", image_sha256="a" * 64,
                   height=48, width=64, prediction_id=3, model_version="mv", mask_sha256=None, score=0.4, scene=scene)


def test_chip_payload_names_scene_and_window(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    chip = job_payload(_job("s3://b/scene.tif [896, 0, 64, 48]"), blobs, lambda uri: f"url:{uri}")
    assert chip["data"]["scene"] == "s3://b/scene.tif [896, 0, 64, 48]"
    assert chip["data"]["image"] == "url:s3://b/scene.tif#chip=896,0,64,48"
    plain = job_payload(_job(None), blobs, lambda uri: uri)
    assert "scene" not in plain["data"] and plain["predictions"][0]["score"] == 0.4


def test_chip_payload_keeps_its_prelabel(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:40] = True
    job = PushJob(**{**_job("scene.tif [0, 0, 64, 48]").__dict__, "mask_sha256": blobs.put(encode_mask(mask))})
    result = job_payload(job, blobs, str)["predictions"][0]["result"]
    assert result and result[0]["original_width"] == 64 and result[0]["original_height"] == 48
