"""Datasets out of the triplet store: COCO export, benchmark snapshots, pre-label quality."""
