"""Staging files and folders to a cluster: `manifest` (what is staged), `remote` (the store's layout and
the shell run there), `stager` (the transfer), `streams` (tar streams and resumable parts), `report` (what a
stage did), `pack` and `squash` (many small files as shards or one image)."""

from hpcai.backends.staging.manifest import Entry, HashCache, manifest, tree_id
from hpcai.backends.staging.report import StageReport
from hpcai.backends.staging.stager import LARGE_FILE_BYTES, Stager, rsync_available

__all__ = ["LARGE_FILE_BYTES", "Entry", "HashCache", "StageReport", "Stager", "manifest", "rsync_available", "tree_id"]
