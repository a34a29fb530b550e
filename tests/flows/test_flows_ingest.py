"""ingest_flow on the real aerial imagery: registration by content hash, per-row issues, idempotent re-runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from flows.ingest import QueriesError, ingest_flow, parse_queries
from flows.runtime import open_runtime, settings_from

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"


def test_parse_csv_and_jsonl_with_per_row_issues():
    rows, issues = parse_queries(
        "image,query,level,domain\n"
        "a.tif,the red roof,L1,Urban\n"
        "a.tif,  the   red roof ,2,Urban\n"  # same query after whitespace normalisation: duplicate
        "b.png,,L1,\n"
        "c.jpg,a road,L9,Traffic\n"
        ",a lake,,\n"
        "d.tif,the river,3,\n",
        name="q.csv",
    )
    assert [(r.image, r.query, r.level, r.domain, r.line) for r in rows] == [
        ("a.tif", "the red roof", "L1", "Urban", 2),
        ("d.tif", "the river", "L3", None, 7),
    ]
    assert [(i.line, i.message.split(" ")[0]) for i in issues] == [
        (3, "duplicate"),
        (4, "empty"),
        (5, "level"),
        (6, "missing"),
    ]
    rows, issues = parse_queries(
        '{"image": "a.tif", "query": "the pond", "level": "L2", "domain": "Nature"}\n\n[1, 2]\n{bad json\n'
        '{"image": "b.tif", "query": "the field"}\n',
        name="q.jsonl",
    )
    assert [(r.image, r.query, r.level, r.line) for r in rows] == [
        ("a.tif", "the pond", "L2", 1),
        ("b.tif", "the field", None, 5),
    ]
    assert [i.line for i in issues] == [3, 4]
    with pytest.raises(QueriesError, match="must name the columns image and query"):
        parse_queries("file,text\na,b\n", name="q.csv")
    with pytest.raises(QueriesError, match="empty"):
        parse_queries("", name="q.csv")


@pytest.mark.slow
def test_ingest_real_imagery_is_idempotent(prefect_harness, tmp_path):
    overrides = {"data_dir": str(tmp_path / "data")}
    q = str(AERIAL / "queries.csv")
    first = ingest_flow(str(AERIAL), q, settings_overrides=overrides)
    assert (first.images_listed, first.images_new, first.items_new, first.issues) == (6, 6, 10, ())
    again = ingest_flow(str(AERIAL), q, settings_overrides=overrides)
    assert (again.images_new, again.images_known, again.items_new, again.items_known) == (0, 6, 0, 10)

    from storage.models import Image, Item

    rt = open_runtime(settings_from(overrides))
    with rt.session() as s:
        images = {Path(i.uri).name: i for i in s.scalars(sa.select(Image))}
        assert len(images) == 6
        l7 = images["L7_ETMs.tif"]
        assert (l7.width, l7.height, l7.bands, l7.crs, l7.format) == (349, 352, 6, "EPSG:31985", "GTiff")
        assert images["OSBS_029.tif"].transform[0] == pytest.approx(0.1)
        assert images["SOAP_031.png"].crs is None
        assert s.scalar(sa.select(sa.func.count()).select_from(Item)) == 10
        levels = dict(s.execute(sa.select(Item.query, Item.level)).tuples().all())
        assert levels["the largest forested region"] == "L3"
        # image bytes are in the blob store under their sha256
        for img in images.values():
            assert rt.blobs.get(img.sha256) == Path(img.uri).read_bytes()


@pytest.mark.slow
def test_ingest_bad_inputs_are_recorded_and_the_rest_goes_in(prefect_harness, tmp_path):
    src = tmp_path / "imagery"
    (src / "sub").mkdir(parents=True)
    shutil.copy(AERIAL / "SOAP_031.png", src / "good.png")
    shutil.copy(AERIAL / "SOAP_031.png", src / "sub" / "same_content.png")  # same bytes, other name
    shutil.copy(AERIAL / "OSBS_029.tif", src / "sub" / "osbs.tif")
    (src / "empty.png").write_bytes(b"")
    (src / "notes.jpg").write_text("not an image")
    data = (AERIAL / "SOAP_061.png").read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 4])
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        "\n".join(
            [
                '{"image": "good.png", "query": "the tallest tree", "level": "L1", "domain": "Nature"}',
                '{"image": "sub/same_content.png", "query": "the tallest tree"}',  # same image, same query
                '{"image": "osbs.tif", "query": "bare ground"}',  # bare file name, unique
                '{"image": "empty.png", "query": "anything"}',
                '{"image": "missing.tif", "query": "anything"}',
                '{"image": "truncated.png", "query": "the shadow"}',
                '{"image": "good.png", "query": "a tree", "level": "L7"}',
                '{"image": "good.png", "query": "the gap in the canopy"}',
            ]
        )
        + "\n"
    )
    overrides = {"data_dir": str(tmp_path / "data")}
    rep = ingest_flow(str(src), str(queries), settings_overrides=overrides)
    assert rep.images_listed == 6 and rep.images_new == 2 and rep.images_known == 1  # same bytes, one Image
    assert rep.items_new == 3  # good.png x2 queries + osbs.tif; the duplicate (image, query) is not a new item
    by_ref = {(i.kind, Path(i.ref).name, i.line): i.message for i in rep.issues}
    assert "empty file" in by_ref[("image", "empty.png", None)]
    assert "looks like text" in by_ref[("image", "notes.jpg", None)]
    assert "truncated" in by_ref[("image", "truncated.png", None)]
    assert "could not be ingested" in by_ref[("query", "q.jsonl", 4)]
    assert "'missing.tif' is not in" in by_ref[("query", "q.jsonl", 5)]
    assert "could not be ingested" in by_ref[("query", "q.jsonl", 6)]
    assert "level must be L1, L2 or L3" in by_ref[("query", "q.jsonl", 7)]
    # fix the bad file and re-run: only the missing work is done
    shutil.copy(AERIAL / "SOAP_061.png", src / "truncated.png")
    rep2 = ingest_flow(str(src), str(queries), settings_overrides=overrides)
    assert (rep2.images_new, rep2.items_new, rep2.items_known) == (1, 1, 4)


def test_missing_source_and_queries_fail_clearly(tmp_path):
    from storage.sources import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        ingest_flow.fn(
            str(tmp_path / "nope"), str(AERIAL / "queries.csv"), settings_overrides={"data_dir": str(tmp_path)}
        )
    with pytest.raises(QueriesError, match="no such file"):
        ingest_flow.fn(str(AERIAL), str(tmp_path / "q.csv"), settings_overrides={"data_dir": str(tmp_path)})


@pytest.mark.slow
@pytest.mark.postgres
def test_production_config_postgres_and_s3(
    prefect_harness, pg_schema_url, moto_server, s3_client, s3_bucket, tmp_path, monkeypatch
):
    """PostgreSQL database, imagery and queries under an s3:// prefix, masks and image copies in an S3 blob store
    (moto_server): ingest and preannotate (instant models) end to end, then a re-run adds nothing."""
    from flows.preannotate import preannotate_flow
    from flows.status import collect_status
    from tests.fixtures.instant import register_instant

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for p in sorted(AERIAL.glob("*")):
        if p.suffix in (".tif", ".png", ".jpg"):
            s3_client.put_object(Bucket=s3_bucket, Key=f"imagery/{p.name}", Body=p.read_bytes())
    s3_client.put_object(Bucket=s3_bucket, Key="imagery/notes.txt", Body=b"not listed: not an image extension")
    s3_client.put_object(Bucket=s3_bucket, Key="queries.csv", Body=(AERIAL / "queries.csv").read_bytes())
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "database_url": pg_schema_url,
        "blob_url": f"s3://{s3_bucket}/blobs",
        "s3_endpoint_url": moto_server,
    }
    rep = ingest_flow(f"s3://{s3_bucket}/imagery/", f"s3://{s3_bucket}/queries.csv", settings_overrides=overrides)
    assert (rep.images_listed, rep.images_new, rep.items_new, rep.issues) == (6, 6, 10, ())
    pre = preannotate_flow(register_instant("instant-prod"), settings_overrides=overrides)
    assert (pre.predicted, pre.failed) == (10, 0)
    rt = open_runtime(settings_from(overrides))
    st = collect_status(rt)
    assert st["database"].startswith("postgresql+psycopg://") and st["blob_store"].startswith("s3://")
    assert (st["images"]["total"], st["items"]["total"], st["predictions"]["total"]) == (6, 10, 10)
    from storage.models import Image, Prediction

    with rt.session() as s:
        uris = sorted(s.scalars(sa.select(Image.uri)))
        masks = list(s.scalars(sa.select(Prediction.mask_sha256)))
    assert all(u.startswith(f"s3://{s3_bucket}/imagery/") for u in uris)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="blobs/")["Contents"]}
    assert all(any(k.endswith(m) for k in keys) for m in masks)  # masks are S3 objects named by their sha256
    again = ingest_flow(f"s3://{s3_bucket}/imagery/", f"s3://{s3_bucket}/queries.csv", settings_overrides=overrides)
    assert (again.images_new, again.items_new, again.items_known) == (0, 0, 10)
