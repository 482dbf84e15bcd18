"""xpro's own master stores, registered through the ``xpro`` entry points.

``memory`` (in-process), ``redis`` (Redis 7 and Redis Cluster, redis-py) and
``etcd`` (etcd v3, cslab-etcd3); each module holds one :class:`xpro.stores.base.Store`
and its ``xpro_add_stores`` hook.  Open one with :func:`xpro.plugins.open_store`.
See docs/stores.rst.
"""
