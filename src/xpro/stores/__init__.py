"""xpro's own master stores, registered through the ``xpro`` entry points.

``memory`` (in-process), ``redis`` (Redis 7 and Redis Cluster, redis-py) and
``etcd`` (etcd v3, cslab-etcd3); each module holds one :class:`xpro.store.Store`
and its ``xpro_add_stores`` hook.  Open one with :func:`xpro.store.open_store`.
The helpers below are for the sync: drop out-of-bounds local records before a
merge (:func:`check_local`), and the exact merge over arrays
(:func:`merge_arrays`).  See docs/stores.rst.
"""

from __future__ import annotations

from xpro.stores._common import MAX_COUNT, check_local, merge_arrays

__all__ = ["MAX_COUNT", "check_local", "merge_arrays"]
