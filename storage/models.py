"""SQLAlchemy 2.0 models: one table per stage of the labeling loop (design §1).

Tables and their natural (unique) keys -- every flow upserts on these, so re-running it creates no duplicates:

============== =============================== =========================================================
table          unique key                      holds
============== =============================== =========================================================
image          sha256                          uri, size, bands, dtype, CRS + geotransform, source
item           (image_id, query_key)           the query text (and its key), level L1/L2/L3, domain, status
prediction     (item_id, model_version)        boxes, phrase, keypoints, route, validities, mask blob
label_project  (label_studio_url, ls_project)  a Label Studio project and its sync watermark
label_task     (label_project_id, item_id)     the LS task id and the prediction pushed as pre-label
annotation     ls_annotation_id                verdict, mask blob, annotator, lead time, IoU vs pre-label
triplet        annotation_id                   the accepted (image, query, mask); withdrawn when retracted
snapshot       (name, version)                 an immutable benchmark version with its manifest hash
snapshot_member (snapshot_id, triplet_id)      triplet id, split and the hashes frozen at snapshot time
work_claim     (kind, key)                     a lease on a piece of work: owner, expiry (storage.claims)
============== =============================== =========================================================

Masks are never stored in the database: the ``*_mask_sha256`` columns name a blob in the blob store
(:mod:`storage.blobs`), encoded by :mod:`storage.maskcodec`. Timestamps are timezone-aware UTC on both dialects.

Item status state machine
-------------------------
::

    new ──► predicted ──► in_review ──► accepted
     │                      ▲  │  ├───► rejected
     └──────────────────────┘  │  └───► no_target
                               │
        accepted / rejected / no_target ──► in_review   (the deciding annotation was deleted / retracted)

* ``new -> predicted``: a prediction was stored for the item.
* ``new | predicted -> in_review``: the item was pushed to Label Studio as a task (``new`` when labelled from
  scratch, without a pre-label).
* ``in_review -> accepted | rejected | no_target``: an annotation decided it (verdict accept / reject / no target).
* ``accepted | rejected | no_target -> in_review``: the deciding annotation was deleted or retracted. A changed
  verdict is two moves (back to ``in_review``, then to the new verdict).
* Staying in the same status is a no-op, so re-running a flow is harmless. Anything else raises
  :class:`IllegalTransitionError`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from geoseg.vocabulary import LEVELS, ROUTES, query_key

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every dialect.

    Naive datetimes are refused on write (their zone is unknown); aware ones are converted to UTC. SQLite keeps no
    zone, so values read back without one are marked UTC (they were written as UTC).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise ValueError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: give a timezone-aware (UTC) timestamp")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON(), list[Any]: sa.JSON()}


class ItemStatus(enum.StrEnum):
    NEW = "new"
    PREDICTED = "predicted"
    IN_REVIEW = "in_review"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NO_TARGET = "no_target"


DECIDED: frozenset[ItemStatus] = frozenset({ItemStatus.ACCEPTED, ItemStatus.REJECTED, ItemStatus.NO_TARGET})

#: Allowed moves (besides staying put); see the module docstring.
TRANSITIONS: dict[ItemStatus, frozenset[ItemStatus]] = {
    ItemStatus.NEW: frozenset({ItemStatus.PREDICTED, ItemStatus.IN_REVIEW}),
    ItemStatus.PREDICTED: frozenset({ItemStatus.IN_REVIEW}),
    ItemStatus.IN_REVIEW: DECIDED,
    ItemStatus.ACCEPTED: frozenset({ItemStatus.IN_REVIEW}),
    ItemStatus.REJECTED: frozenset({ItemStatus.IN_REVIEW}),
    ItemStatus.NO_TARGET: frozenset({ItemStatus.IN_REVIEW}),
}


class Verdict(enum.StrEnum):
    ACCEPT = "accept"
    NO_TARGET = "no_target"
    REJECT = "reject"


#: The item status an annotation verdict decides.
VERDICT_STATUS: dict[Verdict, ItemStatus] = {
    Verdict.ACCEPT: ItemStatus.ACCEPTED,
    Verdict.REJECT: ItemStatus.REJECTED,
    Verdict.NO_TARGET: ItemStatus.NO_TARGET,
}


class IllegalTransitionError(ValueError):
    """An item status move the state machine does not allow."""


def check_transition(old: ItemStatus | str, new: ItemStatus | str) -> ItemStatus:
    """Validate ``old -> new`` and return ``new`` as an :class:`ItemStatus`; raise :class:`IllegalTransitionError`."""
    try:
        old_s, new_s = ItemStatus(old), ItemStatus(new)
    except ValueError as exc:
        raise IllegalTransitionError(f"unknown item status: {exc}; known: {[s.value for s in ItemStatus]}") from None
    if old_s != new_s and new_s not in TRANSITIONS[old_s]:
        allowed = sorted(s.value for s in TRANSITIONS[old_s])
        raise IllegalTransitionError(
            f"item status cannot move {old_s.value} -> {new_s.value}; from {old_s.value} only to {allowed}"
        )
    return new_s


def transition(item: Item, new_status: ItemStatus | str) -> Item:
    """Move ``item`` to ``new_status`` if the state machine allows it (same status: no-op); returns the item."""
    new_s = check_transition(item.status, new_status)
    if item.status != new_s:
        item.status = new_s
        item.updated_at = utcnow()
    return item


def _enum(cls: type[enum.Enum], name: str) -> sa.Enum:
    return sa.Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


SHA = sa.String(64)


def _sql_list(words: tuple[str, ...]) -> str:
    return ", ".join(f"'{w}'" for w in words)


class Image(Base):
    __tablename__ = "image"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(SHA, unique=True)
    uri: Mapped[str] = mapped_column(sa.Text)
    width: Mapped[int]
    height: Mapped[int]
    bands: Mapped[int] = mapped_column(default=3)
    dtype: Mapped[str] = mapped_column(sa.String(16), default="uint8")
    crs: Mapped[str | None] = mapped_column(sa.Text)
    transform: Mapped[list[Any] | None]
    format: Mapped[str | None] = mapped_column(sa.String(32))
    source: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # a chip of a scene (storage.scenes, migration 0003): scene URI and size, the chip's pixel window offset
    scene_uri: Mapped[str | None] = mapped_column(sa.Text, index=True)
    scene_width: Mapped[int | None]
    scene_height: Mapped[int | None]
    window_col: Mapped[int | None]
    window_row: Mapped[int | None]

    items: Mapped[list[Item]] = relationship(back_populates="image")

    __table_args__ = (
        sa.CheckConstraint("width > 0 AND height > 0", name="positive_size"),
        sa.CheckConstraint("bands > 0", name="positive_bands"),
    )

    def __repr__(self) -> str:
        return f"Image(id={self.id}, sha256={self.sha256[:12]}…, {self.width}x{self.height}x{self.bands})"


def _query_key_default(context: Any) -> str:
    return query_key(context.get_current_parameters()["query"])


class Item(Base):
    """An (image, query) pair. ``query_key`` (``geoseg.vocabulary.query_key`` of the query: NFKC, whitespace collapsed,
    case-folded) is its identity on the image: "Red  roof" and "red roof" are one item (migration 0002)."""

    __tablename__ = "item"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("image.id", ondelete="CASCADE"))
    query: Mapped[str] = mapped_column(sa.Text)
    query_key: Mapped[str] = mapped_column(sa.Text, default=_query_key_default)
    level: Mapped[str | None] = mapped_column(sa.String(2))
    domain: Mapped[str | None] = mapped_column(sa.String(64))
    status: Mapped[ItemStatus] = mapped_column(_enum(ItemStatus, "item_status"), default=ItemStatus.NEW, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="items")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="item")

    __table_args__ = (
        sa.UniqueConstraint("image_id", "query_key"),
        sa.CheckConstraint(f"level IS NULL OR level IN ({_sql_list(LEVELS)})", name="level"),
    )

    def __repr__(self) -> str:
        return f"Item(id={self.id}, image_id={self.image_id}, query={self.query!r}, status={self.status})"


class Prediction(Base):
    __tablename__ = "prediction"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("item.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(sa.String(128))
    boxes: Mapped[list[Any] | None]  # every box the grounder returned, [[x1, y1, x2, y2], ...]
    box: Mapped[list[Any] | None]  # the raw box b used
    refined_box: Mapped[list[Any] | None]  # b' of Eq. 2
    phrase: Mapped[str | None] = mapped_column(sa.Text)
    keypoints: Mapped[list[Any] | None]  # [[x, y], ...] full-image pixels
    route: Mapped[str | None] = mapped_column(sa.String(16))
    valid_point: Mapped[bool | None]
    valid_text: Mapped[bool | None]
    mask_sha256: Mapped[str | None] = mapped_column(SHA)
    mask_area: Mapped[int | None]
    score: Mapped[float | None]
    timings: Mapped[dict[str, Any] | None]  # seconds per stage
    raw_text: Mapped[str | None] = mapped_column(sa.Text)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the two route masks before fusion, for offline calibration of gamma (geoseg.calibrate) (0005)
    point_mask_sha256: Mapped[str | None] = mapped_column(SHA)
    text_mask_sha256: Mapped[str | None] = mapped_column(SHA)

    item: Mapped[Item] = relationship(back_populates="predictions")

    __table_args__ = (
        sa.UniqueConstraint("item_id", "model_version"),
        sa.CheckConstraint(
            f"route IS NULL OR route IN ({_sql_list(ROUTES)})", name="route"
        ),
    )

    @property
    def failed(self) -> bool:
        return self.error is not None


class LabelProject(Base):
    __tablename__ = "label_project"

    id: Mapped[int] = mapped_column(primary_key=True)
    label_studio_url: Mapped[str] = mapped_column(sa.Text)
    ls_project_id: Mapped[int]
    title: Mapped[str | None] = mapped_column(sa.Text)
    watermark: Mapped[datetime | None]  # newest annotation updated_at synced so far
    last_synced_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # consensus (migration 0005): annotators per task, the agreement below which an item goes to adjudication,
    # "label" or "review" (an adjudication project) and, for a review project, the project it reviews
    overlap: Mapped[int] = mapped_column(default=1, server_default=sa.text("1"))
    min_agreement: Mapped[float] = mapped_column(default=0.5, server_default=sa.text("0.5"))
    role: Mapped[str] = mapped_column(sa.String(16), default="label", server_default="label")
    review_of: Mapped[int | None] = mapped_column(sa.ForeignKey("label_project.id", ondelete="SET NULL"))

    __table_args__ = (sa.UniqueConstraint("label_studio_url", "ls_project_id"),)


class LabelTask(Base):
    __tablename__ = "label_task"

    id: Mapped[int] = mapped_column(primary_key=True)
    label_project_id: Mapped[int] = mapped_column(sa.ForeignKey("label_project.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("item.id", ondelete="CASCADE"), index=True)
    ls_task_id: Mapped[int]
    prediction_id: Mapped[int | None] = mapped_column(sa.ForeignKey("prediction.id", ondelete="SET NULL"))
    ls_prediction_id: Mapped[int | None]
    pushed_at: Mapped[datetime] = mapped_column(default=utcnow)

    item: Mapped[Item] = relationship()
    prediction: Mapped[Prediction | None] = relationship()
    label_project: Mapped[LabelProject] = relationship()

    __table_args__ = (
        sa.UniqueConstraint("label_project_id", "item_id"),
        sa.UniqueConstraint("label_project_id", "ls_task_id"),
    )


class Annotation(Base):
    __tablename__ = "annotation"

    id: Mapped[int] = mapped_column(primary_key=True)
    ls_annotation_id: Mapped[int] = mapped_column(unique=True)
    label_task_id: Mapped[int] = mapped_column(sa.ForeignKey("label_task.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("item.id", ondelete="CASCADE"), index=True)
    verdict: Mapped[Verdict] = mapped_column(_enum(Verdict, "verdict"))
    mask_sha256: Mapped[str | None] = mapped_column(SHA)
    mask_area: Mapped[int | None]
    annotator: Mapped[str | None] = mapped_column(sa.Text)
    lead_time: Mapped[float | None]  # seconds the annotator spent (Label Studio's lead_time)
    iou_vs_prelabel: Mapped[float | None]
    created_at: Mapped[datetime]  # Label Studio's created_at
    updated_at: Mapped[datetime] = mapped_column(index=True)  # Label Studio's updated_at (the sync watermark key)
    retracted: Mapped[bool] = mapped_column(default=False)
    synced_at: Mapped[datetime] = mapped_column(default=utcnow)
    iou_vs_consensus: Mapped[float | None]  # of this annotation's mask against its item's consensus (0005)

    item: Mapped[Item] = relationship()
    label_task: Mapped[LabelTask] = relationship()


class Triplet(Base):
    __tablename__ = "triplet"

    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(sa.ForeignKey("annotation.id", ondelete="RESTRICT"), unique=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("item.id", ondelete="RESTRICT"), index=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("image.id", ondelete="RESTRICT"))
    query: Mapped[str] = mapped_column(sa.Text)
    mask_sha256: Mapped[str] = mapped_column(SHA)
    domain: Mapped[str | None] = mapped_column(sa.String(64))
    level: Mapped[str | None] = mapped_column(sa.String(2))
    withdrawn: Mapped[bool] = mapped_column(default=False)  # the accepting annotation was retracted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    agreement: Mapped[float | None]  # storage.consensus agreement (None: one annotator)  (0005)
    n_annotators: Mapped[int] = mapped_column(default=1, server_default=sa.text("1"))
    adjudicated: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    item: Mapped[Item] = relationship()
    image: Mapped[Image] = relationship()
    annotation: Mapped[Annotation] = relationship()


class ItemConsensus(Base):
    """The consensus of an item's live annotations (storage.consensus.decide), re-computed on every change (0005)."""

    __tablename__ = "item_consensus"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("item.id", ondelete="CASCADE"), unique=True)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)  # storage.consensus.State
    n_annotators: Mapped[int]
    required: Mapped[int]
    verdict: Mapped[str | None] = mapped_column(sa.String(16))
    annotation_id: Mapped[int | None] = mapped_column(sa.ForeignKey("annotation.id", ondelete="SET NULL"))
    verdict_agreement: Mapped[float | None]
    mask_iou: Mapped[float | None]
    boundary_f: Mapped[float | None]
    agreement: Mapped[float | None]
    support: Mapped[int]
    reason: Mapped[str | None] = mapped_column(sa.Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    item: Mapped[Item] = relationship()


class Snapshot(Base):
    __tablename__ = "snapshot"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    version: Mapped[str] = mapped_column(sa.String(64))
    manifest_sha256: Mapped[str] = mapped_column(SHA)
    description: Mapped[str | None] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    members: Mapped[list[SnapshotMember]] = relationship(back_populates="snapshot", order_by="SnapshotMember.id")

    __table_args__ = (sa.UniqueConstraint("name", "version"),)


class SnapshotMember(Base):
    __tablename__ = "snapshot_member"

    id: Mapped[int] = mapped_column(primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(sa.ForeignKey("snapshot.id", ondelete="CASCADE"))
    triplet_id: Mapped[int] = mapped_column(sa.ForeignKey("triplet.id", ondelete="RESTRICT"), index=True)
    split: Mapped[str] = mapped_column(sa.String(32), default="test")
    image_sha256: Mapped[str] = mapped_column(SHA)
    mask_sha256: Mapped[str] = mapped_column(SHA)
    # the triplet's consensus at snapshot time (0005)
    agreement: Mapped[float | None]
    n_annotators: Mapped[int] = mapped_column(default=1, server_default=sa.text("1"))
    adjudicated: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    snapshot: Mapped[Snapshot] = relationship(back_populates="members")
    triplet: Mapped[Triplet] = relationship()

    __table_args__ = (sa.UniqueConstraint("snapshot_id", "triplet_id"),)


class WorkClaim(Base):
    """A lease on one piece of work (``kind`` + canonical ``key``), held by ``owner`` until ``expires_at``
    (:mod:`storage.claims`). The row is deleted in the transaction that writes the work's result."""

    __tablename__ = "work_claim"

    kind: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(200))
    previous_owner: Mapped[str | None] = mapped_column(sa.String(200))  # set when an expired lease was taken over
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)

