"""Storage: SQLAlchemy models of every stage's record, repositories, blob stores and settings.

* :mod:`storage.models`    -- tables, the item status state machine (``transition``), ``Verdict``.
* :mod:`storage.records`   -- frozen input records (``ImageRecord``, ``ItemRecord``, ``PredictionRecord``, ...).
* :mod:`storage.repo`      -- idempotent bulk upserts (INSERT ... ON CONFLICT) and the queries the flows need.
* :mod:`storage.db`        -- ``make_engine``, ``session_scope``, ``create_all``, Alembic ``upgrade``/``current``.
* :mod:`storage.blobs`     -- content-addressed ``LocalBlobStore`` / ``S3BlobStore``, ``open_blob_store(url)``.
* :mod:`storage.maskcodec` -- ``encode_mask`` / ``decode_mask`` (COCO RLE or 1-bit, header-checked), ``coco_rle``.
* :mod:`storage.settings`  -- ``Settings.load()`` (``GEOLABEL_*`` env + ``geolabel.toml``; secrets never shown).

Nothing here imports Label Studio, Prefect or the model code.
"""
