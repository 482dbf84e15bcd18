"""The AF_XDP data path: Algorithm 2 in userspace, over batches of frames.

* :mod:`xpro.afxdp.xsk` -- AF_XDP sockets, UMEM and rings (libxdp through cffi);
* :mod:`xpro.afxdp.parse` -- ``bpf/parsing.h`` over a batch, in numpy;
* :mod:`xpro.afxdp.table` -- the flow and destination tables;
* :mod:`xpro.afxdp.filter` -- :class:`~xpro.afxdp.filter.UserFilter`, the filter
  with the interface the sync uses;
* :mod:`xpro.afxdp.datapath` -- the loop: redirect, filter, forward.

The backend that puts them together is :mod:`xpro.backends.afxdp`.
"""
